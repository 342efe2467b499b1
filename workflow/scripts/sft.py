"""Supervised fine-tuning (LoRA, cross-entropy on the assistant completion) from a run config.

    python workflow/scripts/sft.py --run-config results/smollm2/runs/sft.json \
        --model results/smollm2/base --train results/data/split/sft.jsonl \
        --out results/smollm2/sft --checkpoint-dir checkpoints/smollm2/sft

    # the same job on 2 processes (DDP) or under DeepSpeed ZeRO-2:
    accelerate launch --multi_gpu --num_processes 2 workflow/scripts/sft.py ...same arguments...

Writes --out atomically (only rank 0): a full model directory with the LoRA merged in (safetensors +
tokenizer with the same chat template), metrics.jsonl, summary.json, data_report.json. Rerunning
after a kill resumes from the newest complete checkpoint in --checkpoint-dir. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("sft")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True, help="run-config JSON with method 'sft'")
    parser.add_argument("--model", required=True, help="prepared base model directory")
    parser.add_argument("--train", required=True, help="SFT rows (JSON lines; the chosen conversations are used)")
    parser.add_argument("--eval", default=None, help="optional held-out rows, evaluated once at the end")
    parser.add_argument("--out", required=True, help="output model directory (written atomically)")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints; resumed from when present")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the whole job (default: SLURM's allocation or os.cpu_count())")
    parser.add_argument("--require-gpus", type=int, default=0, help="fail unless at least this many GPUs are visible")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")
    from prefopt.data import read_jsonl
    from prefopt.run_config import MissingGPUsError, check_required_gpus, load_run_config, set_torch_threads
    from prefopt.sft import train_sft

    threads = set_torch_threads(args.threads)
    run_config = load_run_config(args.run_config)
    try:
        check_required_gpus(max(args.require_gpus, run_config["training"]["num_gpus"]))
    except MissingGPUsError as error:
        log.error("%s", error)  # one clear line instead of a traceback
        return 2
    log.info("SFT with %d torch threads per process", threads)
    eval_rows = read_jsonl(args.eval) if args.eval else None
    summary = train_sft(run_config, args.model, read_jsonl(args.train), args.out, args.checkpoint_dir,
                        eval_rows=eval_rows)
    if summary:
        log.info("done: %d steps, final loss %s, resumed_from=%s", summary["global_step"],
                 summary["final_metrics"].get("loss"), summary["resumed_from"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
