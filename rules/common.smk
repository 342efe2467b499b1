# `get_*` helpers that turn the experiment plan (prefopt/plan.py, `PLAN` from the Snakefile) into
# the inputs and params of the rules. Every hyperparameter reaches a job through `params:` or a
# run-config file written by `write_run_config`; no script reads the global config.
import json
import os
import re

from snakemake.io import report as in_report

from prefopt import plan as planner
from prefopt import resources as job_requests
from prefopt import tracking

RESULTS = planner.RESULTS
REPO = workflow.basedir
BENCHMARKS = config["evaluation"]["benchmarks"]


wildcard_constraints:
    model="|".join(re.escape(name) for name in sorted(config["models"])),
    run=r"base|sft|[a-z][a-z0-9_]*-[0-9a-f]{10}",
    judged="mt_bench|arena_hard",


# ---------------------------------------------------------------- training


def get_run_config(wildcards):
    return planner.plan_run_config(config, PLAN, wildcards.model, wildcards.run)


def get_prepare_precision():
    """The prepared base weights' dtype: the training precision, fp32 while `auto` waits for the job's node."""
    return "fp32" if config["precision"] == "auto" else config["precision"]


def get_training_settings(stage):
    return lambda wildcards: planner.training_settings(config, stage, wildcards.model)


def get_launch(stage):
    return planner.launch_command(config, stage, REPO)


def get_checkpoint_dir(wildcards):
    run = wildcards.run if "run" in wildcards.keys() else "sft"
    return planner.checkpoint_dir(config, wildcards.model, run)


def get_probe_input(wildcards):
    if config["evaluation"]["probes"] is None:
        return {}
    return {"probe_rows": f"{RESULTS}/data/split/eval.jsonl"}


def get_probe_arg(wildcards, input):
    return f"--probe-rows {input.probe_rows}" if "probe_rows" in input.keys() else ""


def get_objective_input(wildcards):
    """The file of the config's own objective module a run trains with: an input, so editing it reruns the run."""
    source = PLAN.objective_source(wildcards.model, wildcards.run)
    return {"objective": source} if source else {}


def get_objective_arg(wildcards, input):
    return (
        f"--objective-source {input.objective}" if "objective" in input.keys() else ""
    )


def get_split_input(wildcards):
    data = config["data"]
    if data["source"] == "demo":
        return {"raw": f"{RESULTS}/data/demo/raw.jsonl"}
    dataset = data["ultrafeedback"]["dataset"]
    # A local dataset file or folder is an input like any other: editing it reruns the split.
    # A folder: every file in it (the folder's mtime misses edits to its files).
    if os.path.isdir(dataset):
        from prefopt.data import dataset_files

        return {"raw": dataset_files(dataset)}
    return {"raw": dataset} if os.path.exists(dataset) else {}


def get_split_source_args():
    data = config["data"]
    if data["source"] == "demo":
        return f"--source demo --input {RESULTS}/data/demo/raw.jsonl"
    uf = data["ultrafeedback"]
    return f"--source ultrafeedback --input {uf['dataset']} --hf-split {uf['split']}"


# ---------------------------------------------------------------- evaluation and tables


def get_eval_model(wildcards):
    """The model directories an evaluation loads: base, SFT, or SFT plus an alignment adapter."""
    if wildcards.run == "base":
        return {"model": planner.base_model_dir(wildcards.model)}
    if wildcards.run == "sft":
        return {"model": planner.sft_model_dir(wildcards.model)}
    return {
        "model": planner.sft_model_dir(wildcards.model),
        "run": planner.align_dir(wildcards.model, wildcards.run),
    }


def get_evaluation_outputs():
    return [
        f"{RESULTS}/{{model}}/eval/{{run}}/{benchmark}{suffix}"
        for benchmark in BENCHMARKS
        for suffix in (".json", ".examples.jsonl")
    ]


def get_adapter_arg(wildcards, input):
    return f"--adapter {input.run}/adapter" if "run" in input.keys() else ""


def get_result_files(model, run):
    files = {
        benchmark: f"{RESULTS}/{model}/eval/{run}/{benchmark}.json"
        for benchmark in BENCHMARKS
    }
    files.update(get_judge_score_files(model, run))
    return files


def get_judge_benchmarks():
    judge = config.get("judge")
    if not judge:
        return []
    return judge.get("benchmarks", ["mt_bench", "arena_hard"])


def get_judge_score_files(model, run):
    files = {
        bench: f"{RESULTS}/{model}/judge/{run}/{bench}/score.json"
        for bench in get_judge_benchmarks()
    }
    if "arena_hard" in files:
        files["arena_hard_style_control"] = (
            f"{RESULTS}/judge/arena_hard/style_control.json"
        )
    return files


def get_not_run_reasons():
    reasons = {}
    for bench, name in (("mt_bench", "MT-Bench"), ("arena_hard", "Arena-Hard")):
        if bench not in get_judge_benchmarks():
            reasons[bench] = (
                f"{name} needs an LLM judge; none is configured (set `judge:` in the config). "
                "No offline stand-in is reported in its place."
            )
    return reasons


def get_tables_manifest():
    manifest = planner.table_manifest(config, PLAN, get_result_files)
    manifest["judge"] = (config.get("judge") or {}).get("model")
    manifest["not_run"] = get_not_run_reasons()
    return manifest


def get_figures_manifest():
    manifest = get_tables_manifest()
    manifest["training_curves"] = planner.training_curves(config, PLAN)
    return manifest


def get_manifest_inputs(manifest):
    return planner.manifest_inputs(manifest)


def get_training_outputs():
    """`{"<model>/<run>": output folder}` of every SFT and alignment job (their tracker runs' names)."""
    return planner.training_outputs(config, PLAN)


def get_final_output():
    return planner.final_outputs(PLAN)


def get_table_outputs():
    """Every table file, in the report with its caption (docs/report/<table>.rst; sweep.rst for the sweeps)."""
    outputs = []
    for path in planner.table_files(PLAN):
        name = os.path.basename(path).rsplit(".", 1)[0]
        caption = "sweep" if name.startswith("sweep_") else name
        outputs.append(
            in_report(path, caption=f"../docs/report/{caption}.rst", category="Tables")
        )
    return outputs


# ---------------------------------------------------------------- judge (MT-Bench, Arena-Hard)


def get_judge_config_payload(benchmark):
    """One benchmark's judge settings (prefopt.evaluation.judge.judge_settings): the key's variable name, never the key."""
    from prefopt.evaluation.judge import judge_settings

    return judge_settings(config["judge"], benchmark)


def get_judge_baseline():
    return (config.get("judge") or {}).get("baseline") or {}


def get_questions_arg(benchmark):
    judge = config.get("judge") or {}
    questions = (judge.get(benchmark) or {}).get("questions")
    return f"--questions {questions}" if questions else ""


def get_question_args(benchmark):
    judge = config["judge"]
    args = [get_questions_arg(benchmark)]
    if judge["question_limit"]:
        args.append(f"--limit {judge['question_limit']}")
    args.append(f"--max-new-tokens {judge[benchmark]['max_new_tokens']}")
    return " ".join(args)


def get_judge_inputs(wildcards):
    inputs = {
        "answers": f"{RESULTS}/{wildcards.model}/judge/{wildcards.run}/{wildcards.judged}/answers.jsonl",
        "judge_config": f"{RESULTS}/judge/{wildcards.judged}/judge_config.json",
    }
    if wildcards.judged == "arena_hard":
        inputs["baseline"] = f"{RESULTS}/judge/baseline/arena_hard/answers.jsonl"
    return inputs


def get_baseline_arg(wildcards, input):
    return f"--baseline-answers {input.baseline}" if "baseline" in input.keys() else ""


def get_style_control_inputs(wildcards):
    """Every table row's Arena-Hard judgments and answers: style control fits them jointly, as upstream."""
    runs = sorted(
        {(row.model, row.runs[0]) for table in PLAN.tables for row in table.rows}
    )
    return {
        "judgments": [
            f"{RESULTS}/{m}/judge/{r}/arena_hard/judgments.jsonl" for m, r in runs
        ],
        "answers": [
            f"{RESULTS}/{m}/judge/{r}/arena_hard/answers.jsonl" for m, r in runs
        ],
        "baseline": f"{RESULTS}/judge/baseline/arena_hard/answers.jsonl",
    }


# ---------------------------------------------------------------- job resources (prefopt/resources.py)
# What each job asks the scheduler (SLURM, or Snakemake locally) for comes from the config alone;
# profiles/slurm adds only cluster-wide choices (partition, account, status command).


def get_job_threads(rule):
    return job_requests.job_threads(config=config, rule=rule)


def get_job_gpus(rule):
    return job_requests.job_gpus(config=config, rule=rule)


def get_job_resources(rule):
    return job_requests.job_resources(config=config, rule=rule)


# ---------------------------------------------------------------- split-time length checks (issue 8, part 5)


def get_split_tokenizers(wildcards):
    """The prepared base model of every enabled model: its tokenizer checks prompt lengths at the split."""
    return [planner.base_model_dir(model) for model in planner.enabled_models(config)]


def get_envvars():
    """The variables jobs read: the tracker's settings (set by the Snakefile) and, when set, the
    tracker's credential variables and the judge's API key variable. Declared, they reach remote and
    cluster jobs. An unset judge key: the plan warns (a dry run or the tables need no key) and the
    judge jobs stop naming it.
    """
    judge = [name for name in planner.judge_key_variables(config) if name in os.environ]
    return [TRACKING_ENV, *tracking.credential_variables(config), *judge]


def get_split_length_checks():
    """`--length-check LABEL=DIR:MAX_PROMPT_LENGTH:MAX_LENGTH` for every enabled model's SFT and alignment."""
    args = []
    for model in planner.enabled_models(config):
        for stage in ("sft", "align"):
            settings = planner.training_settings(config, stage, model)
            args.append(
                f"--length-check {model}.{stage}={planner.base_model_dir(model)}:"
                f"{settings['max_prompt_length']}:{settings['max_length']}"
            )
    return " ".join(args)
