"""A training run's checkpoints and metrics file: which checkpoint to resume, and the one JSON line per
logging step that survives a kill. Used by both jobs (prefopt.job) and by PreferenceTrainer alone.

A checkpoint is resumable when it is complete (Trainer wrote its state, which it writes last), not
published (`published.json` marks a folder whose job already published its output), and, for a job,
made under the job's identity (`prefopt_identity.json`, prefopt.job).
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from prefopt.io import append_jsonl, iter_jsonl, write_jsonl

logger = logging.getLogger(__name__)

IDENTITY_FILE = "prefopt_identity.json"
PUBLISHED_FILE = "published.json"  # in a checkpoint folder kept after publishing: nothing there is resumable
CHECKPOINT_PATTERN = re.compile(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)")

__all__ = ["CHECKPOINT_PATTERN", "IDENTITY_FILE", "MetricsFileCallback", "PUBLISHED_FILE", "TRAINER_STATE_NAME",
           "checkpoint_identity", "identity_record", "prepare_metrics_file", "read_metric_records", "select_checkpoint"]


# ------------------------------------------------------------------------------------------- checkpoints


def identity_record(checkpoint: Path) -> dict:
    """The identity a job wrote into `checkpoint` ({} when none, or unreadable)."""
    try:
        record = json.loads((Path(checkpoint) / IDENTITY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def checkpoint_identity(checkpoint: Path) -> str | None:
    return identity_record(checkpoint).get("id")


def select_checkpoint(checkpoint_dir: str | os.PathLike, identity_id: str | None = None) -> tuple[Path | None, list[Path]]:
    """(the newest resumable checkpoint, the checkpoints not resumable), newest first. Reads only.

    Resumable: complete (Trainer wrote its state; a job killed while saving leaves none), in a folder
    not marked published, and, unless `identity_id` is None, made under that identity.
    """
    folder = Path(checkpoint_dir)
    published = (folder / PUBLISHED_FILE).exists()
    found = sorted(((int(m.group(1)), p) for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
                    if p.is_dir() and (m := CHECKPOINT_PATTERN.fullmatch(p.name))), reverse=True)
    resumable = [] if published else [
        p for _, p in found
        if (p / TRAINER_STATE_NAME).exists() and (identity_id is None or checkpoint_identity(p) == identity_id)]
    resume = resumable[0] if resumable else None
    return resume, [p for _, p in found if p not in resumable]


# ------------------------------------------------------------------------------------------- metrics file


def read_metric_records(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics file; a partial last line (a job killed mid-write) is dropped with a warning."""
    if not Path(path).exists():
        return []
    records = []
    for line_number, record, error in iter_jsonl(path):
        if error is None:
            records.append(record)
        else:
            logger.warning("%s:%d: dropping an unreadable metrics line", path, line_number)
    return records


def prepare_metrics_file(path: str | os.PathLike, resume_from_checkpoint: str | os.PathLike | None) -> None:
    """Fresh run: start an empty file. Resume from checkpoint-N: keep only records with step <= N.

    Trainer logs step N before saving checkpoint-N, so the kept records end exactly where training
    resumes and every step appears once.
    """
    path = Path(path)
    if resume_from_checkpoint is None:
        path.unlink(missing_ok=True)
        return
    resume_step = json.loads((Path(resume_from_checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"]
    write_jsonl(path, [record for record in read_metric_records(path) if record.get("step", 0) <= resume_step])


class MetricsFileCallback(TrainerCallback):
    """Appends one JSON line per log event to `path` (main process only), fsync'ed so a kill loses nothing.

    Training records hold `step`, `epoch`, `loss`, `lr` and every other logged value; evaluation records
    hold `step`, `epoch` and the `eval_*` values. The end-of-training summary is not written here.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        is_train_step = "loss" in logs
        if not (is_train_step or any(key.startswith("eval_") for key in logs)):
            return  # the end-of-training summary (train_runtime, ...) goes to summary.json
        record = {"step": state.global_step, "epoch": state.epoch}
        if is_train_step:
            record["loss"] = logs["loss"]
            record["lr"] = logs.get("learning_rate")
        for key, value in logs.items():
            if key not in ("loss", "learning_rate", "epoch", "step"):
                record[key] = value
        append_jsonl(self.path, record)
