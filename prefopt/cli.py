"""The command line shared by the training scripts (workflow/scripts/sft.py and align.py).

Imports point down: cli -> job -> trainer / sft -> losses; prefopt.run_config (no torch) is read by all."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Exit codes a scheduler can tell apart: a config or GPU shortfall, or a non-finite step, repeats on a retry.
EXIT_CANNOT_SUCCEED = 2
EXIT_NON_FINITE = 3


def training_parser(description: str, *, model_help: str, train_help: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-config", required=True, help="complete run-config JSON (prefopt.run_config)")
    parser.add_argument("--model", required=True, help=model_help)
    parser.add_argument("--train", required=True, help=train_help)
    parser.add_argument("--eval", default=None, help="optional held-out rows, evaluated once at the end")
    parser.add_argument("--probe-rows", default=None,
                        help="held-out rows for the run config's probes (prefopt.probes), scored every k steps")
    parser.add_argument("--out", required=True, help="output directory (written atomically)")
    parser.add_argument("--checkpoint-dir", required=True,
                        help="checkpoints; resumed from only when they carry this job's identity")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads for the whole job (default: SLURM's allocation or os.cpu_count())")
    parser.add_argument("--require-gpus", type=int, default=0, help="fail unless at least this many GPUs are visible")
    parser.add_argument("--objective-source", default=None,
                        help="file of the config's own objective module the run config's method comes from "
                             "(`objectives:`); imported before the run config is checked, and part of the identity")
    return parser


def setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, stream=sys.stderr,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s")


def training_main(name: str, args: argparse.Namespace) -> int:
    """Check the run config and GPUs, set threads, run the job (prefopt.job) of stage `name` ("sft" or
    "align"); one-line errors for what a retry cannot fix. The trainer is imported only when needed."""
    setup_logging()
    log = logging.getLogger(name)
    from prefopt.guards import NonFiniteStepError
    from prefopt.objectives import ObjectiveError, import_source
    from prefopt.run_config import RunConfig, RunConfigError
    from prefopt.training_args import MissingGPUsError, check_devices, set_torch_threads

    threads = set_torch_threads(args.threads)
    try:
        if args.objective_source:
            import_source(args.objective_source)  # registers the config's own objectives
        run_config = RunConfig.load(args.run_config)
        check_devices(run_config, args.require_gpus)
    except (RunConfigError, MissingGPUsError, ObjectiveError) as error:
        log.error("%s", error)  # one clear line instead of a traceback
        return EXIT_CANNOT_SUCCEED
    log.info("method %s, loss_kwargs %s, %d torch threads per process", run_config.method,
             json.dumps(dict(run_config.loss_kwargs)), threads)
    from prefopt.job import STAGES, run_job
    from prefopt.trackers import TrackerCredentialsError
    from prefopt.tracking import dag_run_name

    try:
        summary = run_job(STAGES[name](), run_config, model_dir=args.model, train_path=args.train, out_dir=args.out,
                          checkpoint_dir=args.checkpoint_dir, eval_path=args.eval, probe_path=args.probe_rows,
                          objective_source=args.objective_source, run_name=dag_run_name(args.run_config))
    except TrackerCredentialsError as error:
        log.error("%s", error)
        return EXIT_CANNOT_SUCCEED
    except NonFiniteStepError as error:
        log.error("%s", error)
        return EXIT_NON_FINITE
    if summary:
        log.info("done: %d steps, final loss %s, resumed_from=%s", summary["global_step"],
                 summary["final_metrics"].get("loss"), summary["resumed_from"])
    return 0
