"""What each job asks a scheduler for: CPUs, memory, runtime and GPUs, from the validated config.

Pure functions of a config whose schema defaults are filled in; tested without Snakemake.
rules/common.smk wraps them as `get_job_threads(rule)` and `get_job_resources(rule)`, and every rule
that runs as its own job declares `threads: get_job_threads(...)` and `resources: **get_job_resources(...)`.
The SLURM executor (profiles/slurm) turns those into sbatch options; run locally, Snakemake
schedules by the same numbers (`--resources mem_mb=... gpu=...` caps them).

    job_resources(config=config, rule="align")
    # paper.yaml: {'mem_mb': 200000, 'runtime': 600, 'cpus_per_task': 8, 'gpu': 8, 'gpu_model': 'h100', 'tasks': 0}
    # config.yaml: {'mem_mb': 8000, 'runtime': 120, 'cpus_per_task': 1}

Where the numbers come from:
- sft, align: `launchers.<stage>` (`gpus`, `gpu_model`, `mem_mb`, `runtime_min`); threads are
  `max(threads, num_processes)`, the CPUs the job's processes share (prefopt.training_args splits them).
- evaluate, generate_answers, baseline_answers: `resources.inference`; one GPU each when
  `device: cuda`, none on CPU; `threads` CPUs.
- prepare_model, prepare_baseline_model: `resources.prepare`; build_demo_data, split_data:
  `resources.data`; judge_answers: `resources.judge`. One CPU each.

GPUs, the GPU type and the single-task layout are asked for only when the config asks for GPUs,
so a CPU config submits CPU jobs. `cpus_per_task` always equals the job's threads.

A training stage with `nodes: N` above 1 (SLURM only; prefopt.plan.check_launchers) asks for N nodes,
one task each, and its threads, memory and GPUs on every node (`multinode_resources`):

    # launchers.align: {type: zero2, nodes: 2, num_processes: 8, gpus: 8, gpu_model: h100}
    # {'mem_mb': 8000, 'runtime': 120, 'cpus_per_task': 8, 'nodes': 2, 'tasks': 2, 'mpi': 'srun',
    #  'gres': 'gpu:h100:8', 'tasks_per_gpu': 0}
"""

from __future__ import annotations

import os
import sys

__all__ = ["RULE_GROUPS", "ResourcesError", "check_gpu_requests", "job_gpus", "job_resources", "job_threads",
           "multinode_resources"]

TRAINING_RULES = ("sft", "align")
INFERENCE_RULES = ("evaluate", "generate_answers", "baseline_answers")
# Every rule that runs as its own job (local rules take no resources), and the config block it reads.
RULE_GROUPS = {
    "sft": "launchers.sft",
    "align": "launchers.align",
    "evaluate": "resources.inference",
    "generate_answers": "resources.inference",
    "baseline_answers": "resources.inference",
    "prepare_model": "resources.prepare",
    "prepare_baseline_model": "resources.prepare",
    "build_demo_data": "resources.data",
    "split_data": "resources.data",
    "judge_answers": "resources.judge",
}


class ResourcesError(ValueError):
    """A config whose resource requests contradict each other; the message starts with the key path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _block(config: dict, rule: str) -> tuple[str, dict]:
    if rule not in RULE_GROUPS:
        raise ValueError(f"rule {rule!r} has no resources (known: {', '.join(sorted(RULE_GROUPS))})")
    key = RULE_GROUPS[rule]
    section, name = key.split(".")
    return key, config[section][name]


def job_threads(*, config: dict, rule: str) -> int:
    """CPU threads of one job: training jobs share `max(threads, num_processes)` between their
    processes, inference jobs use `threads`, the small jobs one."""
    key, block = _block(config, rule)
    if rule in TRAINING_RULES:
        return max(config["threads"], block["num_processes"])
    if rule in INFERENCE_RULES:
        return config["threads"]
    return 1


def job_gpus(*, config: dict, rule: str) -> int:
    """GPUs of one job: a training stage's `launchers.<stage>.gpus`, one per inference job on CUDA,
    else none. A training stage that asks for GPUs on `device: cpu`, or none on `device: cuda`,
    is an error: the job would either hold GPUs it never uses or get none on a cluster."""
    key, block = _block(config, rule)
    on_cuda = config["device"] == "cuda"
    if rule in TRAINING_RULES:
        gpus = block["gpus"]
        if gpus and not on_cuda:
            raise ResourcesError(f"{key}.gpus", f"{gpus} GPU(s) asked for, but device is {config['device']}")
        if on_cuda and not gpus:
            raise ResourcesError(f"{key}.gpus", "device is cuda, so give the number of GPUs the job uses (at least 1)")
        return gpus
    if rule in INFERENCE_RULES:
        return 1 if on_cuda else 0
    return 0


def check_gpu_requests(*, config: dict) -> None:
    """Raise `ResourcesError` for the first training stage whose GPUs contradict `device`."""
    for rule in TRAINING_RULES:
        job_gpus(config=config, rule=rule)


def job_resources(*, config: dict, rule: str) -> dict:
    """The Snakemake resources of one job: `mem_mb`, `runtime` (minutes), `cpus_per_task`, and with
    GPUs `gpu`, `gpu_model` (when set) and `tasks: 0`; a training stage on several nodes gets
    `multinode_resources` instead of the GPU keys."""
    key, block = _block(config, rule)
    resources = {
        "mem_mb": block["mem_mb"],
        "runtime": block["runtime_min"],
        "cpus_per_task": job_threads(config=config, rule=rule),
    }
    gpus = job_gpus(config=config, rule=rule)
    if rule in TRAINING_RULES and block["nodes"] > 1:
        resources.update(multinode_resources(nodes=block["nodes"], gpus=gpus, gpu_model=block["gpu_model"]))
    elif gpus:
        resources["gpu"] = gpus
        if block["gpu_model"]:
            resources["gpu_model"] = block["gpu_model"]
        # One task holds every GPU and starts its own processes (accelerate), rather than the SLURM
        # plugin splitting an N-GPU job into N one-GPU tasks (snakemake-executor-plugin-slurm #459).
        resources["tasks"] = 0
    return resources


def multinode_resources(*, nodes: int, gpus: int, gpu_model: str | None) -> dict:
    """What a job on `nodes` nodes asks the SLURM plugin for: `--nodes=N --ntasks=N` (one task per node,
    `cpus_per_task` CPUs and `mem_mb` each) and `gpus` GPUs on every node (`--gres=gpu[:type]:G`, a
    per-node count; `gpu`/`--gpus` would be the job's total, spread over the nodes as SLURM likes).
    `mpi` makes the plugin's jobstep run the job's command as written, and that command starts one
    launcher per node with srun (prefopt.plan.launch_command); `tasks_per_gpu: 0` keeps the plugin
    from reading `tasks` as tasks per GPU."""
    resources = {"nodes": nodes, "tasks": nodes, "mpi": "srun"}
    if gpus:
        resources["gres"] = ":".join(["gpu", *([gpu_model] if gpu_model else []), str(gpus)])
        resources["tasks_per_gpu"] = 0
    return resources


def jobs_use_this_python() -> None:
    """Put this interpreter's bin/ first on PATH, so jobs run this Snakemake's `python` and `accelerate`
    with or without an activated venv: locally, and in SLURM jobs, which inherit this environment
    (sbatch --export=ALL). A job's conda env (`--sdm conda`) is activated after, and comes first."""
    here = os.path.dirname(sys.executable)
    if os.environ.get("PATH", "").split(os.pathsep)[0] != here:
        os.environ["PATH"] = os.pathsep.join([here, os.environ.get("PATH", "")])
