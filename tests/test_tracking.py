"""prefopt.tracking (settings, planning checks, the report's index) and prefopt.trackers (the tracker runs):
without the DAG. The trackers through the tiny DAG: tests/test_workflow_tracking.py."""

from __future__ import annotations

import http.server
import importlib.util
import json
import threading

import pytest

from prefopt import plan, tracking
from prefopt.config_schema import load_config
from prefopt.trackers import TRACKER_FILE, TrackerCredentialsError, open_tracker
from workflow_utils import REPO, tiny_config

SECRET = "prefopt-unit-key-51c0ffee"


def resolved(**tracking_settings) -> dict:
    config = tiny_config({"tiny": str(REPO)}, judge=None)
    if tracking_settings:
        config["tracking"] = tracking_settings
    return load_config(config, REPO / "schemas" / "config.schema.yaml")


def test_the_schema_default_is_tensorboard_and_a_bad_backend_names_the_key():
    assert resolved()["tracking"] == {"backend": "tensorboard", "project": "prefopt", "group": None}
    with pytest.raises(Exception, match="tracking.backend"):
        resolved(backend="neptune")


def test_a_missing_backend_package_fails_planning_in_one_line_with_the_pip_command(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    config = resolved(backend="mlflow")
    monkeypatch.setattr(plan, "check_model_sources", lambda config: None)
    with pytest.raises(SystemExit) as exit_info:
        plan.workflow_plan(config)
    message = str(exit_info.value)
    assert message.count("\n") == 0 and message.startswith("config error: tracking.backend: 'mlflow'")
    assert "pip install -e '.[mlflow]'" in message


def test_each_invocation_gets_a_group_and_its_jobs_inherit_it(monkeypatch):
    monkeypatch.delenv(tracking.TRACKING_ENV, raising=False)
    config = resolved(backend="wandb", project="slime")
    tracking.export_tracking(config, main_process=True)
    first = tracking.tracking_settings()
    assert first["backend"] == "wandb" and first["project"] == "slime" and first["group"]
    tracking.export_tracking(config, main_process=False)  # a job's own Snakemake (SLURM's jobstep)
    assert tracking.tracking_settings() == first
    tracking.export_tracking(config, main_process=True)  # the next invocation
    assert tracking.tracking_settings()["group"] != first["group"]
    tracking.export_tracking(resolved(backend="none", group="sweep-3"), main_process=True)
    assert tracking.tracking_settings() == {"backend": "none", "project": "prefopt", "group": "sweep-3"}


def test_credential_variables_are_declared_only_when_set(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    assert tracking.credential_variables(resolved(backend="mlflow")) == ["MLFLOW_TRACKING_TOKEN"]
    assert tracking.credential_variables(resolved(backend="tensorboard")) == []
    assert tracking.tracking_warnings(resolved(backend="wandb"), environ={}) != []
    assert tracking.tracking_warnings(resolved(backend="wandb"), environ={"WANDB_MODE": "offline"}) == []


def test_dag_run_name_is_model_and_run():
    assert tracking.dag_run_name("results/smollm2/runs/slime-1a2b3c4d5e.json") == "smollm2/slime-1a2b3c4d5e"
    assert tracking.dag_run_name("results/smollm2/runs/sft.json") == "smollm2/sft"


def test_index_links_urls_local_runs_and_untracked_ones():
    html = tracking.index_html({
        "m/sft": {"backend": "mlflow", "group": "g", "url": "http://mlflow:5000/#/experiments/1/runs/abc"},
        "m/slime-1": {"backend": "wandb", "group": "g", "location": "/w/tracking/wandb/offline-run-1-x",
                      "view": "wandb sync /w/tracking/wandb/offline-run-*-x"},
        "m/dpo-2": None,
    })
    assert '<a href="http://mlflow:5000/#/experiments/1/runs/abc">' in html
    assert '<a href="file:///w/tracking/wandb/offline-run-1-x">' in html and "wandb sync" in html
    assert "trained before tracking" in html


# ------------------------------------------------------------------------------------------- tracker runs


def job_kwargs(checkpoint_dir, resume=False):
    run_config = {"method": "slime", "training": {"seed": 0}, "loss_kwargs": {"p": 2.5}}
    return {"stage": "align", "run_name": "tiny/slime-0123456789", "run_config": run_config,
            "identity": {"id": "feedfacecafebeef"}, "checkpoint_dir": checkpoint_dir, "resume": resume}


def test_tensorboard_run_continues_in_its_first_group_when_the_job_resumes(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "tensorboard", "project": "p", "group": "g1"}))
    tracker = open_tracker(**job_kwargs(tmp_path / "ckpt"))
    tracker.log({"loss": 1.0, "slime/chosen_term": 0.5, "note": "text"}, 1)
    tracker.finish()
    handle = json.loads((tmp_path / "ckpt" / TRACKER_FILE).read_text())
    # The next invocation (another group) resumes the killed job: the same run directory.
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "tensorboard", "project": "p", "group": "g2"}))
    tracker = open_tracker(**job_kwargs(tmp_path / "ckpt", resume=True))
    assert tracker.continued and tracker.entry()["location"] == handle["location"]
    tracker.log({"loss": 0.5}, 2)
    tracker.finish()
    events = EventAccumulator(handle["location"])
    events.Reload()
    assert [(event.step, event.value) for event in events.Scalars("loss")] == [(1, 1.0), (2, 0.5)]
    assert "g1" in handle["location"] and "tiny/slime-0123456789" in handle["location"]
    # A fresh start (no resume) is a new run, in this invocation's group.
    assert "g2" in open_tracker(**job_kwargs(tmp_path / "fresh")).entry()["location"]


@pytest.fixture
def refusing_server():
    """An HTTP server that answers every request 401, as MLflow's basic-auth server does (plain text)."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def refuse(self):
            body = b"You are not authenticated. Please see the documentation."
            self.send_response(401)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = refuse

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_mlflow_401_is_one_line_naming_the_variable(tmp_path, monkeypatch, refusing_server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "mlflow", "project": "p", "group": "g"}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", refusing_server)
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", SECRET)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(TrackerCredentialsError) as error:
        open_tracker(**job_kwargs(tmp_path / "ckpt"))
    message = str(error.value)
    assert "\n" not in message and "MLFLOW_TRACKING_TOKEN" in message and "HTTP 401" in message
    assert SECRET not in message


def test_wandb_401_is_one_line_naming_the_variable(tmp_path, monkeypatch, refusing_server):
    # wandb names its service in this process's environment; the DAG tests' jobs must not inherit it.
    monkeypatch.setenv("WANDB_SERVICE", "")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "wandb", "project": "p", "group": "g"}))
    monkeypatch.setenv("WANDB_BASE_URL", refusing_server)
    monkeypatch.setenv("WANDB_API_KEY", SECRET * 2)
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(TrackerCredentialsError) as error:
        open_tracker(**job_kwargs(tmp_path / "ckpt"))
    message = str(error.value)
    assert "\n" not in message and "WANDB_API_KEY" in message and SECRET not in message


def test_mlflow_run_is_continued_by_the_resumed_job_and_finished_once(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "mlflow", "project": "p", "group": "g1"}))
    first = open_tracker(**job_kwargs(tmp_path / "ckpt"))
    first.log({"loss": 1.0}, 1)  # then the job is killed: no finish
    monkeypatch.setenv(tracking.TRACKING_ENV, json.dumps({"backend": "mlflow", "project": "p", "group": "g2"}))
    resumed = open_tracker(**job_kwargs(tmp_path / "ckpt", resume=True))
    resumed.replay([{"step": 1, "loss": 1.0}])  # durable: MLflow has step 1 already, nothing is logged twice
    resumed.log({"loss": 0.5}, 2)
    resumed.finish()
    client = MlflowClient((tmp_path / "tracking" / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("p").experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "tiny/slime-0123456789"
    assert runs[0].info.status == "FINISHED" and runs[0].data.tags["prefopt.group"] == "g1"
    assert [(m.step, m.value) for m in client.get_metric_history(runs[0].info.run_id, "loss")] == [(1, 1.0), (2, 0.5)]
    assert resumed.entry()["run_id"] == runs[0].info.run_id and "mlflow ui" in resumed.entry()["view"]
