"""Trackers through the tiny DAG: W&B in offline mode, then MLflow with a local file store.

W&B logs the SFT and the alignment job of one model; the alignment job is SIGKILLed at its first
checkpoint and resumed by the next invocation. Then the config switches to MLflow (nothing reruns)
and the alignment job is forced to train again, into MLflow. Read back with the trackers' own files
and API: one run per training job, named as the DAG names it, with its identity and seed; SLIME's
terms at every step and the probes at theirs; the killed job is still one run; the API key's value
is in no file; the report's index links each run's entry.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import pytest

from workflow_utils import clone_workdir, job_counts, kill_at_first_checkpoint, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

STEPS = 6
PROBE_EVERY = 3
INDEX = "results/tracking.html"
SECRET = "prefopt-test-key-7f3a9c1e5b"  # the credential variables' value, looked for in every file afterwards


def tracked_config(tiny_model_dir, backend: str) -> dict:
    config = tiny_config({"tiny-a": tiny_model_dir}, methods={"slime": {"preset": "paper"}}, ablations={})
    config["evaluation"]["benchmarks"] = ["offline"]
    config["evaluation"]["probes"] = {"every_steps": PROBE_EVERY, "pairs": 4}
    config["align"] = dict(config["align"], max_steps=STEPS, save_steps=2)
    config["tracking"] = {"backend": backend, "project": "prefopt-tests"}
    return config


def train_with_a_kill(workdir: Path, config_path: Path, env: dict) -> str:
    """SFT and alignment afresh (forced), the alignment job SIGKILLed at its first checkpoint, then the
    rest in a second invocation. Only the training jobs and the report's index of tracker runs:
    evaluation and tables are not what this module checks. Returns the alignment run's name."""
    args = [INDEX, "--cores", "1", "--configfile", str(config_path)]
    run = kill_at_first_checkpoint(workdir, [*args, "--forcerun", "sft"], workdir / "checkpoints" / "tiny-a",
                                   pattern="slime-*", env=env)
    snakemake(workdir, *args, env=env)
    summary = json.loads((workdir / "results" / "tiny-a" / "align" / run.name / "summary.json").read_text())
    assert summary["resumed_from"] is not None  # the second invocation resumed the killed job
    return run.name


def identity_of(workdir: Path, out: str) -> dict:
    return json.loads((workdir / "results" / "tiny-a" / out / "identity.json").read_text())


def tracking_entry(workdir: Path, run: str) -> dict:
    return json.loads((workdir / "results" / "tiny-a" / "align" / run / "tracking.json").read_text())


def wandb_records(path: Path):
    """The records of one offline W&B run file (LevelDB log blocks of wandb_internal_pb2.Record)."""
    from wandb.proto import wandb_internal_pb2

    data, position, block, pending = path.read_bytes(), 7, 32768, b""  # 7: the ':W&B' header
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:  # padding to the end of the block
            position += left
            continue
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_runs(root: Path) -> dict[str, dict]:
    """{run id: {"name", "group", "files", "history": {metric: [steps]}}} of every offline run under `root`."""
    runs = {}
    for file in sorted(root.glob("offline-run-*/run-*.wandb")):
        for record in wandb_records(file):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                run = runs.setdefault(record.run.run_id, {"files": [], "history": {}, "groups": set()})
                run["name"] = record.run.display_name
                run["groups"].add(record.run.run_group)
                run["files"].append(file)
                run["config"] = {item.key: json.loads(item.value_json) for item in record.run.config.update}
            elif kind == "history":
                items = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item}
                for key, value in items.items():
                    run["history"].setdefault(key, []).append(items.get("global_step"))
    return runs


@pytest.fixture(scope="module")
def tracked(tiny_a_sft_workdir, tiny_model_dir, tmp_path_factory):
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path_factory.mktemp("tracking") / "run")
    env = dict(os.environ, WANDB_MODE="offline", WANDB_API_KEY=SECRET, MLFLOW_TRACKING_TOKEN=SECRET)
    env.pop("MLFLOW_TRACKING_URI", None)
    wandb_config = write_config(workdir / "wandb.yaml", tracked_config(tiny_model_dir, "wandb"))
    wandb_run = train_with_a_kill(workdir, wandb_config, env)
    # Read before the MLflow phase retrains the alignment run.
    wandb = {"index": (workdir / INDEX).read_text(), "identity": identity_of(workdir, f"align/{wandb_run}")["id"],
             "entry": tracking_entry(workdir, wandb_run)}

    mlflow_config = write_config(workdir / "mlflow.yaml", tracked_config(tiny_model_dir, "mlflow"))
    switched = snakemake(workdir, "-n", "--cores", "1", "--configfile", str(mlflow_config), env=env)
    # The alignment job again, now logged to MLflow (a resumed MLflow run: tests/test_tracking.py).
    snakemake(workdir, INDEX, "--cores", "1", "--configfile", str(mlflow_config), "--forcerun", "align", env=env)
    return {"workdir": workdir, "wandb_run": wandb_run, "switched": switched, "wandb": wandb}


def test_switching_backends_reran_nothing(tracked):
    counts = job_counts(tracked["switched"].stdout)  # the whole DAG: its evaluations were never run here
    assert counts and not {"sft", "align", "write_run_config", "tracking_index"} & set(counts), counts


def test_wandb_offline_one_run_per_training_job_named_by_the_dag(tracked):
    workdir, run = tracked["workdir"], tracked["wandb_run"]
    runs = wandb_runs(workdir / "tracking" / "wandb")
    by_name = {entry["name"]: entry for entry in runs.values()}
    assert sorted(by_name) == ["tiny-a/sft", f"tiny-a/{run}"], sorted(by_name)
    align = by_name[f"tiny-a/{run}"]
    # Killed and resumed: two offline segments of one run id (the killed one may hold only what
    # wandb-core wrote before the kill; the resumed job logs the steps up to its checkpoint again).
    run_id = next(key for key, entry in runs.items() if entry is align)
    assert len(list((workdir / "tracking" / "wandb").glob(f"offline-run-*-{run_id}"))) == 2
    assert len(align["groups"]) == 1  # the resumed segment stays in the first invocation's group
    assert align["groups"] == by_name["tiny-a/sft"]["groups"]  # both started by the first invocation
    assert align["config"]["identity"]["id"] == tracked["wandb"]["identity"]
    assert align["config"]["seed"] == 0 and align["config"]["run_config"]["method"] == "slime"
    history = align["history"]
    for term in ("slime/chosen_term", "slime/rejected_term", "slime/distance_term", "loss", "grad_norm"):
        assert set(history[term]) == set(range(1, STEPS + 1)), (term, history.get(term))
    assert set(history["probe/margin_mean"]) == set(range(0, STEPS + 1, PROBE_EVERY))
    assert "loss" in by_name["tiny-a/sft"]["history"]
    entry = tracked["wandb"]["entry"]
    assert entry["backend"] == "wandb" and entry["run"] == f"tiny-a/{run}" and "wandb sync" in entry["view"]
    assert f"tiny-a/{run}" in tracked["wandb"]["index"] and "wandb sync" in tracked["wandb"]["index"]


def test_mlflow_file_store_one_run_per_training_job_that_ran(tracked):
    from mlflow.tracking import MlflowClient

    workdir, run = tracked["workdir"], tracked["wandb_run"]  # the same run name: settings unchanged
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    client = MlflowClient((workdir / "tracking" / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("prefopt-tests")
    runs = {found.info.run_name: found for found in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == [f"tiny-a/{run}"], sorted(runs)  # only the alignment job ran under MLflow
    align = runs[f"tiny-a/{run}"]
    assert align.info.status == "FINISHED" and tracking_entry(workdir, run)["run_id"] == align.info.run_id
    assert align.data.tags["prefopt.identity"] == identity_of(workdir, f"align/{run}")["id"]
    assert align.data.tags["prefopt.seed"] == "0" and align.data.params["run_config.method"] == "slime"
    for term in ("slime/chosen_term", "slime/rejected_term", "loss"):
        steps = {metric.step for metric in client.get_metric_history(align.info.run_id, term)}
        assert steps == set(range(1, STEPS + 1)), (term, steps)
    probe_steps = {metric.step for metric in client.get_metric_history(align.info.run_id, "probe/margin_mean")}
    assert probe_steps == set(range(0, STEPS + 1, PROBE_EVERY))
    index = (workdir / INDEX).read_text()
    assert align.info.run_id in index and "mlflow ui" in index


def test_the_api_key_is_in_no_file(tracked):
    workdir = tracked["workdir"]
    leaks = [str(path.relative_to(workdir))
             for folder in ("results", "checkpoints", "logs", "tracking", ".snakemake")
             for path in (workdir / folder).rglob("*")
             if path.is_file() and SECRET.encode() in path.read_bytes()]
    assert not leaks
