"""The command line shared by the training scripts (workflow/scripts/sft.py and align.py)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable

def training_parser(description: str, *, model_help: str, train_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-config", required=True, help="run-config JSON (prefopt.run_config)")
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--train", required=True, help=train_help)
    parser.add_argument("--eval", default=None, help="optional held-out rows, evaluated once at the end")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--checkpoint-dir", required=True, help="checkpoints; resumed from when present")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the whole job (default: SLURM's allocation or os.cpu_count())")
    parser.add_argument("--require-gpus", type=int, default=0, help="fail unless at least this many GPUs are visible")
    return parser


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def training_main(name: str, args: argparse.Namespace, load_train_fn: Callable[[], Callable]) -> int:
    """Check GPUs, set threads, read rows, train; `load_train_fn` imports the trainer only when needed."""
    setup_logging()
    log = logging.getLogger(name)
    from prefopt.data import read_jsonl
    from prefopt.run_config import MissingGPUsError, check_required_gpus, load_run_config, set_torch_threads

    threads = set_torch_threads(args.threads)
    run_config = load_run_config(args.run_config)
    try:
        check_required_gpus(max(args.require_gpus, run_config["training"]["num_gpus"]))
    except MissingGPUsError as error:
        log.error("%s", error)  # one clear line instead of a traceback
        return 2
    log.info("method %s, loss_kwargs %s, %d torch threads per process", run_config["method"],
             json.dumps(run_config["loss_kwargs"]), threads)
    train = load_train_fn()
    eval_rows = read_jsonl(args.eval) if args.eval else None
    summary = train(run_config, args.model, read_jsonl(args.train), args.out, args.checkpoint_dir, eval_rows=eval_rows)
    if summary:
        log.info("done: %d steps, final loss %s, resumed_from=%s", summary["global_step"],
                 summary["final_metrics"].get("loss"), summary["resumed_from"])
    return 0
