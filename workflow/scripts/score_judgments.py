"""Score a judgments file: MT-Bench means (FastChat) or the Arena-Hard win rate with its bootstrap interval.

    python workflow/scripts/score_judgments.py --benchmark mt_bench \\
        --judgments results/judgments/mt_bench/slime.jsonl --out results/scores/mt_bench/slime.json
    python workflow/scripts/score_judgments.py --benchmark arena_hard --seed 0 --n-bootstrap 100 \\
        --judgments results/judgments/arena_hard/slime.jsonl --out results/scores/arena_hard/slime.json

score.json:
  mt_bench:   {"score": {"turn1", "turn2", "overall"}, "n_valid", "n_failed", "judge_model", ...}
  arena_hard: {"score": 12.3, "ci_low": -1.1, "ci_high": 1.0, "n_valid", "n_failed", "judge_model",
               "baseline", ...}   (ci_* are offsets from the score, as the paper prints "-1.1 / +1.0")
Deterministic: the same judgments, seed and round count give the same file.
"""

from __future__ import annotations

import argparse
import logging
import sys

logger = logging.getLogger("score_judgments")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", required=True, choices=["mt_bench", "arena_hard"])
    parser.add_argument("--judgments", required=True, help="judgments .jsonl from judge_answers.py")
    parser.add_argument("--out", required=True, help="score .json")
    parser.add_argument("--seed", type=int, default=0, help="Arena-Hard bootstrap seed")
    parser.add_argument("--n-bootstrap", type=int, default=100, help="Arena-Hard bootstrap rounds (upstream: 100)")
    parser.add_argument("--category", default="auto",
                        help="Arena-Hard category to score: auto (hard_prompt if present, else the only one), "
                             "all (pool every question), or a category name")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from prefopt.data import read_jsonl, write_json
    from prefopt.evaluation.arena_hard import score_arena_hard
    from prefopt.evaluation.mtbench import score_mtbench

    judgments = read_jsonl(args.judgments)
    if args.benchmark == "mt_bench":
        result = score_mtbench(judgments)
        s = result["score"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        logger.info("MT-Bench %s: turn1 %s turn2 %s overall %s (%d valid, %d failed)", result["model_id"],
                    fmt(s["turn1"]), fmt(s["turn2"]), fmt(s["overall"]), result["n_valid"], result["n_failed"])
    else:
        result = score_arena_hard(judgments, seed=args.seed, n_bootstrap=args.n_bootstrap, category=args.category)
        logger.info("Arena-Hard %s vs %s [%s]: %.1f (-%.1f / +%.1f); %d valid games, %d failed, %d questions dropped",
                    result["model_id"], result["baseline"], result["category"], result["score"], abs(result["ci_low"]),
                    result["ci_high"], result["n_valid"], result["n_failed"], result["n_dropped_questions"])
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
