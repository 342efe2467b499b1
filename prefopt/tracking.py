"""Experiment tracking settings: the config's `tracking: {backend, project, group}`, checked at planning and
handed to the training jobs; the report's index of tracker runs. The tracker runs themselves: prefopt.trackers.

The settings reach the jobs through one environment variable, `PREFOPT_TRACKING`, which the Snakefile sets
at planning (`export_tracking`), never through params or the run config: tracking is not part of a run's
identity, so switching backends, or a new invocation's group, reruns nothing. Credentials come from the
trackers' own environment variables (`BACKENDS[...].credentials`), declared in the Snakefile's `envvars:`
and never written to a file. Local stores live under `TRACKING_DIR`: tensorboard/<group>/<model>/<run>,
wandb/ (offline runs: WANDB_MODE=offline), mlruns/ (MLflow's file store, when MLFLOW_TRACKING_URI is unset).
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path


TRACKING_ENV = "PREFOPT_TRACKING"
TRACKING_DIR = "tracking"
TRACKING_FILE = "tracking.json"  # in a published training output: the tracker run that holds its metrics


@dataclass(frozen=True)
class Backend:
    module: str  # the package the planner looks for
    extra: str  # pyproject's optional extra that installs it
    credentials: tuple[str, ...]  # environment variables that may hold its credentials


BACKENDS = {
    "tensorboard": Backend("tensorboard", "tensorboard", ()),
    "wandb": Backend("wandb", "wandb", ("WANDB_API_KEY",)),
    "mlflow": Backend("mlflow", "mlflow", ("MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_USERNAME",
                                           "MLFLOW_TRACKING_PASSWORD")),
    "none": Backend("", "", ()),
}


class TrackingError(ValueError):
    """A tracking setting that cannot work here; the message starts with the key."""


# ------------------------------------------------------------------------------------------- planning


def check_tracking(config: dict) -> None:
    """Raise `TrackingError` when the backend's package is not installed (with the pip command to run)."""
    backend = config["tracking"]["backend"]
    module = BACKENDS[backend].module
    if module and importlib.util.find_spec(module) is None:
        raise TrackingError(f"tracking.backend: {backend!r} needs the {module} package, which is not installed; "
                            f"run `pip install -e '.[{BACKENDS[backend].extra}]'` (make install installs it)")


def credential_variables(config: dict) -> list[str]:
    """The backend's credential variables that are set: the Snakefile declares them in `envvars:`."""
    return [name for name in BACKENDS[config["tracking"]["backend"]].credentials if name in os.environ]


def tracking_warnings(config: dict, environ=os.environ) -> list[str]:
    """Planning-time warnings: a W&B backend with neither a key nor offline mode (a dry run needs neither)."""
    if config["tracking"]["backend"] != "wandb" or "WANDB_API_KEY" in environ:
        return []
    if environ.get("WANDB_MODE") in ("offline", "disabled"):
        return []
    return ["tracking.backend: wandb, but WANDB_API_KEY is not set and WANDB_MODE is not offline; each training "
            "job stops at its start unless wandb finds a login"]


def invocation_group() -> str:
    """A group name for one workflow invocation: its start time and a random suffix."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def export_tracking(config: dict, *, main_process: bool) -> str:
    """Set `PREFOPT_TRACKING` for the jobs of this invocation and return its name (for `envvars:`).

    The main process sets it from the config (a new group per invocation unless `tracking.group`);
    a job's own Snakemake (e.g. SLURM's jobstep) keeps the one it inherited, so every job of an
    invocation shares its group."""
    inherited = os.environ.get(TRACKING_ENV)
    if main_process or not inherited:
        tracking = config["tracking"]
        os.environ[TRACKING_ENV] = json.dumps({"backend": tracking["backend"], "project": tracking["project"],
                                               "group": tracking["group"] or invocation_group()})
    return TRACKING_ENV


def tracking_settings(environ=os.environ) -> dict:
    """The settings a job reads from `PREFOPT_TRACKING`; unset (a script run by hand) means no tracking."""
    raw = environ.get(TRACKING_ENV)
    if not raw:
        return {"backend": "none", "project": None, "group": None}
    settings = json.loads(raw)
    if settings.get("backend") not in BACKENDS:
        raise TrackingError(f"{TRACKING_ENV}: unknown backend {settings.get('backend')!r} "
                            f"(known: {', '.join(BACKENDS)})")
    return settings


def dag_run_name(run_config_path: str | os.PathLike) -> str:
    """`<model>/<run>` from the run config's path, results/<model>/runs/<run>.json (prefopt.plan)."""
    path = Path(run_config_path)
    return f"{path.parent.parent.name}/{path.stem}"


# ------------------------------------------------------------------------------------------- the report


def index_html(entries: dict[str, dict | None]) -> str:
    """An HTML table linking each training run (`<model>/<run>` -> its tracking.json, None when it has none)
    to its tracker entry: the server's URL, else the local run directory and the command that shows it."""
    from html import escape

    def link(entry: dict) -> str:
        if entry.get("url"):
            return f'<a href="{escape(entry["url"])}">{escape(entry["url"])}</a>'
        if entry.get("location"):
            location = Path(entry["location"])
            return f'<a href="{escape(location.as_uri())}">{escape(str(location))}</a>'
        return "not tracked (backend none)"

    rows = []
    for run, entry in entries.items():
        if entry is None:
            cells = [run, "—", "—", "no tracking.json: trained before tracking was recorded", "—"]
        else:
            cells = [run, entry["backend"], entry.get("group") or "—", link(entry), entry.get("view") or "—"]
        escaped = [cell if cell.startswith("<a ") else escape(cell) for cell in cells]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in escaped) + "</tr>")
    header = "".join(f"<th>{name}</th>" for name in ("run", "backend", "group", "tracker entry", "to view it"))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Tracked runs</title></head><body>\n"
            f"<table border=\"1\" cellpadding=\"4\">\n<tr>{header}</tr>\n" + "\n".join(rows) + "\n</table>\n</body></html>\n")
