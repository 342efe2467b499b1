"""The tracker runs of a training job (TensorBoard, Weights & Biases, MLflow), opened from the settings
the Snakefile exported (prefopt.tracking). Used by prefopt.job on the main process:

    tracker = open_tracker(stage="align", run_name="smollm2/slime-1a2b3c4d5e", run_config=..., identity=...,
                           checkpoint_dir=checkpoint_dir, resume=resume is not None)
    trainer.add_callback(tracker_callback(tracker))   # every Trainer log: TRL's names, SLIME's terms
    tracker.log({"probe/margin_mean": ...}, step=8)  # the probes, at their step
    tracker.finish()                                  # then tracker.entry() -> the output's tracking.json

The run is named as the DAG names it (`<model>/<run>`) and carries the run config, identity and seed.
Its handle is kept in the checkpoint folder (`TRACKER_FILE`), so a killed job that resumes from its
checkpoint continues the same tracker run (in its first group); a job that starts from step 0 (new
settings, or a job Snakemake scheduled again after it published) starts a new one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import secrets
import time
from pathlib import Path

from prefopt.io import write_json
from prefopt.tracking import BACKENDS, TRACKING_DIR, tracking_settings

logger = logging.getLogger(__name__)

TRACKER_FILE = "tracker_run.json"  # in the checkpoint folder: the run a resumed job continues
STEP_KEY = "global_step"  # W&B's x axis: the optimizer step (its own step counter restarts on resume)


class TrackerCredentialsError(RuntimeError):
    """The tracker rejected its credentials (HTTP 401/403); the message names the variable that held them."""


# ------------------------------------------------------------------------------------------- errors


def rejected_credentials(error: BaseException) -> str | None:
    """Why the server rejected the credentials ("HTTP 401", ...), when `error` says it did; else None.

    MLflow's REST errors carry the status in the message or an error code; wandb-core hands no status
    to Python, so W&B's login check (`wandb.Api`, in `WandbTracker`) is trusted when it says the server answered."""
    code = {"UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403}.get(str(getattr(error, "error_code", "")))
    if code:
        return f"HTTP {code}"
    if type(error).__name__ == "AuthenticationError" and "Failed to verify credentials" in str(error):
        return str(error).split(": ", 1)[-1] or "verification failed"
    match = re.search(r"\b(401|403)\b", str(error))
    return f"HTTP {match.group(1)}" if match else None


def credentials_message(backend: str, reason: str, environ=os.environ) -> str:
    """One line naming the variable that held the rejected credentials."""
    variables = BACKENDS[backend].credentials
    held = [name for name in variables if name in environ] or list(variables[:1])
    return (f"tracking.backend {backend}: the server rejected the credentials in {' / '.join(held)} "
            f"({reason}); set {held[0]} to valid ones")


# ------------------------------------------------------------------------------------------- trackers


def numeric(metrics: dict) -> dict[str, float]:
    """The finite numbers of a log record (trackers take scalars; NaN and inf are left out)."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


def flatten(value, prefix: str = "") -> dict[str, str]:
    """`{"training.learning_rate": "0.0005", ...}`: a nested dict as dotted keys and JSON values."""
    if isinstance(value, dict) and value:
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value if isinstance(value, str) else json.dumps(value)}


def record_metrics(record: dict) -> dict:
    """A metrics-file record (prefopt.checkpoints, prefopt.probes) as the metrics it was logged as."""
    if "probe" in record:
        return {f"probe/{key}": value for key, value in record["probe"].items() if not isinstance(value, list)}
    renamed = {"lr": "learning_rate"}  # the metrics file's short name for Trainer's learning_rate
    return {renamed.get(key, key): value for key, value in record.items() if key != "step"}


class Tracker:
    """No tracking (`backend: none`, and every process but the main one). A backend's tracker holds the
    run's `handle` (what `open_tracker` keeps in the checkpoint folder) and says where the run is (`where`)."""

    backend = "none"
    durable = True  # every log call is written before it returns (W&B's writer buffers: False)

    def __init__(self, *, handle: dict | None = None, resumed: bool = False):
        self.handle = handle
        self.continued = resumed  # a killed job's run, continued by its resumed job

    def log(self, metrics: dict, step: int) -> None:
        pass

    def replay(self, records: list[dict]) -> None:
        """Log a resumed job's metrics-file records (up to its checkpoint) where the run may lack them:
        a run new to this backend, or one whose writer may have lost them to the kill."""
        if self.continued and self.durable:
            return
        for record in records:
            self.log(record_metrics(record), record["step"])

    def finish(self, *, failed: bool = False) -> None:
        pass

    def entry(self) -> dict:
        """What the report links: the backend, the run's name and group, and where to find it."""
        if self.handle is None:
            return {"backend": self.backend}
        return {"backend": self.backend, "run": self.handle["name"], "group": self.handle["group"], **self.where()}

    def where(self) -> dict:
        """The backend's part of `entry`: ids, `url` and/or `location`, and `view` (how to look at it)."""
        return {}


class TensorBoardTracker(Tracker):
    backend = "tensorboard"

    def __init__(self, *, handle: dict, attached: dict, resumed: bool):
        from torch.utils.tensorboard import SummaryWriter

        super().__init__(handle=handle, resumed=resumed)
        self.writer = SummaryWriter(log_dir=handle["location"])
        if not resumed:
            for key, value in attached.items():
                self.writer.add_text(key, f"```\n{json.dumps(value, indent=1, sort_keys=True)}\n```", 0)

    def log(self, metrics: dict, step: int) -> None:
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def finish(self, *, failed: bool = False) -> None:
        self.writer.close()

    def where(self) -> dict:
        return {"location": self.handle["location"], "view": f"tensorboard --logdir {TRACKING_DIR}/tensorboard"}


class WandbTracker(Tracker):
    backend = "wandb"
    durable = False  # wandb-core writes in the background: a SIGKILL loses what it had not written

    def __init__(self, *, handle: dict, attached: dict, resumed: bool):
        import wandb

        directory = Path(TRACKING_DIR).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        super().__init__(handle=handle, resumed=resumed)
        # Each job starts its own wandb-core service. One named by an inherited WANDB_SERVICE (the process that
        # started Snakemake used wandb) outlives a killed job and keeps its run ID "in use" for the resumed one.
        os.environ.pop("WANDB_SERVICE", None)
        online = os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun")
        if online and os.environ.get("WANDB_API_KEY"):
            # wandb.init reports a rejected key without its HTTP status; W&B's login check says the server refused.
            wandb.Api(api_key=os.environ["WANDB_API_KEY"]).viewer  # noqa: B018 - asks the server
        # `resume="allow"` continues the run `id` names when it exists (a resumed job), else starts it.
        self.run = wandb.init(project=handle["project"], name=handle["name"], group=handle["group"],
                              job_type=attached["stage"], id=handle["run_id"], resume="allow", dir=str(directory),
                              config=attached)
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({**numeric(metrics), STEP_KEY: step})

    def finish(self, *, failed: bool = False) -> None:
        self.run.finish(exit_code=1 if failed else 0)

    def where(self) -> dict:
        local = Path(self.run.dir).parent
        return {"project": self.handle["project"], "run_id": self.handle["run_id"], "url": self.run.url,
                "location": str(local),
                "view": None if self.run.url else f"wandb sync {local.parent}/offline-run-*-{self.handle['run_id']}"}


def mlflow_tracking_uri(environ=os.environ) -> str:
    """`MLFLOW_TRACKING_URI`, else a file store under `TRACKING_DIR`."""
    return environ.get("MLFLOW_TRACKING_URI") or (Path(TRACKING_DIR) / "mlruns").resolve().as_uri()


def public_uri(uri: str) -> str:
    """The tracking URI without a `user:password@` part, fit for a file."""
    return re.sub(r"//[^/@]*@", "//", uri)


class MlflowTracker(Tracker):
    backend = "mlflow"

    def __init__(self, *, handle: dict, attached: dict, resumed: bool):
        from mlflow.entities import Param, RunStatus
        from mlflow.tracking import MlflowClient

        uri = mlflow_tracking_uri()
        if uri.startswith("file:"):
            # MLflow 3 keeps its file store only behind this opt-in; it is the one local store of mlflow-skinny.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        super().__init__(handle=handle, resumed=resumed)
        self.client = MlflowClient(uri)
        self.uri = public_uri(uri)
        if not resumed:
            experiment = self._experiment(handle["project"])
            run = self.client.create_run(experiment, run_name=handle["name"],
                                         tags={"prefopt.group": handle["group"], "prefopt.stage": attached["stage"],
                                               "prefopt.identity": attached["identity"]["id"],
                                               "prefopt.seed": str(attached["seed"])})
            handle["run_id"], handle["experiment_id"] = run.info.run_id, experiment
            params = [Param(key, value[:6000]) for key, value in flatten(attached).items()]
            for start in range(0, len(params), 100):  # log_batch takes at most 100 params
                self.client.log_batch(run.info.run_id, params=params[start:start + 100])
        else:
            self.client.update_run(handle["run_id"], status=RunStatus.to_string(RunStatus.RUNNING))

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(name)
        except Exception:  # another job created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = [Metric(key, value, now, step) for key, value in numeric(metrics).items()]
        for start in range(0, len(values), 1000):
            self.client.log_batch(self.handle["run_id"], metrics=values[start:start + 1000])

    def finish(self, *, failed: bool = False) -> None:
        self.client.set_terminated(self.handle["run_id"], "FAILED" if failed else "FINISHED")

    def where(self) -> dict:
        run_id, experiment = self.handle["run_id"], self.handle["experiment_id"]
        where = {"project": self.handle["project"], "run_id": run_id, "tracking_uri": self.uri}
        if self.uri.startswith("file:"):
            where["location"] = str(Path(self.uri.removeprefix("file://")) / experiment / run_id)
            where["view"] = f"mlflow ui --backend-store-uri {self.uri}"
        else:
            where["url"] = f"{self.uri.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
        return where


def _new_handle(settings: dict, backend: str, run_name: str) -> dict:
    handle = {"backend": backend, "project": settings["project"], "group": settings["group"], "name": run_name,
              "run_id": None, "experiment_id": None, "location": None}
    if backend == "wandb":
        handle["run_id"] = secrets.token_hex(4)
    if backend == "tensorboard":
        handle["location"] = str((Path(TRACKING_DIR) / "tensorboard" / settings["group"] / run_name).resolve())
    return handle


def open_tracker(*, stage: str, run_name: str, run_config: dict, identity: dict, checkpoint_dir: str | os.PathLike,
                 resume: bool, environ=os.environ) -> Tracker:
    """The tracker run of one job (main process): the one its checkpoint folder names when the job resumes
    under the same backend, else a new one, whose handle is written to the checkpoint folder.

    A server that rejects the credentials raises `TrackerCredentialsError` naming their variable."""
    settings = tracking_settings(environ)
    backend = settings["backend"]
    if backend == "none":
        return Tracker()
    state = Path(checkpoint_dir) / TRACKER_FILE
    handle = json.loads(state.read_text()) if resume and state.exists() else None
    resumed = handle is not None and handle.get("backend") == backend
    if handle is not None and not resumed:
        logger.warning("the checkpoint's tracker run is in %s; this job logs to %s, so it starts a new run there",
                       handle.get("backend"), backend)
    if not resumed:
        handle = _new_handle(settings, backend, run_name)
    attached = {"dag_run": run_name, "stage": stage, "identity": identity, "seed": run_config["training"]["seed"],
                "run_config": run_config}
    try:
        if backend == "tensorboard":
            tracker = TensorBoardTracker(handle=handle, attached=attached, resumed=resumed)
        elif backend == "wandb":
            tracker = WandbTracker(handle=handle, attached=attached, resumed=resumed)
        else:
            tracker = MlflowTracker(handle=handle, attached=attached, resumed=resumed)
    except Exception as error:
        reason = rejected_credentials(error)
        if reason is None:
            raise
        raise TrackerCredentialsError(credentials_message(backend, reason, environ)) from None
    write_json(state, handle)
    logger.info("tracking: %s run %s%s (group %s)", backend, run_name,
                " continued" if resumed else "", handle["group"])
    return tracker


def tracker_callback(tracker: Tracker):
    """A TrainerCallback sending every log record (main process) to `tracker` at the optimizer step."""
    from transformers import TrainerCallback

    class TrackerCallback(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                tracker.log(logs, state.global_step)

    return TrackerCallback()
