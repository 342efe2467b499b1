"""Arena-Hard (Li et al., 2024): pairwise judging against a baseline, arena-hard-auto v2's score and style control.

The procedure follows arena-hard-auto v2 (github.com/lmarena/arena-hard-auto: gen_answer.py,
gen_judgment.py, show_result.py, utils/add_markdown_info.py, utils/math_utils.py,
utils/judge_utils.py, config/arena-hard-v2.0.yaml). The SLIME paper uses the base
Gemma-3-4B-it's answers as the baseline (section 5), not o3-mini.

- Answers: one turn, greedy. Format ``{"uid", "ans_id", "model", "messages": [{"role": "user",
  "content": prompt}, {"role": "assistant", "content": {"answer": text}}], "tstamp", "metadata"}``
  with `answer_metadata` (token_len in the gpt-4o encoding, header/list/bold counts outside code).
- Judging: two games per question with the official system prompt for the question's category
  (`SYSTEM_PROMPTS`) and `PROMPT_TEMPLATE`. Game 1 shows the baseline as assistant A and the model
  as B; game 2 swaps them. The judge ends with one of [[A>>B]], [[A>B]], [[A=B]], [[B>A]], [[B>>A]].
- Parsing (gen_judgment.py ``get_score``): on the upper-cased judgment, the last match of
  ``\\[\\[([AB<>=]+)\\]\\]``, or, when it has none, the last match of ``\\[([AB<>=]+)\\]``. A
  label outside `LABEL_TO_SCORE` (upstream would stop with a KeyError) is a failed game.
- Scoring (show_result.py, ``load_judgments`` and ``print_leaderboard``): each label becomes the
  model's outcomes (1 win, 0.5 tie, 0 loss); a strong verdict (>>) counts `STRONG_WEIGHT` = 3
  times. Game 2 reads the label from A's side (A = model), game 1 as 1 - A's score (A = baseline).
  A question with a failed game is dropped whole. The score is the mean over 100 bootstrap rounds
  (resampling the outcome list with replacement) of the mean outcome, times 100; the interval is
  the 5% and 95% quantiles of the bootstrap means, reported as offsets ("-1.1 / +1.0").
- Style control (``show_result.py --control-features markdown length``, upstream's official
  configuration): `style_control_score`, a Bradley-Terry fit with the model-vs-baseline
  differences in length and markdown density as extra features; reported beside the plain score.
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
# config/arena-hard-v2.0.yaml `regex_patterns`, tried in order.
VERDICT_PATTERNS = (re.compile(r"\[\[([AB<>=]+)\]\]"), re.compile(r"\[([AB<>=]+)\]"))
# show_result.py `label_to_score` with weight=3: assistant A's outcomes for each label.
# show_result.py's style features, in the order of the metadata keys.
STYLE_FEATURES = ("token_len", "header_count", "list_count", "bold_count")
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
    """arena-hard-auto v2's ``get_score``: the last label of the first pattern that matches the
    upper-cased judgment; None when none matches or the label is not one of `LABEL_TO_SCORE`."""
    text = judgment.upper()
    for pattern in VERDICT_PATTERNS:
        labels = [label for label in pattern.findall(text) if label]
        if labels:
            label = labels[-1].strip("\n")
            return label if label in LABEL_TO_SCORE else None
    return None


# ---------------------------------------------------------------------------------------------
# Answers


# utils/add_markdown_info.py: the answer's code blocks are removed before markdown is counted.
CODE_BLOCK_PATTERN = re.compile("```([^`]*)```")
TOKEN_ENCODING = "o200k_base"  # tiktoken.encoding_for_model("gpt-4o")
_encoding = None


def _token_encoding():
    """The gpt-4o encoding, offline: `bpe_openai` ships o200k_base (tiktoken would download it)."""
    global _encoding
    if _encoding is None:
        import bpe_openai

        _encoding = bpe_openai.get_encoding(TOKEN_ENCODING)
    return _encoding


def count_markdown(text: str) -> dict:
    """Header, list and bold counts as add_markdown_info.py's count_markdown_elements has them."""
    return {
        "header_count": {f"h{level}": len(re.findall(rf"^#{{{level}}}\s", text, re.MULTILINE)) for level in range(1, 7)},
        "list_count": {
            "ordered": len(re.findall(r"^\s*\d+\.\s", text, re.MULTILINE)),
            "unordered": len(re.findall(r"^\s*[-*+]\s", text, re.MULTILINE)),
        },
        "bold_count": {
            "**": len(re.findall(r"\*\*[^*\n]+\*\*", text)),
            "__": len(re.findall(r"__[^_\n]+__", text)),
        },
    }


def remove_code_blocks(text: str) -> str:
    """add_markdown_info.py's remove_pattern: every captured block *content* is deleted wherever it
    occurs (the fences stay, and an identical string outside the block goes too)."""
    for block in CODE_BLOCK_PATTERN.findall(text):
        text = text.replace(block, "")
    return text


def answer_metadata(text: str) -> dict:
    """Upstream's answer metadata: ``token_len`` (gpt-4o encoding, special tokens as plain text)
    and the markdown counts of the answer without its code blocks."""
    return {"token_len": len(_token_encoding().encode(text, disallowed_special=())),
            **count_markdown(remove_code_blocks(text))}


def answer_record(question: dict, model_id: str, text: str) -> dict:
    """One answer in arena-hard-auto v2's model_answer format, with its style metadata."""
    return {
        "uid": question["uid"],
        "ans_id": uuid.uuid4().hex[:22],
        "model": model_id,
        "messages": [{"role": "user", "content": question["prompt"]},
                     {"role": "assistant", "content": {"answer": text}}],
        "tstamp": time.time(),
        "metadata": answer_metadata(text),
    }


def style_metadata(answer: dict) -> dict:
    """An answer's stored metadata, or (answers written without it) metadata computed from its text."""
    metadata = answer.get("metadata") or {}
    if all(key in metadata for key in STYLE_FEATURES):
        return metadata
    return answer_metadata(answer_text(answer))


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
                write(answer_record(question, model_id, text))
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
        game = {"score": result.verdict, "judgment": {"answer": result.judgment}, "prompt": request.messages}
        if result.error:
            game["error"] = result.error  # the judge rejected the request (HTTP 400): a failed game
        row["games"][request.meta["game"] - 1] = game
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
        log.warning("Arena-Hard scoring: every question of %s has a failed game; no score", category or "all")
    result = {
        "score": main["score"], "ci_low": main["ci_low"], "ci_high": main["ci_high"],
        "n_valid": main["n_valid"], "n_failed": main["n_failed"],
        "n_dropped_questions": main["n_dropped_questions"], "n_questions": main["n_questions"],
        "n_battles": main["n_battles"], "category": "all" if pooled else category,
        "judge_model": judgments[0]["judge"], "baseline": judgments[0]["baseline"], "model_id": judgments[0]["model"],
        "bootstrap": main.get("bootstrap"),
        "by_category": {name: summarize(rows, 0) for name, rows in sorted(by_category_rows.items())},
    }
    return result


# ---------------------------------------------------------------------------------------------
# Style control


def style_features(model_meta: dict, baseline_meta: dict) -> list[float]:
    """show_result.py's raw style features of one battle, before the column normalisation.

    Length: (m - b) / (m + b) of token_len. Markdown (headers, lists, bold, each summed over its
    kinds): densities d = count / (token_len + 1), then (d_m - d_b) / (d_m + d_b + 1).
    """
    def vector(meta: dict) -> list[float]:
        return [float(meta[key] if isinstance(meta[key], (int, float)) else sum(meta[key].values()))
                for key in STYLE_FEATURES]

    model, baseline = vector(model_meta), vector(baseline_meta)
    total = model[0] + baseline[0]
    features = [(model[0] - baseline[0]) / total if total else 0.0]
    for m, b in zip(model[1:], baseline[1:]):
        dm, db = m / (model[0] + 1), b / (baseline[0] + 1)
        features.append((dm - db) / (dm + db + 1))
    return features


def _fit_bradley_terry(features, outcomes):
    """utils/math_utils.py fit_pairwise_model, loss "bt": coefficients initialised at 0.5, summed
    binary cross-entropy with logits (ties are 0.5 targets), L-BFGS lr 0.1, 50 iterations, tol 1e-9."""
    import torch

    coefs = torch.nn.Parameter(torch.full((features.shape[1],), 0.5))
    optimizer = torch.optim.LBFGS([coefs], lr=0.1, max_iter=50, tolerance_grad=1e-9, tolerance_change=1e-9)

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(features @ coefs, outcomes, reduction="sum")
        loss.backward()
        return loss

    optimizer.step(closure)
    return coefs.detach()


def style_control_scores(entries: list[tuple[list[dict], Iterable[dict]]], baseline_answers: Iterable[dict], *,
                         seed: int = 0, n_bootstrap: int = 100, category: str | None = "hard_prompt") -> dict:
    """Win rates (%) against the baseline with length and markdown controlled, for every model at
    once, as ``show_result.py --control-features markdown length`` computes its leaderboard.

    `entries`: one (judgment rows, answers) pair per model, all judged against the baseline whose
    answers are `baseline_answers`. Every battle (one outcome of `question_outcomes`) gets the
    features of `style_features`; each feature column is standardised over all battles of all
    models ((x - mean) / std, std with n - 1), so, as upstream, a model's controlled score depends
    on which models are pooled. The design matrix is one-hot players (+1 the model, -1 the
    baseline) and the standardised features; a Bradley-Terry model is fit on each of
    `n_bootstrap` resamples of the battles, and a model's win rate is sigmoid(its coefficient -
    the baseline's). Score: the median over rounds; interval: 5% and 95% quantiles, as offsets.

    Deviations: a feature column that is constant over the battles (e.g. no answer has a header)
    has std 0, where upstream stops on a NaN assertion; here it is left out and listed in
    ``dropped_features``. Resamples use ``np.random.default_rng(seed)``; upstream's are unseeded.
    """
    import torch

    baseline_meta = {a["uid"]: style_metadata(a) for a in baseline_answers}
    battles: list[tuple[str, list[float], float]] = []
    models: list[str] = []
    baselines = set()
    for judgments, answers in entries:
        model_meta = {a["uid"]: style_metadata(a) for a in answers}
        for row in judgments:
            if category not in (None, "all") and (row.get("category") or "hard_prompt") != category:
                continue
            baselines.add(row["baseline"])
            if row["model"] not in models:
                models.append(row["model"])
            outcomes = question_outcomes(row)
            if outcomes is None:
                continue
            for what, meta in (("model", model_meta), ("baseline", baseline_meta)):
                if row["uid"] not in meta:
                    raise ValueError(f"Arena-Hard style control: no {what} answer for uid {row['uid']} ({row['model']})")
            features = style_features(model_meta[row["uid"]], baseline_meta[row["uid"]])
            battles.extend((row["model"], features, outcome) for outcome in outcomes)
    if len(baselines) > 1:
        raise ValueError(f"Arena-Hard style control: judgments against several baselines {sorted(baselines)}")
    names = ["length", "header", "list", "bold"]
    result = {"category": "all" if category in (None, "all") else category, "n_battles": len(battles),
              "features": names, "dropped_features": [], "n_rounds": n_bootstrap, "seed": seed,
              "feature_coefficients": {}, "models": {}}
    empty = {"score": None, "ci_low": None, "ci_high": None, "n_battles": 0}
    if not battles:
        result["models"] = {model: dict(empty) for model in models}
        return result
    if n_bootstrap < 1:
        raise ValueError(f"Arena-Hard style control: n_bootstrap must be >= 1, got {n_bootstrap}")
    raw = torch.tensor([features for _, features, _ in battles], dtype=torch.float64)
    std = raw.std(dim=0) if len(battles) > 1 else torch.zeros(raw.shape[1], dtype=torch.float64)
    keep = [i for i in range(raw.shape[1]) if std[i] > 0]
    result["features"] = [names[i] for i in keep]
    result["dropped_features"] = [names[i] for i in range(raw.shape[1]) if i not in keep]
    normalized = (raw[:, keep] - raw[:, keep].mean(dim=0)) / std[keep]
    # one_hot_encode: players sorted by name with the baseline among them; +1 model, -1 baseline.
    baseline = baselines.pop()
    players = sorted(set(models) | {baseline})
    column = {name: index for index, name in enumerate(players)}
    one_hot = torch.zeros((len(battles), len(players)), dtype=torch.float64)
    for row_index, (model, _, _) in enumerate(battles):
        one_hot[row_index, column[model]] = 1.0
        one_hot[row_index, column[baseline]] = -1.0
    design = torch.cat([one_hot, normalized], dim=1).float()
    outcomes = torch.tensor([outcome for _, _, outcome in battles], dtype=torch.float32)
    rng = np.random.default_rng(seed)
    rounds = []
    for _ in range(n_bootstrap):
        index = torch.from_numpy(rng.integers(0, len(battles), size=len(battles)))
        rounds.append(_fit_bradley_terry(design[index], outcomes[index]))
    coefs = torch.stack(rounds).double()
    for model in models:
        n_model = sum(1 for name, _, _ in battles if name == model)
        if not n_model:
            result["models"][model] = dict(empty)
            continue
        # to_winrate_probabilities: exp(c_m) / (exp(c_m) + exp(c_b)).
        rates = torch.sigmoid(coefs[:, column[model]] - coefs[:, column[baseline]]).numpy()
        boot = {"score": float(np.quantile(rates, 0.5)) * 100, "lower": float(np.quantile(rates, 0.05)) * 100,
                "upper": float(np.quantile(rates, 0.95)) * 100}
        result["models"][model] = {**_rounded_summary(boot), "n_battles": n_model, "bootstrap": boot}
    median = torch.quantile(coefs[:, len(players):], 0.5, dim=0).tolist() if keep else []
    result["feature_coefficients"] = dict(zip(result["features"], median))
    return result
