rule evaluate:
    input:
        unpack(get_eval_model),
        eval=f"{RESULTS}/data/split/eval.jsonl",
    output:
        result=f"{RESULTS}/{{model}}/eval/{{run}}/{{benchmark}}.json",
        per_example=f"{RESULTS}/{{model}}/eval/{{run}}/{{benchmark}}.examples.jsonl",
    log:
        "logs/evaluate/{model}/{run}/{benchmark}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{run}/{benchmark}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: config.get("threads", 1)
    params:
        adapter=adapter_arg,
        label="{model}/{run}",
        batch_size=config["evaluation"].get("batch_size", 8),
        max_new_tokens=config["evaluation"].get("max_new_tokens", 64),
        max_length=lambda wildcards: training_settings("align", wildcards.model)[
            "max_length"
        ],
        max_prompt_length=lambda wildcards: training_settings(
            "align", wildcards.model
        )["max_prompt_length"],
        precision=config.get("precision", "fp32"),
    shell:
        "python workflow/scripts/evaluate.py --model {input.model} {params.adapter} "
        "--eval {input.eval} --benchmark {wildcards.benchmark} --label {params.label} "
        "--out {output.result} --per-example {output.per_example} "
        "--batch-size {params.batch_size} --max-new-tokens {params.max_new_tokens} "
        "--max-length {params.max_length} --max-prompt-length {params.max_prompt_length} "
        "--precision {params.precision} --threads {threads} > {log} 2>&1"
