"""What a training job takes from torch and transformers around its checked `RunConfig` (prefopt.run_config):
the GPU check, the CPU thread count, and the `TrainingArguments` both trainers are built with.

    threads = set_torch_threads(args.threads)
    check_devices(run_config, required_gpus)
    args = to_training_arguments(run_config, checkpoint_dir, PreferenceConfig)
"""

from __future__ import annotations

import dataclasses
import logging
import os

from prefopt.run_config import RunConfig, RunConfigError

logger = logging.getLogger(__name__)


class MissingGPUsError(RuntimeError):
    """The job asks for more GPUs than this machine shows."""


def check_devices(run_config: RunConfig, required_gpus: int = 0) -> str:
    """The run's device; fails in one line when it asks for a GPU, or more GPUs, than torch sees."""
    import torch

    training = run_config.training
    wanted = max(required_gpus, training.num_gpus)
    if training.device == "cuda" and not torch.cuda.is_available():
        raise MissingGPUsError("run config 'training.device' is 'cuda' but torch sees no GPU")
    if wanted and torch.cuda.device_count() < wanted:
        raise MissingGPUsError(
            f"this job needs {wanted} GPU(s) but torch.cuda.device_count() is {torch.cuda.device_count()}")
    return training.device


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
    import torch

    total = requested or available_threads()
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    threads = max(1, total // max(1, local_processes))
    torch.set_num_threads(threads)
    return threads


def training_arguments_kwargs(run_config: RunConfig, output_dir: str | os.PathLike) -> dict:
    """Keyword arguments shared by `TrainingArguments` subclasses (PreferenceConfig, SFTConfig)."""
    training = run_config.training
    on_cpu = training.device == "cpu"
    if training.precision == "auto":
        raise RunConfigError("run config 'training.precision' is 'auto': resolve it on the job's node first "
                             "(prefopt.job.resolve_job_precision)")
    if on_cpu and training.precision == "bf16":
        from prefopt.precision import cpu_native_bf16

        native, why = cpu_native_bf16()
        if not native:
            logger.warning("precision bf16 on CPU means bf16 autocast with fp32 master weights; %s, so every "
                           "step runs far slower than fp32 (measured 40-100x on an AVX2 CPU)", why)
    return {
        "output_dir": str(output_dir),
        "learning_rate": float(training.learning_rate),
        "lr_scheduler_type": training.lr_scheduler_type,
        "warmup_steps": float(training.warmup_ratio),  # a float < 1 is a ratio of the total steps
        # Trainer clips only when max_grad_norm > 0; null means the paper's "gradient clipping is disabled".
        "max_grad_norm": float(training.max_grad_norm) if training.max_grad_norm is not None else 0.0,
        "num_train_epochs": float(training.num_train_epochs),
        "max_steps": int(training.max_steps),
        "per_device_train_batch_size": training.per_device_train_batch_size,
        "per_device_eval_batch_size": training.per_device_eval_batch_size,
        "gradient_accumulation_steps": training.gradient_accumulation_steps,
        "save_strategy": "steps",
        "save_steps": training.save_steps,
        "save_total_limit": training.save_total_limit,
        "logging_strategy": "steps",
        "logging_steps": training.logging_steps,
        # LoRA leaves no trainable parameter unused; searching for them costs a graph pass per step.
        "ddp_find_unused_parameters": False,
        "seed": training.seed,
        "data_seed": training.seed,
        # bf16: autocast with fp32 master weights (Trainer's mixed precision), on CPU and GPU alike.
        "bf16": training.precision == "bf16",
        "fp16": False,
        "use_cpu": on_cpu,
        "activation_checkpointing": training.gradient_checkpointing,
        "optim": training.optim,
        "weight_decay": float(training.weight_decay),
        # The job logs to the configured tracker itself (prefopt.tracking), not through Trainer's integrations.
        "report_to": "none",
        "remove_unused_columns": False,
        "disable_tqdm": False,
    }


def to_training_arguments(run_config: RunConfig, output_dir: str | os.PathLike, args_class, **overrides):
    """`args_class` (e.g. prefopt.trainer.PreferenceConfig) built from a checked run config.

    Preference methods also get `loss_type`, `loss_kwargs`, `max_length`, `max_prompt_length`;
    `overrides` win over the config (e.g. `metrics_file`).
    """
    kwargs = training_arguments_kwargs(run_config, output_dir)
    field_names = {field.name for field in dataclasses.fields(args_class)}
    extras = {
        "loss_type": run_config.method,
        "loss_kwargs": dict(run_config.loss_kwargs),
        "max_length": run_config.training.max_length,
        "max_prompt_length": run_config.training.max_prompt_length,
    }
    for key, value in extras.items():
        if key in field_names and not (key == "loss_type" and run_config.is_sft):
            kwargs[key] = value
    kwargs.update(overrides)
    return args_class(**kwargs)
