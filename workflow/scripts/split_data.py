"""Validate preference rows and split them into SFT / preference / held-out eval (paper, section 4.1).

    python workflow/scripts/split_data.py --source demo --input results/data/demo/raw.jsonl \
        --sft-fraction 0.33 --eval-size 64 --seed 0 --on-bad drop --out-dir results/data/demo
    python workflow/scripts/split_data.py --source ultrafeedback --input HuggingFaceH4/ultrafeedback_binarized \
        --hf-split train_prefs --eval-size 2000 --seed 0 --on-bad drop --out-dir results/data/ultrafeedback

Writes OUT_DIR/{sft,pref,eval}.jsonl and OUT_DIR/split.json (manifest with sizes and sha256
hashes, the source's hash, the settings and the validation report; no timestamps, so a rerun
with the same inputs gives identical bytes). Order of operations: load, hash the source,
validate (structure only; prompt lengths are checked per model at training time), then
--limit (a shuffle seeded by --seed, then the first N good rows), then the split.
Exits 1 with the validation message when --on-bad error finds bad rows.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from prefopt.data import (content_hash, load_ultrafeedback, read_jsonl, split_dataset, split_manifest,
                          validate_rows, write_json, write_jsonl)

logger = logging.getLogger("split_data")


def eval_size_arg(text: str) -> int | float:
    """An int row count ("64") or a fraction ("0.05")."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("demo", "ultrafeedback"), required=True)
    parser.add_argument("--input", required=True, help="demo: a .jsonl file; ultrafeedback: a hub id or local file/folder")
    parser.add_argument("--hf-split", default="train_prefs", help="split of the UltraFeedback source (default train_prefs)")
    parser.add_argument("--sft-fraction", type=float, default=0.33)
    parser.add_argument("--eval-size", type=eval_size_arg, required=True, help="held-out rows (int) or fraction (float)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-bad", choices=("drop", "error"), default="error")
    parser.add_argument("--limit", type=int, default=None, help="use at most N good rows, drawn by a seeded shuffle")
    parser.add_argument("--out-dir", required=True)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    rows = read_jsonl(args.input) if args.source == "demo" else load_ultrafeedback(args.input, split=args.hf_split)
    source_hash = content_hash(rows)
    logger.info("loaded %d rows from %s (sha256 %s)", len(rows), args.input, source_hash)

    try:
        good_rows, report = validate_rows(rows, on_bad=args.on_bad)
    except ValueError as error:
        logger.error("validation failed: %s", error)
        return 1

    if args.limit is not None:
        if args.limit <= 0:
            logger.error("--limit must be positive, got %d", args.limit)
            return 2
        if args.limit < len(good_rows):
            shuffled = list(good_rows)
            random.Random(f"{args.seed}:limit").shuffle(shuffled)
            good_rows = shuffled[:args.limit]
            logger.info("--limit %d: kept %d rows after a seeded shuffle", args.limit, len(good_rows))

    splits = split_dataset(good_rows, sft_fraction=args.sft_fraction, eval_size=args.eval_size, seed=args.seed)
    settings = {"source": args.source, "input": args.input, "hf_split": args.hf_split if args.source == "ultrafeedback" else None,
                "sft_fraction": args.sft_fraction, "eval_size": args.eval_size, "on_bad": args.on_bad, "limit": args.limit}
    manifest = split_manifest(splits, seed=args.seed, source_hash=source_hash, settings=settings)

    out_dir = Path(args.out_dir)
    for name, split_rows in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", split_rows)
    write_json(out_dir / "split.json", {"manifest": manifest, "validation": report})
    logger.info("wrote %s to %s (split sha256 %s)", manifest["sizes"], out_dir, manifest["sha256"]["all"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
