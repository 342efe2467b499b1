"""Generate MT-Bench or Arena-Hard answers for one model, in the upstream file formats.

    python workflow/scripts/generate_answers.py --model results/models/sft --adapter results/runs/slime \\
        --benchmark mt_bench --model-id gemma3-4b-slime --out results/answers/mt_bench/gemma3-4b-slime.jsonl \\
        --max-new-tokens 1024
    python workflow/scripts/generate_answers.py --model results/models/gemma3-4b-it --benchmark arena_hard \\
        --model-id gemma3-4b-it --out results/answers/arena_hard/gemma3-4b-it.jsonl --max-new-tokens 8196

MT-Bench: two turns (turn 2 sees turn 1's answer), FastChat's per-category temperatures (other
sampling settings from the model's generation_config, as FastChat), FastChat's model_answer records.
Arena-Hard: one greedy turn, arena-hard-auto v2's model_answer records with their style metadata.
The baseline model's answers come from this same script.

Resumable: finished answers are appended to OUT.partial (fsync'd); a rerun skips the questions
already there, and the partial file is renamed to OUT when every question is answered.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from prefopt.io import append_jsonl, iter_jsonl, write_json, write_jsonl

logger = logging.getLogger("generate_answers")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="prepared/SFT model directory")
    parser.add_argument("--adapter", default=None, help="PEFT adapter directory merged on top of --model")
    parser.add_argument("--benchmark", required=True, choices=["mt_bench", "arena_hard"])
    parser.add_argument("--model-id", required=True, help="name written into every answer record")
    parser.add_argument("--out", required=True, help="answers .jsonl")
    parser.add_argument("--questions", default=None,
                        help="question file (MT-Bench: question.jsonl; Arena-Hard: path, folder, version name "
                             "such as arena-hard-v2.0, or hub dataset id); default: the bundled questions")
    parser.add_argument("--max-new-tokens", type=int, required=True,
                        help="new-token cap per reply (the DAG passes judge.mt_bench.max_new_tokens, upstream "
                             "1024, or judge.arena_hard.max_new_tokens, upstream 8196)")
    parser.add_argument("--max-prompt-length", type=int, default=None,
                        help="keep only the last N prompt tokens (default: no truncation)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16", "fp16"],
                        help="auto: bf16 where this node runs bf16 natively, else fp32 (prefopt.precision)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (MT-Bench categories with T > 0)")
    return parser.parse_args(argv)


def read_partial(path: Path, id_key: str) -> dict:
    """Finished records of an interrupted run; a line cut short by a kill is dropped."""
    done = {}
    if not path.exists():
        return done
    for line_number, record, error in iter_jsonl(path):
        try:
            if error is not None:
                raise error
            done[record[id_key]] = record
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s:%d: unreadable line dropped (a write cut short)", path, line_number)
    return done


def load_questions(benchmark: str, source: str | None) -> list[dict]:
    from prefopt.evaluation.benchmark_data import load_arena_hard_questions, load_mtbench_questions

    return load_mtbench_questions(source) if benchmark == "mt_bench" else load_arena_hard_questions(source)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    import torch

    from prefopt.evaluation import arena_hard, mtbench
    from prefopt.models import load_for_inference

    if args.threads:
        torch.set_num_threads(args.threads)
    id_key = "question_id" if args.benchmark == "mt_bench" else "uid"
    questions = load_questions(args.benchmark, args.questions)
    if args.limit is not None:
        questions = questions[: args.limit]
    out = Path(args.out)
    partial = out.with_name(out.name + ".partial")
    # Answers resume only under the settings that made them (a changed precision or cap starts afresh).
    precision = args.precision
    if precision == "auto":
        from prefopt.precision import resolve

        precision = resolve("auto", "cuda" if torch.cuda.is_available() else "cpu").precision
    settings = {"model": args.model, "adapter": args.adapter, "questions": args.questions,
                "max_new_tokens": args.max_new_tokens, "max_prompt_length": args.max_prompt_length,
                "batch_size": args.batch_size, "precision": precision, "seed": args.seed}
    settings_file = partial.with_name(partial.name + ".settings.json")
    if partial.exists() and (not settings_file.exists() or json.loads(settings_file.read_text()) != settings):
        logger.warning("dropping %s: made under other generation settings than %s", partial, settings)
        partial.unlink()
    write_json(settings_file, settings)
    done = read_partial(partial, id_key)
    wanted = {q[id_key] for q in questions}
    stale = [key for key, record in done.items() if key not in wanted or
             record.get("model_id", record.get("model")) != args.model_id]
    for key in stale:
        logger.warning("dropping partial answer %s (other question set or model id)", key)
        del done[key]
    pending = [q for q in questions if q[id_key] not in done]
    logger.info("%s: %d questions, %d already answered in %s, %d to generate",
                args.benchmark, len(questions), len(done), partial, len(pending))

    # Rewrite the good records first (drops a half-written last line), then append each new answer, fsync'd.
    write_jsonl(partial, [done[q[id_key]] for q in questions if q[id_key] in done])
    if pending:
        model, tokenizer = load_for_inference(args.model, args.adapter, precision=precision)
        if torch.cuda.is_available():
            model.to("cuda")
        common = dict(write=functools.partial(append_jsonl, partial), batch_size=args.batch_size, seed=args.seed,
                      max_prompt_length=args.max_prompt_length)
        if args.benchmark == "mt_bench":
            mtbench.generate_mtbench_answers(model, tokenizer, pending, args.model_id,
                                             max_new_tokens=args.max_new_tokens,
                                             **common)
        else:
            arena_hard.generate_arena_hard_answers(model, tokenizer, pending, args.model_id,
                                                   max_new_tokens=args.max_new_tokens, **common)

    # Question order, one record per question, then the atomic rename.
    finished = read_partial(partial, id_key)
    missing = [q[id_key] for q in questions if q[id_key] not in finished]
    if missing:
        logger.error("%d questions still unanswered (first: %s); rerun to resume", len(missing), missing[:5])
        return 1
    write_jsonl(out, [finished[q[id_key]] for q in questions])
    partial.unlink()
    settings_file.unlink()
    logger.info("wrote %d answers to %s", len(questions), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
