"""Run identity on the real DAG: whatever makes Snakemake reschedule a training job makes it train
from step 0, and every summary names the settings its weights were trained with."""

from __future__ import annotations

import copy
import json

import pytest

from workflow_utils import clone_workdir, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


def small_config(model_dir):
    config = tiny_config({"tiny-a": model_dir})
    config["methods"] = {"simpo": {"beta": 2.0, "gamma": 0.2}, "slime": {"preset": "paper"}}
    config["ablations"] = {}
    config["evaluation"] = {"benchmarks": ["offline"], "batch_size": 8, "max_new_tokens": 8}
    return config


def training_state(workdir):
    """{job: (weights bytes, summary)} for SFT and every alignment run."""
    results = workdir / "results" / "tiny-a"
    state = {"sft": ((results / "sft" / "model.safetensors").read_bytes(),
                     json.loads((results / "sft" / "summary.json").read_text()))}
    for run in sorted((results / "align").iterdir()):
        state[run.name] = ((run / "adapter" / "adapter_model.safetensors").read_bytes(),
                           json.loads((run / "summary.json").read_text()))
    return state


def run_edit(workdir, config, name):
    path = write_config(workdir / name, config)
    snakemake(workdir, "--cores", "2", "--configfile", str(path))
    return training_state(workdir)


@pytest.fixture(scope="module")
def base_run(tiny_model_dir, tiny_a_sft_workdir, tmp_path_factory):
    """The base config run once (from the shared split and SFT of tiny-a); tests edit copies of it."""
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path_factory.mktemp("identity") / "workflow")
    config = small_config(tiny_model_dir)
    return workdir, config, run_edit(workdir, config, "base.yaml")


@pytest.fixture
def finished(base_run, tmp_path):
    """A copy of the finished base run, for one test to edit; the base config has nothing left to do
    in it, so whatever an edit reruns, the edit alone made it rerun."""
    source, config, before = base_run
    workdir = clone_workdir(source, tmp_path / "workflow")
    nothing = snakemake(workdir, "-n", "--cores", "2", "--configfile", "base.yaml")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr, nothing.stdout[-3000:]
    assert training_state(workdir) == before
    return workdir, config, before


def assert_retrained_from_scratch(before, after, *, expect):
    for job, (weights, summary) in after.items():
        assert summary["resumed_from"] is None, job
        assert summary["global_step"] == summary["run_config"]["training"]["max_steps"], job
        expect(summary)
    sft_before, sft_after = before["sft"], after["sft"]
    assert sft_after[0] != sft_before[0] and sft_after[1]["identity"] != sft_before[1]["identity"]
    aligned_before = {summary["run_config"]["method"]: weights for job, (weights, summary) in before.items() if job != "sft"}
    for job, (weights, summary) in after.items():
        if job != "sft":
            assert weights != aligned_before[summary["run_config"]["method"]], job


def test_sft_setting_change_retrains_sft_and_every_align_job_from_step_0(finished):
    workdir, config, before = finished
    edited = copy.deepcopy(config)
    edited["sft"]["learning_rate"] = 3.0e-3
    after = run_edit(workdir, edited, "sft-lr.yaml")

    def expect(summary):
        if summary["method"] == "sft":
            assert summary["run_config"]["training"]["learning_rate"] == 3.0e-3
    assert_retrained_from_scratch(before, after, expect=expect)
    log = (workdir / "logs" / "sft" / "tiny-a.log").read_text()
    assert "starting from step 0" in log and "resuming" not in log


def test_data_change_retrains_everything_from_step_0(finished):
    workdir, config, before = finished
    edited = copy.deepcopy(config)
    edited["data"]["demo"]["n"] = 70
    after = run_edit(workdir, edited, "demo-n.yaml")
    split = json.loads((workdir / "results" / "data" / "split" / "split.json").read_text())
    assert_retrained_from_scratch(before, after, expect=lambda summary: None)
    for _, summary in after.values():
        assert summary["num_train_rows"] <= max(split["manifest"]["sizes"].values())
