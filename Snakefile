# The SLIME experiment DAG: split -> SFT -> one alignment run per method and ablation
# -> evaluation -> Tables 3-5, figures and report. Run `snakemake --cores 2` (see README).
from snakemake.utils import min_version, validate

min_version("9.0")


# `--configfile configs/paper.yaml` replaces the embedded default instead of merging into it.
if not workflow.config_settings.configfiles:

    configfile: "config.yaml"


validate(config, "schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/eval.smk"
include: "rules/judge.smk"
include: "rules/report.smk"


rule all:
    input:
        get_final_output(),
