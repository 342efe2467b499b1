"""Run the Snakemake workflow from a scratch copy of the repository, as a user would from a checkout."""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_PARTS = ["Snakefile", "config.yaml", "rules", "schemas", "envs", "configs", "profiles", "workflow", "prefopt", "docs/report"]
BIN = Path(sys.executable).parent


def copy_workflow(dest: Path) -> Path:
    for part in WORKFLOW_PARTS:
        source = REPO / part
        target = dest / part
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    return dest


def clone_workdir(source: Path, dest: Path) -> Path:
    """A copy of a workflow directory that has run: results, logs, checkpoints and Snakemake's
    metadata, with every file's and folder's mtime kept (copy2), so what was up to date in `source`
    is up to date in `dest`. Paths inside it are relative (checkpoint_dir, results/), so nothing
    points back at `source`."""
    shutil.copytree(source, dest, symlinks=True)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True, timeout: float = 1800,
              env: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(env or os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [str(BIN / "snakemake"), *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a (dry) run, as {rule: count}."""
    counts: dict[str, int] = collections.Counter()
    in_table = False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            match = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if match:
                if match.group(1) == "total":
                    break
                counts[match.group(1)] = int(match.group(2))
            elif line.strip() and not line.startswith("-"):
                break
    return dict(counts)


def tiny_config(model_dirs: dict[str, str], **overrides) -> dict:
    """A config that runs the whole DAG on tiny models in a few minutes."""
    config = {
        "seed": 0,
        "device": "cpu",
        "precision": "fp32",
        "threads": 1,
        "checkpoint_dir": "checkpoints",
        "models": {
            name: {"label": name.title(), "source": {"path": str(path)}} for name, path in model_dirs.items()
        },
        "data": {"source": "demo", "demo": {"n": 60, "seed": 0}, "sft_fraction": 0.33, "eval_size": 8,
                 "seed": 0, "on_bad_rows": "drop"},
        "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "modules_to_save": None},
        "sft": {"learning_rate": 1.0e-3, "max_steps": 2, "per_device_train_batch_size": 4, "save_steps": 1,
                "max_length": 128, "max_prompt_length": 64},
        "align": {"learning_rate": 1.0e-3, "max_steps": 2, "per_device_train_batch_size": 2,
                  "gradient_accumulation_steps": 1, "save_steps": 1, "max_length": 128, "max_prompt_length": 64},
        "methods": {"dpo": {"beta": 0.1}, "simpo": {"beta": 2.0, "gamma": 0.2}, "slime": {"preset": "paper"}, "stapo": {}},
        "ablations": {
            "model": next(iter(model_dirs)),
            "components": [
                {"name": "no_chosen_term", "label": "w/o chosen term", "overrides": {"lambda_w": 0.0}},
                {"name": "no_rejected_term", "label": "w/o rejected term", "overrides": {"lambda_l": 0.0}},
                {"name": "no_soft_margin", "label": "w/o soft distance margin", "overrides": {"use_soft_margin": False}},
                {"name": "no_hard_margin", "label": "w/o hard margin", "overrides": {"use_hard_margin": False}},
            ],
            "sweeps": {"p": [1.0, 2.5]},
        },
        "evaluation": {"benchmarks": ["offline", "demo_generation"], "batch_size": 8, "max_new_tokens": 8},
        "judge": None,
    }
    for key, value in overrides.items():
        config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def kill_at_first_checkpoint(workdir: Path, args: list[str], checkpoint_root: Path, *, pattern: str,
                             script: str = "align.py", env: dict | None = None, timeout: float = 600) -> Path:
    """Start `snakemake ARGS` in `workdir`, SIGKILL its `script` job (as the OOM killer or a scheduler would)
    once a new run folder `checkpoint_root/PATTERN` holds a complete checkpoint, and wait for Snakemake to
    fail. Returns that run's checkpoint folder."""
    import psutil

    env = dict(env or os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    process = subprocess.Popen([str(BIN / "snakemake"), *args], cwd=workdir, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    earlier = set(checkpoint_root.glob(pattern))
    deadline = time.time() + timeout
    while time.time() < deadline:
        new_runs = [run for run in checkpoint_root.glob(pattern) if run not in earlier]
        if new_runs and list(new_runs[0].glob("checkpoint-*/trainer_state.json")):
            break
        assert process.poll() is None, "snakemake ended before the job saved a checkpoint"
        time.sleep(0.05)
    else:
        process.kill()
        raise AssertionError(f"no checkpoint within {timeout} s")
    jobs = [child for child in psutil.Process(process.pid).children(recursive=True)
            if script in " ".join(child.cmdline())]
    assert jobs, f"no running {script} job to kill"
    for job in jobs:
        job.send_signal(signal.SIGKILL)
    assert process.wait(timeout=120) != 0
    return new_runs[0]
