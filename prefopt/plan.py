"""The experiment plan: which training runs exist, their complete run configs and names, and the
rows of Tables 3-5. Pure functions of a validated config whose defaults are filled in
(`prefopt.config_schema`); tested without Snakemake. rules/common.smk turns it into `get_*` helpers.

    plan = make_plan(config)
    plan.runs[("smollm2", "slime-1a2b3c4d5e")]   # the complete run config of one alignment job
    plan.table4                                    # [(model, variant label, run name), ...]

A run's name is its method plus a hash of its complete run config, so two spellings of the same
settings (the p-sweep's p=2.5 and the main SLIME run) are one job, and any settings change is a new
name. The job's *identity* (prefopt.job) adds the content of the inputs it reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

RESULTS = "results"
EVALUATION_BENCHMARKS = ("offline", "demo_generation")  # the `evaluate` rule's, with per-example files
STAGES = ("sft", "align")
METHOD_LABELS = {
    "dpo": "+ DPO",
    "simpo": "+ SimPO",
    "slime": "+ SLIME (ours)",
    "stapo": "+ StaPO",
}


class PlanError(ValueError):
    """A config the plan cannot be made from; the message starts with the key path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


# ------------------------------------------------------------------------------------------- models


def enabled_models(config: dict) -> list[str]:
    return [name for name, spec in config["models"].items() if spec["enabled"]]


def model_label(config: dict, model: str) -> str:
    return config["models"][model].get("label", model)


def check_model_sources(config: dict) -> None:
    """Fail before any job starts when a configured model file or package is missing."""
    for name in enabled_models(config):
        source = config["models"][name]["source"]
        key = f"models.{name}.source"
        kinds = [kind for kind in ("hub", "path", "gguf_package") if kind in source]
        if len(kinds) != 1:
            raise PlanError(key, f"give exactly one of 'hub', 'path' or 'gguf_package' (got {kinds or 'none'})")
        if "path" in source and not Path(source["path"]).exists():
            raise PlanError(f"{key}.path", f"{source['path']} does not exist")
        if "gguf_package" in source:
            if "gguf_file" not in source:
                raise PlanError(f"{key}.gguf_file", "required with 'gguf_package'")
            spec = importlib.util.find_spec(source["gguf_package"])
            if spec is None:
                raise PlanError(f"{key}.gguf_package",
                                f"pip package '{source['gguf_package']}' is not installed (`make install`)")
            folder = Path(list(spec.submodule_search_locations)[0])
            if not source.get("assemble") and not (folder / source["gguf_file"]).exists():
                raise PlanError(f"{key}.gguf_file", f"{source['gguf_file']} is not in {folder}")


# ---------------------------------------------------------------------------------------- precision

PRECISION_KEYS = (("precision",), ("evaluation", "precision"))


def resolve_precisions(config: dict, *, jobs_run_here: bool) -> list[str]:
    """Resolve `precision` and `evaluation.precision` in place; the start-up lines to print.

    `auto` resolves here, once, when the jobs run on this machine on its CPU (`jobs_run_here` and
    `device: cpu`): the resolved value is then in every run config, run name and identity. Otherwise
    (`device: cuda`, or a cluster executor) it stays `auto` and each job resolves it on its own node
    (prefopt.precision). An explicit bf16 on a CPU without native bf16 gets a warning line.
    """
    from prefopt import precision

    local_cpu = jobs_run_here and config["device"] == "cpu"
    lines = []
    for path in PRECISION_KEYS:
        *parents, name = path
        block = config
        for parent in parents:
            block = block[parent]
        key = ".".join(path)
        requested = block[name]
        if requested == "auto" and local_cpu:
            resolution = precision.resolve("auto", "cpu")
            block[name] = resolution.precision
            lines.append(f"{key}: auto -> {resolution.precision} ({resolution.reason})")
        elif requested == "auto":
            where = "device cuda" if config["device"] == "cuda" else "jobs run elsewhere"
            lines.append(f"{key}: auto -> resolved by each job on its own node ({where})")
        elif requested == "bf16" and local_cpu:
            warning = precision.slow_bf16_warning(key, "cpu")
            lines += [warning] if warning else []
    return lines


def announce_precisions(config: dict, *, jobs_run_here: bool, main_process: bool = True) -> None:
    """`resolve_precisions` for Snakemake's `config`, its lines printed to stderr by the main process."""
    for line in resolve_precisions(config, jobs_run_here=jobs_run_here):
        if main_process:
            print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------- run settings


def launcher(config: dict, stage: str) -> dict:
    return (config.get("launchers") or {}).get(stage) or {}


def training_settings(config: dict, stage: str, model: str) -> dict:
    """The complete `training` block of one model's SFT or alignment run config: the stage's
    settings (schema defaults filled), the model's overrides, then the job-wide keys."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    settings = dict(config[stage])
    settings.update(config["models"][model].get(stage) or {})
    settings["seed"] = config["seed"]
    settings["precision"] = config["precision"]
    settings["device"] = config["device"]
    settings["num_gpus"] = launcher(config, stage).get("gpus", 0)
    if settings["max_prompt_length"] >= settings["max_length"]:
        where = f"models.{model}.{stage}" if "max_length" in (config["models"][model].get(stage) or {}) else stage
        raise PlanError(f"{where}.max_prompt_length",
                        f"{settings['max_prompt_length']} must be smaller than max_length ({settings['max_length']})")
    return settings


def loss_kwargs(config: dict, method: str, overrides: dict | None = None) -> dict:
    """Every loss keyword resolved: the loss's signature defaults (prefopt.losses), a named preset,
    the config's `methods.<method>`, then an ablation's overrides."""
    from prefopt.losses import LOSSES, PRESETS

    if method not in LOSSES:
        raise PlanError("methods", f"unknown method '{method}' (known: {', '.join(sorted(LOSSES))})")
    resolved = dict(LOSSES[method].defaults)
    settings = dict(config["methods"].get(method) or {})
    preset = settings.pop("preset", None)
    if preset is not None:
        resolved.update(PRESETS[preset])
    resolved.update(settings)
    resolved.update(overrides or {})
    resolved.pop("preset", None)
    return resolved


def alignment_seeds(config: dict) -> list[int]:
    """The seeds every alignment run is trained with (`seeds`; null means just `seed`)."""
    return list(config["seeds"]) if config["seeds"] is not None else [config["seed"]]


def run_config(config: dict, model: str, method: str, overrides: dict | None = None, seed: int | None = None) -> dict:
    """The complete run-config file of one training job (prefopt.run_config checks it, fills nothing).
    `seed` replaces the config's `seed` for one alignment run of the `seeds` dimension."""
    stage = "sft" if method == "sft" else "align"
    training = training_settings(config, stage, model)
    if seed is not None:
        training["seed"] = seed
    return {
        "method": method,
        "loss_kwargs": {} if method == "sft" else loss_kwargs(config, method, overrides),
        "training": training,
        "lora": config["lora"],
        "data": {"on_bad_rows": config["data"]["on_bad_rows"]},
        "probes": None if method == "sft" else config["evaluation"]["probes"],
    }


def settings_hash(settings) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_name(config_of_run: dict) -> str:
    """`<method>-<hash of the complete run config>`: any settings change is a new name."""
    return f"{config_of_run['method']}-{settings_hash(config_of_run)}"


# ----------------------------------------------------------------------------------------------- plan


@dataclass
class Plan:
    """Every alignment run (keyed by (model, run name)) and the rows of Tables 3-5. A row's runs are
    one per alignment seed (the `seeds` dimension); base and SFT rows have one."""

    runs: dict = field(default_factory=dict)
    table3: list = field(default_factory=list)  # (model, method label, [runs])
    table4: list = field(default_factory=list)  # (model, variant label, [runs])
    table5: list = field(default_factory=list)  # (model, p, is default, [runs])

    def add(self, config: dict, model: str, method: str, overrides: dict | None = None) -> list[str]:
        names = []
        for seed in alignment_seeds(config):
            settings = run_config(config, model, method, overrides, seed=seed)
            names.append(run_name(settings))
            self.runs[(model, names[-1])] = settings
        return names


def ablation_model(config: dict) -> str | None:
    model = config["ablations"].get("model")
    if model is not None and model not in enabled_models(config):
        raise PlanError("ablations.model", f"'{model}' is not an enabled model ({', '.join(enabled_models(config))})")
    return model


def make_plan(config: dict) -> Plan:
    """The runs and table rows of a validated config (defaults filled)."""
    plan = Plan()
    for model in enabled_models(config):
        plan.table3.append((model, "Base (Pretrain)", ["base"]))
        plan.table3.append((model, "SFT", ["sft"]))
        for method in config["methods"]:
            plan.table3.append((model, METHOD_LABELS[method], plan.add(config, model, method)))
    model = ablation_model(config)
    if model is None:
        return plan
    ablations = config["ablations"]
    if "slime" not in config["methods"]:
        raise PlanError("ablations", "the ablations vary SLIME, so 'methods' must include slime")
    plan.table4.append((model, "Full SLIME", plan.add(config, model, "slime")))
    names = [component["name"] for component in ablations["components"]]
    if len(set(names)) != len(names):
        raise PlanError("ablations.components", f"names must be unique, got {names}")
    for component in ablations["components"]:
        plan.table4.append((model, component["label"], plan.add(config, model, "slime", component["overrides"])))
    default_p = loss_kwargs(config, "slime")["p"]
    for p in ablations["p_sweep"]:
        plan.table5.append((model, p, p == default_p, plan.add(config, model, "slime", {"p": p})))
    return plan


def plan_run_config(config: dict, plan: Plan, model: str, run: str) -> dict:
    """The run config behind a (model, run) pair of the DAG; "sft" is the model's SFT job."""
    if run == "sft":
        return run_config(config, model, "sft")
    if (model, run) not in plan.runs:
        raise PlanError("runs", f"no alignment run '{run}' for model '{model}' in the config")
    return plan.runs[(model, run)]


# ---------------------------------------------------------------------------------------------- paths


def base_model_dir(model: str) -> str:
    return f"{RESULTS}/{model}/base"


def sft_model_dir(model: str) -> str:
    return f"{RESULTS}/{model}/sft"


def align_dir(model: str, run: str) -> str:
    return f"{RESULTS}/{model}/align/{run}"


def checkpoint_dir(config: dict, model: str, run: str) -> str:
    return f"{config['checkpoint_dir']}/{model}/{run}"


def final_outputs() -> list[str]:
    outputs = [f"{RESULTS}/tables/{name}.{ext}" for name in ("table3", "table4", "table5") for ext in ("csv", "md", "tex")]
    outputs.append(f"{RESULTS}/figures")
    return outputs


# ------------------------------------------------------------------------------------------ manifests


def table_manifest_rows(config: dict, plan: Plan, result_files) -> dict:
    """Tables 3-5 as manifest rows; `result_files(model, run)` names each run's result files.

    `run`/`results` are the first seed's; `runs`/`seed_results` list every seed's, in `seeds` order."""

    def row(model, runs, **labels):
        return {"model": model, **labels, "run": runs[0], "results": result_files(model, runs[0]), "runs": runs,
                "seed_results": [result_files(model, run) for run in runs]}

    return {
        "table3": [row(model, runs, model_label=model_label(config, model), method_label=label)
                   for model, label, runs in plan.table3],
        "table4": [row(model, runs, variant=label) for model, label, runs in plan.table4],
        "table5": [row(model, runs, p=p, default=default) for model, p, default, runs in plan.table5],
    }


def training_curves(config: dict, plan: Plan) -> list[dict]:
    return [{"model": model, "model_label": model_label(config, model), "label": label.lstrip("+ ").replace(" (ours)", ""),
             "metrics": f"{align_dir(model, run)}/metrics.jsonl", "seed": plan.runs[(model, run)]["training"]["seed"]}
            for model, label, runs in plan.table3 if runs[0] not in ("base", "sft") for run in runs]


def manifest_inputs(manifest: dict) -> list[str]:
    """The files a manifest's consumer reads: every result file (with the per-example file beside an
    evaluation's result, which the paired CIs read) and every training run directory."""
    files = []
    for table in ("table3", "table4", "table5"):
        for row in manifest[table]:
            for results in row["seed_results"]:
                for benchmark, path in results.items():
                    files.append(path)
                    if benchmark in EVALUATION_BENCHMARKS:
                        files.append(path.removesuffix(".json") + ".examples.jsonl")
    for curve in manifest.get("training_curves", []):
        files.append(curve["metrics"].rsplit("/", 1)[0])
    return sorted(set(files))


# ------------------------------------------------------------------------------------------ launchers


def accelerate_mixed_precision(config: dict) -> str:
    """accelerate's `--mixed_precision` for the training precision; `auto` resolves on the job's node."""
    if config["precision"] == "auto":
        return f"$(python -m prefopt.precision --device {config['device']} --accelerate)"
    return "bf16" if config["precision"] == "bf16" else "no"


def launch_command(config: dict, stage: str, repo: str) -> str:
    """The command that starts a training script: plain python, or accelerate with DDP / DeepSpeed ZeRO-2."""
    settings = launcher(config, stage)
    kind = settings.get("type", "python")
    if kind == "python":
        return "python"
    on_cpu = config["device"] == "cpu"
    default_file = {"ddp": "configs/accelerate/cpu_ddp.yaml" if on_cpu else "configs/accelerate/ddp.yaml",
                    "zero2": "configs/accelerate/zero2.yaml"}[kind]
    # Jobs started together on one machine need distinct rendezvous ports; multi-node runs fix one.
    port = settings.get("main_process_port") or f"$(python {repo}/workflow/scripts/free_port.py)"
    parts = [
        "accelerate launch",
        f"--config_file {settings.get('accelerate_config', default_file)}",
        f"--num_processes {settings.get('num_processes', 1)}",
        f"--mixed_precision {accelerate_mixed_precision(config)}",
        # On CPU, DDP needs --multi_gpu (`--cpu` would quietly start one process); zero2 must not get
        # it: the flag overrides the yaml's DEEPSPEED type and the job silently runs as plain DDP.
        "--multi_gpu" if on_cpu and kind == "ddp" else "",
        f"--main_process_port {port}",
        settings.get("extra_args", ""),
    ]
    return " ".join(part for part in parts if part)

