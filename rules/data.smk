rule build_demo_data:
    output:
        raw=f"{RESULTS}/data/demo/raw.jsonl",
    log:
        "logs/build_demo_data.log",
    benchmark:
        "benchmarks/build_demo_data.tsv"
    conda:
        "../envs/data.yaml"
    threads: get_job_threads("build_demo_data")
    resources:
        **get_job_resources("build_demo_data"),
    params:
        n=config["data"]["demo"]["n"],
        seed=config["data"]["demo"]["seed"],
    shell:
        "python workflow/scripts/build_demo_data.py --n {params.n} --seed {params.seed} "
        "--out {output.raw} > {log} 2>&1"


rule split_data:
    input:
        unpack(get_split_input),
        tokenizers=get_split_tokenizers,
    output:
        sft=f"{RESULTS}/data/split/sft.jsonl",
        pref=f"{RESULTS}/data/split/pref.jsonl",
        eval=f"{RESULTS}/data/split/eval.jsonl",
        manifest=f"{RESULTS}/data/split/split.json",
    log:
        "logs/split_data.log",
    benchmark:
        "benchmarks/split_data.tsv"
    conda:
        "../envs/train.yaml"
    threads: get_job_threads("split_data")
    resources:
        **get_job_resources("split_data"),
    params:
        source=get_split_source_args(),
        sft_fraction=config["data"]["sft_fraction"],
        eval_size=config["data"]["eval_size"],
        seed=config["data"]["seed"],
        on_bad_rows=config["data"]["on_bad_rows"],
        limit=(
            f"--limit {config['data']['limit']}"
            if config["data"]["limit"] is not None
            else ""
        ),
        length_checks=get_split_length_checks(),
    shell:
        "python workflow/scripts/split_data.py {params.source} "
        "--sft-fraction {params.sft_fraction} --eval-size {params.eval_size} --seed {params.seed} "
        "--on-bad-rows {params.on_bad_rows} {params.limit} {params.length_checks} "
        "--out-dir $(dirname {output.manifest}) > {log} 2>&1"
