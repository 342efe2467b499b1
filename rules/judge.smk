# MT-Bench and Arena-Hard through an OpenAI-compatible judge. Scheduled only when `judge:` is set.


rule judge_config:
    output:
        judge_config=f"{RESULTS}/judge/{{judged}}/judge_config.json",
    log:
        "logs/judge_config/{judged}.log",
    benchmark:
        "benchmarks/judge_config/{judged}.tsv"
    localrule: True
    conda:
        "../envs/data.yaml"
    params:
        payload=lambda wildcards: json.dumps(
            get_judge_config_payload(wildcards.judged), sort_keys=True
        ),
    shell:
        "python workflow/scripts/write_json.py --json {params.payload:q} --out {output.judge_config} > {log} 2>&1"


rule prepare_baseline_model:
    output:
        model=directory(f"{RESULTS}/judge/baseline/model"),
    log:
        "logs/prepare_baseline_model.log",
    benchmark:
        "benchmarks/prepare_baseline_model.tsv"
    conda:
        "../envs/train.yaml"
    threads: get_job_threads("prepare_baseline_model")
    resources:
        **get_job_resources("prepare_baseline_model"),
    params:
        source=json.dumps(get_judge_baseline().get("source", {})),
        chat_template=get_judge_baseline().get("chat_template") or "none",
        precision=config["evaluation"]["precision"],
    shell:
        "python workflow/scripts/prepare_model.py --source {params.source:q} "
        "--chat-template {params.chat_template} --precision {params.precision} "
        "--out {output.model} > {log} 2>&1"


rule baseline_answers:
    input:
        model=f"{RESULTS}/judge/baseline/model",
    output:
        answers=f"{RESULTS}/judge/baseline/arena_hard/answers.jsonl",
    log:
        "logs/baseline_answers.log",
    benchmark:
        "benchmarks/baseline_answers.tsv"
    conda:
        "../envs/eval.yaml"
    threads: get_job_threads("baseline_answers")
    resources:
        **get_job_resources("baseline_answers"),
    params:
        model_id=get_judge_baseline().get("name", "baseline"),
        questions=lambda wildcards: get_question_args("arena_hard"),
        batch_size=config["evaluation"]["batch_size"],
        precision=config["evaluation"]["precision"],
    shell:
        "python workflow/scripts/generate_answers.py --model {input.model} "
        "--benchmark arena_hard --model-id {params.model_id} {params.questions} "
        "--batch-size {params.batch_size} --precision {params.precision} --threads {threads} "
        "--out {output.answers} > {log} 2>&1"


rule generate_answers:
    input:
        unpack(get_eval_model),
    output:
        answers=f"{RESULTS}/{{model}}/judge/{{run}}/{{judged}}/answers.jsonl",
    log:
        "logs/generate_answers/{model}/{run}/{judged}.log",
    benchmark:
        "benchmarks/generate_answers/{model}/{run}/{judged}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: get_job_threads("generate_answers")
    resources:
        **get_job_resources("generate_answers"),
    params:
        adapter=get_adapter_arg,
        model_id="{model}-{run}",
        questions=lambda wildcards: get_question_args(wildcards.judged),
        batch_size=config["evaluation"]["batch_size"],
        precision=config["evaluation"]["precision"],
    shell:
        "python workflow/scripts/generate_answers.py --model {input.model} {params.adapter} "
        "--benchmark {wildcards.judged} --model-id {params.model_id} {params.questions} "
        "--batch-size {params.batch_size} --precision {params.precision} --threads {threads} "
        "--out {output.answers} > {log} 2>&1"


rule judge_answers:
    input:
        unpack(get_judge_inputs),
    output:
        judgments=f"{RESULTS}/{{model}}/judge/{{run}}/{{judged}}/judgments.jsonl",
    log:
        "logs/judge_answers/{model}/{run}/{judged}.log",
    benchmark:
        "benchmarks/judge_answers/{model}/{run}/{judged}.tsv"
    conda:
        "../envs/eval.yaml"
    threads: get_job_threads("judge_answers")
    resources:
        **get_job_resources("judge_answers"),
    params:
        model_id="{model}-{run}",
        baseline=get_baseline_arg,
        questions=lambda wildcards: get_questions_arg(wildcards.judged),
        cache=f"{config['checkpoint_dir']}/judge_cache/{{judged}}.jsonl",
    shell:
        "python workflow/scripts/judge_answers.py --benchmark {wildcards.judged} "
        "--answers {input.answers} --model-id {params.model_id} {params.baseline} {params.questions} "
        "--judge-config {input.judge_config} --cache {params.cache} "
        "--out {output.judgments} > {log} 2>&1"


rule score_judgments:
    input:
        judgments=f"{RESULTS}/{{model}}/judge/{{run}}/{{judged}}/judgments.jsonl",
    output:
        score=f"{RESULTS}/{{model}}/judge/{{run}}/{{judged}}/score.json",
    log:
        "logs/score_judgments/{model}/{run}/{judged}.log",
    benchmark:
        "benchmarks/score_judgments/{model}/{run}/{judged}.tsv"
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        seed=config["seed"],
        n_bootstrap=lambda wildcards: config["judge"]["arena_hard"]["n_bootstrap"],
    shell:
        "python workflow/scripts/score_judgments.py --benchmark {wildcards.judged} "
        "--judgments {input.judgments} --seed {params.seed} --n-bootstrap {params.n_bootstrap} "
        "--out {output.score} > {log} 2>&1"


rule arena_hard_style_control:
    input:
        unpack(get_style_control_inputs),
    output:
        score=f"{RESULTS}/judge/arena_hard/style_control.json",
    log:
        "logs/arena_hard_style_control.log",
    benchmark:
        "benchmarks/arena_hard_style_control.tsv"
    localrule: True
    conda:
        "../envs/eval.yaml"
    params:
        seed=config["seed"],
        n_bootstrap=lambda wildcards: config["judge"]["arena_hard"]["n_bootstrap"],
    shell:
        "python workflow/scripts/score_judgments.py --benchmark arena_hard_style_control "
        "--judgments {input.judgments} --answers {input.answers} "
        "--baseline-answers {input.baseline} --seed {params.seed} "
        "--n-bootstrap {params.n_bootstrap} --out {output.score} > {log} 2>&1"
