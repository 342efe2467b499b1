"""MT-Bench (Zheng et al., 2023): two-turn answers, single-answer grading, FastChat's scores.

The procedure follows FastChat's ``llm_judge`` (gen_model_answer.py, gen_judgment.py --mode single,
show_result.py), which the SLIME paper calls "the official grading procedure" (section 4.1):

- Answers: turn 2 is generated after turn 1's answer, with FastChat's per-category sampling
  temperatures (`CATEGORY_TEMPERATURES`) and 1024 new tokens by default; as in FastChat's
  gen_model_answer.py, every other sampling setting (top_k, top_p, ...) is the model's own
  generation_config.
- Judging: each turn is graded on 1-10 with the official prompts. Turn 1 uses ``single-v1``
  (``single-math-v1`` with a reference answer for math, reasoning and coding); turn 2 uses
  ``single-v1-multi-turn`` / ``single-math-v1-multi-turn``, which show the whole conversation.
- Parsing: ``[[rating]]`` by FastChat's regex ``\\[\\[(\\d+\\.?\\d*)\\]\\]``, falling back to
  ``\\[(\\d+\\.?\\d*)\\]``; no match is a failed judgment (FastChat's score -1).
- Scores: turn-1 mean, turn-2 mean, and the overall mean over every valid rating of both turns
  (show_result.py's "Average"), failed judgments excluded and counted.

File formats (FastChat's): answers ``{"question_id", "answer_id", "model_id", "choices":
[{"index": 0, "turns": [turn1, turn2]}], "tstamp"}``; judgments ``{"question_id", "model",
"judge": [judge_model, prompt_name], "user_prompt", "judgment", "score", "turn", "tstamp"}``
(+ ``"category"``).
"""

from __future__ import annotations

import ast
import logging
import re
import time
import uuid
from collections import defaultdict
from typing import Iterable

from prefopt.evaluation.judge import JudgeRequest, JudgeResult

log = logging.getLogger(__name__)

BENCHMARK = "mt_bench"
# FastChat llm_judge/common.py `temperature_config`; other categories sample at 0.7 (gen_model_answer.py).
CATEGORY_TEMPERATURES = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7
# FastChat `NEED_REF_CATS`: graded against a reference answer.
REFERENCE_CATEGORIES = ("math", "reasoning", "coding")
DEFAULT_MAX_NEW_TOKENS = 1024
FAILED_SCORE = -1
# FastChat common.py `one_score_pattern` and `one_score_pattern_backup`.
RATING_PATTERN = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_PATTERN_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")


def question_temperature(question: dict) -> float:
    return CATEGORY_TEMPERATURES.get(question.get("category"), DEFAULT_TEMPERATURE)


def parse_rating(judgment: str) -> float | None:
    """The judge's ``[[rating]]`` as FastChat reads it (first match, backup pattern), else None."""
    match = RATING_PATTERN.search(judgment) or RATING_PATTERN_BACKUP.search(judgment)
    if not match:
        return None
    return float(ast.literal_eval(match.group(1)))


# ---------------------------------------------------------------------------------------------
# Answers


def answer_record(question_id, model_id: str, turns: list[str]) -> dict:
    """One answer in FastChat's model_answer format."""
    return {"question_id": question_id, "answer_id": uuid.uuid4().hex[:22], "model_id": model_id,
            "choices": [{"index": 0, "turns": list(turns)}], "tstamp": time.time()}


def answer_turns(answer: dict) -> list[str]:
    try:
        return list(answer["choices"][0]["turns"])
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"MT-Bench answer {answer.get('question_id', '?')}: expected choices[0].turns") from None


def generate_mtbench_answers(model, tokenizer, questions: list[dict], model_id: str, *, write,
                             max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, batch_size: int = 8, seed: int = 0,
                             max_prompt_length: int | None = None, chunk_size: int | None = None) -> int:
    """Answer every question's turns in order and pass each finished record to `write(record)`.

    Questions are grouped by their category temperature and answered `chunk_size` at a time (all
    turn-1 replies of a chunk in batches, then turn 2 with turn 1's answer in the conversation),
    so a killed job loses at most one chunk. Returns the number of records written.
    """
    from tqdm.auto import tqdm

    from prefopt.evaluation.generation import generate_replies

    chunk_size = chunk_size or max(batch_size, 1) * 4
    by_temperature: dict[float, list[dict]] = defaultdict(list)
    for question in questions:
        by_temperature[question_temperature(question)].append(question)
    written = 0
    chunk_index = 0
    with tqdm(total=len(questions), desc=f"MT-Bench answers ({model_id})", unit="question") as progress:
        for temperature, group in sorted(by_temperature.items()):
            for start in range(0, len(group), chunk_size):
                chunk = group[start:start + chunk_size]
                conversations = [[] for _ in chunk]
                replies: list[list[str]] = [[] for _ in chunk]
                n_turns = max(len(q["turns"]) for q in chunk)
                for turn in range(n_turns):
                    active = [i for i, q in enumerate(chunk) if turn < len(q["turns"])]
                    for i in active:
                        conversations[i].append({"role": "user", "content": chunk[i]["turns"][turn]})
                    texts = generate_replies(
                        model, tokenizer, [conversations[i] for i in active], max_new_tokens=max_new_tokens,
                        temperature=temperature, batch_size=batch_size, seed=seed + 1000 * chunk_index + turn,
                        max_prompt_length=max_prompt_length, model_sampling_defaults=True,
                        desc=f"turn {turn + 1} (T={temperature})",
                    )
                    for i, text in zip(active, texts):
                        conversations[i].append({"role": "assistant", "content": text})
                        replies[i].append(text)
                for question, turns in zip(chunk, replies):
                    write(answer_record(question["question_id"], model_id, turns))
                    written += 1
                progress.update(len(chunk))
                chunk_index += 1
    return written


# ---------------------------------------------------------------------------------------------
# Judging


def judge_prompt_name(category: str, turn: int) -> str:
    """FastChat's make_judge_single: math-style prompts for reference categories, multi-turn for turn 2."""
    base = "single-math-v1" if category in REFERENCE_CATEGORIES else "single-v1"
    return base if turn == 1 else f"{base}-multi-turn"


def judge_messages(question: dict, turns: list[str], turn: int, prompt: dict,
                   reference_turns: list[str] | None) -> list[dict]:
    """System + user messages for grading `turn` (1 or 2), as FastChat's create_conv_single builds them."""
    kwargs = {}
    if reference_turns is not None:
        kwargs["ref_answer_1"] = reference_turns[0]
        if turn == 2:
            kwargs["ref_answer_2"] = reference_turns[1]
    if turn == 1:
        user = prompt["prompt_template"].format(question=question["turns"][0], answer=turns[0], **kwargs)
    else:
        user = prompt["prompt_template"].format(question_1=question["turns"][0], question_2=question["turns"][1],
                                                answer_1=turns[0], answer_2=turns[1], **kwargs)
    return [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": user}]


def build_judge_requests(questions: list[dict], answers: Iterable[dict], judge_prompts: dict,
                         reference_answers: dict, model_id: str) -> list[JudgeRequest]:
    """Two requests per answered question (turn 1, turn 2). Unanswered questions are skipped with a warning."""
    by_id = {}
    for answer in answers:
        if answer["question_id"] in by_id:
            raise ValueError(f"MT-Bench answers: question_id {answer['question_id']} answered twice")
        by_id[answer["question_id"]] = answer
    known = {q["question_id"] for q in questions}
    unknown = sorted(set(by_id) - known, key=str)
    if unknown:
        raise ValueError(f"MT-Bench answers: question_id(s) {unknown[:10]} are not in the question file; judge "
                         "with the question file the answers were generated from")
    missing = [q["question_id"] for q in questions if q["question_id"] not in by_id]
    if missing:
        log.warning("MT-Bench: %d of %d questions have no answer and are not judged (first: %s)",
                    len(missing), len(questions), missing[:5])
    requests = []
    for question in questions:
        answer = by_id.get(question["question_id"])
        if answer is None:
            continue
        turns = answer_turns(answer)
        for turn in range(1, len(question["turns"]) + 1):
            if turn > len(turns):
                raise ValueError(f"MT-Bench answer {question['question_id']}: has {len(turns)} turn(s), needs {turn}")
            name = judge_prompt_name(question["category"], turn)
            if name not in judge_prompts:
                raise KeyError(f"MT-Bench judge prompts: no prompt named {name!r}")
            reference = None
            if question["category"] in REFERENCE_CATEGORIES:
                reference = reference_answers.get(question["question_id"])
                if reference is None:
                    raise KeyError(f"MT-Bench: no reference answer for question {question['question_id']} "
                                   f"({question['category']})")
            requests.append(JudgeRequest(
                benchmark=BENCHMARK, question_id=question["question_id"], slot=f"turn{turn}", model_id=model_id,
                messages=judge_messages(question, turns, turn, judge_prompts[name], reference), parse=parse_rating,
                meta={"turn": turn, "prompt_name": name, "category": question["category"]},
            ))
    return requests


def judgment_rows(results: list[JudgeResult], judge_model: str) -> list[dict]:
    """FastChat's single-judgment rows; an unparsed verdict is score -1."""
    rows = []
    for result in results:
        request = result.request
        rows.append({
            "question_id": request.question_id,
            "model": request.model_id,
            "judge": [judge_model, request.meta["prompt_name"]],
            "user_prompt": request.messages[-1]["content"],
            "judgment": result.judgment,
            "score": FAILED_SCORE if result.verdict is None else result.verdict,
            "turn": request.meta["turn"],
            "category": request.meta["category"],
            "tstamp": time.time(),
            **({"error": result.error} if result.error else {}),
        })
    return rows


# ---------------------------------------------------------------------------------------------
# Scoring


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def score_mtbench(judgments: list[dict]) -> dict:
    """FastChat show_result (single mode): means over valid ratings per turn and overall.

    ``overall`` is the mean of every valid rating of both turns (not the mean of the two turn
    means), as show_result's "Average" computes it. Ratings of -1 (failed) are excluded and
    counted in ``n_failed``.
    """
    if not judgments:
        raise ValueError("MT-Bench scoring: no judgments")
    models = {row["model"] for row in judgments}
    judges = {row["judge"][0] if isinstance(row["judge"], (list, tuple)) else row["judge"] for row in judgments}
    if len(models) != 1:
        raise ValueError(f"MT-Bench scoring: judgments mix models {sorted(models)}; score one model per file")
    if len(judges) != 1:
        raise ValueError(f"MT-Bench scoring: judgments mix judge models {sorted(judges)}")
    seen = set()
    by_turn: dict[int, list[float]] = defaultdict(list)
    by_category: dict[str, list[float]] = defaultdict(list)
    n_failed = 0
    for row in judgments:
        slot = (row["question_id"], row["turn"])
        if slot in seen:
            raise ValueError(f"MT-Bench scoring: question {row['question_id']} turn {row['turn']} judged twice")
        seen.add(slot)
        score = row["score"]
        if score is None or score == FAILED_SCORE:
            n_failed += 1
            continue
        by_turn[int(row["turn"])].append(float(score))
        if row.get("category"):
            by_category[row["category"]].append(float(score))
    valid = [s for scores in by_turn.values() for s in scores]
    return {
        "score": {"turn1": _mean(by_turn[1]), "turn2": _mean(by_turn[2]), "overall": _mean(valid)},
        "n_valid": len(valid),
        "n_failed": n_failed,
        "n_questions": len({row["question_id"] for row in judgments}),
        "by_category": {category: _mean(scores) for category, scores in sorted(by_category.items())},
        "judge_model": judges.pop(),
        "model_id": models.pop(),
    }
