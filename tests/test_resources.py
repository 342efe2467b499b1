"""prefopt.resources: each job's CPUs, memory, runtime and GPUs come from the config, nothing else."""

from __future__ import annotations

import copy

import pytest
import yaml

from prefopt.config_schema import load_config
from prefopt.resources import RULE_GROUPS, ResourcesError, check_gpu_requests, job_gpus, job_resources, job_threads
from workflow_utils import REPO, copy_workflow, snakemake, tiny_config, write_config

SCHEMA = str(REPO / "schemas" / "config.schema.yaml")
SMALL_RULES = ("prepare_model", "prepare_baseline_model", "build_demo_data", "split_data", "judge_answers")


def resolved(config: dict) -> dict:
    """The config as the workflow sees it: validated, with the schema's defaults filled in."""
    return load_config(config, SCHEMA)


@pytest.fixture
def cpu_config(tmp_path):
    return tiny_config({"tiny": str(tmp_path)})


def gpu_config(cpu_config, **launcher):
    config = copy.deepcopy(cpu_config)
    config["device"] = "cuda"
    config["threads"] = 4
    stage = {"type": "zero2", "num_processes": 4, "gpus": 4, "gpu_model": "a100", "mem_mb": 50000, "runtime_min": 90}
    stage.update(launcher)
    config["launchers"] = {"sft": dict(stage), "align": dict(stage)}
    config["resources"] = {"inference": {"gpu_model": "l40s", "mem_mb": 12000, "runtime_min": 45}}
    return config


def test_cpu_config_asks_for_no_gpus_and_small_jobs_stay_small(cpu_config):
    config = resolved(cpu_config)
    for rule in RULE_GROUPS:
        resources = job_resources(config=config, rule=rule)
        assert not {"gpu", "gpu_model", "tasks"} & resources.keys(), (rule, resources)
        assert resources["cpus_per_task"] == job_threads(config=config, rule=rule)
    for rule in SMALL_RULES:
        assert job_resources(config=config, rule=rule)["cpus_per_task"] == 1
    # The schema's defaults: the data jobs ask for 2 GB, the judge client for 1 GB.
    assert job_resources(config=config, rule="build_demo_data") == {"mem_mb": 2000, "runtime": 30, "cpus_per_task": 1}
    assert job_resources(config=config, rule="judge_answers") == {"mem_mb": 1000, "runtime": 240, "cpus_per_task": 1}


def test_training_jobs_get_exactly_the_launchers_numbers(cpu_config):
    config = resolved(gpu_config(cpu_config))
    for stage in ("sft", "align"):
        assert job_resources(config=config, rule=stage) == {
            "mem_mb": 50000, "runtime": 90, "cpus_per_task": 4, "gpu": 4, "gpu_model": "a100", "tasks": 0,
        }
        assert job_gpus(config=config, rule=stage) == 4


def test_inference_jobs_get_one_gpu_of_their_own_type_on_cuda(cpu_config):
    config = resolved(gpu_config(cpu_config))
    for rule in ("evaluate", "generate_answers", "baseline_answers"):
        assert job_resources(config=config, rule=rule) == {
            "mem_mb": 12000, "runtime": 45, "cpus_per_task": 4, "gpu": 1, "gpu_model": "l40s", "tasks": 0,
        }
    for rule in SMALL_RULES:
        assert "gpu" not in job_resources(config=config, rule=rule)


def test_gpu_model_is_left_out_when_not_set(cpu_config):
    config = gpu_config(cpu_config)
    del config["launchers"]["sft"]["gpu_model"]
    resources = job_resources(config=resolved(config), rule="sft")
    assert resources["gpu"] == 4 and "gpu_model" not in resources


def test_cpus_follow_the_processes_a_training_job_starts(cpu_config):
    config = copy.deepcopy(cpu_config)
    config["threads"] = 1
    config["launchers"] = {"align": {"type": "ddp", "num_processes": 2}}
    config = resolved(config)
    assert job_resources(config=config, rule="align")["cpus_per_task"] == 2
    assert job_resources(config=config, rule="sft")["cpus_per_task"] == 1
    assert job_resources(config=config, rule="evaluate")["cpus_per_task"] == 1


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda c: c.update(launchers={"sft": {"gpus": 2}}), "launchers.sft.gpus"),  # GPUs on device: cpu
        (lambda c: c.update(device="cuda", launchers={"sft": {"gpus": 1}}), "launchers.align.gpus"),  # none on cuda
    ],
)
def test_contradictory_gpu_requests_name_the_key(cpu_config, edit, key):
    config = copy.deepcopy(cpu_config)
    edit(config)
    config = resolved(config)
    with pytest.raises(ResourcesError) as error:
        for rule in ("sft", "align"):
            job_resources(config=config, rule=rule)
    assert error.value.key == key and str(error.value).startswith(key)
    with pytest.raises(ResourcesError, match=key):
        check_gpu_requests(config=config)


def test_contradictory_gpus_stop_the_workflow_with_one_line(cpu_config, tmp_path):
    workdir = copy_workflow(tmp_path / "workflow")
    config = copy.deepcopy(cpu_config)
    config["models"]["tiny"]["source"]["path"] = str(workdir)  # any existing path: nothing is loaded
    config["launchers"] = {"align": {"gpus": 2}}
    result = snakemake(workdir, "-n", "--configfile", str(write_config(workdir / "gpus.yaml", config)), check=False)
    assert result.returncode != 0
    assert "config error: launchers.align.gpus: 2 GPU(s) asked for, but device is cpu" in result.stderr
    assert "Traceback" not in result.stderr and "Job stats" not in result.stdout


def test_unknown_rule_is_an_error(cpu_config):
    with pytest.raises(ValueError, match="write_run_config"):
        job_resources(config=resolved(cpu_config), rule="write_run_config")


def test_paper_config_resources():
    config = resolved(yaml.safe_load((REPO / "configs" / "paper.yaml").read_text()))
    assert job_resources(config=config, rule="align") == {
        "mem_mb": 200000, "runtime": 600, "cpus_per_task": 8, "gpu": 8, "gpu_model": "h100", "tasks": 0,
    }
    assert job_resources(config=config, rule="evaluate")["gpu"] == 1
    assert job_resources(config=config, rule="split_data") == {"mem_mb": 16000, "runtime": 60, "cpus_per_task": 1}


def test_nodes_ask_for_each_nodes_cpus_memory_and_gpus_as_one_task_per_node(cpu_config):
    """`nodes: 2`: the job asks for 2 nodes, one task each with the stage's CPUs, and the GPUs per node
    as a per-node GRES (not the plugin's `gpu`, which counts the whole job's); `mpi` has the jobstep
    plugin run the command as written, which starts the launchers with srun."""
    config = resolved(gpu_config(cpu_config, nodes=2))
    assert job_resources(config=config, rule="align") == {
        "mem_mb": 50000, "runtime": 90, "cpus_per_task": 4,
        "nodes": 2, "tasks": 2, "mpi": "srun", "gres": "gpu:a100:4", "tasks_per_gpu": 0,
    }
    config = resolved(gpu_config(cpu_config, nodes=3, gpu_model=None))
    assert job_resources(config=config, rule="sft")["gres"] == "gpu:4"
    cpu = copy.deepcopy(cpu_config)
    cpu["launchers"] = {"align": {"type": "ddp", "nodes": 2, "num_processes": 2}}
    config = resolved(cpu)
    assert job_resources(config=config, rule="align") == {
        "mem_mb": 8000, "runtime": 120, "cpus_per_task": 2, "nodes": 2, "tasks": 2, "mpi": "srun",
    }
    assert "nodes" not in job_resources(config=config, rule="sft")  # nodes: 1, the default: as before
