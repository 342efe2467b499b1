# Helpers for the rules: config resolution, run naming, inputs and manifests.
# Every hyperparameter reaches a job through `params:` or a run-config file written by
# `write_run_config`; no script reads the global config.
import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError

RESULTS = "results"
CHECKPOINTS = config.get("checkpoint_dir", "checkpoints")
REPO = workflow.basedir

METHOD_LABELS = {
    "dpo": "+ DPO",
    "simpo": "+ SimPO",
    "slime": "+ SLIME (ours)",
    "stapo": "+ StaPO",
}
TRAINING_DEFAULTS = {
    "lr_scheduler_type": "linear",
    "warmup_ratio": 0.0,
    "max_grad_norm": None,
    "num_train_epochs": 1,
    "max_steps": -1,
    "per_device_train_batch_size": 8,
    "gradient_accumulation_steps": 1,
    "save_steps": 50,
    "logging_steps": 1,
    "max_length": 512,
    "max_prompt_length": 256,
    "gradient_checkpointing": False,
    "optim": "adamw_torch",
}


def fail(key, message):
    raise WorkflowError(f"config error at '{key}': {message}")


# ---------------------------------------------------------------- models


def enabled_models():
    return [
        name for name, spec in config["models"].items() if spec.get("enabled", True)
    ]


def model_label(model):
    return config["models"][model].get("label", model)


def check_model_sources():
    """Fail before any job starts when a configured model file or package is missing."""
    for name in enabled_models():
        source = config["models"][name]["source"]
        key = f"models.{name}.source"
        kinds = [kind for kind in ("hub", "path", "gguf_package") if kind in source]
        if len(kinds) != 1:
            fail(
                key,
                f"give exactly one of 'hub', 'path' or 'gguf_package' (got {kinds or 'none'})",
            )
        if "path" in source and not Path(source["path"]).exists():
            fail(f"{key}.path", f"{source['path']} does not exist")
        if "gguf_package" in source:
            if "gguf_file" not in source:
                fail(f"{key}.gguf_file", "required with 'gguf_package'")
            spec = importlib.util.find_spec(source["gguf_package"])
            if spec is None:
                fail(
                    f"{key}.gguf_package",
                    f"pip package '{source['gguf_package']}' is not installed (`make models`)",
                )
            folder = Path(list(spec.submodule_search_locations)[0])
            if (
                not source.get("assemble")
                and not (folder / source["gguf_file"]).exists()
            ):
                fail(f"{key}.gguf_file", f"{source['gguf_file']} is not in {folder}")


# ---------------------------------------------------------------- run settings


def training_settings(stage, model):
    """The resolved SFT or alignment hyperparameters of one model (global, then per-model overrides)."""
    settings = dict(TRAINING_DEFAULTS)
    settings.update(config.get(stage, {}))
    settings.update(config["models"][model].get(stage, {}))
    settings["seed"] = config.get("seed", 0)
    settings["precision"] = config.get("precision", "fp32")
    settings["device"] = config.get("device", "cpu")
    if settings["max_prompt_length"] >= settings["max_length"]:
        fail(f"{stage}.max_prompt_length", "must be smaller than max_length")
    return settings


def loss_kwargs(method, overrides=None):
    """Every loss keyword resolved: the loss's defaults, a named preset, the config, then an ablation's overrides."""
    from prefopt.losses import LOSSES, PRESETS

    if method not in LOSSES:
        fail(
            "methods", f"unknown method '{method}' (known: {', '.join(sorted(LOSSES))})"
        )
    resolved = dict(LOSSES[method].defaults)
    settings = dict(config["methods"].get(method) or {})
    preset = settings.pop("preset", None)
    if preset is not None:
        resolved.update(PRESETS[preset])
    resolved.update(settings)
    resolved.update(overrides or {})
    resolved.pop("preset", None)
    return resolved


def settings_hash(settings):
    return hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def run_config(model, method, overrides=None):
    """The run-config file's content. Device and launcher are left out: they do not change the result's meaning."""
    training = training_settings("sft" if method == "sft" else "align", model)
    return {
        "method": method,
        "loss_kwargs": {} if method == "sft" else loss_kwargs(method, overrides),
        "training": training,
        "lora": config.get("lora"),
        "data": {"on_bad": config["data"].get("on_bad_rows", "drop")},
    }


def run_id(model, method, overrides=None):
    """A run's name comes from its resolved settings, so two spellings of one setting are one job."""
    settings = run_config(model, method, overrides)
    hashed = {k: v for k, v in settings.items() if k != "training"}
    hashed["training"] = {
        k: v for k, v in settings["training"].items() if k not in ("device",)
    }
    return f"{method}-{settings_hash(hashed)}"


def ablation_model():
    model = (config.get("ablations") or {}).get("model")
    if model is None:
        return None
    if model not in enabled_models():
        fail(
            "ablations.model",
            f"'{model}' is not an enabled model ({', '.join(enabled_models())})",
        )
    return model


def collect_runs():
    """Every distinct alignment run, with the table rows it feeds."""
    runs = {}
    table3, table4, table5 = [], [], []

    def add(model, method, overrides=None):
        rid = run_id(model, method, overrides)
        runs[(model, rid)] = run_config(model, method, overrides)
        return rid

    for model in enabled_models():
        table3.append((model, "Base (Pretrain)", "base"))
        table3.append((model, "SFT", "sft"))
        for method in config["methods"]:
            table3.append((model, METHOD_LABELS[method], add(model, method)))
    model = ablation_model()
    ablations = config.get("ablations") or {}
    if model is not None:
        if "slime" not in config["methods"]:
            fail(
                "ablations", "the ablations vary SLIME, so 'methods' must include slime"
            )
        table4.append((model, "Full SLIME", add(model, "slime")))
        names = [c["name"] for c in ablations.get("components", [])]
        if len(set(names)) != len(names):
            fail("ablations.components", f"names must be unique, got {names}")
        for component in ablations.get("components", []):
            table4.append(
                (model, component["label"], add(model, "slime", component["overrides"]))
            )
        default_p = loss_kwargs("slime")["p"]
        for p in ablations.get("p_sweep", []):
            table5.append((model, p, p == default_p, add(model, "slime", {"p": p})))
    return runs, table3, table4, table5


check_model_sources()
RUNS, TABLE3, TABLE4, TABLE5 = collect_runs()
BENCHMARKS = config["evaluation"].get("benchmarks", ["offline"])
if "demo_generation" in BENCHMARKS and config["data"]["source"] != "demo":
    fail(
        "evaluation.benchmarks",
        "demo_generation needs data.source: demo (it checks known answers)",
    )


wildcard_constraints:
    model="|".join(re.escape(name) for name in sorted(config["models"])),
    run=r"base|sft|[a-z]+-[0-9a-f]{10}",
    benchmark="offline|demo_generation",
    judged="mt_bench|arena_hard",


# ---------------------------------------------------------------- rule helpers


def get_run_config(wildcards):
    if wildcards.run == "sft":
        return run_config(wildcards.model, "sft")
    key = (wildcards.model, wildcards.run)
    if key not in RUNS:
        raise WorkflowError(
            f"no alignment run '{wildcards.run}' for model '{wildcards.model}' in the config"
        )
    return RUNS[key]


def base_model_dir(model):
    return f"{RESULTS}/{model}/base"


def sft_model_dir(model):
    return f"{RESULTS}/{model}/sft"


def align_dir(model, run):
    return f"{RESULTS}/{model}/align/{run}"


def get_eval_model(wildcards):
    """The model directories an evaluation loads: base, SFT, or SFT plus an alignment adapter."""
    if wildcards.run == "base":
        return {"model": base_model_dir(wildcards.model)}
    if wildcards.run == "sft":
        return {"model": sft_model_dir(wildcards.model)}
    return {
        "model": sft_model_dir(wildcards.model),
        "run": align_dir(wildcards.model, wildcards.run),
    }


def adapter_arg(wildcards, input):
    return f"--adapter {input.run}/adapter" if "run" in input.keys() else ""


def get_split_input(wildcards):
    if config["data"]["source"] == "demo":
        return {"raw": f"{RESULTS}/data/demo/raw.jsonl"}
    return {}


def split_source_args():
    data = config["data"]
    if data["source"] == "demo":
        return f"--source demo --input {RESULTS}/data/demo/raw.jsonl"
    uf = data.get("ultrafeedback", {})
    dataset = uf.get("dataset", "HuggingFaceH4/ultrafeedback_binarized")
    return f"--source ultrafeedback --input {dataset} --hf-split {uf.get('split', 'train_prefs')}"


def launch_command(stage):
    """The command that starts a training script: plain python, or accelerate with DDP / DeepSpeed ZeRO-2."""
    launcher = (config.get("launchers") or {}).get(stage, {})
    kind = launcher.get("type", "python")
    if kind == "python":
        return "python"
    default_file = {
        "ddp": "configs/accelerate/ddp.yaml",
        "zero2": "configs/accelerate/zero2.yaml",
    }[kind]
    on_cpu = config.get("device", "cpu") == "cpu"
    if on_cpu and kind == "ddp":
        default_file = "configs/accelerate/cpu_ddp.yaml"
    # Jobs started together on one machine need distinct rendezvous ports; multi-node runs fix one.
    port = (
        launcher.get("main_process_port")
        or f"$(python {REPO}/workflow/scripts/free_port.py)"
    )
    parts = [
        "accelerate launch",
        f"--config_file {launcher.get('accelerate_config', default_file)}",
        f"--num_processes {launcher.get('num_processes', 1)}",
        f"--mixed_precision {'bf16' if config.get('precision') == 'bf16' else 'no'}",
        # On CPU, DDP needs --multi_gpu (`--cpu` would quietly start one process); zero2 must not get
        # it: the flag overrides the yaml's DEEPSPEED type and the job silently runs as plain DDP.
        ("--multi_gpu" if on_cpu and kind == "ddp" else ""),
        f"--main_process_port {port}",
        launcher.get("extra_args", ""),
    ]
    return " ".join(part for part in parts if part)


def stage_threads(stage):
    launcher = (config.get("launchers") or {}).get(stage, {})
    return max(config.get("threads", 1), launcher.get("num_processes", 1))


def inference_gpus():
    return 1 if config.get("device", "cpu") == "cuda" else 0


def stage_resources(stage, key, default):
    return (config.get("launchers") or {}).get(stage, {}).get(key, default)


def eval_targets(model, run):
    return [
        f"{RESULTS}/{model}/eval/{run}/{benchmark}.json" for benchmark in BENCHMARKS
    ]


def result_files(model, run):
    files = {
        benchmark: f"{RESULTS}/{model}/eval/{run}/{benchmark}.json"
        for benchmark in BENCHMARKS
    }
    files.update(judge_score_files(model, run))
    return files


def judge_benchmarks():
    judge = config.get("judge")
    if not judge:
        return []
    return judge.get("benchmarks", ["mt_bench", "arena_hard"])


def judge_score_files(model, run):
    return {
        bench: f"{RESULTS}/{model}/judge/{run}/{bench}/score.json"
        for bench in judge_benchmarks()
    }


def not_run_reasons():
    reasons = {}
    for bench, name in (("mt_bench", "MT-Bench"), ("arena_hard", "Arena-Hard")):
        if bench not in judge_benchmarks():
            reasons[bench] = (
                f"{name} needs an LLM judge; none is configured (set `judge:` in the config). "
                "No offline stand-in is reported in its place."
            )
    return reasons


def tables_manifest():
    judge = config.get("judge") or {}
    return {
        "judge": judge.get("model"),
        "table3": [
            {
                "model": model,
                "model_label": model_label(model),
                "method_label": label,
                "run": run,
                "results": result_files(model, run),
            }
            for model, label, run in TABLE3
        ],
        "table4": [
            {
                "model": model,
                "variant": label,
                "run": run,
                "results": result_files(model, run),
            }
            for model, label, run in TABLE4
        ],
        "table5": [
            {
                "model": model,
                "p": p,
                "default": default,
                "run": run,
                "results": result_files(model, run),
            }
            for model, p, default, run in TABLE5
        ],
        "not_run": not_run_reasons(),
    }


def figures_manifest():
    manifest = tables_manifest()
    manifest["training_curves"] = [
        {
            "model": model,
            "model_label": model_label(model),
            "label": label.lstrip("+ ").replace(" (ours)", ""),
            "metrics": f"{align_dir(model, run)}/metrics.jsonl",
        }
        for model, label, run in TABLE3
        if run not in ("base", "sft")
    ]
    return manifest


def manifest_inputs(manifest):
    files = []
    for table in ("table3", "table4", "table5"):
        for row in manifest[table]:
            files.extend(row["results"].values())
    for curve in manifest.get("training_curves", []):
        files.append(curve["metrics"].rsplit("/", 1)[0])
    return sorted(set(files))


def get_final_output():
    outputs = [
        f"{RESULTS}/tables/{name}.{ext}"
        for name in ("table3", "table4", "table5")
        for ext in ("csv", "md", "tex")
    ]
    outputs.append(f"{RESULTS}/figures")
    return outputs


# ---------------------------------------------------------------- judge (MT-Bench, Arena-Hard)


def judge_config_payload():
    """What the judging jobs need to reach the judge: never the key itself, only its variable's name."""
    judge = dict(config.get("judge") or {})
    keep = (
        "base_url",
        "model",
        "api_key_env",
        "temperature",
        "max_tokens",
        "timeout_s",
        "max_retries",
        "parallel",
    )
    return {key: judge[key] for key in keep if key in judge}


def judge_baseline():
    return (config.get("judge") or {}).get("baseline") or {}


def questions_arg(benchmark):
    judge = config.get("judge") or {}
    if benchmark == "arena_hard" and judge.get("arena_hard_questions"):
        return f"--questions {judge['arena_hard_questions']}"
    return ""


def question_args(benchmark):
    judge = config.get("judge") or {}
    args = [questions_arg(benchmark)]
    if judge.get("question_limit"):
        args.append(f"--limit {judge['question_limit']}")
    key = f"{benchmark}_max_new_tokens"
    args.append(f"--max-new-tokens {judge.get(key, 1024)}")
    return " ".join(args)


def get_judge_inputs(wildcards):
    inputs = {
        "answers": f"{RESULTS}/{wildcards.model}/judge/{wildcards.run}/{wildcards.judged}/answers.jsonl",
        "judge_config": f"{RESULTS}/judge/judge_config.json",
    }
    if wildcards.judged == "arena_hard":
        inputs["baseline"] = f"{RESULTS}/judge/baseline/arena_hard/answers.jsonl"
    return inputs


def baseline_arg(wildcards, input):
    return f"--baseline-answers {input.baseline}" if "baseline" in input.keys() else ""
