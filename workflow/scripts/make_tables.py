"""Write every table of the DAG's manifest (.csv, .md, .tex) and the paired comparisons (.csv, .md).

Table 3 (methods), Table 4 (ablations), Table 5 (the p sweep) and one sweep_<name> table per other
hyperparameter sweep: the files `prefopt.plan.table_files` names, the `tables` rule's outputs.

    python workflow/scripts/make_tables.py --manifest results/tables/manifest.json --out-dir results/tables
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("make_tables")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="JSON listing each table's rows and result files")
    parser.add_argument("--out-dir", required=True, help="folder for <table>.{csv,md,tex} and comparisons.{csv,md}")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from prefopt.tables import write_tables

    for path in write_tables(args.manifest, args.out_dir):
        log.info("wrote %s", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
