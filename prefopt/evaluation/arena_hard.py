"""Arena-Hard (Li et al., 2024): pairwise judging against a baseline and arena-hard-auto v2's score.

The procedure follows arena-hard-auto v2 (github.com/lmarena/arena-hard-auto: gen_answer.py,
gen_judgment.py, show_result.py, utils/judge_utils.py, config/arena-hard-v2.0.yaml). The SLIME
paper uses the base Gemma-3-4B-it's answers as the baseline (section 5), not o3-mini.

- Answers: one turn, greedy. Format ``{"uid", "ans_id", "model", "messages": [{"role": "user",
  "content": prompt}, {"role": "assistant", "content": {"answer": text}}], "tstamp", "metadata"}``.
- Judging: two games per question with the official system prompt for the question's category
  (`SYSTEM_PROMPTS`) and `PROMPT_TEMPLATE`. Game 1 shows the baseline as assistant A and the model
  as B; game 2 swaps them. The judge ends with one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]].
- Parsing: every match of ``\\[\\[([AB<>=]+)\\]\\]``; exactly one distinct label is the verdict,
  none or several distinct labels (or a label outside `LABEL_TO_SCORE`) is a failed game.
- Scoring (show_result.py, ``load_judgments`` and ``print_leaderboard``): each label becomes the
  model's outcomes (1 win, 0.5 tie, 0 loss); a strong verdict (>>) counts `STRONG_WEIGHT` = 3
  times. Game 2 reads the label from A's side (A = model), game 1 as 1 - A's score (A = baseline).
  A question with a failed game is dropped whole. The score is the mean over 100 bootstrap rounds
  (resampling the outcome list with replacement) of the mean outcome, times 100; the interval is
  the 5% and 95% quantiles of the bootstrap means, reported as offsets ("-1.1 / +1.0").
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import defaultdict
from typing import Iterable

import numpy as np

from prefopt.evaluation.judge import JudgeRequest, JudgeResult

log = logging.getLogger(__name__)

BENCHMARK = "arena_hard"
STRONG_WEIGHT = 3

# arena-hard-auto utils/judge_utils.py OG_ARENA_HARD_PROMPT (hard_prompt, coding, math, arena-hard-v0.1).
ARENA_HARD_SYSTEM_PROMPT = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to "
    "the user prompt displayed below. You will be given assistant A's answer and assistant B's answer. Your job is "
    "to evaluate which assistant's answer is better.\n\n"
    "Begin your evaluation by generating your own answer to the prompt. You must provide your answers before "
    "judging any answers.\n\n"
    "When evaluating the assistants' answers, compare both assistants' answers with your answer. You must identify "
    "and correct any mistakes or inaccurate information.\n\n"
    "Then consider if the assistant's answers are helpful, relevant, and concise. Helpful means the answer "
    "correctly responds to the prompt or follows the instructions. Note when user prompt has any ambiguity or more "
    "than one interpretation, it is more helpful and appropriate to ask for clarifications or more information "
    "from the user than providing an answer based on assumptions. Relevant means all parts of the response closely "
    "connect or are appropriate to what is being asked. Concise means the response is clear and not verbose or "
    "excessive.\n\n"
    "Then consider the creativity and novelty of the assistant's answers when needed. Finally, identify any missing "
    "important information in the assistants' answers that would be beneficial to include when responding to the "
    "user prompt.\n\n"
    "After providing your explanation, you must output only one of the following choices as your final verdict "
    "with a label:\n\n"
    "1. Assistant A is significantly better: [[A>>B]]\n"
    "2. Assistant A is slightly better: [[A>B]]\n"
    "3. Tie, relatively the same: [[A=B]]\n"
    "4. Assistant B is slightly better: [[B>A]]\n"
    "5. Assistant B is significantly better: [[B>>A]]\n\n"
    "Example output: \"My final verdict is tie: [[A=B]]\"."
)
# The creative_writing judge does not write its own answer first (judge_utils.py).
CREATIVE_WRITING_SYSTEM_PROMPT = ARENA_HARD_SYSTEM_PROMPT.replace(
    "Begin your evaluation by generating your own answer to the prompt. You must provide your answers before "
    "judging any answers.\n\n", ""
).replace(
    "compare both assistants' answers with your answer. You must", "compare both assistants' answers. You must"
)
SYSTEM_PROMPTS = {
    "hard_prompt": ARENA_HARD_SYSTEM_PROMPT,
    "coding": ARENA_HARD_SYSTEM_PROMPT,
    "math": ARENA_HARD_SYSTEM_PROMPT,
    "creative_writing": CREATIVE_WRITING_SYSTEM_PROMPT,
    "arena-hard-v0.1": ARENA_HARD_SYSTEM_PROMPT,
}
# config/arena-hard-v2.0.yaml `prompt_template`.
PROMPT_TEMPLATE = (
    "<|User Prompt|>\n{QUESTION}\n\n<|The Start of Assistant A's Answer|>\n{ANSWER_A}\n<|The End of Assistant A's "
    "Answer|>\n\n<|The Start of Assistant B's Answer|>\n{ANSWER_B}\n<|The End of Assistant B's Answer|>"
)
VERDICT_PATTERN = re.compile(r"\[\[([AB<>=]+)\]\]")
# show_result.py `label_to_score` with weight=3: assistant A's outcomes for each label.
LABEL_TO_SCORE = {
    "A>B": [1.0],
    "A>>B": [1.0] * STRONG_WEIGHT,
    "A=B": [0.5],
    "A<<B": [0.0] * STRONG_WEIGHT,
    "A<B": [0.0],
    "B>A": [0.0],
    "B>>A": [0.0] * STRONG_WEIGHT,
    "B=A": [0.5],
    "B<<A": [1.0] * STRONG_WEIGHT,
    "B<A": [1.0],
}


def system_prompt_for(category: str | None) -> str:
    """The official judge prompt for a question category (the hard-prompt judge for unknown ones)."""
    return SYSTEM_PROMPTS.get(category or "hard_prompt", ARENA_HARD_SYSTEM_PROMPT)


def parse_verdict(judgment: str) -> str | None:
    """The unique ``[[label]]`` in the judge's text (arena-hard-auto's get_score), else None."""
    labels = {label for label in VERDICT_PATTERN.findall(judgment) if label}
    if len(labels) != 1:
        return None
    label = labels.pop()
    return label if label in LABEL_TO_SCORE else None


# ---------------------------------------------------------------------------------------------
# Answers


def answer_record(question: dict, model_id: str, text: str, token_len: int | None = None) -> dict:
    """One answer in arena-hard-auto v2's model_answer format."""
    return {
        "uid": question["uid"],
        "ans_id": uuid.uuid4().hex[:22],
        "model": model_id,
        "messages": [{"role": "user", "content": question["prompt"]},
                     {"role": "assistant", "content": {"answer": text}}],
        "tstamp": time.time(),
        "metadata": {"token_len": token_len} if token_len is not None else {},
    }


def answer_text(answer: dict) -> str:
    """The assistant's final answer text (v2 ``{"answer": ...}`` content, or a plain string)."""
    try:
        content = answer["messages"][-1]["content"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"Arena-Hard answer {answer.get('uid', '?')}: expected messages[-1].content") from None
    if isinstance(content, dict):
        if "answer" not in content:
            raise ValueError(f"Arena-Hard answer {answer.get('uid', '?')}: assistant content has no 'answer'")
        return content["answer"]
    return str(content)


def generate_arena_hard_answers(model, tokenizer, questions: list[dict], model_id: str, *, write,
                                max_new_tokens: int = 4096, batch_size: int = 8, seed: int = 0,
                                max_prompt_length: int | None = None, chunk_size: int | None = None) -> int:
    """Greedy one-turn answers, `chunk_size` questions per call, each record passed to `write(record)`."""
    from tqdm.auto import tqdm

    from prefopt.evaluation.generation import generate_replies

    chunk_size = chunk_size or max(batch_size, 1) * 4
    written = 0
    with tqdm(total=len(questions), desc=f"Arena-Hard answers ({model_id})", unit="question") as progress:
        for start in range(0, len(questions), chunk_size):
            chunk = questions[start:start + chunk_size]
            texts = generate_replies(
                model, tokenizer, [[{"role": "user", "content": q["prompt"]}] for q in chunk],
                max_new_tokens=max_new_tokens, temperature=0.0, batch_size=batch_size, seed=seed,
                max_prompt_length=max_prompt_length, desc="answers",
            )
            for question, text in zip(chunk, texts):
                token_len = len(tokenizer(text, add_special_tokens=False)["input_ids"])
                write(answer_record(question, model_id, text, token_len))
                written += 1
            progress.update(len(chunk))
    return written


# ---------------------------------------------------------------------------------------------
# Judging


def _index_answers(answers: Iterable[dict], what: str) -> dict:
    by_uid = {}
    for answer in answers:
        if "uid" not in answer:
            raise ValueError(f"Arena-Hard {what} answers: a record has no 'uid'")
        if answer["uid"] in by_uid:
            raise ValueError(f"Arena-Hard {what} answers: uid {answer['uid']} answered twice")
        by_uid[answer["uid"]] = answer
    return by_uid


def game_messages(question: dict, answer_a: str, answer_b: str) -> list[dict]:
    user = PROMPT_TEMPLATE.format(QUESTION=question["prompt"], ANSWER_A=answer_a, ANSWER_B=answer_b)
    return [{"role": "system", "content": system_prompt_for(question.get("category"))},
            {"role": "user", "content": user}]


def build_judge_requests(questions: list[dict], answers: Iterable[dict], baseline_answers: Iterable[dict],
                         model_id: str, baseline_id: str) -> list[JudgeRequest]:
    """Two games per answered question: game 1 (A = baseline, B = model), game 2 (A = model, B = baseline).

    Questions the model did not answer are skipped with a warning; a missing baseline answer is
    an error (the score would silently cover fewer questions than the baseline run).
    """
    model_by_uid = _index_answers(answers, "model")
    baseline_by_uid = _index_answers(baseline_answers, "baseline")
    questions_by_uid = {q["uid"]: q for q in questions}
    unknown = sorted(set(model_by_uid) - set(questions_by_uid))
    if unknown:
        raise ValueError(f"Arena-Hard answers: {len(unknown)} uid(s) are not in the question file, e.g. "
                         f"{unknown[:5]}; judge with the question file the answers were generated from")
    answered = [q for q in questions if q["uid"] in model_by_uid]
    if len(answered) < len(questions):
        log.warning("Arena-Hard: %d of %d questions have no answer from %s and are not judged",
                    len(questions) - len(answered), len(questions), model_id)
    no_baseline = [q["uid"] for q in answered if q["uid"] not in baseline_by_uid]
    if no_baseline:
        raise ValueError(f"Arena-Hard: the baseline {baseline_id} has no answer for {len(no_baseline)} question(s) "
                         f"the model answered, e.g. {no_baseline[:5]}")
    requests = []
    for question in answered:
        model_text = answer_text(model_by_uid[question["uid"]])
        baseline_text = answer_text(baseline_by_uid[question["uid"]])
        meta = {"category": question.get("category"), "baseline": baseline_id}
        requests.append(JudgeRequest(BENCHMARK, question["uid"], "game1", model_id,
                                     game_messages(question, baseline_text, model_text), parse_verdict,
                                     {**meta, "game": 1}))
        requests.append(JudgeRequest(BENCHMARK, question["uid"], "game2", model_id,
                                     game_messages(question, model_text, baseline_text), parse_verdict,
                                     {**meta, "game": 2}))
    return requests


def judgment_rows(results: list[JudgeResult], judge_model: str) -> list[dict]:
    """arena-hard-auto v2 judgment rows: one per question with its two games (score None = failed)."""
    rows: dict = {}
    for result in results:
        request = result.request
        row = rows.setdefault(request.question_id, {
            "uid": request.question_id, "category": request.meta["category"], "judge": judge_model,
            "model": request.model_id, "baseline": request.meta["baseline"], "games": [None, None],
        })
        row["games"][request.meta["game"] - 1] = {
            "score": result.verdict, "judgment": {"answer": result.judgment}, "prompt": request.messages,
        }
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Scoring


def question_outcomes(row: dict) -> list[float] | None:
    """The model's outcomes for one question (show_result.py), or None if a game failed.

    ``LABEL_TO_SCORE[game2] + [1 - s for s in LABEL_TO_SCORE[game1]]``: in game 2 the model is A,
    in game 1 it is B, so game 1's A-scores are flipped.
    """
    games = row.get("games") or []
    if len(games) != 2 or any(game is None or game.get("score") not in LABEL_TO_SCORE for game in games):
        return None
    return LABEL_TO_SCORE[games[1]["score"]] + [1.0 - s for s in LABEL_TO_SCORE[games[0]["score"]]]


def bootstrap_win_rate(outcomes: list[float], *, n_bootstrap: int = 100, seed: int = 0) -> dict:
    """arena-hard-auto v2's bootstrap: mean, 5% and 95% quantiles of resampled mean outcomes, in %.

    Each round draws len(outcomes) outcomes with replacement (``np.random.default_rng(seed)``;
    upstream uses pandas ``sample(frac=1.0, replace=True)``, unseeded) and takes their mean.
    """
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        raise ValueError("Arena-Hard scoring: no valid battles to score")
    if n_bootstrap < 1:
        raise ValueError(f"Arena-Hard scoring: n_bootstrap must be >= 1, got {n_bootstrap}")
    rng = np.random.default_rng(seed)
    means = np.array([values[rng.integers(0, values.size, size=values.size)].mean() for _ in range(n_bootstrap)])
    score = float(means.mean()) * 100
    lower = float(np.quantile(means, 0.05)) * 100
    upper = float(np.quantile(means, 0.95)) * 100
    return {"score": score, "lower": lower, "upper": upper}


def _rounded_summary(boot: dict) -> dict:
    # As show_result.py prints them: score and both offsets rounded to 0.1.
    # `0.0 -` keeps a zero-width interval at 0.0 rather than -0.0.
    return {"score": round(boot["score"], 1), "ci_low": 0.0 - round(boot["score"] - boot["lower"], 1),
            "ci_high": round(boot["upper"] - boot["score"], 1)}


def score_arena_hard(judgments: list[dict], *, seed: int = 0, n_bootstrap: int = 100,
                     category: str | None = "auto") -> dict:
    """Win rate (%) against the baseline with the 5-95% bootstrap interval, as arena-hard-auto v2 reports it.

    `category`: upstream show_result.py scores one category at a time (default ``hard_prompt``).
    ``"auto"`` scores ``hard_prompt`` when the judgments have it, else the only category present;
    ``None`` or ``"all"`` pools every question; any other name scores that category. Every
    category's own score is in ``by_category``.
    """
    if not judgments:
        raise ValueError("Arena-Hard scoring: no judgments")
    for field_name in ("model", "baseline", "judge"):
        values = {row.get(field_name) for row in judgments}
        if len(values) != 1:
            raise ValueError(f"Arena-Hard scoring: judgments mix several '{field_name}' values {sorted(map(str, values))}")
    uids = [row["uid"] for row in judgments]
    if len(set(uids)) != len(uids):
        raise ValueError("Arena-Hard scoring: a uid appears in more than one judgment row")
    categories = sorted({row.get("category") or "hard_prompt" for row in judgments})
    if category == "auto":
        if "hard_prompt" in categories:
            category = "hard_prompt"
        elif len(categories) == 1:
            category = categories[0]
        else:
            raise ValueError(f"Arena-Hard scoring: no hard_prompt rows and several categories {categories}; "
                             "pass a category or 'all'")
    pooled = category in (None, "all")
    if not pooled and category not in categories:
        raise ValueError(f"Arena-Hard scoring: category {category!r} not in the judgments ({categories})")

    def summarize(rows: list[dict], seed_offset: int) -> dict:
        outcomes: list[float] = []
        n_valid_games = n_failed_games = n_dropped = 0
        for row in rows:
            games = row.get("games") or [None, None]
            ok = [game is not None and game.get("score") in LABEL_TO_SCORE for game in games]
            n_valid_games += sum(ok)
            n_failed_games += len(ok) - sum(ok)
            row_outcomes = question_outcomes(row)
            if row_outcomes is None:
                n_dropped += 1
            else:
                outcomes.extend(row_outcomes)
        summary = {"n_questions": len(rows), "n_valid": n_valid_games, "n_failed": n_failed_games,
                   "n_dropped_questions": n_dropped, "n_battles": len(outcomes)}
        if outcomes:
            boot = bootstrap_win_rate(outcomes, n_bootstrap=n_bootstrap, seed=seed + seed_offset)
            summary.update(_rounded_summary(boot))
            summary["bootstrap"] = {**boot, "n_rounds": n_bootstrap, "seed": seed + seed_offset}
        else:
            summary.update({"score": None, "ci_low": None, "ci_high": None})
        return summary

    by_category_rows: dict[str, list[dict]] = defaultdict(list)
    for row in judgments:
        by_category_rows[row.get("category") or "hard_prompt"].append(row)
    selected = judgments if pooled else by_category_rows[category]
    main = summarize(selected, 0)
    if main["score"] is None:
        raise ValueError(f"Arena-Hard scoring: every question of {category or 'all'} has a failed game; nothing to score")
    result = {
        "score": main["score"], "ci_low": main["ci_low"], "ci_high": main["ci_high"],
        "n_valid": main["n_valid"], "n_failed": main["n_failed"],
        "n_dropped_questions": main["n_dropped_questions"], "n_questions": main["n_questions"],
        "n_battles": main["n_battles"], "category": "all" if pooled else category,
        "judge_model": judgments[0]["judge"], "baseline": judgments[0]["baseline"], "model_id": judgments[0]["model"],
        "bootstrap": main["bootstrap"],
        "by_category": {name: summarize(rows, 0) for name, rows in sorted(by_category_rows.items())},
    }
    return result
