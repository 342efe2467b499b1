# The SLIME experiment DAG: split -> SFT -> one alignment run per method and ablation
# -> evaluation -> Tables 3-5, figures and report. Run `snakemake --cores 2` (see README).
from snakemake.utils import min_version

from prefopt.config_schema import resolve_workflow_config
from prefopt.plan import announce_precisions, workflow_plan
from prefopt.resources import jobs_use_this_python
from prefopt.tracking import export_tracking

min_version("9.0")


# `--configfile configs/paper.yaml` replaces the embedded default instead of merging into it.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


resolve_workflow_config(config, f"{workflow.basedir}/schemas/config.schema.yaml")
# `precision: auto` resolves once here when the jobs run on this machine (`--cores`), else in each
# job on its own node (`--jobs`, cluster executors): docs/precision.md.
JOBS_RUN_HERE = workflow.resource_settings.nodes is None and not workflow.remote_exec
announce_precisions(
    config, jobs_run_here=JOBS_RUN_HERE, main_process=workflow.is_main_process
)

# The runs, tables and checks of the config (prefopt/plan.py); a bad config exits with one line.
# (`launchers.*.nodes` > 1 needs SLURM: an error where the jobs surely run here, `--cores` alone.)
PLAN = workflow_plan(
    config, main_process=workflow.is_main_process, jobs_run_here=JOBS_RUN_HERE
)

# Jobs run this Snakemake's own Python and tools (`python`, `accelerate`) with or without an
# activated venv, locally and in SLURM jobs (prefopt/resources.py).
jobs_use_this_python()

# The tracker's settings reach the training jobs through the environment, not params, so switching
# backends, or this invocation's group, retrains nothing (prefopt/tracking.py).
TRACKING_ENV = export_tracking(config, main_process=workflow.is_main_process)

# Jobs import this checkout's prefopt, in the project venv and in the envs/ of `--sdm conda` alike.
# (The prefix is format()ted: {{ }} are literal braces. It keeps Snakemake's bash strict mode.)
shell.prefix(
    "set -euo pipefail; export PYTHONPATH='"
    + workflow.basedir
    + "'${{PYTHONPATH:+:$PYTHONPATH}}; "
)


include: "rules/common.smk"


envvars:
    *get_envvars(),


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/judge.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
