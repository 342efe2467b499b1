"""prefopt.plan without Snakemake: run configs, run names, seeds, table rows and manifests."""

from __future__ import annotations

import pytest

from prefopt import plan
from prefopt.run_config import RunConfig
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
        assert RunConfig.from_dict(run_config).to_dict() == run_config
        assert name == plan.run_name(run_config) and name.startswith(run_config["method"] + "-")
    sft = plan.run_config(config, "m", "sft")
    assert RunConfig.from_dict(sft).training.learning_rate == 2e-4  # the schema's SFT default
    assert sft["training"]["num_train_epochs"] == 3 and sft["lora"]["r"] == 64


def test_same_settings_are_one_run_and_any_change_is_a_new_name():
    made = plan.make_plan(config_with())
    main_slime = made.table("table3").rows[4].runs
    assert made.table("table4").rows[0].runs == main_slime  # "Full SLIME"
    table5 = made.table("table5").rows
    assert [(row.value, row.role) for row in table5] == [(1.0, "row"), (2.5, "reference")]
    assert table5[1].runs == main_slime and table5[0].runs != main_slime  # p=2.5 is the main run
    assert len(made.runs) == 4 + 1 + 1  # dpo simpo slime stapo, w/o rejected term, p=1.0
    changed = plan.make_plan(config_with(align={"learning_rate": 1e-6}))
    assert set(changed.runs).isdisjoint(made.runs)


def test_seeds_multiply_alignment_runs_and_change_their_names():
    made = plan.make_plan(config_with(seeds=[0, 1, 2]))
    assert len(made.runs) == 3 * 6
    table3 = made.table("table3").rows
    label, runs = table3[4].label, table3[4].runs
    assert label == "+ SLIME (ours)" and len(runs) == 3 == len(set(runs))
    assert [made.runs[("m", run)]["training"]["seed"] for run in runs] == [0, 1, 2]
    assert table3[0].runs == ["base"] and table3[1].runs == ["sft"]
    single = plan.make_plan(config_with())
    assert single.table("table3").rows[4].runs == [runs[0]]  # seeds: null means [seed] = [0]: the same run
    manifest = plan.table_manifest(config_with(seeds=[0, 1, 2]), made, lambda m, r: {"offline": f"{m}/{r}.json"})
    row = manifest["tables"][0]["rows"][4]
    assert row["runs"] == runs and row["run"] == runs[0] and len(row["seed_results"]) == 3
    assert f"m/{runs[2]}.json" in plan.manifest_inputs(manifest)
    assert f"m/{runs[2]}.examples.jsonl" in plan.manifest_inputs(manifest)


@pytest.mark.parametrize("overrides, message", [
    ({"ablations": {"model": "other"}}, "ablations.model: 'other' is not an enabled model (m)"),
    ({"methods": {"dpo": {}}, "ablations": {"model": "m"}},
     "ablations: the ablations vary SLIME, so 'methods' must include slime"),
    ({"align": {"max_length": 64, "max_prompt_length": 64}}, "align.max_prompt_length: 64 must be smaller than max_length (64)"),
    ({"ablations": {"model": "m", "sweeps": {"pp": [1.0]}}},
     "ablations.sweeps.pp: 'slime' has no hyperparameter 'pp'; did you mean 'p'?"),
    ({"ablations": {"model": "m", "sweeps": {"delta": [0.5], "kappa": [1.0, -2.0]}}},
     "ablations.sweeps.kappa[1]: must be > 0, got -2.0"),
    ({"ablations": {"model": "m", "sweeps": {"use_hard_margin": [0.5]}}},
     "ablations.sweeps.use_hard_margin[0]: must be true or false, got 0.5"),
    ({"methods": {"slime": {}}, "ablations": {"model": "m", "sweeps": {"dpo.beta": [0.5]}}},
     "ablations.sweeps.dpo.beta: sweeps dpo's beta, so 'methods' must include dpo"),
    ({"ablations": {"model": "m", "sweeps": {"simpoo.beta": [1.0]}}},
     "ablations.sweeps.simpoo.beta: unknown objective 'simpoo'; did you mean 'simpo'?"),
    ({"ablations": {"model": "m", "sweeps": {"p": [1.0], "slime.p": [2.0]}}},
     "ablations.sweeps.slime.p: sweeps the same hyperparameter as 'p'"),
    ({"methods": {"slime": {"preset": "authors_code"}, "dpo": {"beta": 0.1}}, "ablations": {"model": "m", "sweeps": {"delta": [0.5]}}},
     None),
])
def test_plan_errors_name_the_key(overrides, message):
    if message is None:  # a valid config: the preset's delta (0.5) is the sweep's default value
        rows = plan.make_plan(config_with(**overrides)).table("sweep_delta").rows
        assert [(row.value, row.role) for row in rows] == [(0.5, "reference")]
        return
    with pytest.raises(plan.PlanError) as error:
        plan.make_plan(config_with(**overrides))
    assert str(error.value) == message


def test_two_sweeps_share_the_default_run_and_each_is_a_table():
    config = config_with(methods={"slime": {}, "simpo": {}},
                         ablations={"model": "m", "sweeps": {"p": [1.0], "delta": [0.5, 2.0], "simpo.beta": [1.0]}})
    made = plan.make_plan(config)
    assert plan.table_names(made) == ["table3", "table4", "table5", "sweep_delta", "sweep_simpo_beta"]
    main = made.table("table3").rows[2].runs
    delta = made.table("sweep_delta")
    assert (delta.kind, delta.method, delta.parameter) == ("sweep", "slime", "delta")
    assert [(row.value, row.role, row.label) for row in delta.rows] == [
        (0.5, "row", "0.5"), (1.25, "reference", "1.25"), (2.0, "row", "2.0")]
    assert delta.rows[1].runs == main == made.table("table5").rows[1].runs  # the default p and delta: one run
    beta = made.table("sweep_simpo_beta").rows
    assert [(row.value, row.role) for row in beta] == [(1.0, "row"), (2.0, "reference")]
    assert beta[1].runs == made.table("table3").rows[3].runs  # SimPO's own Table 3 run
    assert made.runs[("m", beta[0].runs[0])]["loss_kwargs"] == {"beta": 1.0, "gamma": 0.2}
    assert len(made.runs) == 2 + 1 + 2 + 1  # slime simpo, p=1, delta=0.5 and 2, simpo beta=1
    files = plan.table_files(made)
    assert "results/tables/sweep_delta.tex" in files and "results/tables/comparisons.md" in files
    manifest = plan.table_manifest(config, made, lambda m, r: {})
    assert [table["name"] for table in manifest["tables"]] == plan.table_names(made)
    assert manifest["tables"][3]["method_label"] == "SLIME" and manifest["tables"][3]["rows"][0]["value"] == 0.5


def test_launch_commands():
    config = config_with(launchers={"align": {"type": "zero2", "num_processes": 8}}, device="cuda")
    command = plan.launch_command(config, "align", "/repo")
    assert command.startswith("accelerate launch --config_file configs/accelerate/zero2.yaml --num_processes 8")
    assert "--multi_gpu" not in command
    assert plan.launch_command(config, "sft", "/repo") == "python"


def srun(nodes: int, cpus: int) -> str:
    return f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} --overlap --kill-on-bad-exit=1"


def test_multinode_launch_commands_start_one_launcher_per_node():
    """`nodes` above 1 starts the launcher through srun, one task per node: accelerate gets every node's
    processes and the machine count, and launch_node.sh the rank and the main node. `nodes: 1` is the
    one-machine command, the same wherever it runs (SLURM's jobstep starts it in its own step)."""
    config = config_with(launchers={"align": {"type": "zero2", "num_processes": 8, "nodes": 2},
                                    "sft": {"type": "ddp", "num_processes": 8}}, device="cuda", threads=2)
    align = plan.launch_command(config, "align", "/repo")
    assert align.startswith(srun(2, 8) + " bash /repo/workflow/scripts/launch_node.sh --config_file configs/accelerate/zero2.yaml"
                            " --num_processes 16 --num_machines 2 --deepspeed_multinode_launcher standard")
    assert "--main_process_port $(python /repo/workflow/scripts/free_port.py)" in align
    assert plan.launch_command(config, "sft", "/repo") == (
        "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 8 --mixed_precision "
        f"{plan.accelerate_mixed_precision(config)} --main_process_port $(python /repo/workflow/scripts/free_port.py)")
    fixed = config_with(launchers={"align": {"type": "ddp", "nodes": 2, "main_process_port": 29500}})
    command = plan.launch_command(fixed, "align", "/repo")
    assert "--main_process_port 29500 " in command + " " and "--deepspeed_multinode_launcher" not in command


@pytest.mark.parametrize(("launchers", "jobs_run_here", "message"), [
    ({"align": {"type": "ddp", "nodes": 2}}, True,
     "launchers.align.nodes: 2 nodes need SLURM (--workflow-profile profiles/slurm); jobs run on this machine take nodes: 1"),
    ({"sft": {"nodes": 4}}, False, "launchers.sft.nodes: 4 nodes need type ddp or zero2 (python starts one process)"),
    ({"align": {"type": "zero2", "extra_args": "--num_machines 2 --machine_rank 0"}}, False,
     "launchers.align.extra_args: --num_machines is set by the workflow; give nodes instead"),
])
def test_launchers_that_cannot_run_where_the_jobs_run_name_the_key(launchers, jobs_run_here, message):
    with pytest.raises(plan.PlanError) as error:
        plan.check_launchers(config_with(launchers=launchers), jobs_run_here=jobs_run_here)
    assert str(error.value) == message
    plan.check_launchers(config_with(launchers={"align": {"type": "ddp", "nodes": 2}}), jobs_run_here=False)
