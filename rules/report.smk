rule tables_manifest:
    output:
        manifest=f"{RESULTS}/tables/manifest.json",
    log:
        "logs/tables_manifest.log",
    benchmark:
        "benchmarks/tables_manifest.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        payload=json.dumps(get_tables_manifest(), sort_keys=True),
    shell:
        "python workflow/scripts/write_json.py --json {params.payload:q} --out {output.manifest} > {log} 2>&1"


rule tables:
    input:
        manifest=f"{RESULTS}/tables/manifest.json",
        results=get_manifest_inputs(get_tables_manifest()),
    output:
        # Table 3, Table 4, Table 5 (the p sweep), one sweep_<name> per other sweep, the comparisons.
        get_table_outputs(),
    log:
        "logs/tables.log",
    benchmark:
        "benchmarks/tables.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    shell:
        "python workflow/scripts/make_tables.py --manifest {input.manifest} "
        "--out-dir $(dirname {input.manifest}) > {log} 2>&1"


rule figures_manifest:
    output:
        manifest=f"{RESULTS}/figures_manifest.json",
    log:
        "logs/figures_manifest.log",
    benchmark:
        "benchmarks/figures_manifest.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        payload=json.dumps(get_figures_manifest(), sort_keys=True),
    shell:
        "python workflow/scripts/write_json.py --json {params.payload:q} --out {output.manifest} > {log} 2>&1"


rule figures:
    input:
        manifest=f"{RESULTS}/figures_manifest.json",
        results=get_manifest_inputs(get_figures_manifest()),
    output:
        figures=report(
            directory(f"{RESULTS}/figures"),
            patterns=["{name}.png"],
            caption="../docs/report/figures.rst",
            category="Figures",
        ),
    log:
        "logs/figures.log",
    benchmark:
        "benchmarks/figures.tsv"
    localrule: True
    conda:
        "../envs/report.yaml"
    shell:
        "python workflow/scripts/make_figures.py --manifest {input.manifest} "
        "--out-dir {output.figures} > {log} 2>&1"


rule tracking_index:
    input:
        runs=list(get_training_outputs().values()),
    output:
        index=report(
            planner.TRACKING_INDEX,
            caption="../docs/report/tracking.rst",
            category="Tracking",
        ),
    log:
        "logs/tracking_index.log",
    benchmark:
        "benchmarks/tracking_index.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        runs=" ".join(
            f"--run {name}={folder}" for name, folder in get_training_outputs().items()
        ),
    shell:
        "python workflow/scripts/tracking_index.py {params.runs} --out {output.index} > {log} 2>&1"
