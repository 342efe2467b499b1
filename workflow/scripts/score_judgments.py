"""Score judgments: MT-Bench means (FastChat), the Arena-Hard win rate with its bootstrap interval,
and Arena-Hard with style control over every judged model at once.

    python workflow/scripts/score_judgments.py --benchmark mt_bench \\
        --judgments results/judgments/mt_bench/slime.jsonl --out results/scores/mt_bench/slime.json
    python workflow/scripts/score_judgments.py --benchmark arena_hard --seed 0 --n-bootstrap 100 \\
        --judgments results/judgments/arena_hard/slime.jsonl --out results/scores/arena_hard/slime.json
    python workflow/scripts/score_judgments.py --benchmark arena_hard_style_control --seed 0 --n-bootstrap 100 \\
        --judgments j/sft.jsonl j/slime.jsonl --answers a/sft.jsonl a/slime.jsonl \\
        --baseline-answers a/gemma-3-4b-it.jsonl --out results/scores/arena_hard_style_control.json

score.json:
  mt_bench:   {"score": {"turn1", "turn2", "overall"}, "n_valid", "n_failed", "judge_model", ...}
  arena_hard: {"score": 12.3, "ci_low": -1.1, "ci_high": 1.0, "n_valid", "n_failed", "judge_model",
               "baseline", ...}   (ci_* are offsets from the score, as the paper prints "-1.1 / +1.0")
  arena_hard_style_control: {"models": {model_id: {"score", "ci_low", "ci_high", "n_battles"}},
               "features", "dropped_features", "feature_coefficients", ...}
A score is null (never a crash) when every judgment failed; n_failed says how many did.
Deterministic: the same judgments, seed and round count give the same file.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("score_judgments")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=["mt_bench", "arena_hard", "arena_hard_style_control"])
    parser.add_argument("--judgments", required=True, nargs="+",
                        help="judgments .jsonl from judge_answers.py (style control: one per model)")
    parser.add_argument("--answers", nargs="+", default=None,
                        help="style control: each model's answers, in the order of --judgments")
    parser.add_argument("--baseline-answers", default=None, help="style control: the baseline's answers")
    parser.add_argument("--out", required=True, help="score .json")
    parser.add_argument("--seed", type=int, required=True, help="Arena-Hard bootstrap seed")
    parser.add_argument("--n-bootstrap", type=int, required=True, help="Arena-Hard bootstrap rounds (upstream: 100)")
    parser.add_argument("--category", default="auto",
                        help="Arena-Hard category to score: auto (hard_prompt if present, else the only one), "
                             "all (pool every question), or a category name")
    return parser.parse_args(argv)


def _fmt(value, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def style_control(args) -> dict:
    from prefopt.data import read_jsonl
    from prefopt.evaluation.arena_hard import style_control_scores

    if not args.answers or len(args.answers) != len(args.judgments) or not args.baseline_answers:
        raise ValueError("arena_hard_style_control needs one --answers file per --judgments file and --baseline-answers")
    entries = [(read_jsonl(j), read_jsonl(a)) for j, a in zip(args.judgments, args.answers)]
    category = "hard_prompt" if args.category == "auto" else args.category
    if args.category == "auto":
        categories = {row.get("category") or "hard_prompt" for rows, _ in entries for row in rows}
        if "hard_prompt" not in categories and len(categories) == 1:
            category = categories.pop()
    result = style_control_scores(entries, read_jsonl(args.baseline_answers), seed=args.seed,
                                  n_bootstrap=args.n_bootstrap, category=category)
    for model, summary in result["models"].items():
        logger.info("Arena-Hard style control %s [%s]: %s (%s battles)", model, result["category"],
                    _fmt(summary["score"], 1), summary["n_battles"])
    if result["dropped_features"]:
        logger.warning("style features constant over every battle, left out: %s", result["dropped_features"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from prefopt.data import read_jsonl, write_json
    from prefopt.evaluation.arena_hard import score_arena_hard
    from prefopt.evaluation.mtbench import score_mtbench

    if args.benchmark == "arena_hard_style_control":
        write_json(args.out, style_control(args))
        return 0
    if len(args.judgments) != 1:
        raise SystemExit(f"--benchmark {args.benchmark} scores one judgments file, got {len(args.judgments)}")
    judgments = read_jsonl(args.judgments[0])
    if args.benchmark == "mt_bench":
        result = score_mtbench(judgments)
        s = result["score"]
        logger.info("MT-Bench %s: turn1 %s turn2 %s overall %s (%d valid, %d failed)", result["model_id"],
                    _fmt(s["turn1"], 2), _fmt(s["turn2"], 2), _fmt(s["overall"], 2), result["n_valid"],
                    result["n_failed"])
    else:
        result = score_arena_hard(judgments, seed=args.seed, n_bootstrap=args.n_bootstrap, category=args.category)
        ci = "" if result["score"] is None else f" (-{abs(result['ci_low']):.1f} / +{result['ci_high']:.1f})"
        logger.info("Arena-Hard %s vs %s [%s]: %s%s; %d valid games, %d failed, %d questions dropped",
                    result["model_id"], result["baseline"], result["category"], _fmt(result["score"], 1), ci,
                    result["n_valid"], result["n_failed"], result["n_dropped_questions"])
    if result["n_failed"]:
        logger.warning("%d judgment(s) failed (no verdict, or rejected by the judge); the score covers the rest",
                       result["n_failed"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
