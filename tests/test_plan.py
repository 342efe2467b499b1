"""prefopt.plan without Snakemake: run configs, run names, seeds, table rows and manifests."""

from __future__ import annotations

import pytest

from prefopt import plan
from prefopt.run_config import validate_run_config
from run_configs import experiment_config


def config_with(**overrides):
    base = {"methods": {"dpo": {}, "simpo": {}, "slime": {"preset": "paper"}, "stapo": {}},
            "ablations": {"model": "m", "components": [
                {"name": "no_rejected_term", "label": "w/o rejected term", "overrides": {"lambda_l": 0.0}}],
                "sweeps": {"p": [1.0, 2.5]}}}
    base.update(overrides)
    return experiment_config(**base)


def test_every_planned_run_config_is_complete():
    config = config_with()
    made = plan.make_plan(config)
    for (model, name), run_config in made.runs.items():
        assert validate_run_config(run_config) is run_config
        assert name == plan.run_name(run_config) and name.startswith(run_config["method"] + "-")
    sft = plan.run_config(config, "m", "sft")
    assert validate_run_config(sft)["training"]["learning_rate"] == 2e-4  # the schema's SFT default
    assert sft["training"]["num_train_epochs"] == 3 and sft["lora"]["r"] == 64


def test_same_settings_are_one_run_and_any_change_is_a_new_name():
    made = plan.make_plan(config_with())
    main_slime = made.table3[4][2]
    assert made.table4[0][2] == main_slime  # "Full SLIME"
    assert made.table5[1][3] == main_slime and made.table5[1][2] and made.table5[0][3] != main_slime  # p=2.5 is the main run
    assert len(made.runs) == 4 + 1 + 1  # dpo simpo slime stapo, w/o rejected term, p=1.0
    changed = plan.make_plan(config_with(align={"learning_rate": 1e-6}))
    assert set(changed.runs).isdisjoint(made.runs)


def test_seeds_multiply_alignment_runs_and_change_their_names():
    made = plan.make_plan(config_with(seeds=[0, 1, 2]))
    assert len(made.runs) == 3 * 6
    label, runs = made.table3[4][1], made.table3[4][2]
    assert label == "+ SLIME (ours)" and len(runs) == 3 == len(set(runs))
    assert [made.runs[("m", run)]["training"]["seed"] for run in runs] == [0, 1, 2]
    assert made.table3[0][2] == ["base"] and made.table3[1][2] == ["sft"]
    single = plan.make_plan(config_with())
    assert single.table3[4][2] == [runs[0]]  # seeds: null means [seed] = [0]: the same run
    manifest = plan.table_manifest_rows(config_with(seeds=[0, 1, 2]), made, lambda m, r: {"offline": f"{m}/{r}.json"})
    row = manifest["table3"][4]
    assert row["runs"] == runs and row["run"] == runs[0] and len(row["seed_results"]) == 3
    assert f"m/{runs[2]}.json" in plan.manifest_inputs(manifest)
    assert f"m/{runs[2]}.examples.jsonl" in plan.manifest_inputs(manifest)


@pytest.mark.parametrize("overrides, message", [
    ({"ablations": {"model": "other"}}, "ablations.model: 'other' is not an enabled model (m)"),
    ({"methods": {"dpo": {}}, "ablations": {"model": "m"}},
     "ablations: the ablations vary SLIME, so 'methods' must include slime"),
    ({"align": {"max_length": 64, "max_prompt_length": 64}}, "align.max_prompt_length: 64 must be smaller than max_length (64)"),
])
def test_plan_errors_name_the_key(overrides, message):
    with pytest.raises(plan.PlanError) as error:
        plan.make_plan(config_with(**overrides))
    assert str(error.value) == message


def test_launch_commands():
    config = config_with(launchers={"align": {"type": "zero2", "num_processes": 8}}, device="cuda")
    command = plan.launch_command(config, "align", "/repo")
    assert command.startswith("accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8")
    assert "--multi_gpu" not in command
    assert plan.launch_command(config, "sft", "/repo") == "python"
