"""The tiny DAG with a user's own objective (a module outside the package, named by `objectives:`)
and two sweeps (p and delta): the objective is a row of Table 3, each sweep a Table-5-shaped table
with paired CIs against its default value, the default run is trained once for both, and editing
the user's module reruns only the runs of its objective."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from test_objectives import write_user_module
from workflow_utils import clone_workdir, job_counts, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tiny_a_sft_workdir, tiny_model_dir, tmp_path_factory):
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path_factory.mktemp("objectives") / "run")
    source = write_user_module(workdir, "my_losses", "margin_nll")  # in the working directory, not the package
    config = tiny_config({"tiny-a": tiny_model_dir},
                         objectives=["my_losses"],
                         methods={"slime": {"preset": "paper"}, "margin_nll": {"alpha": 0.25}})
    config["ablations"] = {"model": "tiny-a", "components": [], "sweeps": {"p": [1.0], "delta": [0.5]}}
    config["evaluation"]["benchmarks"] = ["offline"]
    path = write_config(workdir / "objectives.yaml", config)
    dry = snakemake(workdir, "-n", "--cores", "2", "--configfile", str(path))
    snakemake(workdir, "--cores", "2", "--configfile", str(path))
    return workdir, path, source, job_counts(dry.stdout)


def test_a_user_objective_is_a_row_of_table3(finished):
    workdir, _, _, _ = finished
    table3 = pd.read_csv(workdir / "results" / "tables" / "table3.csv")
    assert table3["method"].tolist() == ["Base (Pretrain)", "SFT", "+ SLIME (ours)", "+ Margin + NLL"]
    manifest = json.loads((workdir / "results" / "tables" / "manifest.json").read_text())
    row = manifest["tables"][0]["rows"][3]
    summary = json.loads((workdir / "results" / "tiny-a" / "align" / row["run"] / "summary.json").read_text())
    assert summary["method"] == "margin_nll" and summary["run_config"]["loss_kwargs"] == {"beta": 1.0, "alpha": 0.25}
    identity = json.loads((workdir / "results" / "tiny-a" / "align" / row["run"] / "identity.json").read_text())
    assert "objective" in identity["inputs"]  # the module's content is part of the run's identity


def test_two_sweeps_are_two_tables_sharing_the_default_run(finished):
    workdir, _, _, counts = finished
    tables = workdir / "results" / "tables"
    table5 = pd.read_csv(tables / "table5.csv")
    delta = pd.read_csv(tables / "sweep_delta.csv")
    assert table5["p"].tolist() == [1.0, 2.5] and table5["default"].tolist() == [False, True]
    assert delta["delta"].tolist() == [0.5, 1.25] and delta["default"].tolist() == [False, True]
    for table in (table5, delta):  # the offline benchmark ran: its cells and paired CIs against SFT are there
        offline = ["preference_accuracy", "margin_mean", "delta_chosen_logp_vs_sft"]
        columns = offline + [f"{name}_ci_{end}" for name in offline for end in ("low", "high")]
        assert table[columns].notna().all().all(), table[columns]
    # slime (the default p and delta), margin_nll, p=1.0, delta=0.5: four alignment jobs, not five.
    assert counts["align"] == 4
    comparisons = pd.read_csv(tables / "comparisons.csv")
    assert {"table5", "sweep_delta"} <= set(comparisons["table"])
    assert (workdir / "results" / "figures" / "sweep_delta.png").stat().st_size > 5000


def test_editing_the_users_module_reruns_only_its_runs(finished):
    workdir, path, source, _ = finished
    source.write_text(source.read_text().replace("alpha * chosen", "alpha * 2 * chosen"))
    dry = snakemake(workdir, "-n", "--cores", "2", "--configfile", str(path))
    counts = job_counts(dry.stdout)
    assert counts.get("align") == 1 and counts.get("evaluate") == 1, dry.stdout[-3000:]
