"""MT-Bench: bundled data, FastChat's prompts and rating parser, scoring by hand, the whole script path."""

from __future__ import annotations

import json

import pytest
from fake_judge_server import (
    FAKE_API_KEY,
    load_script,
    FakeJudgeServer,
    judge_config,
    rating_reply,
    run_script,
    user_prompt,
)

from prefopt.evaluation import mtbench
from prefopt.evaluation.benchmark_data import load_judge_prompts, load_mtbench_questions, load_reference_answers


@pytest.fixture(scope="module")
def questions():
    return {q["question_id"]: q for q in load_mtbench_questions()}


def test_bundled_data_is_complete(questions):
    assert len(questions) == 80
    categories = {}
    for q in questions.values():
        categories[q["category"]] = categories.get(q["category"], 0) + 1
        assert len(q["turns"]) == 2
    assert categories == {c: 10 for c in mtbench.CATEGORY_TEMPERATURES}
    prompts = load_judge_prompts()
    assert {"single-v1", "single-math-v1", "single-v1-multi-turn", "single-math-v1-multi-turn"} <= set(prompts)
    references = load_reference_answers("gpt-4")
    needs_reference = {qid for qid, q in questions.items() if q["category"] in mtbench.REFERENCE_CATEGORIES}
    assert needs_reference == set(references) and len(needs_reference) == 30
    assert all(len(turns) == 2 for turns in references.values())


def test_fastchat_temperatures():
    assert mtbench.question_temperature({"category": "writing"}) == 0.7
    assert mtbench.question_temperature({"category": "roleplay"}) == 0.7
    for greedy in ("extraction", "math", "coding", "reasoning"):
        assert mtbench.question_temperature({"category": greedy}) == 0.0
    assert mtbench.question_temperature({"category": "stem"}) == 0.1
    assert mtbench.question_temperature({"category": "humanities"}) == 0.1


@pytest.mark.parametrize("text, rating", [
    ("Good answer.\n\nRating: [[5]]", 5.0),
    ("Rating: [[7.5]]", 7.5),
    ("I'd say [8] overall", 8.0),  # FastChat's backup pattern
    ("First [[3]] then [[9]]", 3.0),  # FastChat takes the first match
    ("[[10]] but also [4]", 10.0),
    ("Rating: 6 out of 10", None),
    ("Rating: [[six]]", None),
    ("", None),
])
def test_parse_rating_as_fastchat(text, rating):
    assert mtbench.parse_rating(text) == rating


def two_turn_answer(qid, turns, model_id="model-x"):
    return {"question_id": qid, "answer_id": f"a{qid}", "model_id": model_id,
            "choices": [{"index": 0, "turns": turns}], "tstamp": 0.0}


def test_judge_requests_use_the_official_prompts(questions):
    prompts, references = load_judge_prompts(), load_reference_answers()
    writing = next(q for q in questions.values() if q["category"] == "writing")
    math = next(q for q in questions.values() if q["category"] == "math")
    answers = [two_turn_answer(writing["question_id"], ["W-ONE", "W-TWO"]),
               two_turn_answer(math["question_id"], ["M-ONE", "M-TWO"])]
    requests = mtbench.build_judge_requests([writing, math], answers, prompts, references, "model-x")
    by_slot = {(r.question_id, r.slot): r for r in requests}
    assert len(requests) == 4

    turn1 = by_slot[(writing["question_id"], "turn1")]
    assert turn1.meta["prompt_name"] == "single-v1"
    assert turn1.messages[0] == {"role": "system", "content": prompts["single-v1"]["system_prompt"]}
    assert turn1.messages[1]["content"] == prompts["single-v1"]["prompt_template"].format(
        question=writing["turns"][0], answer="W-ONE")

    turn2 = by_slot[(writing["question_id"], "turn2")]
    assert turn2.meta["prompt_name"] == "single-v1-multi-turn"
    text = turn2.messages[1]["content"]
    assert writing["turns"][0] in text and writing["turns"][1] in text
    assert text.index("W-ONE") < text.index("W-TWO")

    math1 = by_slot[(math["question_id"], "turn1")]
    assert math1.meta["prompt_name"] == "single-math-v1"
    assert references[math["question_id"]][0] in math1.messages[1]["content"]
    math2 = by_slot[(math["question_id"], "turn2")]
    assert math2.meta["prompt_name"] == "single-math-v1-multi-turn"
    assert references[math["question_id"]][1] in math2.messages[1]["content"]
    assert "M-ONE" in math2.messages[1]["content"] and "M-TWO" in math2.messages[1]["content"]
    assert math2.messages[0]["content"] == prompts["single-math-v1-multi-turn"]["system_prompt"]


def test_answers_for_unknown_questions_are_rejected(questions):
    with pytest.raises(ValueError, match="not in the question file"):
        mtbench.build_judge_requests(list(questions.values()), [two_turn_answer(999, ["a", "b"])],
                                     load_judge_prompts(), load_reference_answers(), "model-x")


def judgment(qid, turn, score, model="model-x", judge="judge-1"):
    return {"question_id": qid, "model": model, "judge": [judge, "single-v1"], "score": score, "turn": turn,
            "category": "writing" if qid < 90 else "math"}


def test_scores_by_hand():
    rows = [judgment(81, 1, 8), judgment(82, 1, 6), judgment(91, 1, -1),
            judgment(81, 2, 4), judgment(82, 2, 5), judgment(91, 2, 9.5)]
    result = mtbench.score_mtbench(rows)
    assert result["score"]["turn1"] == pytest.approx(7.0)  # (8 + 6) / 2, the -1 excluded
    assert result["score"]["turn2"] == pytest.approx(6.1666666, rel=1e-6)  # (4 + 5 + 9.5) / 3
    # Overall: mean of all five valid ratings (show_result's "Average"), not the mean of the turn means.
    assert result["score"]["overall"] == pytest.approx((8 + 6 + 4 + 5 + 9.5) / 5)
    assert result["n_valid"] == 5 and result["n_failed"] == 1 and result["n_questions"] == 3
    assert result["by_category"] == {"math": 9.5, "writing": pytest.approx(23 / 4)}
    assert result["judge_model"] == "judge-1" and result["model_id"] == "model-x"


def test_scoring_refuses_mixed_or_duplicated_rows():
    with pytest.raises(ValueError, match="judged twice"):
        mtbench.score_mtbench([judgment(81, 1, 8), judgment(81, 1, 7)])
    with pytest.raises(ValueError, match="mix models"):
        mtbench.score_mtbench([judgment(81, 1, 8), judgment(82, 1, 7, model="other")])
    with pytest.raises(ValueError, match="mix judge models"):
        mtbench.score_mtbench([judgment(81, 1, 8), judgment(82, 1, 7, judge="judge-2")])


def test_answers_to_judgments_to_scores(tmp_path, questions):
    """Hand-written answers for four categories through judge_answers.py and score_judgments.py."""
    chosen = [next(q for q in questions.values() if q["category"] == c) for c in ("writing", "math", "coding", "stem")]
    answers_path = tmp_path / "answers.jsonl"
    with open(answers_path, "w") as handle:
        for q in chosen:
            turns = [f"turn one of {q['question_id']}", f"turn two of {q['question_id']}"]
            if q["category"] == "coding":
                turns[1] = "NO-VERDICT please"
            handle.write(json.dumps(two_turn_answer(q["question_id"], turns, "tiny-model")) + "\n")

    def rating_for(body):
        text = user_prompt(body)
        if "NO-VERDICT" in text:
            return None  # the judge never gives this one a rating
        return 4 if "### Assistant A:" in text else 8  # multi-turn prompts grade turn 2

    config_path, cache = tmp_path / "judge.json", tmp_path / "cache.jsonl"
    judgments, score = tmp_path / "judgments.jsonl", tmp_path / "score.json"
    with FakeJudgeServer(rating_reply(rating_for)) as server:
        config_path.write_text(json.dumps(judge_config(server)))
        judged = run_script("judge_answers.py", "--benchmark", "mt_bench", "--answers", answers_path, "--model-id",
                            "tiny-model", "--judge-config", config_path, "--cache", cache, "--out", judgments)
        # 8 unique judgments; parse_retries 0: the one that never parses is not asked again.
        assert server.request_count == 8
        systems = [body["messages"][0]["content"] for body in server.requests]
    prompts = load_judge_prompts()
    assert systems.count(prompts["single-v1"]["system_prompt"]) == 4  # writing and stem turn 1, math & coding turn 1
    assert prompts["single-math-v1-multi-turn"]["system_prompt"] in systems
    scored = run_script("score_judgments.py", "--benchmark", "mt_bench", "--judgments", judgments, "--out", score,
                        "--seed", "0", "--n-bootstrap", "20")
    result = json.loads(score.read_text())
    assert result["score"]["turn1"] == 8.0
    assert result["score"]["turn2"] == 4.0
    assert result["score"]["overall"] == pytest.approx((4 * 8 + 3 * 4) / 7)
    assert result["n_valid"] == 7 and result["n_failed"] == 1 and result["judge_model"] == "fake-judge-1"
    rows = [json.loads(line) for line in judgments.read_text().splitlines()]
    assert {tuple(row["judge"]) for row in rows if row["category"] == "math"} == {
        ("fake-judge-1", "single-math-v1"), ("fake-judge-1", "single-math-v1-multi-turn")}
    assert sorted(row["score"] for row in rows).count(-1) == 1
    for text in (judged.stderr, scored.stderr, judgments.read_text(), cache.read_text(), score.read_text()):
        assert FAKE_API_KEY not in text


def test_generate_answers_on_the_tiny_model_resumes_and_judges(tiny_model_dir, tmp_path, questions):
    generate = load_script("generate_answers")
    out = tmp_path / "answers.jsonl"
    first_two = list(questions)[:2]
    # An interrupted earlier run already answered the first question.
    partial = tmp_path / "answers.jsonl.partial"
    kept = two_turn_answer(first_two[0], ["kept turn 1", "kept turn 2"], "tiny-model")
    partial.write_text(json.dumps(kept) + "\n" + '{"question_id": 82, "answer')  # + a line cut short
    # ... under these generation settings (written beside the partial file by that run).
    settings = {"model": tiny_model_dir, "adapter": None, "questions": None, "max_new_tokens": 8,
                "max_prompt_length": None, "batch_size": 2, "precision": "fp32", "seed": 0}
    settings_file = tmp_path / "answers.jsonl.partial.settings.json"
    settings_file.write_text(json.dumps(settings))
    args = ["--model", tiny_model_dir, "--benchmark", "mt_bench", "--model-id", "tiny-model", "--out", str(out),
            "--limit", "2", "--max-new-tokens", "8", "--batch-size", "2", "--threads", "1"]
    assert generate.main(args) == 0
    assert not partial.exists() and not settings_file.exists()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["question_id"] for r in records] == first_two
    assert records[0] == kept
    generated = records[1]
    assert set(generated) == {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert generated["model_id"] == "tiny-model" and generated["choices"][0]["index"] == 0
    assert len(generated["choices"][0]["turns"]) == 2
    assert all(isinstance(turn, str) for turn in generated["choices"][0]["turns"])

    # An answer made under other settings (here another precision) is never resumed.
    (tmp_path / "again.jsonl.partial").write_text(json.dumps(kept) + "\n")
    (tmp_path / "again.jsonl.partial.settings.json").write_text(json.dumps({**settings, "precision": "bf16"}))
    assert generate.main([*args, "--out", str(tmp_path / "again.jsonl")]) == 0
    again = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert again[0]["choices"][0]["turns"] != kept["choices"][0]["turns"]

    config_path, judgments, score = tmp_path / "judge.json", tmp_path / "judgments.jsonl", tmp_path / "score.json"
    with FakeJudgeServer(rating_reply(lambda body: 3)) as server:
        config_path.write_text(json.dumps(judge_config(server)))
        run_script("judge_answers.py", "--benchmark", "mt_bench", "--answers", out, "--model-id", "tiny-model",
                   "--judge-config", config_path, "--cache", tmp_path / "cache.jsonl", "--out", judgments)
        assert server.request_count == 4
    run_script("score_judgments.py", "--benchmark", "mt_bench", "--judgments", judgments, "--out", score,
                        "--seed", "0", "--n-bootstrap", "20")
    assert json.loads(score.read_text())["score"] == {"turn1": 3.0, "turn2": 3.0, "overall": 3.0}
