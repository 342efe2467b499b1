"""The embedded demo dataset: determinism, checkable answers, short responses, schema."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from prefopt.data import chosen_text, rejected_text, validate_rows, write_jsonl
from prefopt.demo_data import TASKS, build_demo_dataset, extract_answer, is_correct


@pytest.fixture(scope="module")
def demo_rows():
    return build_demo_dataset(400, seed=0)


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tmp_path):
    paths = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        paths[name] = tmp_path / f"{name}.jsonl"
        write_jsonl(paths[name], build_demo_dataset(120, seed=seed))
    assert paths["a"].read_bytes() == paths["b"].read_bytes()
    assert paths["a"].read_bytes() != paths["c"].read_bytes()


def test_size_is_exact():
    assert len(build_demo_dataset(0, seed=0)) == 0
    assert len(build_demo_dataset(37, seed=5)) == 37


def test_chosen_correct_and_rejected_wrong_or_unformatted(demo_rows):
    rejection_kinds = Counter()
    for index, row in enumerate(demo_rows):
        chosen, rejected = chosen_text(row), rejected_text(row)
        assert chosen != rejected, index
        assert is_correct(row, chosen), (index, chosen)
        assert chosen.splitlines()[-1] == f"Answer: {row['answer']}", (index, chosen)
        assert not is_correct(row, rejected), (index, rejected)
        got = extract_answer(rejected)
        rejection_kinds["no_answer_line" if got is None else "wrong_answer"] += 1
        if got is not None:
            assert got != row["answer"], (index, rejected)
    # both kinds of rejection occur, wrong answers more often
    assert rejection_kinds["wrong_answer"] > rejection_kinds["no_answer_line"] > 0


def test_schema_tasks_and_distinct_problems(demo_rows):
    _, report = validate_rows(demo_rows, on_bad="error")
    assert report["bad"] == 0
    assert set(Counter(row["task"] for row in demo_rows)) == set(TASKS)
    assert len({row["prompt"] for row in demo_rows}) == len(demo_rows)
    assert len({row["prompt_id"] for row in demo_rows}) == len(demo_rows)
    for row in demo_rows:
        assert list(row) == ["prompt_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "task", "answer"]
        assert row["chosen"][0] == row["rejected"][0] == {"role": "user", "content": row["prompt"]}
        assert (row["score_chosen"], row["score_rejected"]) == (1.0, 0.0)


def test_several_phrasings_per_task(demo_rows):
    for task in TASKS:
        shapes = {re.sub(r"\d+|'[^']*'|[a-z]+, [a-z, ]+", "#", row["prompt"]) for row in demo_rows if row["task"] == task}
        assert len(shapes) >= 3, (task, shapes)
        chosen_openings = {chosen_text(row).split()[0] for row in demo_rows if row["task"] == task}
        assert len(chosen_openings) >= 2, (task, chosen_openings)


def test_responses_are_short_under_the_real_tokenizer(demo_rows, tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [text for row in demo_rows for text in (chosen_text(row), rejected_text(row))]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    assert max(lengths) <= 40, max(lengths)
    assert sum(lengths) / len(lengths) <= 30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2 + 2 = 4.\n\nAnswer: 4", "4"),
        ("Answer: 3\nwait, no.\nAnswer: 5", "5"),
        ("**Answer:** 42", "42"),
        ("answer: **42**.", "42"),
        ("Answer: [1,2,  3]", "1, 2, 3"),
        ("Answer: 'tenalp'", "tenalp"),
        ("The answer is 42.", None),
        ("Answer:   ", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_is_correct_numbers_units_and_case():
    number_row = {"answer": "2500"}
    assert is_correct(number_row, "Answer: 2500")
    assert is_correct(number_row, "Answer: 2500.0")
    assert is_correct(number_row, "Answer: 2500 m")
    assert not is_correct(number_row, "Answer: 250")
    assert not is_correct(number_row, "2500")  # no Answer line
    assert is_correct({"answer": "0.25"}, "Answer: 0.250")
    assert is_correct({"answer": "PLANET"}, "Answer: PLANET")
    assert not is_correct({"answer": "PLANET"}, "Answer: PLANeT")
    assert is_correct({"answer": "3, 8, 12"}, "Answer: 3,8,12.")
    assert not is_correct({"answer": "3, 8, 12"}, "Answer: 3, 12, 8")
