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
announce_precisions(
    config,
    jobs_run_here=workflow.resource_settings.nodes is None and not workflow.remote_exec,
    main_process=workflow.is_main_process,
)

# The runs, tables and checks of the config (prefopt/plan.py); a bad config exits with one line.
# Through the SLURM executor (profiles/slurm: a `--jobs` executor, or a job it started), training
# launchers start once per node with srun (docs/multinode.md); Snakemake names no executor while parsing.
ON_SLURM = workflow.resource_settings.nodes is not None or workflow.remote_exec
PLAN = workflow_plan(config, main_process=workflow.is_main_process, on_slurm=ON_SLURM)

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
