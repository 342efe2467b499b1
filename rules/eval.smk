rule evaluate:
    input:
        unpack(get_eval_model),
        eval=f"{RESULTS}/data/split/eval.jsonl",
    output:
        # Every configured benchmark from one model load: <benchmark>.json and its per-example file.
        get_evaluation_outputs(),
    log:
        "logs/evaluate/{model}/{run}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{run}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: get_job_threads("evaluate")
    resources:
        **get_job_resources("evaluate"),
    params:
        adapter=get_adapter_arg,
        label="{model}/{run}",
        benchmarks=" ".join(BENCHMARKS),
        out_dir=f"{RESULTS}/{{model}}/eval/{{run}}",
        batch_size=config["evaluation"]["batch_size"],
        max_new_tokens=config["evaluation"]["max_new_tokens"],
        max_length=lambda wildcards: get_training_settings("align")(wildcards)[
            "max_length"
        ],
        max_prompt_length=lambda wildcards: get_training_settings("align")(wildcards)[
            "max_prompt_length"
        ],
        precision=config["evaluation"]["precision"],
    shell:
        "python workflow/scripts/evaluate.py --model {input.model} {params.adapter} "
        "--eval {input.eval} --benchmark {params.benchmarks} --label {params.label} "
        "--out-dir {params.out_dir} "
        "--batch-size {params.batch_size} --max-new-tokens {params.max_new_tokens} "
        "--max-length {params.max_length} --max-prompt-length {params.max_prompt_length} "
        "--precision {params.precision} --threads {threads} > {log} 2>&1"
