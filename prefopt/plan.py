"""The experiment plan: which training runs exist, their complete run configs and names, and the
tables they fill (Table 3 of methods, Table 4 of SLIME's components, one Table-5-shaped table per
hyperparameter sweep), each row with its role. Pure functions of a validated config whose defaults
are filled in (`prefopt.config_schema`); tested without Snakemake. rules/common.smk turns it into
`get_*` helpers; `workflow_plan` adds the checks that read the machine (model files, GPUs).

    plan = make_plan(config)
    plan.runs[("smollm2", "slime-1a2b3c4d5e")]   # the complete run config of one alignment job
    plan.table("table4").rows                      # [Row(model, label, role, runs), ...]

A run's name is its method plus a hash of its complete run config, so two spellings of the same
settings (the p-sweep's p=2.5 and the main SLIME run) are one job, and any settings change is a new
name. The job's *identity* (prefopt.job) adds the content of the inputs it reads.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from prefopt import resources, tracking
from prefopt.objectives import ObjectiveError, format_value, get_objective, objective_sources

RESULTS = "results"
EVALUATION_BENCHMARKS = ("offline", "demo_generation")  # the `evaluate` rule's, with per-example files
STAGES = ("sft", "align")
OURS = "slime"  # the paper's method: Table 3's reference row, and what Table 4's components vary
# Row roles: the pretrained and SFT rows, the row the others are compared with, and every other row.
ROLES = ("base", "sft", "reference", "row")


class PlanError(ValueError):
    """A config the plan cannot be made from; the message starts with the key path."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


@contextmanager
def objective_errors_as_plan_errors():
    """An objective's check (its message starts with the config key it was given) as the plan's error."""
    try:
        yield
    except ObjectiveError as error:
        key, _, message = str(error).partition(": ")
        raise PlanError(key, message) from None


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


def check_benchmarks(config: dict) -> None:
    if "demo_generation" in config["evaluation"]["benchmarks"] and config["data"]["source"] != "demo":
        raise PlanError("evaluation.benchmarks", "demo_generation needs data.source: demo (it checks known answers)")


def judge_key_variables(config: dict) -> list[str]:
    """The environment variable holding the judge's API key, when a judge needs one (`judge.api_key_env`)."""
    judge = config.get("judge") or {}
    return [judge["api_key_env"]] if judge.get("api_key_env") else []


def workflow_plan(config: dict, *, main_process: bool = True, jobs_run_here: bool = False) -> Plan:
    """`make_plan` after the checks that read this machine (model files, GPU requests, launchers:
    `jobs_run_here` when Snakemake runs the jobs on this machine, `--cores` without `--jobs`); a bad config
    exits with its one line, as the schema's errors do (`sys.exit` keeps Snakemake's output to that line).
    An unset judge key is a warning, not an error: a dry run or the tables need no key."""
    try:
        check_model_sources(config)
        check_benchmarks(config)
        resources.check_gpu_requests(config=config)
        check_launchers(config, jobs_run_here=jobs_run_here)
        tracking.check_tracking(config)
        plan = make_plan(config)
    except (PlanError, resources.ResourcesError, tracking.TrackingError) as error:
        sys.exit(f"config error: {error}")
    warnings = [f"judge.api_key_env: {variable} is not set; each judge job stops at its start until it is"
                for variable in judge_key_variables(config) if variable not in os.environ]
    for warning in [*warnings, *tracking.tracking_warnings(config)] if main_process else []:
        print(f"warning: {warning}", file=sys.stderr)
    return plan


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
    """`launchers.<stage>` of a validated config: the schema filled every default (`$defs/launcher`)."""
    return config["launchers"][stage]


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
    settings["num_gpus"] = launcher(config, stage)["gpus"]
    if settings["max_prompt_length"] >= settings["max_length"]:
        where = f"models.{model}.{stage}" if "max_length" in (config["models"][model].get(stage) or {}) else stage
        raise PlanError(f"{where}.max_prompt_length",
                        f"{settings['max_prompt_length']} must be smaller than max_length ({settings['max_length']})")
    return settings


def loss_kwargs(config: dict, method: str, overrides: dict | None = None, where: str | None = None) -> dict:
    """Every hyperparameter of `method` resolved: its signature's defaults (prefopt.objectives), a named
    preset, the config's `methods.<method>`, then an ablation's or a sweep's overrides (checked, named by `where`)."""
    with objective_errors_as_plan_errors():
        spec = get_objective(method)
        resolved = spec.resolve(config["methods"].get(method) or {}, f"methods.{method}")
        resolved.update(spec.check_kwargs(overrides or {}, where or f"methods.{method}"))
    return resolved


def alignment_seeds(config: dict) -> list[int]:
    """The seeds every alignment run is trained with (`seeds`; null means just `seed`)."""
    return list(config["seeds"]) if config["seeds"] is not None else [config["seed"]]


def run_config(config: dict, model: str, method: str, overrides: dict | None = None, seed: int | None = None,
               where: str | None = None) -> dict:
    """The complete run-config file of one training job (prefopt.run_config checks it, fills nothing).
    `seed` replaces the config's `seed` for one alignment run of the `seeds` dimension; `where` names
    the overrides' config key in errors."""
    stage = "sft" if method == "sft" else "align"
    training = training_settings(config, stage, model)
    if seed is not None:
        training["seed"] = seed
    return {
        "method": method,
        "loss_kwargs": {} if method == "sft" else loss_kwargs(config, method, overrides, where),
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


@dataclass(frozen=True)
class Row:
    """One table row: its runs (one per alignment seed; base and SFT rows have one), its label and role,
    and for a sweep row the hyperparameter's value."""

    model: str
    label: str
    role: str
    runs: list
    value: object = None


@dataclass
class Table:
    """A table of the plan: `kind` is methods (Table 3), ablations (Table 4) or sweep (one hyperparameter)."""

    name: str
    kind: str
    rows: list = field(default_factory=list)
    method: str | None = None
    parameter: str | None = None


@dataclass
class Plan:
    """Every alignment run (keyed by (model, run name)) and the tables their rows fill."""

    runs: dict = field(default_factory=dict)
    tables: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)  # method -> file of a config's own objective module

    def objective_source(self, model: str, run: str) -> str | None:
        """The file of the user module an alignment run's objective comes from (None: a built-in, or no run)."""
        return self.sources.get(self.runs[(model, run)]["method"]) if (model, run) in self.runs else None

    def add(self, config: dict, model: str, method: str, overrides: dict | None = None, where: str | None = None) -> list[str]:
        names = []
        for seed in alignment_seeds(config):
            settings = run_config(config, model, method, overrides, seed=seed, where=where)
            names.append(run_name(settings))
            self.runs[(model, names[-1])] = settings
        return names

    def table(self, name: str) -> Table:
        return next(table for table in self.tables if table.name == name)


def ablation_model(config: dict) -> str | None:
    model = config["ablations"].get("model")
    if model is not None and model not in enabled_models(config):
        raise PlanError("ablations.model", f"'{model}' is not an enabled model ({', '.join(enabled_models(config))})")
    return model


def method_label(method: str) -> str:
    """A method's row label in Table 3: the objective's label, "(ours)" for the paper's method."""
    return f"+ {get_objective(method).label}" + (" (ours)" if method == OURS else "")


def sweep_target(config: dict, key: str) -> tuple[str, str, str]:
    """(method, hyperparameter, table name) of an `ablations.sweeps` key: `p` is SLIME's p (Table 5),
    `delta` SLIME's delta (sweep_delta), `simpo.beta` SimPO's beta (sweep_simpo_beta)."""
    method, _, parameter = key.rpartition(".")
    method = method or OURS
    try:
        get_objective(method)
    except ObjectiveError as error:  # an unknown method, with its near miss
        raise PlanError(f"ablations.sweeps.{key}", str(error)) from None
    if method not in config["methods"]:
        raise PlanError(f"ablations.sweeps.{key}", f"sweeps {method}'s {parameter}, so 'methods' must include {method}")
    with objective_errors_as_plan_errors():
        get_objective(method).hyperparameter(parameter, f"ablations.sweeps.{key}")
    if (method, parameter) == (OURS, "p"):
        return method, parameter, "table5"  # the paper's Table 5
    return method, parameter, "sweep_" + (parameter if method == OURS else f"{method}_{parameter}")


def make_plan(config: dict) -> Plan:
    """The runs and tables of a validated config (defaults filled)."""
    plan = Plan(sources={method: source for method, source in objective_sources(config["objectives"]).items()
                         if method in config["methods"]})
    table3 = Table("table3", "methods")
    plan.tables.append(table3)
    for model in enabled_models(config):
        table3.rows.append(Row(model, "Base (Pretrain)", "base", ["base"]))
        table3.rows.append(Row(model, "SFT", "sft", ["sft"]))
        for method in config["methods"]:
            role = "reference" if method == OURS else "row"
            table3.rows.append(Row(model, method_label(method), role, plan.add(config, model, method)))
    model = ablation_model(config)
    if model is None:
        return plan
    ablations = config["ablations"]
    if OURS not in config["methods"]:
        raise PlanError("ablations", f"the ablations vary SLIME, so 'methods' must include {OURS}")
    table4 = Table("table4", "ablations", method=OURS)
    plan.tables.append(table4)
    table4.rows.append(Row(model, "Full SLIME", "reference", plan.add(config, model, OURS)))
    names = [component["name"] for component in ablations["components"]]
    if len(set(names)) != len(names):
        raise PlanError("ablations.components", f"names must be unique, got {names}")
    for index, component in enumerate(ablations["components"]):
        where = f"ablations.components[{index}].overrides"
        table4.rows.append(Row(model, component["label"], "row", plan.add(config, model, OURS, component["overrides"], where)))
    seen = {}
    for key, values in ablations["sweeps"].items():
        table = sweep_table(config, plan, model, key, values)
        if table.name in seen:
            raise PlanError(f"ablations.sweeps.{key}", f"sweeps the same hyperparameter as '{seen[table.name]}'")
        seen[table.name] = key
        plan.tables.append(table)
    return plan


def sweep_table(config: dict, plan: Plan, model: str, key: str, values: list) -> Table:
    """The Table-5-shaped table of one `ablations.sweeps` entry; its runs join `plan`. The method's
    default value (after preset and config) is always a row: the reference the others are compared with."""
    method, parameter, name = sweep_target(config, key)
    spec = get_objective(method).hyperparameter(parameter)
    with objective_errors_as_plan_errors():
        checked = [spec.check(value, f"ablations.sweeps.{key}[{index}]") for index, value in enumerate(values)]
    default = loss_kwargs(config, method)[parameter]
    table = Table(name, "sweep", method=method, parameter=parameter)
    for value in sorted(set(checked) | {default}):
        runs = plan.add(config, model, method, {parameter: value}, f"ablations.sweeps.{key}")
        table.rows.append(Row(model, format_value(value), "reference" if value == default else "row", runs, value))
    return table


def plan_run_config(config: dict, plan: Plan, model: str, run: str) -> dict:
    """The run config behind a (model, run) pair of the DAG; "sft" is the model's SFT job."""
    if run == "sft":
        return run_config(config, model, "sft")
    if (model, run) not in plan.runs:
        raise PlanError("runs", f"no alignment run '{run}' for model '{model}' in the config")
    return plan.runs[(model, run)]


# ---------------------------------------------------------------------------------------------- paths


TRACKING_INDEX = f"{RESULTS}/tracking.html"  # every training run's tracker entry, in the report


def base_model_dir(model: str) -> str:
    return f"{RESULTS}/{model}/base"


def sft_model_dir(model: str) -> str:
    return f"{RESULTS}/{model}/sft"


def align_dir(model: str, run: str) -> str:
    return f"{RESULTS}/{model}/align/{run}"


def checkpoint_dir(config: dict, model: str, run: str) -> str:
    return f"{config['checkpoint_dir']}/{model}/{run}"


def table_files(plan: Plan) -> list[str]:
    """Every table's .csv, .md and .tex, and the paired comparisons (the `tables` rule's outputs)."""
    files = [f"{RESULTS}/tables/{name}.{ext}" for name in table_names(plan) for ext in ("csv", "md", "tex")]
    return files + [f"{RESULTS}/tables/comparisons.{ext}" for ext in ("csv", "md")]


def final_outputs(plan: Plan) -> list[str]:
    return [*table_files(plan), f"{RESULTS}/figures", TRACKING_INDEX]


def training_outputs(config: dict, plan: Plan) -> dict[str, str]:
    """`{"<model>/<run>": output folder}` of every training job: each enabled model's SFT, every alignment run.
    The names are the tracker runs' names (prefopt.tracking.dag_run_name of their run configs)."""
    outputs = {f"{model}/sft": sft_model_dir(model) for model in enabled_models(config)}
    outputs.update({f"{model}/{run}": align_dir(model, run) for model, run in sorted(plan.runs)})
    return outputs


# ------------------------------------------------------------------------------------------ manifests


def table_manifest(config: dict, plan: Plan, result_files) -> dict:
    """Every table of the plan with its rows, for the tables and figures jobs (prefopt.tables reads it).

    `result_files(model, run)` names each run's result files. A row's `run`/`results` are its first
    seed's; `runs`/`seed_results` list every seed's, in `seeds` order. A row's `role` (base, sft,
    reference, row) says what it is compared with; a sweep row has its `value`."""

    def row(entry: Row) -> dict:
        return {"model": entry.model, "model_label": model_label(config, entry.model), "label": entry.label,
                "role": entry.role, "value": entry.value, "run": entry.runs[0],
                "results": result_files(entry.model, entry.runs[0]), "runs": entry.runs,
                "seed_results": [result_files(entry.model, run) for run in entry.runs]}

    def described(table: Table) -> dict:
        extra = {}
        if table.method is not None:
            extra["method_label"] = get_objective(table.method).label
        return {"name": table.name, "kind": table.kind, "method": table.method, "parameter": table.parameter,
                **extra, "rows": [row(entry) for entry in table.rows]}

    return {"tables": [described(table) for table in plan.tables]}


def table_names(plan: Plan) -> list[str]:
    return [table.name for table in plan.tables]


def training_curves(config: dict, plan: Plan) -> list[dict]:
    """One training curve per alignment run of Table 3 (every seed), labelled by its objective."""
    curves = []
    for entry in plan.table("table3").rows:
        for run in entry.runs if entry.role not in ("base", "sft") else []:
            settings = plan.runs[(entry.model, run)]
            curves.append({"model": entry.model, "model_label": model_label(config, entry.model),
                           "label": get_objective(settings["method"]).label,
                           "metrics": f"{align_dir(entry.model, run)}/metrics.jsonl", "seed": settings["training"]["seed"]})
    return curves


def manifest_inputs(manifest: dict) -> list[str]:
    """The files a manifest's consumer reads: every result file (with the per-example file beside an
    evaluation's result, which the paired CIs read) and every training run directory."""
    files = []
    for table in manifest["tables"]:
        for row in table["rows"]:
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


MACHINE_ARGS = ("--num_machines", "--machine_rank", "--main_process_ip")  # set from `nodes`


def check_launchers(config: dict, *, jobs_run_here: bool) -> None:
    """Raise `PlanError` for a launcher that cannot run: `nodes` above 1 needs SLURM (so not where the jobs
    run on this machine) and an accelerate launcher (ddp, zero2); accelerate's machine settings come from `nodes`."""
    for stage in STAGES:
        settings, key = launcher(config, stage), f"launchers.{stage}"
        nodes = settings["nodes"]
        if nodes > 1 and jobs_run_here:
            raise PlanError(f"{key}.nodes", f"{nodes} nodes need SLURM (--workflow-profile profiles/slurm); "
                                            "jobs run on this machine take nodes: 1")
        if nodes > 1 and settings["type"] == "python":
            raise PlanError(f"{key}.nodes", f"{nodes} nodes need type ddp or zero2 (python starts one process)")
        named = [arg for arg in MACHINE_ARGS if arg in settings["extra_args"].split()]
        if named:
            raise PlanError(f"{key}.extra_args", f"{named[0]} is set by the workflow; give nodes instead")


def srun_per_node(config: dict, stage: str) -> str:
    """srun starting one task per node of the job, with the job's CPUs each, all killed when one fails.
    `--overlap`: the step may share the job's resources with the job's own shell."""
    nodes = launcher(config, stage)["nodes"]
    cpus = resources.job_threads(config=config, rule=stage)
    return (f"srun --nodes={nodes} --ntasks={nodes} --ntasks-per-node=1 --cpus-per-task={cpus} "
            "--overlap --kill-on-bad-exit=1")


def launch_command(config: dict, stage: str, repo: str) -> str:
    """The command that starts a training script: plain python, or accelerate with DDP / DeepSpeed ZeRO-2.

    With `nodes` above 1 (a SLURM job on that many nodes: prefopt.resources) the launcher starts through
    `srun_per_node`, once per node: workflow/scripts/launch_node.sh runs `accelerate launch --machine_rank
    $SLURM_NODEID --main_process_ip <first node>` with these arguments; `num_processes` counts each
    node's, `--num_processes` all of them. `nodes: 1` is the one-machine command, on SLURM too (the
    jobstep plugin starts it in its own one-task step), so the command is the same wherever it runs."""
    settings = launcher(config, stage)
    kind, nodes = settings["type"], settings["nodes"]
    if kind == "python":
        return "python"
    on_cpu = config["device"] == "cpu"
    default_file = {"ddp": "configs/accelerate/cpu_ddp.yaml" if on_cpu else "configs/accelerate/ddp.yaml",
                    "zero2": "configs/accelerate/zero2.yaml"}[kind]
    # Jobs started together on one machine need distinct rendezvous ports. A multi-node job's shell
    # runs on its first node, the main one, so a port free there serves every node.
    port = settings["main_process_port"] or f"$(python {repo}/workflow/scripts/free_port.py)"
    parts = [
        f"--config_file {settings.get('accelerate_config', default_file)}",
        f"--num_processes {nodes * settings['num_processes']}",
        f"--num_machines {nodes}" if nodes > 1 else "",
        # Without it DeepSpeed on several machines starts its ranks over pdsh/ssh, not once per node.
        "--deepspeed_multinode_launcher standard" if nodes > 1 and kind == "zero2" else "",
        f"--mixed_precision {accelerate_mixed_precision(config)}",
        # On CPU, DDP needs --multi_gpu (`--cpu` would quietly start one process); zero2 must not get
        # it: the flag overrides the yaml's DEEPSPEED type and the job silently runs as plain DDP.
        "--multi_gpu" if on_cpu and kind == "ddp" else "",
        f"--main_process_port {port}",
        settings["extra_args"],
    ]
    arguments = " ".join(part for part in parts if part)
    if nodes > 1:
        return f"{srun_per_node(config, stage)} bash {repo}/workflow/scripts/launch_node.sh {arguments}"
    return f"accelerate launch {arguments}"
