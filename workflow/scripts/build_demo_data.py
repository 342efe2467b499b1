"""Write the embedded demo preference dataset (checkable arithmetic, unit, sorting, string tasks).

    python workflow/scripts/build_demo_data.py --n 800 --seed 0 --out results/data/demo/raw.jsonl

Deterministic: the same --n and --seed give the same bytes. No network.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from prefopt.io import write_jsonl
from prefopt.demo_data import build_demo_dataset

logger = logging.getLogger("build_demo_data")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, required=True, help="number of preference rows")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--out", required=True, help="output .jsonl path")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rows = build_demo_dataset(args.n, args.seed)
    write_jsonl(args.out, rows)
    logger.info("wrote %d rows to %s; tasks %s", len(rows), args.out, dict(sorted(Counter(r["task"] for r in rows).items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
