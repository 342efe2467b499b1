rule build_demo_data:
    output:
        raw=f"{RESULTS}/data/demo/raw.jsonl",
    log:
        "logs/build_demo_data.log",
    benchmark:
        "benchmarks/build_demo_data.tsv"
    conda:
        "../envs/data.yaml"
    params:
        n=config["data"].get("demo", {}).get("n", 800),
        seed=config["data"].get("demo", {}).get("seed", 0),
    shell:
        "python workflow/scripts/build_demo_data.py --n {params.n} --seed {params.seed} "
        "--out {output.raw} > {log} 2>&1"


rule split_data:
    input:
        unpack(get_split_input),
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
        "../envs/data.yaml"
    params:
        source=split_source_args(),
        sft_fraction=config["data"].get("sft_fraction", 0.33),
        eval_size=config["data"].get("eval_size", 500),
        seed=config["data"].get("seed", 0),
        on_bad=config["data"].get("on_bad_rows", "drop"),
        limit=(
            f"--limit {config['data']['limit']}" if config["data"].get("limit") else ""
        ),
    shell:
        "python workflow/scripts/split_data.py {params.source} "
        "--sft-fraction {params.sft_fraction} --eval-size {params.eval_size} --seed {params.seed} "
        "--on-bad {params.on_bad} {params.limit} --out-dir $(dirname {output.manifest}) > {log} 2>&1"
