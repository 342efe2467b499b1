"""Write the PNG figures (probe trajectories and training curves per model, Table 4 bars, one per sweep) from the DAG's manifest.

    python workflow/scripts/make_figures.py --manifest results/figures_manifest.json --out-dir results/figures
"""

from __future__ import annotations

import argparse
import logging
import sys

log = logging.getLogger("make_figures")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True, help="tables manifest plus 'training_curves'")
    parser.add_argument("--out-dir", required=True, help="folder for the PNG files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from prefopt.figures import write_figures

    written = write_figures(args.manifest, args.out_dir)
    for path in written:
        log.info("wrote %s", path)
    if not written:
        log.warning("the manifest gave nothing to plot")
    return 0


if __name__ == "__main__":
    sys.exit(main())
