"""The run config: one small JSON file per training job, written by a Snakemake rule.

Every hyperparameter of an `sft` or `align` job reaches it through this file (never through the
global config), so Snakemake reruns exactly the jobs whose settings changed. Schema::

    {"method": "slime",                       # sft | dpo | simpo | slime | stapo
     "loss_kwargs": {"lambda_w": 0.1},        # overrides of prefopt.losses defaults (not for sft)
     "training": {"learning_rate": 5e-7, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
                  "max_grad_norm": null,      # null = no clipping (paper, section 4.1)
                  "num_train_epochs": 1, "max_steps": -1, "per_device_train_batch_size": 8,
                  "gradient_accumulation_steps": 2, "save_steps": 50, "logging_steps": 1, "seed": 0,
                  "max_length": 512, "max_prompt_length": 256,
                  "precision": "fp32",        # fp32 | bf16 | fp16 | auto (fp32 on CPU, bf16 on GPU)
                  "device": "cpu",            # cpu | cuda | auto
                  "gradient_checkpointing": false,   # null = off on CPU, on on GPU (TRL's default there)
                  "optim": "adamw_torch", "num_gpus": 0},
     "lora": {"r": 64, "alpha": 128, "dropout": 0.0, "target_modules": [...], "modules_to_save": ["lm_head"]},
     "data": {"on_bad": "drop"}}

`lora: null` means full fine-tuning. Defaults are the paper's (Table 1, section 4.1): alignment at
lr 5e-7, linear decay to zero, no warmup, no clipping, one epoch, batch 8 x 2 accumulation; SFT at
lr 2e-4 for three epochs.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

METHODS = ("sft", "dpo", "simpo", "slime", "stapo")
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DEVICES = ("cpu", "cuda", "auto")

TRAINING_DEFAULTS = {
    "learning_rate": 5e-7,
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "max_grad_norm": None,
    "num_train_epochs": 1,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "per_device_eval_batch_size": 16,
    "gradient_accumulation_steps": 2,
    "save_steps": 50,
    "save_total_limit": 2,
    "logging_steps": 1,
    "seed": 0,
    "max_length": 512,
    "max_prompt_length": 256,
    "precision": "fp32",
    "device": "cpu",
    "gradient_checkpointing": False,
    "optim": "adamw_torch",
    "weight_decay": 0.0,
    "num_gpus": 0,
}
# SFT differs from alignment only in these (paper, section 4.1: "2x10^-4 ... trained for three epochs").
SFT_TRAINING_DEFAULTS = {"learning_rate": 2e-4, "num_train_epochs": 3}

LORA_DEFAULTS = {
    "r": 64,
    "alpha": 128,
    "dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "modules_to_save": ["lm_head"],
}
DATA_DEFAULTS = {"on_bad": "drop"}

_NUMBER = (int, float)
# key -> (accepted types, allows None)
_TRAINING_TYPES = {
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
    "gradient_checkpointing": ((bool,), True),
    "optim": ((str,), False),
    "weight_decay": (_NUMBER, False),
    "num_gpus": ((int,), True),
}
_LORA_TYPES = {
    "r": ((int,), False),
    "alpha": (_NUMBER, False),
    "dropout": (_NUMBER, False),
    "target_modules": ((list,), False),
    "modules_to_save": ((list,), True),
}


class RunConfigError(ValueError):
    """A run config that does not match the schema; the message names the key."""


def _check_section(section: dict, types: dict, where: str) -> None:
    if not isinstance(section, dict):
        raise RunConfigError(f"run config '{where}' must be an object, got {type(section).__name__}")
    for key, value in section.items():
        if key not in types:
            raise RunConfigError(f"run config '{where}.{key}': unknown key (known: {sorted(types)})")
        accepted, nullable = types[key]
        if value is None:
            if not nullable:
                raise RunConfigError(f"run config '{where}.{key}' must not be null")
            continue
        # bool is an int subclass; only a declared bool accepts it.
        if isinstance(value, bool) and bool not in accepted:
            raise RunConfigError(f"run config '{where}.{key}' must be {accepted[0].__name__}, got a bool")
        if not isinstance(value, accepted):
            raise RunConfigError(
                f"run config '{where}.{key}' must be {'/'.join(t.__name__ for t in accepted)}, got {value!r}"
            )


def default_precision(device: str | None = None) -> str:
    """fp32 on CPU (bf16 there is ~25x slower), bf16 on a GPU that supports it, else fp16."""
    device = resolve_device(device or "auto")
    if device == "cpu":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def validate_run_config(config: dict) -> dict:
    """A copy of `config` with defaults filled in; raises `RunConfigError` naming the first bad key."""
    if not isinstance(config, dict):
        raise RunConfigError(f"run config must be a JSON object, got {type(config).__name__}")
    known = {"method", "loss_kwargs", "training", "lora", "data", "num_gpus"}
    for key in config:
        if key not in known:
            raise RunConfigError(f"run config '{key}': unknown key (known: {sorted(known)})")
    if "method" not in config:
        raise RunConfigError("run config 'method' is required (one of " + ", ".join(METHODS) + ")")
    method = config["method"]
    if method not in METHODS:
        raise RunConfigError(f"run config 'method': {method!r} is not one of {list(METHODS)}")

    loss_kwargs = config.get("loss_kwargs") or {}
    if not isinstance(loss_kwargs, dict):
        raise RunConfigError("run config 'loss_kwargs' must be an object")
    if method == "sft" and loss_kwargs:
        raise RunConfigError("run config 'loss_kwargs': not used by method 'sft'")
    if method != "sft":
        _check_loss_kwargs(method, loss_kwargs)

    training = dict(TRAINING_DEFAULTS)
    if method == "sft":
        training.update(SFT_TRAINING_DEFAULTS)
    user_training = config.get("training") or {}
    _check_section(user_training, _TRAINING_TYPES, "training")
    training.update(user_training)
    if "num_gpus" in config:
        if "num_gpus" in user_training and user_training["num_gpus"] != config["num_gpus"]:
            raise RunConfigError("run config 'num_gpus' and 'training.num_gpus' disagree")
        training["num_gpus"] = config["num_gpus"]
    training["num_gpus"] = training["num_gpus"] or 0

    if training["precision"] not in PRECISIONS:
        raise RunConfigError(f"run config 'training.precision': {training['precision']!r} is not one of {list(PRECISIONS)}")
    if training["device"] not in DEVICES:
        raise RunConfigError(f"run config 'training.device': {training['device']!r} is not one of {list(DEVICES)}")
    for key in ("per_device_train_batch_size", "gradient_accumulation_steps", "save_steps", "logging_steps",
                "max_length", "max_prompt_length", "per_device_eval_batch_size"):
        if training[key] < 1:
            raise RunConfigError(f"run config 'training.{key}' must be >= 1, got {training[key]}")
    if training["max_prompt_length"] >= training["max_length"]:
        raise RunConfigError(
            f"run config 'training.max_prompt_length' ({training['max_prompt_length']}) must be smaller than "
            f"'training.max_length' ({training['max_length']})"
        )
    if not 0.0 <= training["warmup_ratio"] < 1.0:
        raise RunConfigError(f"run config 'training.warmup_ratio' must be in [0, 1), got {training['warmup_ratio']}")
    if training["learning_rate"] <= 0:
        raise RunConfigError(f"run config 'training.learning_rate' must be > 0, got {training['learning_rate']}")
    if training["max_steps"] <= 0 and training["num_train_epochs"] <= 0:
        raise RunConfigError("run config 'training.num_train_epochs' must be > 0 when 'training.max_steps' is -1")

    lora = config.get("lora", LORA_DEFAULTS)
    if lora is not None:
        _check_section(lora, _LORA_TYPES, "lora")
        lora = {**LORA_DEFAULTS, **lora}
        if lora["r"] < 1:
            raise RunConfigError(f"run config 'lora.r' must be >= 1, got {lora['r']}")
        if not lora["target_modules"] or not all(isinstance(m, str) for m in lora["target_modules"]):
            raise RunConfigError("run config 'lora.target_modules' must be a non-empty list of module names")

    data = config.get("data") or {}
    _check_section(data, {"on_bad": ((str,), False)}, "data")
    data = {**DATA_DEFAULTS, **data}
    if data["on_bad"] not in ("drop", "error"):
        raise RunConfigError(f"run config 'data.on_bad': {data['on_bad']!r} is not 'drop' or 'error'")

    return {"method": method, "loss_kwargs": dict(loss_kwargs), "training": training, "lora": lora, "data": data}


def _check_loss_kwargs(method: str, loss_kwargs: dict) -> None:
    from prefopt.losses import get_loss

    spec = get_loss(method)
    defaults = getattr(spec, "defaults", None) or {}
    for key, value in loss_kwargs.items():
        if defaults and key not in defaults:
            raise RunConfigError(f"run config 'loss_kwargs.{key}': not a parameter of '{method}' (known: {sorted(defaults)})")
        if isinstance(value, (dict, list)):
            raise RunConfigError(f"run config 'loss_kwargs.{key}' must be a scalar, got {value!r}")


def load_run_config(path: str | os.PathLike) -> dict:
    """Read, validate and fill defaults of a run-config JSON file (errors name the file and the key)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RunConfigError(f"{path}: not valid JSON ({error})") from error
    try:
        return validate_run_config(raw)
    except RunConfigError as error:
        raise RunConfigError(f"{path}: {error}") from error


def check_devices(run_config: dict) -> str:
    """The resolved device; fails clearly if the config asks for more GPUs than there are."""
    training = run_config["training"]
    device = resolve_device(training["device"])
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("run config 'training.device' is 'cuda' but torch sees no GPU")
    wanted = training.get("num_gpus") or 0
    if wanted > 0 and torch.cuda.device_count() < wanted:
        raise RuntimeError(
            f"run config 'num_gpus' is {wanted} but torch.cuda.device_count() is {torch.cuda.device_count()}"
        )
    return device


def tensorboard_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None


def resolved_precision(run_config: dict) -> str:
    """fp32 / bf16 / fp16: the config's value, or `default_precision` of its device for "auto"."""
    training = run_config["training"]
    if training["precision"] != "auto":
        return training["precision"]
    return default_precision(resolve_device(training["device"]))


def training_arguments_kwargs(run_config: dict, output_dir: str | os.PathLike) -> dict:
    """Keyword arguments shared by `TrainingArguments` subclasses (PreferenceConfig, SFTConfig)."""
    training = run_config["training"]
    device = resolve_device(training["device"])
    precision = resolved_precision(run_config)
    if device == "cpu" and precision != "fp32":
        logger.warning("precision %s on CPU is very slow (bf16 ~25x slower than fp32 here)", precision)
    gradient_checkpointing = training["gradient_checkpointing"]
    if gradient_checkpointing is None:
        gradient_checkpointing = device != "cpu"
    return {
        "output_dir": str(output_dir),
        "learning_rate": float(training["learning_rate"]),
        "lr_scheduler_type": training["lr_scheduler_type"],
        "warmup_steps": float(training["warmup_ratio"]) if training["warmup_ratio"] else 0,
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
        "bf16": precision == "bf16",
        "fp16": precision == "fp16",
        "use_cpu": device == "cpu",
        "activation_checkpointing": bool(gradient_checkpointing),
        "optim": training["optim"],
        "weight_decay": float(training["weight_decay"]),
        "report_to": ["tensorboard"] if tensorboard_available() else "none",
        "remove_unused_columns": False,
        "disable_tqdm": False,
    }


def to_training_arguments(run_config: dict, output_dir: str | os.PathLike, args_class=None, **overrides):
    """`args_class` (default: prefopt.trainer.PreferenceConfig) built from a validated run config.

    Preference methods also get `loss_type`, `loss_kwargs`, `max_length`, `max_prompt_length`;
    `overrides` win over the config (e.g. `metrics_file`).
    """
    if args_class is None:
        from prefopt.trainer import PreferenceConfig

        args_class = PreferenceConfig
    kwargs = training_arguments_kwargs(run_config, output_dir)
    import dataclasses

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


class MissingGPUsError(RuntimeError):
    """The job asks for more GPUs than this machine shows."""


def check_required_gpus(required: int) -> None:
    """Fail clearly when the job was given fewer GPUs than its rule or run config asks for."""
    if required and torch.cuda.device_count() < required:
        raise MissingGPUsError(f"this job needs {required} GPU(s) but torch.cuda.device_count() is {torch.cuda.device_count()}")
