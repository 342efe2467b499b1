"""The run config: one small JSON file per training job, written complete by the DAG (prefopt.plan).

Every hyperparameter of an `sft` or `align` job reaches it through this file, never through the
global config, so Snakemake reruns exactly the jobs whose settings changed. This module checks a
run config and fills in nothing: the defaults live in schemas/config.schema.yaml alone, and a
missing key is an error. Shape::

    {"method": "slime",                                   # sft | dpo | simpo | slime | stapo
     "loss_kwargs": {"lambda_w": 0.1, ...},              # every keyword of the loss ({} for sft)
     "training": {"learning_rate": 5e-7, ..., "seed": 0, "precision": "fp32", "device": "cpu", "num_gpus": 0},
     "lora": {"r": 64, "alpha": 128, "dropout": 0.0, "target_modules": [...], "modules_to_save": [...]},
     "data": {"on_bad_rows": "drop"},
     "probes": {"every_steps": 4, "pairs": 64}}           # held-out probes (prefopt.probes); null: none

`lora: null` means full fine-tuning.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "simpo", "slime", "stapo")
PRECISIONS = ("auto", "fp32", "bf16")  # auto: resolved by the job on its node (prefopt.job.resolve_job_precision)
DEVICES = ("cpu", "cuda")

_NUMBER = (int, float)
# key -> (accepted types, allows None)
TRAINING_KEYS = {
    "learning_rate": (_NUMBER, False),
    "lr_scheduler_type": ((str,), False),
    "warmup_ratio": (_NUMBER, False),
    "max_grad_norm": (_NUMBER, True),
    "num_train_epochs": (_NUMBER, False),
    "max_steps": ((int,), False),
    "per_device_train_batch_size": ((int,), False),
    "per_device_eval_batch_size": ((int,), False),
    "gradient_accumulation_steps": ((int,), False),
    "save_steps": ((int,), False),
    "save_total_limit": ((int,), True),
    "logging_steps": ((int,), False),
    "seed": ((int,), False),
    "max_length": ((int,), False),
    "max_prompt_length": ((int,), False),
    "precision": ((str,), False),
    "device": ((str,), False),
    "gradient_checkpointing": ((bool,), False),
    "optim": ((str,), False),
    "weight_decay": (_NUMBER, False),
    "num_gpus": ((int,), False),
}
LORA_KEYS = {
    "r": ((int,), False),
    "alpha": (_NUMBER, False),
    "dropout": (_NUMBER, False),
    "target_modules": ((list,), False),
    "modules_to_save": ((list,), True),
}
DATA_KEYS = {"on_bad_rows": ((str,), False)}
PROBE_KEYS = {"every_steps": ((int,), False), "pairs": ((int,), False)}
TOP_KEYS = ("method", "loss_kwargs", "training", "lora", "data", "probes")


class RunConfigError(ValueError):
    """A run config that does not match the shape above; the message names the key."""


def _check_section(section, types: dict, where: str) -> None:
    """Every key of `types` present, no other key, each of its type."""
    if not isinstance(section, dict):
        raise RunConfigError(f"run config '{where}' must be an object, got {type(section).__name__}")
    for key in section:
        if key not in types:
            raise RunConfigError(f"run config '{where}.{key}': unknown key (known: {sorted(types)})")
    for key, (accepted, nullable) in types.items():
        if key not in section:
            raise RunConfigError(f"run config '{where}.{key}' is missing (the DAG writes complete run configs)")
        value = section[key]
        if value is None:
            if not nullable:
                raise RunConfigError(f"run config '{where}.{key}' must not be null")
            continue
        # bool is an int subclass; only a declared bool accepts it.
        if isinstance(value, bool) is not (bool in accepted) or not isinstance(value, accepted):
            raise RunConfigError(
                f"run config '{where}.{key}' must be {'/'.join(t.__name__ for t in accepted)}, got {value!r}")


def validate_run_config(config: dict) -> dict:
    """`config` itself once it is complete and well-typed; raises `RunConfigError` naming the first bad key."""
    if not isinstance(config, dict):
        raise RunConfigError(f"run config must be a JSON object, got {type(config).__name__}")
    for key in config:
        if key not in TOP_KEYS:
            raise RunConfigError(f"run config '{key}': unknown key (known: {list(TOP_KEYS)})")
    for key in TOP_KEYS:
        if key not in config:
            raise RunConfigError(f"run config '{key}' is missing (the DAG writes complete run configs)")
    method = config["method"]
    if method not in METHODS:
        raise RunConfigError(f"run config 'method': {method!r} is not one of {list(METHODS)}")
    _check_loss_kwargs(method, config["loss_kwargs"])

    training = config["training"]
    _check_section(training, TRAINING_KEYS, "training")
    for key, choices in (("precision", PRECISIONS), ("device", DEVICES)):
        if training[key] not in choices:
            raise RunConfigError(f"run config 'training.{key}': {training[key]!r} is not one of {list(choices)}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps",
                "max_length", "max_prompt_length", "per_device_eval_batch_size"):
        if training[key] < 1:
            raise RunConfigError(f"run config 'training.{key}' must be >= 1, got {training[key]}")
    if training["max_prompt_length"] >= training["max_length"]:
        raise RunConfigError(
            f"run config 'training.max_prompt_length' ({training['max_prompt_length']}) must be smaller than "
            f"'training.max_length' ({training['max_length']})")
    if not 0.0 <= training["warmup_ratio"] < 1.0:
        raise RunConfigError(f"run config 'training.warmup_ratio' must be in [0, 1), got {training['warmup_ratio']}")
    if training["learning_rate"] <= 0:
        raise RunConfigError(f"run config 'training.learning_rate' must be > 0, got {training['learning_rate']}")
    if training["max_steps"] <= 0 and training["num_train_epochs"] <= 0:
        raise RunConfigError("run config 'training.num_train_epochs' must be > 0 when 'training.max_steps' is -1")

    lora = config["lora"]
    if lora is not None:
        _check_section(lora, LORA_KEYS, "lora")
        if lora["r"] < 1:
            raise RunConfigError(f"run config 'lora.r' must be >= 1, got {lora['r']}")
        if not lora["target_modules"] or not all(isinstance(m, str) for m in lora["target_modules"]):
            raise RunConfigError("run config 'lora.target_modules' must be a non-empty list of module names")

    if config["probes"] is not None:
        _check_section(config["probes"], PROBE_KEYS, "probes")
        for key in PROBE_KEYS:
            if config["probes"][key] < 1:
                raise RunConfigError(f"run config 'probes.{key}' must be >= 1, got {config['probes'][key]}")
    _check_section(config["data"], DATA_KEYS, "data")
    if config["data"]["on_bad_rows"] not in ("drop", "error"):
        raise RunConfigError(f"run config 'data.on_bad_rows': {config['data']['on_bad_rows']!r} is not 'drop' or 'error'")
    return config


def _check_loss_kwargs(method: str, loss_kwargs) -> None:
    from prefopt.losses import get_loss

    if not isinstance(loss_kwargs, dict):
        raise RunConfigError("run config 'loss_kwargs' must be an object")
    if method == "sft":
        if loss_kwargs:
            raise RunConfigError("run config 'loss_kwargs': not used by method 'sft' (give {})")
        return
    known = get_loss(method).defaults
    for key, value in loss_kwargs.items():
        if key not in known:
            raise RunConfigError(f"run config 'loss_kwargs.{key}': not a parameter of '{method}' (known: {sorted(known)})")
        if isinstance(value, (dict, list)):
            raise RunConfigError(f"run config 'loss_kwargs.{key}' must be a scalar, got {value!r}")
    missing = sorted(set(known) - set(loss_kwargs))
    if missing:
        raise RunConfigError(f"run config 'loss_kwargs.{missing[0]}' is missing (the DAG writes every loss keyword)")


def load_run_config(path: str | os.PathLike) -> dict:
    """Read and check a run-config JSON file (errors name the file and the key)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunConfigError(f"{path}: not valid JSON ({error})") from error
    try:
        return validate_run_config(raw)
    except RunConfigError as error:
        raise RunConfigError(f"{path}: {error}") from error


class MissingGPUsError(RuntimeError):
    """The job asks for more GPUs than this machine shows."""


def check_devices(run_config: dict, required_gpus: int = 0) -> str:
    """The run's device; fails in one line when it asks for a GPU, or more GPUs, than torch sees."""
    training = run_config["training"]
    wanted = max(required_gpus, training["num_gpus"])
    if training["device"] == "cuda" and not torch.cuda.is_available():
        raise MissingGPUsError("run config 'training.device' is 'cuda' but torch sees no GPU")
    if wanted and torch.cuda.device_count() < wanted:
        raise MissingGPUsError(
            f"this job needs {wanted} GPU(s) but torch.cuda.device_count() is {torch.cuda.device_count()}")
    return training["device"]


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def training_arguments_kwargs(run_config: dict, output_dir: str | os.PathLike) -> dict:
    """Keyword arguments shared by `TrainingArguments` subclasses (PreferenceConfig, SFTConfig)."""
    training = run_config["training"]
    on_cpu = training["device"] == "cpu"
    if training["precision"] not in ("fp32", "bf16"):
        raise RunConfigError(f"run config 'training.precision' is {training['precision']!r}: resolve 'auto' on the "
                             "job's node first (prefopt.job.resolve_job_precision)")
    if on_cpu and training["precision"] == "bf16":
        from prefopt.precision import cpu_native_bf16

        native, why = cpu_native_bf16()
        if not native:
            logger.warning("precision bf16 on CPU means bf16 autocast with fp32 master weights; %s, so every "
                           "step runs far slower than fp32 (measured 40-100x on an AVX2 CPU)", why)
    return {
        "output_dir": str(output_dir),
        "learning_rate": float(training["learning_rate"]),
        "lr_scheduler_type": training["lr_scheduler_type"],
        "warmup_steps": float(training["warmup_ratio"]),  # a float < 1 is a ratio of the total steps
        # Trainer clips only when max_grad_norm > 0; null means the paper's "gradient clipping is disabled".
        "max_grad_norm": float(training["max_grad_norm"]) if training["max_grad_norm"] is not None else 0.0,
        "num_train_epochs": float(training["num_train_epochs"]),
        "max_steps": int(training["max_steps"]),
        "per_device_train_batch_size": training["per_device_train_batch_size"],
        "per_device_eval_batch_size": training["per_device_eval_batch_size"],
        "gradient_accumulation_steps": training["gradient_accumulation_steps"],
        "save_strategy": "steps",
        "save_steps": training["save_steps"],
        "save_total_limit": training["save_total_limit"],
        "logging_strategy": "steps",
        "logging_steps": training["logging_steps"],
        # LoRA leaves no trainable parameter unused; searching for them costs a graph pass per step.
        "ddp_find_unused_parameters": False,
        "seed": training["seed"],
        "data_seed": training["seed"],
        # bf16: autocast with fp32 master weights (Trainer's mixed precision), on CPU and GPU alike.
        "bf16": training["precision"] == "bf16",
        "fp16": False,
        "use_cpu": on_cpu,
        "activation_checkpointing": training["gradient_checkpointing"],
        "optim": training["optim"],
        "weight_decay": float(training["weight_decay"]),
        "report_to": ["tensorboard"] if tensorboard_available() else "none",
        "remove_unused_columns": False,
        "disable_tqdm": False,
    }


def to_training_arguments(run_config: dict, output_dir: str | os.PathLike, args_class, **overrides):
    """`args_class` (e.g. prefopt.trainer.PreferenceConfig) built from a checked run config.

    Preference methods also get `loss_type`, `loss_kwargs`, `max_length`, `max_prompt_length`;
    `overrides` win over the config (e.g. `metrics_file`).
    """
    kwargs = training_arguments_kwargs(run_config, output_dir)
    field_names = {f.name for f in dataclasses.fields(args_class)}
    extras = {
        "loss_type": run_config["method"],
        "loss_kwargs": copy.deepcopy(run_config["loss_kwargs"]),
        "max_length": run_config["training"]["max_length"],
        "max_prompt_length": run_config["training"]["max_prompt_length"],
    }
    for key, value in extras.items():
        if key in field_names and not (key == "loss_type" and run_config["method"] == "sft"):
            kwargs[key] = value
    kwargs.update(overrides)
    return args_class(**kwargs)


def available_threads() -> int:
    """CPU threads this job may use: SLURM's allocation if set, else os.cpu_count()."""
    for variable in ("SLURM_CPUS_PER_TASK", "SNAKEMAKE_THREADS", "OMP_NUM_THREADS"):
        value = os.environ.get(variable, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return os.cpu_count() or 1


def set_torch_threads(requested: int | None = None) -> int:
    """Set torch's intra-op threads to `requested` (default `available_threads()`), split evenly
    between the processes `accelerate launch`/`torchrun` start on this node. Returns the count set."""
    total = requested or available_threads()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = max(1, total // max(1, local_processes))
    torch.set_num_threads(threads)
    return threads
