"""The training job SFT and alignment share: set-up, run identity, resume, train, atomic publish, summary.

    run_config = RunConfig.load("results/smollm2/runs/slime-1a2b.json")
    summary = run_job(preference_stage(), run_config, model_dir=..., train_path=..., out_dir=..., checkpoint_dir=...)

The job sits above both trainers: `preference_stage()` (prefopt.trainer) and `sft_stage()` (prefopt.sft)
import them when called, and neither trainer imports this module.

A job's *identity* is a hash of its complete run config and of the content of every input it
reads (the starting model directory, the training and held-out rows). It is recorded in every
checkpoint and in the published output. A job resumes only from a complete checkpoint of its own
identity; checkpoints made under another identity are removed (one log line). After the output is
published the checkpoints are removed too, so a job Snakemake schedules again for any reason trains
from step 0, and only a killed or failed job of the same identity resumes.

A non-finite loss term or gradient stops the job before the update (prefopt.guards), so every
checkpoint holds finite weights. Rerunning the same settings resumes from the last checkpoint and
meets the same step again: the settings, not the state, have to change, and changing them is a new
identity that starts from step 0.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prefopt.checkpoints import (  # noqa: F401 - IDENTITY_FILE, TRAINER_STATE_NAME: the job's checkpoint files
    IDENTITY_FILE,
    PUBLISHED_FILE,
    TRAINER_STATE_NAME,
    MetricsFileCallback,
    checkpoint_identity,
    identity_record,
    prepare_metrics_file,
    read_metric_records,
    select_checkpoint,
)
from prefopt.io import read_jsonl, write_json, write_jsonl
from prefopt.run_config import RunConfig
from prefopt.trackers import Tracker, open_tracker, tracker_callback
from prefopt.tracking import TRACKING_FILE

logger = logging.getLogger(__name__)

# Set to 1 to keep a published job's checkpoints for inspection (tests, debugging); they are marked
# published, so no later job resumes them.
KEEP_CHECKPOINTS_ENV = "PREFOPT_KEEP_CHECKPOINTS"


# ------------------------------------------------------------------------------------------- identity


def _sha256_file(path: Path, digest) -> None:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)


def content_identity(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of a directory's relative file names and bytes (sorted)."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_file():
        _sha256_file(path, digest)
        return digest.hexdigest()
    if not path.is_dir():
        raise FileNotFoundError(f"job input {path} does not exist")
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        _sha256_file(file, digest)
        digest.update(b"\0")
    return digest.hexdigest()


def job_identity(run_config: RunConfig | Mapping, inputs: dict[str, str | os.PathLike | None]) -> dict:
    """`{"id", "run_config", "inputs"}`: the hash of the complete settings and of every input's content.

    `run_config` is a RunConfig or the run-config dict it was read from: both hash the same JSON text."""
    settings = run_config.to_dict() if isinstance(run_config, RunConfig) else run_config
    parts = {
        "run_config": hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest(),
        "inputs": {name: content_identity(path) for name, path in sorted(inputs.items()) if path is not None},
        # The precision the job trains in (an `auto` run config is resolved on the job's node first).
        "precision": settings["training"]["precision"],
    }
    return {"id": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16], **parts}


def clear_checkpoints(checkpoint_dir: Path, resume: Path | None, stale: list[Path], identity_id: str,
                      precision: str | None = None) -> None:
    """Remove what this job must not resume from; a fresh start empties the folder (old metrics and logs too)."""
    if stale:
        others = sorted({checkpoint_identity(p) or "none/incomplete" for p in stale})
        logger.warning("removed %d checkpoint(s) not resumable by this job (identity %s): %s, made under identity %s",
                       len(stale), identity_id, ", ".join(p.name for p in stale), ", ".join(others))
        if precision is not None:
            for path in stale:
                made_in = identity_record(path).get("precision")
                if made_in is not None and made_in != precision:
                    logger.warning("%s was trained in %s; this job trains in %s, so it starts from step 0 instead "
                                   "of switching precision mid-run", path.name, made_in, precision)
    for path in stale:
        shutil.rmtree(path)
    if resume is None and checkpoint_dir.exists():
        for path in checkpoint_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    checkpoint_dir.mkdir(parents=True, exist_ok=True)


def identity_callback(identity: dict):
    """A TrainerCallback that writes the identity into every checkpoint Trainer saves (main process)."""
    from transformers import TrainerCallback

    class IdentityCallback(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                write_json(Path(args.output_dir) / f"checkpoint-{state.global_step}" / IDENTITY_FILE, identity)

    return IdentityCallback()


# ------------------------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class Stage:
    """What differs between SFT and alignment; everything else is `run_job`.

    build(run_config, model_dir, tokenizer, train_rows, eval_rows, checkpoint_dir) -> trainer
    save(trainer, staging, run_config, tokenizer, model_dir) -> weights folder name (every rank calls it)
    summary(trainer) -> stage-specific summary fields (main process)
    """

    name: str
    build: Callable
    save: Callable
    summary: Callable


def preference_stage() -> Stage:
    """The alignment stage (prefopt.trainer): load, LoRA, PreferenceTrainer; save the adapter."""
    from prefopt.trainer import build_preference_trainer, preference_summary, save_preference_weights

    return Stage("align", build_preference_trainer, save_preference_weights, preference_summary)


def sft_stage() -> Stage:
    """The SFT stage (prefopt.sft): load, LoRA, TRL's SFTTrainer; save the merged model."""
    from prefopt.sft import build_sft_trainer, save_sft_model, sft_summary

    return Stage("sft", build_sft_trainer, save_sft_model, sft_summary)


STAGES = {"align": preference_stage, "sft": sft_stage}


def prepare_rows(run_config: RunConfig, tokenizer, train_rows: list[dict], eval_rows: list[dict] | None, *,
                 caller: str):
    """Validated rows: bad training rows follow `data.on_bad_rows`, bad held-out rows are dropped."""
    from prefopt.data import validate_rows

    training = run_config.training
    limits = {"tokenizer": tokenizer, "max_prompt_length": training.max_prompt_length,
              "max_length": training.max_length}
    good_rows, data_report = validate_rows(train_rows, **limits, on_bad=run_config.data.on_bad_rows)
    if not good_rows:
        raise ValueError(f"{caller}: no usable training rows ({data_report['counts']})")
    if eval_rows:
        eval_rows, _ = validate_rows(eval_rows, **limits, on_bad="drop")
    return good_rows, data_report, eval_rows


def publish_dir(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging` with renames only, so a kill never leaves a half-written out_dir."""
    old = out_dir.parent / f".{out_dir.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    if old.exists():
        shutil.rmtree(old)


def finite_or_none(value):
    return None if isinstance(value, float) and not math.isfinite(value) else value


def resolve_job_precision(run_config: RunConfig | Mapping) -> RunConfig | dict:
    """The run config with `training.precision: auto` resolved on this node (prefopt.precision): the job's
    identity, checkpoints and summary then carry the precision it actually trains in. A run-config dict
    (e.g. one of the plan's) gives a new dict; the argument is never changed."""
    if not isinstance(run_config, RunConfig):
        return resolve_job_precision(RunConfig.from_dict(run_config)).to_dict()
    training = run_config.training
    if training.precision != "auto":
        return run_config
    from prefopt.precision import resolve

    resolution = resolve("auto", training.device)
    logger.info("precision: auto -> %s (%s)", resolution.precision, resolution.reason)
    return run_config.with_training(precision=resolution.precision)


def run_job(stage: Stage, run_config: RunConfig, *, model_dir, train_path, out_dir, checkpoint_dir,
            eval_path=None, probe_path=None, objective_source=None, run_name: str | None = None) -> dict:
    """Train one SFT or alignment run from a checked run config and publish `out_dir` atomically.

    `out_dir` gets the weights (`stage.save`), `metrics.jsonl`, `data_report.json`, `identity.json`,
    `tracking.json` (the tracker run, prefopt.trackers, named `run_name`, default the output folder's name)
    and `summary.json` (the run config the weights were trained with, the identity, the resume
    point). Only the main process writes. Returns the summary (empty on other processes).
    With `run_config.probes`, the first `pairs` rows of `probe_path` are scored at step 0 and
    every `every_steps` steps (prefopt.probes) into the metrics file. `objective_source`, the file of
    a config's own objective module, is an input of the identity like the data.
    """
    from transformers import set_seed

    from prefopt.models import load_tokenizer

    if not isinstance(run_config, RunConfig):
        raise TypeError(f"run_job takes a RunConfig (prefopt.run_config.RunConfig.load), got {type(run_config).__name__}")
    started = time.time()
    run_config = resolve_job_precision(run_config)
    model_dir, out_dir, checkpoint_dir = Path(model_dir), Path(out_dir), Path(checkpoint_dir)
    training = run_config.training
    probes = run_config.probes
    if probes and probe_path is None:
        raise ValueError(f"{stage.name}: the run config asks for probes but no probe rows were given")
    identity = job_identity(run_config, {"model": model_dir, "train": train_path, "eval": eval_path,
                                         "probes": probe_path if probes else None, "objective": objective_source})
    logger.info("job identity %s (run config %s)", identity["id"], identity["run_config"][:12])

    set_seed(training.seed)  # paper, "Reproducibility": seed 0 for random, numpy and torch
    tokenizer = load_tokenizer(str(model_dir))
    good_rows, data_report, eval_rows = prepare_rows(
        run_config, tokenizer, read_jsonl(train_path), read_jsonl(eval_path) if eval_path else None, caller=stage.name)

    resume, stale = select_checkpoint(checkpoint_dir, identity["id"])  # every process decides alike
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = checkpoint_dir / "metrics.jsonl"  # survives a kill next to the checkpoints it matches
    trainer = stage.build(run_config, model_dir, tokenizer, good_rows, eval_rows, checkpoint_dir)
    tracker = Tracker()
    if trainer.is_world_process_zero():
        clear_checkpoints(checkpoint_dir, resume, stale, identity["id"], training.precision)
        prepare_metrics_file(metrics_path, resume)  # the job's one metrics file, once
        # After the clear: a fresh start opens a new tracker run, a resume continues its checkpoint's.
        tracker = open_tracker(stage=stage.name, run_name=run_name or out_dir.name, run_config=run_config.to_dict(),
                               identity=identity, checkpoint_dir=checkpoint_dir, resume=resume is not None)
        if resume:
            tracker.replay(read_metric_records(metrics_path))  # the steps up to the checkpoint, where the run lacks them
    trainer.add_callback(MetricsFileCallback(metrics_path))
    trainer.add_callback(identity_callback(identity))
    trainer.add_callback(tracker_callback(tracker))
    if probes:
        from prefopt.probes import probe_callback

        trainer.add_callback(probe_callback(tokenizer, read_jsonl(probe_path), run_config, metrics_path,
                                            tracker=tracker))
    trainer.accelerator.wait_for_everyone()
    if resume:
        logger.info("resuming from %s (identity %s)", resume.name, identity["id"])
    else:
        logger.info("starting from step 0 (no checkpoint of identity %s)", identity["id"])

    try:
        train_output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        eval_metrics = trainer.evaluate() if eval_rows else {}
    except BaseException:
        tracker.finish(failed=True)
        raise
    tracker.finish()

    staging = out_dir.parent / f".{out_dir.name}.partial"
    if trainer.is_world_process_zero() and staging.exists():
        shutil.rmtree(staging)
    trainer.accelerator.wait_for_everyone()
    weights = stage.save(trainer, staging, run_config, tokenizer, model_dir)
    summary = {}
    if trainer.is_world_process_zero():
        records = read_metric_records(metrics_path)
        write_jsonl(staging / "metrics.jsonl", records)
        write_json(staging / "data_report.json", data_report)
        write_json(staging / "identity.json", identity)
        write_json(staging / TRACKING_FILE, tracker.entry())
        summary = {
            "method": run_config.method,
            "identity": identity["id"],
            "model_dir": str(model_dir),
            "weights": weights,
            "global_step": trainer.state.global_step,
            "epoch": trainer.state.epoch,
            "train_runtime_s": train_output.metrics.get("train_runtime"),
            "job_runtime_s": time.time() - started,
            "train_loss": finite_or_none(train_output.training_loss),
            "final_metrics": next((r for r in reversed(records) if "loss" in r), {}),
            "eval_metrics": {k: finite_or_none(v) for k, v in eval_metrics.items()},
            "resumed_from": resume.name if resume else None,
            "num_train_rows": len(good_rows),
            "num_dropped_rows": data_report["dropped"],
            "precision": training.precision,
            "device": training.device,
            "world_size": trainer.accelerator.num_processes,
            **stage.summary(trainer),
            "run_config": run_config.to_dict(),
        }
        write_json(staging / "summary.json", summary)
        publish_dir(staging, out_dir)
        if os.environ.get(KEEP_CHECKPOINTS_ENV) == "1":
            write_json(checkpoint_dir / PUBLISHED_FILE, {"published": str(out_dir), "identity": identity["id"]})
            kept = "kept its checkpoints, marked published (never resumed)"
        else:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)
            kept = "removed its checkpoints"
        logger.info("wrote %s (%d steps, resumed_from=%s); %s", out_dir, trainer.state.global_step,
                    summary["resumed_from"], kept)
    trainer.accelerator.wait_for_everyone()
    return summary
