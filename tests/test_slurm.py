"""profiles/slurm: dry runs show exactly the config's resources, and the tiny DAG runs on a real SLURM.

The real-SLURM tests start a one-node cluster with tests/slurm/setup_slurm.sh (Debian's SLURM 22.05
from apt, slurmdbd on MariaDB for sacct, dummy typed GPUs) and stop it with teardown_slurm.sh. They
need root and apt-get, and are skipped elsewhere. Snakemake is started as from a fresh shell: the
venv's snakemake by its path, with the venv's bin/ not on PATH.
"""

from __future__ import annotations

import collections
import datetime
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from prefopt.config_schema import load_config
from prefopt.resources import job_resources
from workflow_utils import BIN, REPO, clone_workdir, copy_workflow, job_counts, snakemake, tiny_config, write_config

SETUP = REPO / "tests" / "slurm" / "setup_slurm.sh"
TEARDOWN = REPO / "tests" / "slurm" / "teardown_slurm.sh"
GPU_TYPE = "a100"  # the typed GRES of the test node; paper.yaml's h100 would be rejected there
LOCAL_RULES = {"write_run_config", "tables_manifest", "tables", "figures_manifest", "figures", "tracking_index",
               "all", "judge_config", "score_judgments"}
ENV_KEYS = ("PREFOPT_SLURM_PARTITION", "PREFOPT_SLURM_ACCOUNT", "PREFOPT_SLURM_STATUS_COMMAND")


def real_slurm_skip_reason() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root to start a one-node SLURM (tests/slurm/setup_slurm.sh)"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "needs apt-get to install SLURM (Debian/Ubuntu)"
    if Path("/etc/slurm/slurm.conf").is_file() and not Path("/etc/slurm/slurm.conf").is_symlink():
        return "/etc/slurm/slurm.conf exists (a real cluster's); the test cluster would need that path"
    return None


def real_slurm(test):
    """Marks `slurm` and `slow`; skipped, with the reason, where no SLURM can be started."""
    reason = real_slurm_skip_reason()
    return pytest.mark.slurm(pytest.mark.slow(pytest.mark.skipif(reason is not None, reason=reason or "")(test)))


def resolved(config: dict) -> dict:
    return load_config(config, REPO / "schemas" / "config.schema.yaml")


def dry_run_blocks(output: str, rule: str) -> list[str]:
    return [block for block in output.split("\n\n") if re.search(rf"^(localrule|rule) {rule}:", block, re.M)]


def resources_of(block: str) -> dict[str, str]:
    line = next(line for line in block.splitlines() if line.strip().startswith("resources:"))
    return dict(item.split("=", 1) for item in line.split(":", 1)[1].strip().split(", "))


# ------------------------------------------------------------------------------- dry runs (no SLURM)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return copy_workflow(tmp_path_factory.mktemp("slurm-dry"))


@pytest.fixture
def profile_dry_run(monkeypatch):
    def run(workdir, configfile, *args, **env):
        for key in ENV_KEYS:
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return snakemake(workdir, "-n", "--workflow-profile", "profiles/slurm", "--configfile", configfile, *args)

    return run


def test_paper_dry_run_shows_exactly_the_configs_resources(workdir, profile_dry_run):
    """Every training job asks for the GPUs, GPU type, memory and runtime paper.yaml gives, as one task."""
    config = resolved(yaml.safe_load((workdir / "configs" / "paper.yaml").read_text()))
    result = profile_dry_run(workdir, "configs/paper.yaml")
    for rule in ("sft", "align", "evaluate", "split_data", "prepare_model"):
        blocks = dry_run_blocks(result.stdout, rule)
        assert blocks, rule
        wanted = {key: str(value) for key, value in job_resources(config=config, rule=rule).items()}
        for block in blocks:
            shown = resources_of(block)
            assert {key: shown.get(key) for key in wanted} == wanted, (rule, shown)
            if rule in ("sft", "align"):
                launcher = config["launchers"][rule]
                assert wanted["gpu"] == str(launcher["gpus"]) and wanted["mem_mb"] == str(launcher["mem_mb"])
                assert wanted["runtime"] == str(launcher["runtime_min"])
                command = block.split("Shell command:", 1)[1].strip()
                # nodes: 1 is the one-machine command (the jobstep plugin's `srun -n1` starts it).
                assert command.startswith(f"accelerate launch --config_file configs/accelerate/{launcher['type']}"
                                          f".yaml --num_processes {launcher['num_processes']} "), command
                assert f"--require-gpus {launcher['gpus']}" in command
    assert len(dry_run_blocks(result.stdout, "align")) == 17 and len(dry_run_blocks(result.stdout, "sft")) == 3
    assert "slurm_partition" not in result.stdout and "slurm_account" not in result.stdout


def test_cpu_config_dry_run_asks_for_no_gpus_and_takes_partition_from_the_environment(workdir, profile_dry_run):
    result = profile_dry_run(workdir, "config.yaml", PREFOPT_SLURM_PARTITION="cpu-short", PREFOPT_SLURM_ACCOUNT="lab42")
    config = resolved(yaml.safe_load((workdir / "config.yaml").read_text()))
    for rule in ("build_demo_data", "split_data", "prepare_model", "sft", "align", "evaluate"):
        for block in dry_run_blocks(result.stdout, rule):
            shown = resources_of(block)
            assert "gpu" not in shown and "gpu_model" not in shown and "tasks" not in shown, (rule, shown)
            assert shown["slurm_partition"] == "cpu-short" and shown["slurm_account"] == "lab42"
            assert shown["cpus_per_task"] == str(job_resources(config=config, rule=rule)["cpus_per_task"])
    assert resources_of(dry_run_blocks(result.stdout, "build_demo_data")[0])["mem_mb"] == "2000"
    assert "--require-gpus 0" in dry_run_blocks(result.stdout, "align")[0]


def test_command_line_overrides_change_only_what_they_name(workdir, profile_dry_run):
    """A partition for one rule and a default account leave the config's GPUs, memory and runtime alone."""
    result = profile_dry_run(workdir, "configs/paper.yaml", "--set-resources", "align:slurm_partition=gpu-long",
                             "--default-resources", "slurm_account=lab42")
    shown = resources_of(dry_run_blocks(result.stdout, "align")[0])
    assert shown["slurm_partition"] == "gpu-long" and shown["slurm_account"] == "lab42"
    assert (shown["gpu"], shown["gpu_model"], shown["mem_mb"], shown["runtime"], shown["tasks"]) == \
        ("8", "h100", "200000", "600", "0")
    assert "slurm_partition" not in resources_of(dry_run_blocks(result.stdout, "sft")[0])


def submit_command(resources: dict, threads: int) -> str:
    """The sbatch command snakemake-executor-plugin-slurm 2.8.0 builds for a job with these resources."""
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(resources), threads=threads)
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": "rule", "account": "", "partition": "",
              "workdir": "/work"}
    return get_submit_command(job, params) + set_gres_string(job)


def test_two_nodes_dry_run_shows_the_nodes_and_one_launcher_per_node(workdir, profile_dry_run):
    """`nodes: 2` on paper.yaml: each training job asks for 2 nodes, one task per node with 8 CPUs,
    200000 MB and 8 h100 GPUs each (sbatch as the plugin builds it), and its command starts one
    accelerate launcher per node through srun, for 16 processes on 2 machines."""
    config = yaml.safe_load((workdir / "configs" / "paper.yaml").read_text())
    config["launchers"]["sft"].update(nodes=2, type="ddp")
    config["launchers"]["align"].update(nodes=2)  # zero2
    write_config(workdir / "paper-2nodes.yaml", config)
    result = profile_dry_run(workdir, "paper-2nodes.yaml")
    config = resolved(config)
    for rule, kind in (("sft", "ddp"), ("align", "zero2")):
        block = dry_run_blocks(result.stdout, rule)[0]
        wanted = job_resources(config=config, rule=rule)
        assert wanted == {"mem_mb": 200000, "runtime": 600, "cpus_per_task": 8, "nodes": 2, "tasks": 2,
                          "mpi": "srun", "gres": "gpu:h100:8", "tasks_per_gpu": 0}
        shown = resources_of(block)
        assert {key: shown.get(key) for key in wanted} == {key: str(value) for key, value in wanted.items()}
        assert "gpu" not in shown and "gpu_model" not in shown
        sbatch = submit_command(wanted, threads=8)
        assert "--mem 200000 --nodes=2 --ntasks=2 --cpus-per-task=8" in sbatch and sbatch.endswith(" --gres=gpu:h100:8")
        assert "--gpus" not in sbatch and "--ntasks-per-gpu" not in sbatch
        command = block.split("Shell command:", 1)[1].strip()
        assert command.startswith("srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --cpus-per-task=8 --overlap "
                                  f"--kill-on-bad-exit=1 bash {workdir}/workflow/scripts/launch_node.sh "
                                  f"--config_file configs/accelerate/{kind}.yaml --num_processes 16 --num_machines 2 "), command
        assert ("--deepspeed_multinode_launcher standard" in command) == (kind == "zero2")
        assert f"workflow/scripts/{rule}.py" in command and "--require-gpus 8" in command


def test_launch_node_sets_the_rank_and_the_main_node_from_slurm(tmp_path):
    """workflow/scripts/launch_node.sh on node 1 of a 3-node job: accelerate gets rank 1 and the job's
    first node as the main process, then the arguments as given (stand-ins for scontrol and accelerate)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text('#!/bin/sh\n[ "$*" = "show hostnames gpu[07-08],cpu01" ] || exit 3\n'
                                      'printf "gpu07\\ngpu08\\ncpu01\\n"\n')
    (bin_dir / "accelerate").write_text('#!/bin/sh\necho "$@"\n')
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_NODEID="1",
               SLURM_JOB_NODELIST="gpu[07-08],cpu01")
    run = subprocess.run(["bash", str(REPO / "workflow" / "scripts" / "launch_node.sh"), "--num_machines", "3",
                          "align.py", "--out", "a b"], env=env, capture_output=True, text=True, check=True)
    assert run.stdout == "launch --machine_rank 1 --main_process_ip gpu07 --num_machines 3 align.py --out a b\n"


def test_nodes_above_one_outside_slurm_is_one_config_error(workdir):
    config = tiny_config({"tiny": str(workdir)})  # any existing path: nothing is loaded
    config["launchers"] = {"align": {"type": "ddp", "nodes": 2}}
    result = snakemake(workdir, "-n", "--cores", "2", "--configfile",
                       str(write_config(workdir / "nodes-local.yaml", config)), check=False)
    assert result.returncode != 0
    assert ("config error: launchers.align.nodes: 2 nodes need SLURM (--workflow-profile profiles/slurm); "
            "jobs run on this machine take nodes: 1") in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- a real one-node SLURM


@pytest.fixture(scope="module")
def slurm_cluster():
    # Outside pytest's temporary folders, which another pytest session on the machine may prune.
    state = Path(tempfile.mkdtemp(prefix="prefopt-slurm-"))
    env = dict(os.environ, PREFOPT_SLURM_GPU_TYPE=GPU_TYPE)
    setup = subprocess.run(["bash", str(SETUP), str(state)], env=env, capture_output=True, text=True, timeout=900)
    if setup.returncode != 0:
        subprocess.run(["bash", str(TEARDOWN), str(state)], capture_output=True, timeout=120)
        raise AssertionError(f"setup_slurm.sh failed:\n{setup.stdout[-3000:]}\n{setup.stderr[-3000:]}")
    try:
        yield state
    finally:
        teardown = subprocess.run(["bash", str(TEARDOWN), str(state)], capture_output=True, text=True, timeout=120)
        assert teardown.returncode == 0, teardown.stdout + teardown.stderr
        shutil.rmtree(state, ignore_errors=True)


def fresh_shell_env(**extra) -> dict:
    """The environment of a new login shell: no venv on PATH, no PREFOPT_SLURM_* left over; SLURM's
    commands find the test cluster where they look by default (/etc/slurm/slurm.conf)."""
    venv_bin = BIN.resolve()
    path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    env = {key: value for key, value in os.environ.items() if key not in (*ENV_KEYS, "VIRTUAL_ENV", "SLURM_CONF")}
    env.update(PATH=os.pathsep.join(path), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


def run_snakemake(workdir: Path, *args: str, env: dict, timeout: float = 1500) -> subprocess.CompletedProcess:
    assert shutil.which("python", path=env["PATH"]) != str(BIN / "python")
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)


def slurm_jobs(run: subprocess.CompletedProcess, env: dict) -> list[dict]:
    """The allocations this Snakemake run submitted (its SLURM run ID is every job's name), from sacct."""
    run_id = re.search(r"SLURM run ID: (\S+)", run.stdout + run.stderr).group(1)
    fields = ["JobID", "State", "ExitCode", "Comment", "NCPUS", "ReqMem", "Timelimit", "AllocTRES"]
    since = (datetime.date.today() - datetime.timedelta(days=2)).isoformat()  # sacct's default: since midnight
    rows = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "--name", run_id, "-o", ",".join(fields)],
                          env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    jobs = [dict(zip(fields, row.split("|"))) for row in rows if row.strip()]
    for job in jobs:
        job["rule"] = re.match(r"rule_(.+?)(?:_wildcards_.*)?$", job["Comment"]).group(1)
    return jobs


def minutes(timelimit: str) -> int:
    days, _, clock = timelimit.rpartition("-")
    hours, mins, _ = (int(part) for part in clock.split(":"))
    return int(days or 0) * 1440 + hours * 60 + mins


def numbers(value, prefix=""):
    """Every number in a JSON value, by its path; timings left out (they differ run to run)."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    else:
        return {}
    found = {}
    for key, item in items:
        if not re.search(r"elapsed|seconds|_s$|time", str(key)):
            found.update(numbers(item, f"{prefix}/{key}"))
    return found


def load_json_or_lines(path: Path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    return json.loads(path.read_text())


def assert_same_numbers(local_file: Path, slurm_file: Path):
    local, remote = numbers(load_json_or_lines(local_file)), numbers(load_json_or_lines(slurm_file))
    assert local.keys() == remote.keys() and local, local_file
    for key, value in local.items():
        same = math.isclose(value, remote[key], rel_tol=1e-6, abs_tol=1e-9)
        assert same or (math.isnan(value) and math.isnan(remote[key])), \
            f"{local_file.name}{key}: local {value} vs SLURM {remote[key]}"


def small_cluster_config(tiny_model_dir) -> dict:
    """The tiny DAG, trimmed to one model and one method, sized for the 2-CPU, 20000 MB test node.
    Tables 4 and 5 keep one row each, the main SLIME run (p = 2.5 is its default): no extra jobs."""
    ablations = {"model": "tiny", "components": [], "sweeps": {"p": [2.5]}}
    config = tiny_config({"tiny": tiny_model_dir}, methods={"slime": {"preset": "paper"}}, ablations=ablations)
    config["evaluation"]["benchmarks"] = ["offline"]
    config["launchers"] = {stage: {"mem_mb": 3000, "runtime_min": 20} for stage in ("sft", "align")}
    config["resources"] = {"inference": {"mem_mb": 3000, "runtime_min": 15},
                           "prepare": {"mem_mb": 3000, "runtime_min": 10},
                           "data": {"mem_mb": 500, "runtime_min": 5}}
    return config


@pytest.fixture(scope="module")
def dag_on_slurm(slurm_cluster, tiny_model_dir, tmp_path_factory):
    """The same config run locally and through profiles/slurm, each from a fresh shell."""
    config = small_cluster_config(tiny_model_dir)
    local_dir = copy_workflow(tmp_path_factory.mktemp("local-run"))
    slurm_dir = copy_workflow(tmp_path_factory.mktemp("slurm-run"))
    for workdir in (local_dir, slurm_dir):
        write_config(workdir / "tiny.yaml", config)
    # Side by side: the SLURM run spends most of its time starting jobs and polling their states.
    with ThreadPoolExecutor(max_workers=1) as pool:
        local_run = pool.submit(run_snakemake, local_dir, "--cores", "2", "--configfile", "tiny.yaml",
                                env=fresh_shell_env())
        env = fresh_shell_env(PREFOPT_SLURM_PARTITION="main", PREFOPT_SLURM_ACCOUNT="prefopt",
                              PREFOPT_SLURM_STATUS_COMMAND="sacct")
        remote = run_snakemake(slurm_dir, "--workflow-profile", "profiles/slurm", "--configfile", "tiny.yaml",
                               "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
                               env=env)
        local = local_run.result()
    assert local.returncode == 0, local.stdout[-4000:] + local.stderr[-4000:]
    assert remote.returncode == 0, remote.stdout[-6000:] + remote.stderr[-6000:]
    return {"config": resolved(config), "local_dir": local_dir, "slurm_dir": slurm_dir, "local": local,
            "remote": remote, "env": env}


@real_slurm
def test_tiny_dag_runs_every_job_on_slurm_with_the_configs_resources(dag_on_slurm):
    run, env, config = dag_on_slurm["remote"], dag_on_slurm["env"], dag_on_slurm["config"]
    jobs = slurm_jobs(run, env)
    expected = {rule: count for rule, count in job_counts(run.stdout + run.stderr).items() if rule not in LOCAL_RULES}
    assert collections.Counter(job["rule"] for job in jobs) == expected
    assert sum(expected.values()) == 8  # demo data, split, prepare, SFT, one alignment, three evaluations
    for job in jobs:
        assert job["State"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        wanted = job_resources(config=config, rule=job["rule"])
        assert int(job["NCPUS"]) == wanted["cpus_per_task"] == 1, job
        assert job["ReqMem"] == f"{wanted['mem_mb']}M", job
        assert minutes(job["Timelimit"]) == wanted["runtime"], job
        assert "gres/gpu" not in job["AllocTRES"], job  # a CPU config submits CPU jobs
    accounts = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "account,partition", "-j",
                               ",".join(job["JobID"] for job in jobs)], env=env, capture_output=True, text=True,
                              check=True).stdout.split()
    assert set(accounts) == {"prefopt|main"}  # from PREFOPT_SLURM_ACCOUNT and PREFOPT_SLURM_PARTITION
    # Both training jobs (each its own SLURM job) logged to TensorBoard in the invocation's one group.
    runs = sorted(path.relative_to(dag_on_slurm["slurm_dir"] / "tracking" / "tensorboard").parts
                  for path in (dag_on_slurm["slurm_dir"] / "tracking" / "tensorboard").glob("*/tiny/*"))
    assert len(runs) == 2 and len({group for group, _, _ in runs}) == 1, runs


@real_slurm
def test_slurm_results_match_a_local_run(dag_on_slurm):
    local_dir, slurm_dir = dag_on_slurm["local_dir"], dag_on_slurm["slurm_dir"]
    files = sorted(p.relative_to(local_dir) for p in (local_dir / "results").rglob("*")
                   if p.suffix in (".json", ".jsonl") and "/eval/" in str(p))
    assert len(files) == 2 * 3, files  # offline result + per-example rows for base, SFT and the SLIME run
    for name in files:
        assert_same_numbers(local_dir / name, slurm_dir / name)
    table = "results/tables/table3.csv"
    assert (local_dir / table).read_text() == (slurm_dir / table).read_text()


@real_slurm
def test_gpu_launcher_reaches_sbatch_as_typed_gpus_in_one_task_and_is_not_retried(dag_on_slurm):
    """`gpus: 4` of type a100 is one allocation of 4 a100 GPUs, one task; the job's GPU check fails
    (the test node's GPUs are dummy files) with one clear line, and the failure is not resubmitted."""
    slurm_dir = dag_on_slurm["slurm_dir"]
    config = small_cluster_config(dag_on_slurm["config"]["models"]["tiny"]["source"]["path"])
    config["device"] = "cuda"
    config["threads"] = 2
    config["launchers"] = {stage: {"gpus": 4, "gpu_model": GPU_TYPE, "mem_mb": 1500, "runtime_min": 7}
                           for stage in ("sft", "align")}
    write_config(slurm_dir / "gpu.yaml", config)
    # squeue this time: the status command for clusters without accounting (MinJobAge is 600 s here).
    env = dict(dag_on_slurm["env"], PREFOPT_SLURM_STATUS_COMMAND="squeue")
    run = run_snakemake(slurm_dir, "--workflow-profile", "profiles/slurm", "--configfile", "gpu.yaml",
                        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
                        "results/tiny/sft", env=env, timeout=600)
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-4000:]
    jobs = slurm_jobs(run, env)
    assert [job["rule"] for job in jobs] == ["sft"], jobs  # submitted once: retries: 0
    job = jobs[0]
    assert job["State"] == "FAILED", job
    assert f"gres/gpu:{GPU_TYPE}=4" in job["AllocTRES"] and "gres/gpu=4" in job["AllocTRES"], job
    assert job["ReqMem"] == "1500M" and minutes(job["Timelimit"]) == 7 and job["NCPUS"] == "2", job
    shown = subprocess.run(["scontrol", "show", "job", job["JobID"]], env=env, capture_output=True, text=True,
                           check=True).stdout
    assert re.search(r"\bNumTasks=1\b", shown), shown
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job["JobID"], "-o", "jobid,ntasks,alloctres"], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    srun_steps = [step.split("|") for step in steps if re.match(r"^\d+\.0\|", step)]
    assert srun_steps and srun_steps[0][1] == "1" and f"gres/gpu:{GPU_TYPE}=4" in srun_steps[0][2], steps
    # The job ran the command with as many threads as it has CPUs, and asked for the config's GPUs.
    slurm_log = (slurm_dir / ".snakemake/slurm_logs/rule_sft/tiny" / f"{job['JobID']}.log").read_text()
    assert "--threads 2 --require-gpus 4" in slurm_log, slurm_log[-3000:]
    log = (slurm_dir / "logs/sft/tiny.log").read_text()
    assert re.search(r"ERROR .*GPU", log) and "Traceback" not in log, log[-2000:]  # one clear line


@pytest.mark.extended
@real_slurm
def test_two_nodes_run_ddp_with_one_launcher_per_node(dag_on_slurm, tmp_path):
    """`nodes: 2` for real: the alignment run again, as one job on both nodes of partition `multi`
    (two slurmd on this machine), DDP over gloo on CPU with one process per node; its step runs one
    task on each node, and training sees 2 processes."""
    workdir = clone_workdir(dag_on_slurm["slurm_dir"], tmp_path / "two-nodes")
    (run_dir,) = (workdir / "results" / "tiny" / "align").iterdir()
    shutil.rmtree(run_dir)
    shutil.rmtree(workdir / "checkpoints" / "tiny" / run_dir.name, ignore_errors=True)  # no resuming
    config = small_cluster_config(dag_on_slurm["config"]["models"]["tiny"]["source"]["path"])
    config["launchers"]["align"].update(type="ddp", nodes=2, num_processes=1)
    write_config(workdir / "two-nodes.yaml", config)
    env = dict(dag_on_slurm["env"], PREFOPT_SLURM_PARTITION="multi")
    run = run_snakemake(workdir, "--workflow-profile", "profiles/slurm", "--configfile", "two-nodes.yaml",
                        "--slurm-init-seconds-before-status-checks", "2", "--seconds-between-status-checks", "3",
                        str(run_dir.relative_to(workdir)), env=env, timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    jobs = slurm_jobs(run, env)
    assert all(job["State"] == "COMPLETED" for job in jobs), jobs
    (job,) = [job for job in jobs if job["rule"] == "align"]
    assert "node=2" in job["AllocTRES"], jobs
    steps = subprocess.run(["sacct", "-n", "-P", "-j", job["JobID"], "-o", "jobid,ntasks,nodelist"], env=env,
                           capture_output=True, text=True, check=True).stdout.splitlines()
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    assert f"{job['JobID']}.0|2|{host},{host}-2" in steps, steps  # one launcher task on each node
    log = (workdir / "logs" / "align" / "tiny" / f"{run_dir.name}.log").read_text()
    assert (run_dir / "summary.json").is_file(), log[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2, log[-3000:]
