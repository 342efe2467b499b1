"""Align one model with one preference objective (DPO, SimPO, SLIME or StaPO) from a run config.

    python workflow/scripts/align.py --run-config results/smollm2/runs/slime-1a2b.json \
        --model results/smollm2/sft --train results/data/split/pref.jsonl \
        --out results/smollm2/align/slime-1a2b --checkpoint-dir checkpoints/smollm2/slime-1a2b

    # the same job on 2 processes (DDP over gloo on CPU, NCCL on GPUs) or under DeepSpeed ZeRO-2:
    accelerate launch --multi_gpu --num_processes 2 workflow/scripts/align.py ...same arguments...
    accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8 workflow/scripts/align.py ...

Writes --out atomically (only rank 0): adapter/ (or model/ for a full fine-tune), metrics.jsonl,
summary.json, data_report.json. Checkpoints stay in --checkpoint-dir; rerunning the same command
after a kill resumes from the newest complete one. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("align")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-config", required=True, help="run-config JSON (prefopt.run_config)")
    parser.add_argument("--model", required=True, help="SFT (or prepared) model directory")
    parser.add_argument("--train", required=True, help="preference rows (JSON lines)")
    parser.add_argument("--eval", default=None, help="optional held-out rows, evaluated once at the end")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints; resumed from when present")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the whole job (default: SLURM's allocation or os.cpu_count())")
    parser.add_argument("--require-gpus", type=int, default=0, help="fail unless at least this many GPUs are visible")
    return parser.parse_args(argv)


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def main(argv=None) -> int:
    args = parse_args(argv)
    setup_logging()
    from prefopt.data import read_jsonl
    from prefopt.run_config import MissingGPUsError, check_required_gpus, load_run_config, set_torch_threads
    from prefopt.trainer import train_preference

    threads = set_torch_threads(args.threads)
    run_config = load_run_config(args.run_config)
    try:
        check_required_gpus(max(args.require_gpus, run_config["training"]["num_gpus"]))
    except MissingGPUsError as error:
        log.error("%s", error)  # one clear line instead of a traceback
        return 2
    log.info("method %s, loss_kwargs %s, %d torch threads per process", run_config["method"],
             json.dumps(run_config["loss_kwargs"]), threads)
    train_rows = read_jsonl(args.train)
    eval_rows = read_jsonl(args.eval) if args.eval else None
    summary = train_preference(run_config, args.model, train_rows, args.out, args.checkpoint_dir, eval_rows=eval_rows)
    if summary:
        log.info("done: %d steps, final loss %s, resumed_from=%s", summary["global_step"],
                 summary["final_metrics"].get("loss"), summary["resumed_from"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
