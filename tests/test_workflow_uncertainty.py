"""Issue 11's reporting on the real tiny DAG: held-out probes, paired CIs and the seed dimension
reach the tables and the figures."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from workflow_utils import clone_workdir, job_counts, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow


def test_probes_paired_cis_and_seeds_reach_tables_and_figures(tiny_model_dir, tiny_a_sft_workdir, tmp_path):
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path / "workflow")  # tiny-a's split and SFT done
    config = tiny_config({"tiny-a": tiny_model_dir})
    config["methods"] = {"simpo": {"beta": 2.0, "gamma": 0.2}, "slime": {"preset": "paper"}}
    config["ablations"] = {}
    config["seeds"] = [0, 1]
    config["evaluation"] = {"benchmarks": ["offline", "demo_generation"], "batch_size": 8, "max_new_tokens": 8,
                            "probes": {"every_steps": 1, "pairs": 4}}
    path = write_config(workdir / "seeds.yaml", config)
    counts = job_counts(snakemake(workdir, "-n", "--cores", "2", "--configfile", str(path)).stdout)
    assert counts["align"] == 2 * 2  # two methods x two seeds
    snakemake(workdir, "--cores", "2", "--configfile", str(path))

    table3 = pd.read_csv(workdir / "results" / "tables" / "table3.csv")
    slime = table3[table3["method"] == "+ SLIME (ours)"].iloc[0]
    assert slime["n_seeds"] == 2 and slime["chosen_logp_mean_seed_sd"] >= 0
    assert slime["delta_chosen_logp_vs_sft_ci_low"] <= slime["delta_chosen_logp_vs_sft"] \
        <= slime["delta_chosen_logp_vs_sft_ci_high"]
    assert "[" in (workdir / "results" / "tables" / "table3.md").read_text()  # CIs in the cells
    assert (workdir / "results" / "tables" / "comparisons.csv").exists()

    for run in (workdir / "results" / "tiny-a" / "align").iterdir():
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        probes = [record["step"] for record in records if "probe" in record]
        assert probes == [0, 1, 2], run.name  # max_steps 2, every step, plus step 0 (SFT)
    seeds = {json.loads((run / "summary.json").read_text())["run_config"]["training"]["seed"]
             for run in (workdir / "results" / "tiny-a" / "align").iterdir()}
    assert seeds == {0, 1}
    figures = workdir / "results" / "figures"
    main = list(figures.glob("probe_trajectories_*.png"))
    assert len(main) == 1 and main[0].stat().st_size > 5000
    assert len(list(figures.glob("training_curves_*.png"))) == 1
