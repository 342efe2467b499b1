"""Evaluate one model (optionally with an alignment adapter) on held-out preference rows, on every
benchmark asked for, with one model load.

    python workflow/scripts/evaluate.py --model results/smollm2/sft --adapter results/smollm2/align/slime-abc/adapter \
        --eval results/data/split/eval.jsonl --benchmark offline demo_generation --label "SLIME" \
        --out-dir results/smollm2/eval/slime-abc

Benchmarks: ``offline`` (preference accuracy, margin, chosen/rejected log-probs, rejected-token floor,
entropy; `prefopt.evaluation.offline`) and ``demo_generation`` (greedy-answer accuracy on the demo
data; `prefopt.evaluation.demo_accuracy`). For each, OUT_DIR/<benchmark>.json gets {"benchmark",
"label", "model_dir", "adapter_dir", "n", "metrics", "ci", "settings", "elapsed_s"} and
OUT_DIR/<benchmark>.examples.jsonl the per-example records, each written atomically; metrics are
flat numbers.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from prefopt.evaluation.bootstrap import BOOTSTRAP_SEED, N_RESAMPLES

log = logging.getLogger("evaluate")

BENCHMARKS = ("offline", "demo_generation")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="prepared or SFT model directory")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory merged on top of --model")
    parser.add_argument("--eval", required=True, help="held-out rows (JSON lines)")
    parser.add_argument("--benchmark", required=True, nargs="+", choices=BENCHMARKS,
                        help="one or more benchmarks, scored with the same loaded model")
    parser.add_argument("--out-dir", required=True, help="<benchmark>.json and <benchmark>.examples.jsonl go here")
    parser.add_argument("--label", required=True, help="name of this model/run in tables")
    # Settings the rule passes from the config (their defaults live in the schema alone).
    parser.add_argument("--batch-size", type=int, required=True, help="evaluation.batch_size")
    parser.add_argument("--max-length", type=int, required=True, help="offline: prompt + completion tokens")
    parser.add_argument("--max-prompt-length", type=int, required=True)
    parser.add_argument("--max-new-tokens", type=int, required=True, help="demo_generation: reply length")
    parser.add_argument("--precision", required=True, choices=("auto", "fp32", "bf16", "fp16"),
                        help="auto: bf16 where this node runs bf16 natively, else fp32 (prefopt.precision)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--n-resamples", type=int, default=N_RESAMPLES, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    return parser.parse_args(argv)


def evaluate_one(benchmark: str, model, tokenizer, rows: list[dict], args, precision: str, device) -> dict:
    """Score `benchmark` and write its result and per-example files into `args.out_dir`; returns the result."""
    from pathlib import Path

    from prefopt.io import write_json, write_jsonl

    started = time.time()
    if benchmark == "offline":
        from prefopt.evaluation.offline import evaluate_offline

        summary, per_example = evaluate_offline(
            model, tokenizer, rows, max_length=args.max_length, max_prompt_length=args.max_prompt_length,
            batch_size=args.batch_size, n_resamples=args.n_resamples, seed=args.seed,
        )
    else:
        from prefopt.evaluation.demo_accuracy import evaluate_demo_accuracy

        summary, per_example = evaluate_demo_accuracy(
            model, tokenizer, rows, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
            max_prompt_length=args.max_prompt_length, n_resamples=args.n_resamples, seed=args.seed,
        )
    ci = summary.pop("ci")
    result = {
        "benchmark": benchmark,
        "label": args.label,
        "model_dir": args.model,
        "adapter_dir": args.adapter,
        "n": summary["n"],
        "metrics": summary,
        "ci": ci,
        "settings": {"eval_file": args.eval, "batch_size": args.batch_size, "max_length": args.max_length,
                     "max_prompt_length": args.max_prompt_length, "max_new_tokens": args.max_new_tokens,
                     "precision": precision, "device": str(device), "n_resamples": args.n_resamples,
                     "seed": args.seed},
        "elapsed_s": round(time.time() - started, 2),
    }
    out_dir = Path(args.out_dir)
    write_jsonl(out_dir / f"{benchmark}.examples.jsonl", per_example)
    write_json(out_dir / f"{benchmark}.json", result)
    headline = "preference_accuracy" if benchmark == "offline" else "accuracy"
    log.info("%s %s: %s = %.4f (95%% CI %.4f-%.4f), n = %d, %.1fs", args.label, benchmark, headline,
             summary[headline], *ci[headline], summary["n"], result["elapsed_s"])
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from prefopt.data import read_rows, validate_rows
    from prefopt.models import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    loaded = read_rows(args.eval)
    rows, _ = validate_rows(loaded.rows, locations=loaded.locations, unparseable=loaded.unparseable, on_bad="error")
    log.info("%s: %d rows from %s; model %s adapter %s on %s", ", ".join(args.benchmark), len(rows), args.eval,
             args.model, args.adapter, device)
    precision = args.precision
    if precision == "auto":
        from prefopt.precision import resolve

        resolution = resolve("auto", device.type)
        precision = resolution.precision
        log.info("precision: auto -> %s (%s)", precision, resolution.reason)
    model, tokenizer = load_for_inference(args.model, args.adapter, precision)
    model.to(device)

    for benchmark in args.benchmark:
        evaluate_one(benchmark, model, tokenizer, rows, args, precision, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
