rule prepare_model:
    output:
        model=directory(f"{RESULTS}/{{model}}/base"),
    log:
        "logs/prepare_model/{model}.log",
    benchmark:
        "benchmarks/prepare_model/{model}.tsv"
    conda:
        "../envs/train.yaml"
    threads: get_job_threads("prepare_model")
    resources:
        **get_job_resources("prepare_model"),
    params:
        source=lambda wildcards: json.dumps(config["models"][wildcards.model]["source"]),
        chat_template=lambda wildcards: config["models"][wildcards.model][
            "chat_template"
        ]
        or "none",
        precision=get_prepare_precision(),
    shell:
        "python workflow/scripts/prepare_model.py --source {params.source:q} "
        "--chat-template {params.chat_template} --precision {params.precision} "
        "--out {output.model} > {log} 2>&1"


rule write_run_config:
    output:
        run_config=f"{RESULTS}/{{model}}/runs/{{run}}.json",
    log:
        "logs/write_run_config/{model}/{run}.log",
    benchmark:
        "benchmarks/write_run_config/{model}/{run}.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        payload=lambda wildcards: json.dumps(get_run_config(wildcards), sort_keys=True),
    shell:
        "python workflow/scripts/write_json.py --json {params.payload:q} --out {output.run_config} > {log} 2>&1"


rule sft:
    input:
        model=f"{RESULTS}/{{model}}/base",
        train=f"{RESULTS}/data/split/sft.jsonl",
        run_config=f"{RESULTS}/{{model}}/runs/sft.json",
    output:
        model=directory(f"{RESULTS}/{{model}}/sft"),
    log:
        "logs/sft/{model}.log",
    benchmark:
        "benchmarks/sft/{model}.tsv"
    conda:
        "../envs/train.yaml"
    threads: get_job_threads("sft")
    resources:
        **get_job_resources("sft"),
    params:
        launch=get_launch("sft"),
        gpus=get_job_gpus("sft"),
        checkpoints=get_checkpoint_dir,
    shell:
        "{params.launch} workflow/scripts/sft.py --run-config {input.run_config} "
        "--model {input.model} --train {input.train} --out {output.model} "
        "--checkpoint-dir {params.checkpoints} --threads {threads} --require-gpus {params.gpus} > {log} 2>&1"


rule align:
    input:
        unpack(get_probe_input),
        unpack(get_objective_input),
        model=f"{RESULTS}/{{model}}/sft",
        train=f"{RESULTS}/data/split/pref.jsonl",
        run_config=f"{RESULTS}/{{model}}/runs/{{run}}.json",
    output:
        run=directory(f"{RESULTS}/{{model}}/align/{{run}}"),
    log:
        "logs/align/{model}/{run}.log",
    benchmark:
        "benchmarks/align/{model}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    threads: get_job_threads("align")
    resources:
        **get_job_resources("align"),
    params:
        launch=get_launch("align"),
        gpus=get_job_gpus("align"),
        checkpoints=get_checkpoint_dir,
        probes=get_probe_arg,
        objective=get_objective_arg,
    shell:
        "{params.launch} workflow/scripts/align.py --run-config {input.run_config} "
        "--model {input.model} --train {input.train} {params.probes} {params.objective} --out {output.run} "
        "--checkpoint-dir {params.checkpoints} --threads {threads} --require-gpus {params.gpus} > {log} 2>&1"
