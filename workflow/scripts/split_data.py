"""Validate preference rows and split them into SFT / preference / held-out eval (paper, section 4.1).

    python workflow/scripts/split_data.py --source demo --input results/data/demo/raw.jsonl \
        --sft-fraction 0.33 --eval-size 64 --seed 0 --on-bad-rows drop --out-dir results/data/split \
        --length-check smollm2.sft=results/smollm2/base:96:160 --length-check smollm2.align=results/smollm2/base:96:160
    python workflow/scripts/split_data.py --source ultrafeedback --input HuggingFaceH4/ultrafeedback_binarized \
        --hf-split train_prefs --eval-size 2000 --seed 0 --on-bad-rows drop --out-dir results/data/split

Writes OUT_DIR/{sft,pref,eval}.jsonl and OUT_DIR/split.json (manifest with sizes and sha256
hashes, the source's hash, the settings and the validation report; no timestamps, so a rerun
with the same inputs gives identical bytes). Order of operations: load, hash the source,
validate (structure, and each --length-check: the prompt with the model's chat template,
counted with the model's tokenizer, must fit that stage's max_prompt_length and leave room
within its max_length; every model's every stage, since a row may land in either split), then
--limit (a shuffle seeded by --seed, then the first N good rows), then the split. Bad rows,
unparseable lines included, follow --on-bad-rows (the config's data.on_bad_rows): drop them
(counted in split.json with their FILE:LINE) or exit 1 with a one-line message.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from pathlib import Path

from prefopt.data import LengthCheck, content_hash, read_rows, split_dataset, split_manifest, validate_rows
from prefopt.io import write_json, write_jsonl

logger = logging.getLogger("split_data")


def eval_size_arg(text: str) -> int | float:
    """An int row count ("64") or a fraction ("0.05")."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def length_check_arg(text: str) -> tuple[str, str, int, int]:
    """``LABEL=TOKENIZER_DIR:MAX_PROMPT_LENGTH:MAX_LENGTH`` -> (label, dir, max_prompt_length, max_length)."""
    try:
        label, rest = text.split("=", 1)
        directory, max_prompt_length, max_length = rest.rsplit(":", 2)
        return label, directory, int(max_prompt_length), int(max_length)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LABEL=TOKENIZER_DIR:MAX_PROMPT_LENGTH:MAX_LENGTH, got {text!r}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("demo", "ultrafeedback"), required=True)
    parser.add_argument("--input", required=True, help="demo: a .jsonl file; ultrafeedback: a hub id or local file/folder")
    parser.add_argument("--hf-split", default="train_prefs", help="split of the UltraFeedback source (default train_prefs)")
    parser.add_argument("--sft-fraction", type=float, default=0.33)
    parser.add_argument("--eval-size", type=eval_size_arg, required=True, help="held-out rows (int) or fraction (float)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--on-bad-rows", choices=("drop", "error"), default="error", help="the config's data.on_bad_rows")
    parser.add_argument("--length-check", type=length_check_arg, action="append", default=[],
                        metavar="LABEL=TOKENIZER_DIR:MAX_PROMPT_LENGTH:MAX_LENGTH",
                        help="check prompt lengths with this tokenizer (repeatable; e.g. smollm2.align=results/smollm2/base:96:160)")
    parser.add_argument("--limit", type=int, default=None, help="use at most N good rows, drawn by a seeded shuffle")
    parser.add_argument("--out-dir", required=True)
    return parser.parse_args(argv)


def load_length_checks(specs: list[tuple[str, str, int, int]]) -> list[LengthCheck]:
    """One `LengthCheck` per spec; each tokenizer folder is loaded once."""
    from transformers import AutoTokenizer

    tokenizers = {}
    checks = []
    for label, directory, max_prompt_length, max_length in specs:
        if directory not in tokenizers:
            tokenizers[directory] = AutoTokenizer.from_pretrained(directory)
        checks.append(LengthCheck(label, tokenizers[directory], max_prompt_length, max_length))
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if args.limit is not None and args.limit <= 0:
        logger.error("--limit must be positive, got %d", args.limit)
        return 2
    loaded = read_rows(args.input, split=args.hf_split)
    source_hash = content_hash(loaded.rows + loaded.unparseable)
    logger.info("loaded %d rows (%d lines not JSON) from %s (sha256 %s)", len(loaded.rows), len(loaded.unparseable),
                args.input, source_hash)

    try:
        good_rows, report = validate_rows(loaded.rows, locations=loaded.locations, unparseable=loaded.unparseable,
                                          length_checks=load_length_checks(args.length_check), on_bad=args.on_bad_rows)
    except ValueError as error:
        logger.error("%s", error)
        return 1
    if not good_rows:
        logger.error("no usable rows in %s (%s)", args.input, report["counts"])
        return 1

    if args.limit is not None and args.limit < len(good_rows):
        shuffled = list(good_rows)
        random.Random(f"{args.seed}:limit").shuffle(shuffled)
        good_rows = shuffled[:args.limit]
        logger.info("--limit %d: kept %d rows after a seeded shuffle", args.limit, len(good_rows))

    splits = split_dataset(good_rows, sft_fraction=args.sft_fraction, eval_size=args.eval_size, seed=args.seed)
    settings = {"source": args.source, "input": args.input, "hf_split": args.hf_split if args.source == "ultrafeedback" else None,
                "sft_fraction": args.sft_fraction, "eval_size": args.eval_size, "on_bad_rows": args.on_bad_rows,
                "limit": args.limit,
                "length_checks": [{"label": label, "tokenizer": directory, "max_prompt_length": mpl, "max_length": ml}
                                  for label, directory, mpl, ml in args.length_check]}
    manifest = split_manifest(splits, seed=args.seed, source_hash=source_hash, settings=settings)

    out_dir = Path(args.out_dir)
    for name, split_rows in splits.items():
        write_jsonl(out_dir / f"{name}.jsonl", split_rows)
    write_json(out_dir / "split.json", {"manifest": manifest, "validation": report})
    logger.info("wrote %s to %s (split sha256 %s)", manifest["sizes"], out_dir, manifest["sha256"]["all"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
