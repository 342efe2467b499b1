"""The whole DAG on tiny models: tables, figures and report exist; an edited ablation reruns alone;
a training job killed with SIGKILL resumes from its checkpoint, to the weights of an uninterrupted run."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from conftest import build_tiny_llama
from workflow_utils import copy_workflow, job_counts, kill_at_first_checkpoint, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

SLOW_STEPS = 30  # the killed training job's max_steps


@pytest.fixture(scope="module")
def tiny_models(tokenizer_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "tiny-a": build_tiny_llama(tokenizer_dir, root / "a", seed=0),
        "tiny-b": build_tiny_llama(tokenizer_dir, root / "b", seed=1, hidden_size=32),
    }


@pytest.fixture(scope="module")
def finished_run(tiny_models, tmp_path_factory):
    """The full tiny DAG, run once for the tests of this module."""
    workdir = copy_workflow(tmp_path_factory.mktemp("workflow"))
    config = tiny_config(tiny_models)
    config_path = write_config(workdir / "tiny.yaml", config)
    snakemake(workdir, "--cores", "2", "--configfile", str(config_path))
    return workdir, config


def test_tables_have_the_papers_rows(finished_run):
    workdir, config = finished_run
    tables = workdir / "results" / "tables"
    table3 = pd.read_csv(tables / "table3.csv")
    methods = ["Base (Pretrain)", "SFT", "+ DPO", "+ SimPO", "+ SLIME (ours)", "+ StaPO"]
    for model in ("Tiny-A", "Tiny-B"):
        assert table3[table3["model"] == model]["method"].tolist() == methods
    table4 = pd.read_csv(tables / "table4.csv")
    assert table4["variant"].tolist() == [
        "Full SLIME", "w/o chosen term", "w/o rejected term", "w/o soft distance margin", "w/o hard margin"]
    table5 = pd.read_csv(tables / "table5.csv")
    assert table5["p"].tolist() == [1.0, 2.5] and table5["default"].tolist() == [False, True]
    markdown = (tables / "table3.md").read_text()
    assert "—" in markdown and "judge" in markdown.lower()  # MT-Bench / Arena-Hard not run, and why
    assert "**" in markdown  # best result in bold
    assert (tables / "table3.tex").read_text().count("\\textbf") >= 1
    figures = list((workdir / "results" / "figures").glob("*.png"))
    assert figures and all(f.stat().st_size > 5000 for f in figures)


def test_every_rule_wrote_its_log_and_benchmark(finished_run):
    workdir, _ = finished_run
    assert (workdir / "logs" / "split_data.log").exists()
    assert list((workdir / "logs" / "align").rglob("*.log"))
    assert list((workdir / "benchmarks" / "align").rglob("*.tsv"))


def test_report_builds(finished_run):
    workdir, config = finished_run
    snakemake(workdir, "--report", "results/report.html", "--configfile", "tiny.yaml")
    html = (workdir / "results" / "report.html").read_text(errors="replace")
    assert "table3" in html and "Figures" in html and "Tracking" in html
    # The default backend, TensorBoard: every training job's run, linked from the report's index.
    index = (workdir / "results" / "tracking.html").read_text()
    runs = [path.parent.name for path in (workdir / "results").glob("*/align/*/summary.json")]
    assert runs and all(f"/{run}</a>" in index for run in runs)
    for model in ("tiny-a", "tiny-b"):
        assert list((workdir / "tracking" / "tensorboard").glob(f"*/{model}/sft/events.out.tfevents.*"))


def test_editing_one_ablation_reruns_only_that_run(finished_run):
    workdir, config = finished_run
    edited = copy.deepcopy(config)
    edited["ablations"]["sweeps"] = {"p": [1.5, 2.5]}  # p=1.0 -> p=1.5
    path = write_config(workdir / "edited.yaml", edited)
    counts = job_counts(snakemake(workdir, "-n", "--cores", "2", "--configfile", str(path)).stdout)
    assert counts == {
        "write_run_config": 1,
        "align": 1,
        "evaluate": 1,  # offline + demo generation of the new run, from one model load
        "tables_manifest": 1,
        "tables": 1,
        "figures_manifest": 1,
        "figures": 1,
        "tracking_index": 1,  # the new run's tracker entry, for the report
        "all": 1,
    }
    # The unchanged config has nothing left to do.
    nothing = snakemake(workdir, "-n", "--cores", "2", "--configfile", "tiny.yaml")
    assert "Nothing to be done" in nothing.stdout + nothing.stderr


def test_killed_training_resumes_from_checkpoint(finished_run, tiny_models, tmp_path):
    workdir, config = finished_run
    slow = copy.deepcopy(config)
    slow["models"] = {"tiny-a": slow["models"]["tiny-a"]}
    slow["ablations"] = {}
    slow["methods"] = {"slime": {"preset": "paper"}}
    # Enough steps that the job is still training when the test sees its first checkpoint (step 2)
    # and kills it: the remaining 28 take seconds, the kill a fraction of one.
    slow["align"] = dict(slow["align"], max_steps=SLOW_STEPS, save_steps=2)
    path = write_config(workdir / "slow.yaml", slow)
    run_dir = kill_at_first_checkpoint(workdir, ["--cores", "1", "--configfile", str(path)],
                                       workdir / "checkpoints" / "tiny-a", pattern="slime-*")
    assert not (workdir / "results" / "tiny-a" / "align" / run_dir.name / "summary.json").exists()

    # The rerun and the forced run below need only the training job (its evaluation and the tables
    # were never what this test checks), so they ask Snakemake for its output alone.
    target = f"results/tiny-a/align/{run_dir.name}"
    snakemake(workdir, target, "--cores", "1", "--configfile", str(path))
    summary = json.loads((workdir / "results" / "tiny-a" / "align" / run_dir.name / "summary.json").read_text())
    assert summary["resumed_from"] is not None and "checkpoint-" in str(summary["resumed_from"])
    log = (workdir / "logs" / "align" / "tiny-a" / f"{run_dir.name}.log").read_text()
    assert "resuming from" in log.lower()
    steps = [json.loads(line)["step"] for line in
             (workdir / "results" / "tiny-a" / "align" / run_dir.name / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == sorted(set(steps)) and steps[-1] == SLOW_STEPS

    # The same identity resumed to the weights an uninterrupted run gives: force the job again, which
    # now trains from step 0 (a published run leaves no checkpoint behind), and compare the bytes.
    adapter = workdir / "results" / "tiny-a" / "align" / run_dir.name / "adapter" / "adapter_model.safetensors"
    resumed_bytes = adapter.read_bytes()
    assert not run_dir.exists()
    snakemake(workdir, target, "--cores", "1", "--configfile", str(path), "--forcerun", "align")
    again = json.loads((workdir / "results" / "tiny-a" / "align" / run_dir.name / "summary.json").read_text())
    assert again["resumed_from"] is None and again["identity"] == summary["identity"]
    assert adapter.read_bytes() == resumed_bytes
