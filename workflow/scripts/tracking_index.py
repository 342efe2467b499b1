"""Link every training run to its tracker entry (prefopt.tracking.index_html), for the report.

    python workflow/scripts/tracking_index.py --run smollm2/sft=results/smollm2/sft \
        --run smollm2/slime-1a2b=results/smollm2/align/slime-1a2b --out results/tracking.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prefopt.io import write_text_atomic
from prefopt.tracking import TRACKING_FILE, index_html


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                        help="a training run's DAG name and its published output folder")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    entries = {}
    for pair in args.run:
        name, _, folder = pair.partition("=")
        file = Path(folder) / TRACKING_FILE
        entries[name] = json.loads(file.read_text()) if file.exists() else None
    write_text_atomic(args.out, index_html(entries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
