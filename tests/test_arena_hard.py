"""Arena-Hard: verdict parsing, game order, arena-hard-auto v2 scoring by hand, the whole script path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_judge_server import (
    FAKE_API_KEY,
    REPO_ROOT,
    load_script,
    FakeJudgeServer,
    judge_config,
    pairwise_reply,
    run_script,
    user_prompt,
)

from prefopt.evaluation import arena_hard
from prefopt.evaluation.benchmark_data import load_arena_hard_questions

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def questions():
    return load_arena_hard_questions()


def test_bundled_questions(questions):
    assert len(questions) == 750
    categories = {}
    for q in questions:
        categories[q["category"]] = categories.get(q["category"], 0) + 1
    assert categories == {"hard_prompt": 500, "creative_writing": 250}


@pytest.mark.skipif(not (SHARED_DATA / "arena-hard-v0.1").is_dir(), reason="shared/data not beside the repo")
def test_questions_from_a_path_or_folder():
    v01 = load_arena_hard_questions(SHARED_DATA / "arena-hard-v0.1")
    assert len(v01) == 500 and {q["category"] for q in v01} == {"arena-hard-v0.1"}
    v2 = load_arena_hard_questions(SHARED_DATA / "arena-hard-v2.0" / "question.jsonl")
    assert [q["uid"] for q in v2] == [q["uid"] for q in load_arena_hard_questions("arena-hard-v2.0")]


@pytest.mark.parametrize("text, label", [
    ("My final verdict is tie: [[A=B]]", "A=B"),
    ("Assistant B is significantly better: [[B>>A]]", "B>>A"),
    ("[[A>B]] ... to repeat, [[A>B]]", "A>B"),
    ("Between [[A>B]] and [[B>A]] I pick [[B>A]]", "B>A"),  # v2: the last match wins
    ("At first [[B>>A]], but on reflection [[A=B]]", "A=B"),
    ("my final verdict is [[b>a]]", "B>A"),  # matched on the upper-cased text
    ("Final verdict: [A>B]", "A>B"),  # single brackets: the second pattern
    ("[[A=B]] and then [B>A]", "A=B"),  # the double-bracket pattern is tried first
    ("My verdict: A is better", None),
    ("[[AB]]", None),  # matches the pattern but is no label (upstream: a KeyError when scoring)
])
def test_parse_verdict_as_arena_hard_auto(text, label):
    assert arena_hard.parse_verdict(text) == label


def test_system_prompt_by_category():
    assert arena_hard.system_prompt_for("hard_prompt") == arena_hard.ARENA_HARD_SYSTEM_PROMPT
    assert arena_hard.system_prompt_for("arena-hard-v0.1") == arena_hard.ARENA_HARD_SYSTEM_PROMPT
    creative = arena_hard.system_prompt_for("creative_writing")
    assert "generating your own answer" in arena_hard.ARENA_HARD_SYSTEM_PROMPT
    assert "generating your own answer" not in creative and "[[B>>A]]" in creative


def answer(uid, text, model):
    return {"uid": uid, "ans_id": f"{model}-{uid}", "model": model,
            "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": {"answer": text}}],
            "tstamp": 0.0, "metadata": {}}


def test_game_one_shows_the_baseline_as_a_and_game_two_swaps(questions):
    q = questions[0]
    requests = arena_hard.build_judge_requests([q], [answer(q["uid"], "MODEL-TEXT", "m")],
                                               [answer(q["uid"], "BASE-TEXT", "base")], "m", "base")
    game1, game2 = requests
    assert (game1.slot, game2.slot) == ("game1", "game2")
    for request, first, second in ((game1, "BASE-TEXT", "MODEL-TEXT"), (game2, "MODEL-TEXT", "BASE-TEXT")):
        text = request.messages[1]["content"]
        assert text == arena_hard.PROMPT_TEMPLATE.format(QUESTION=q["prompt"], ANSWER_A=first, ANSWER_B=second)
        assert request.messages[0]["content"] == arena_hard.system_prompt_for(q["category"])


def test_missing_baseline_answer_is_an_error(questions):
    q1, q2 = questions[:2]
    with pytest.raises(ValueError, match="baseline base has no answer"):
        arena_hard.build_judge_requests([q1, q2], [answer(q1["uid"], "x", "m"), answer(q2["uid"], "y", "m")],
                                        [answer(q1["uid"], "z", "base")], "m", "base")


def row(uid, game1, game2, category="hard_prompt"):
    games = [None if label is None else {"score": label} for label in (game1, game2)]
    return {"uid": uid, "category": category, "judge": "judge-1", "model": "m", "baseline": "base", "games": games}


@pytest.mark.parametrize("game1, game2, outcomes", [
    # Game 1: A = baseline, so the model's outcomes are 1 - A's; game 2: A = model.
    ("B>>A", "A>>B", [1, 1, 1, 1, 1, 1]),  # strong wins count three times each
    ("A>B", "A=B", [0.5, 0]),  # game 2's list comes first
    ("B>>A", "B>A", [0, 1, 1, 1]),
    ("A=B", "B=A", [0.5, 0.5]),
    ("A>>B", "B>>A", [0, 0, 0, 0, 0, 0]),
    ("A<B", "B<<A", [1, 1, 1, 1]),  # the reversed spellings upstream also maps
])
def test_label_mapping_and_the_swapped_game(game1, game2, outcomes):
    assert arena_hard.question_outcomes(row("u", game1, game2)) == outcomes


def test_failed_games_drop_the_whole_question():
    assert arena_hard.question_outcomes(row("u", None, "A>B")) is None
    assert arena_hard.question_outcomes(row("u", "A>B", "nonsense")) is None
    rows = [row("u1", "B>>A", "A>>B"), row("u2", None, "A>B"), row("u3", "B>A", "A>B")]
    result = arena_hard.score_arena_hard(rows)
    # u2 is dropped (its valid game too): outcomes are u1's six 1s and u3's two 1s.
    assert result["score"] == 100.0 and result["ci_low"] == 0.0 and result["ci_high"] == 0.0
    assert result["n_valid"] == 5 and result["n_failed"] == 1
    assert result["n_dropped_questions"] == 1 and result["n_questions"] == 3 and result["n_battles"] == 8


def test_all_wins_all_losses_all_ties_give_exact_scores():
    wins = [row(f"u{i}", "B>A", "A>B") for i in range(10)]
    losses = [row(f"u{i}", "A>>B", "B>>A") for i in range(10)]
    ties = [row(f"u{i}", "A=B", "A=B") for i in range(10)]
    for rows, expected in ((wins, 100.0), (losses, 0.0), (ties, 50.0)):
        result = arena_hard.score_arena_hard(rows, seed=3)
        assert (result["score"], result["ci_low"], result["ci_high"]) == (expected, 0.0, 0.0)
        assert result["judge_model"] == "judge-1" and result["baseline"] == "base"


def mixed_rows(n=40):
    labels = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]
    return [row(f"u{i}", labels[i % 5], labels[(3 * i + 1) % 5]) for i in range(n)]


def test_bootstrap_is_seeded_and_resamples_battles():
    rows = mixed_rows()
    first = arena_hard.score_arena_hard(rows, seed=0, n_bootstrap=100)
    again = arena_hard.score_arena_hard(rows, seed=0, n_bootstrap=100)
    other = arena_hard.score_arena_hard(rows, seed=1, n_bootstrap=100)
    assert first == again
    assert first["bootstrap"] != other["bootstrap"]
    # The contract, written out: resample the exploded outcome list with replacement, 100 rounds.
    outcomes = np.array([o for r in rows for o in arena_hard.question_outcomes(r)])
    rng = np.random.default_rng(0)
    means = np.array([outcomes[rng.integers(0, outcomes.size, size=outcomes.size)].mean() for _ in range(100)])
    assert first["bootstrap"]["score"] == pytest.approx(means.mean() * 100)
    assert first["bootstrap"]["lower"] == pytest.approx(np.quantile(means, 0.05) * 100)
    assert first["bootstrap"]["upper"] == pytest.approx(np.quantile(means, 0.95) * 100)
    assert first["score"] == round(means.mean() * 100, 1)
    assert first["ci_low"] < 0 < first["ci_high"]
    assert abs(first["bootstrap"]["score"] - outcomes.mean() * 100) < 3


def test_category_selection():
    rows = [row(f"h{i}", "B>A", "A>B") for i in range(3)] + [row(f"c{i}", "A>B", "B>A", "creative_writing")
                                                             for i in range(2)]
    auto = arena_hard.score_arena_hard(rows)
    assert auto["category"] == "hard_prompt" and auto["score"] == 100.0 and auto["n_questions"] == 3
    assert auto["by_category"]["creative_writing"]["score"] == 0.0
    creative = arena_hard.score_arena_hard(rows, category="creative_writing")
    assert creative["score"] == 0.0
    pooled = arena_hard.score_arena_hard(rows, category="all")
    assert pooled["category"] == "all" and pooled["n_questions"] == 5 and 0 < pooled["score"] < 100
    only_v01 = [row("u", "B>A", "A>B", "arena-hard-v0.1")]
    assert arena_hard.score_arena_hard(only_v01)["category"] == "arena-hard-v0.1"
    with pytest.raises(ValueError, match="not in the judgments"):
        arena_hard.score_arena_hard(rows, category="math")


def test_scoring_refuses_mixed_models():
    rows = [row("u1", "A>B", "B>A"), {**row("u2", "A>B", "B>A"), "model": "other"}]
    with pytest.raises(ValueError, match="'model'"):
        arena_hard.score_arena_hard(rows)


def write_answers(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_answers_to_judgments_to_scores(tmp_path, questions):
    """Hand-written answers through judge_answers.py and score_judgments.py, with a fake judge that
    prefers the model on hard prompts, the baseline on creative writing, and once gives no verdict."""
    hard = [q for q in questions if q["category"] == "hard_prompt"][:4]
    creative = [q for q in questions if q["category"] == "creative_writing"][:2]
    chosen = hard + creative
    questions_path = tmp_path / "questions.jsonl"
    write_answers(questions_path, chosen)
    model_answers, baseline_answers = tmp_path / "model.jsonl", tmp_path / "baseline.jsonl"
    write_answers(model_answers, [answer(q["uid"], f"MODEL answer to {q['uid']}", "slime") for q in chosen])
    write_answers(baseline_answers, [answer(q["uid"], f"BASE answer to {q['uid']}", "gemma-3-4b-it") for q in chosen])
    broken_uid = hard[1]["uid"]

    def label_for(body):
        text = user_prompt(body)
        model_is_a = "MODEL answer" in text.split("<|The Start of Assistant B's Answer|>")[0]
        if broken_uid in text and model_is_a:
            return None  # game 2 of this question never parses
        if "generating your own answer" in body["messages"][0]["content"]:  # hard-prompt judge
            return "A>>B" if model_is_a else "B>>A"
        return "B>A" if model_is_a else "A>B"  # creative judge prefers the baseline slightly

    config_path, cache = tmp_path / "judge.json", tmp_path / "cache.jsonl"
    judgments, score = tmp_path / "judgments.jsonl", tmp_path / "score.json"
    with FakeJudgeServer(pairwise_reply(label_for)) as server:
        config_path.write_text(json.dumps(judge_config(server)))
        judged = run_script("judge_answers.py", "--benchmark", "arena_hard", "--answers", model_answers,
                            "--baseline-answers", baseline_answers, "--model-id", "slime", "--questions",
                            questions_path, "--judge-config", config_path, "--cache", cache, "--out", judgments)
        assert server.request_count == 12  # 6 questions x 2 games; parse_retries 0: no re-asks
    rows = {r["uid"]: r for r in map(json.loads, judgments.read_text().splitlines())}
    assert len(rows) == 6 and rows[broken_uid]["games"][1]["score"] is None
    first_hard = rows[hard[0]["uid"]]
    assert [g["score"] for g in first_hard["games"]] == ["B>>A", "A>>B"]
    assert "BASE answer" in first_hard["games"][0]["prompt"][1]["content"].split("Assistant B's Answer")[0]
    assert first_hard["baseline"] == "gemma-3-4b-it" and first_hard["judge"] == "fake-judge-1"

    scored = run_script("score_judgments.py", "--benchmark", "arena_hard", "--judgments", judgments, "--out", score,
                        "--seed", "0", "--n-bootstrap", "100")
    result = json.loads(score.read_text())
    # hard_prompt (the default category): 3 questions, all strong wins -> 100 with a zero-width interval.
    assert (result["score"], result["ci_low"], result["ci_high"]) == (100.0, 0.0, 0.0)
    assert result["n_valid"] == 7 and result["n_failed"] == 1 and result["n_dropped_questions"] == 1
    assert result["baseline"] == "gemma-3-4b-it" and result["judge_model"] == "fake-judge-1"
    assert result["by_category"]["creative_writing"]["score"] == 0.0
    assert "Arena-Hard slime vs gemma-3-4b-it [hard_prompt]: 100.0 (-0.0 / +0.0)" in scored.stderr
    for text in (judged.stderr, judgments.read_text(), cache.read_text(), score.read_text()):
        assert FAKE_API_KEY not in text


def test_generate_answers_on_the_tiny_model_and_judge_them(tiny_model_dir, tmp_path, questions):
    generate = load_script("generate_answers")
    out = tmp_path / "tiny.jsonl"
    args = ["--model", tiny_model_dir, "--benchmark", "arena_hard", "--model-id", "tiny-model", "--out", str(out),
            "--limit", "2", "--max-new-tokens", "8", "--batch-size", "2", "--threads", "1"]
    assert generate.main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["uid"] for r in records] == [q["uid"] for q in questions[:2]]
    for record, question in zip(records, questions):
        assert set(record) == {"uid", "ans_id", "model", "messages", "tstamp", "metadata"}
        assert record["model"] == "tiny-model"
        assert record["messages"][0] == {"role": "user", "content": question["prompt"]}
        assert record["messages"][1]["role"] == "assistant" and isinstance(record["messages"][1]["content"]["answer"], str)
        assert record["metadata"] == arena_hard.answer_metadata(record["messages"][1]["content"]["answer"])

    baseline = tmp_path / "baseline.jsonl"
    write_answers(baseline, [answer(q["uid"], "baseline says hi", "gemma-3-4b-it") for q in questions[:2]])
    config_path, judgments, score = tmp_path / "judge.json", tmp_path / "judgments.jsonl", tmp_path / "score.json"
    with FakeJudgeServer(pairwise_reply(lambda body: "A=B")) as server:
        config_path.write_text(json.dumps(judge_config(server)))
        run_script("judge_answers.py", "--benchmark", "arena_hard", "--answers", out, "--baseline-answers", baseline,
                   "--model-id", "tiny-model", "--judge-config", config_path, "--cache", tmp_path / "cache.jsonl",
                   "--out", judgments)
        assert server.request_count == 4
    run_script("score_judgments.py", "--benchmark", "arena_hard", "--judgments", judgments, "--out", score,
               "--seed", "0", "--n-bootstrap", "20")
    result = json.loads(score.read_text())
    assert (result["score"], result["ci_low"], result["ci_high"]) == (50.0, 0.0, 0.0)
