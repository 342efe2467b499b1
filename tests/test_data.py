"""prefopt.data: loading, JSON-lines I/O, validation, the 33/66 split, manifests, and the two data scripts."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.data import (
    REQUIRED_FIELDS,
    LengthCheck,
    chosen_text,
    content_hash,
    load_ultrafeedback,
    prompt_messages,
    read_jsonl,
    read_rows,
    rejected_text,
    rows_to_pairs,
    rows_to_sft,
    split_dataset,
    split_manifest,
    validate_rows,
    write_jsonl,
)
from prefopt.demo_data import build_demo_dataset

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "ultrafeedback_sample.jsonl"
# Bad rows planted in the sample file, by line (1-based; the file has no blank lines).
SAMPLE_BAD = {4: "missing_field", 9: "empty_response", 16: "identical_responses",
              20: "last_not_assistant", 24: "prompt_mismatch", 29: "wrong_type"}


def make_row(index: int, prompt: str = None, chosen: str = "good answer", rejected: str = "bad answer") -> dict:
    prompt = prompt if prompt is not None else f"question {index}?"
    user = {"role": "user", "content": prompt}
    return {"prompt_id": f"id-{index}", "prompt": prompt,
            "chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [dict(user), {"role": "assistant", "content": rejected}],
            "score_chosen": 8.0, "score_rejected": 3}


def good_sample_rows() -> list[dict]:
    return [row for index, row in enumerate(load_ultrafeedback(str(SAMPLE))) if index + 1 not in SAMPLE_BAD]


# --- I/O ---------------------------------------------------------------------------------------


def test_json_lines_helpers_are_prefopt_io():
    import prefopt.io

    assert (read_jsonl, write_jsonl) == (prefopt.io.read_jsonl, prefopt.io.write_jsonl)  # tests/test_io.py


# --- loading -----------------------------------------------------------------------------------


def test_load_sample_jsonl_keeps_only_schema_fields():
    rows = load_ultrafeedback(str(SAMPLE))
    assert len(rows) == 31
    assert all("messages" not in row for row in rows)
    assert list(rows[0]) == list(REQUIRED_FIELDS)
    assert "rejected" not in rows[3]  # a bad row is loaded as is; validation reports it


def test_load_parquet_and_json_variants(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    raw_good = [row for index, row in enumerate(raw) if index + 1 not in SAMPLE_BAD]
    assert all("messages" in row for row in raw_good)
    expected = good_sample_rows()

    pq.write_table(pa.Table.from_pylist(raw_good), tmp_path / "train.parquet")
    assert load_ultrafeedback(str(tmp_path / "train.parquet")) == expected

    (tmp_path / "list.json").write_text(json.dumps(raw_good), encoding="utf-8")
    assert load_ultrafeedback(str(tmp_path / "list.json")) == expected
    (tmp_path / "by_split.json").write_text(json.dumps({"test_prefs": raw_good[:3]}), encoding="utf-8")
    assert load_ultrafeedback(str(tmp_path / "by_split.json"), split="test_prefs") == expected[:3]
    with pytest.raises(KeyError, match="train_prefs"):
        load_ultrafeedback(str(tmp_path / "by_split.json"))
    write_jsonl(tmp_path / "lines.json", raw_good)  # what Dataset.to_json writes
    assert load_ultrafeedback(str(tmp_path / "lines.json")) == expected


def test_load_saved_datasets_and_hub_layout_folder(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [json.loads(line) for line in SAMPLE.read_text(encoding="utf-8").splitlines()]
    raw_good = [row for index, row in enumerate(raw) if index + 1 not in SAMPLE_BAD]
    expected = good_sample_rows()

    dataset_dict = datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(raw_good[:20]),
                                         "test_prefs": datasets.Dataset.from_list(raw_good[20:])})
    dataset_dict.save_to_disk(str(tmp_path / "saved_dict"))
    assert load_ultrafeedback(str(tmp_path / "saved_dict"), split="test_prefs") == expected[20:]
    datasets.Dataset.from_list(raw_good).save_to_disk(str(tmp_path / "saved_one"))
    assert load_ultrafeedback(str(tmp_path / "saved_one")) == expected

    # A local snapshot of the hub repo goes through datasets.load_dataset, as a hub id does.
    data_dir = tmp_path / "ultrafeedback_binarized" / "data"
    data_dir.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(raw_good[:20]), data_dir / "train_prefs-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(raw_good[20:]), data_dir / "test_prefs-00000-of-00001.parquet")
    assert load_ultrafeedback(str(data_dir.parent), split="test_prefs") == expected[20:]


def test_load_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_ultrafeedback(str(tmp_path / "nope.jsonl"))


# --- accessors ---------------------------------------------------------------------------------


def test_accessors_and_pairs_on_a_multi_turn_row():
    rows = good_sample_rows()
    multi_turn = next(row for row in rows if len(row["chosen"]) > 2)
    assert [m["role"] for m in prompt_messages(multi_turn)] == ["user", "assistant", "user"]
    assert chosen_text(multi_turn) == "The capital of France is Paris."
    assert rejected_text(multi_turn) == "The capital of France is Lyon."
    pair = rows_to_pairs([multi_turn])[0]
    assert pair == {"prompt_id": multi_turn["prompt_id"], "prompt": multi_turn["chosen"][:-1],
                    "chosen": "The capital of France is Paris.", "rejected": "The capital of France is Lyon."}
    assert rows_to_sft([multi_turn]) == [{"messages": multi_turn["chosen"]}]


# --- validation --------------------------------------------------------------------------------


def _set(path, value):
    def mutate(row):
        target = row
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return row
    return mutate


BAD_ROW_KINDS = {
    "not_a_mapping": lambda row: ["not", "a", "row"],
    "missing_field": lambda row: {k: v for k, v in row.items() if k != "score_rejected"},
    "wrong_type": _set(["prompt_id"], 17),
    "malformed_message": _set(["rejected", 1], {"role": "assistant"}),
    "last_not_assistant": _set(["rejected", 1, "role"], "user"),
    "empty_prompt": lambda row: {**row, "chosen": row["chosen"][1:], "rejected": row["rejected"][1:]},
    "prompt_mismatch": _set(["rejected", 0, "content"], "another question?"),
    "empty_response": _set(["rejected", 1, "content"], " \n"),
    "identical_responses": _set(["rejected", 1, "content"], "good answer "),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROW_KINDS))
@pytest.mark.parametrize("on_bad", ["error", "drop"])
def test_each_bad_row_kind_is_reported_by_its_1_based_row(reason, on_bad):
    rows = [make_row(index) for index in range(6)]
    rows[4] = BAD_ROW_KINDS[reason](copy.deepcopy(rows[4]))
    if on_bad == "error":
        with pytest.raises(ValueError, match=rf"^1 of 6 rows are bad \(1 {reason}\): row 5: {reason}: .*; "
                                             r"fix them or set data.on_bad_rows: drop$"):
            validate_rows(rows, on_bad="error")
        return
    good, report = validate_rows(rows, on_bad="drop")
    assert good == rows[:4] + rows[5:]
    assert (report["total"], report["good"], report["bad"], report["dropped"]) == (6, 5, 1, 1)
    assert report["counts"] == {reason: 1} and report["on_bad_rows"] == "drop"
    [bad] = report["bad_rows"]
    assert (bad["location"], bad["reason"]) == ("row 5", reason)
    assert bad["prompt_id"] == ("id-4" if reason not in ("not_a_mapping", "wrong_type") else None)
    assert bad["detail"]


def test_sample_file_bad_rows_in_both_modes():
    rows = load_ultrafeedback(str(SAMPLE))
    loaded = read_rows(str(SAMPLE))
    assert loaded.rows == rows and loaded.locations == [f"{SAMPLE}:{line}" for line in range(1, 32)]
    with pytest.raises(ValueError) as raised:
        validate_rows(rows, locations=loaded.locations)
    for line, reason in SAMPLE_BAD.items():
        assert f"{SAMPLE}:{line}: {reason}: " in str(raised.value)
    good, report = validate_rows(rows, locations=loaded.locations, on_bad="drop")
    assert len(good) == 25 and report["dropped"] == 6
    assert {bad["location"]: bad["reason"] for bad in report["bad_rows"]} == {
        f"{SAMPLE}:{line}": reason for line, reason in SAMPLE_BAD.items()}
    assert all(bad["prompt_id"] for bad in report["bad_rows"])


def test_unparseable_lines_follow_on_bad_rows_with_file_and_line(tmp_path):
    path = tmp_path / "raw.jsonl"
    rows = [make_row(index) for index in range(4)]
    del rows[3]["score_rejected"]
    lines = [json.dumps(row) for row in rows]
    lines.insert(2, '{"prompt_id": "id-x", "prompt": ')  # line 4 (after a blank line 3): cut short
    path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")  # line 3 is blank
    loaded = read_rows(str(path))
    assert loaded.locations == [f"{path}:1", f"{path}:2", f"{path}:5", f"{path}:6"]
    kwargs = {"locations": loaded.locations, "unparseable": loaded.unparseable}
    with pytest.raises(ValueError) as raised:
        validate_rows(loaded.rows, **kwargs, on_bad="error")
    assert str(raised.value) == (
        f"2 of 5 rows are bad (1 invalid_json, 1 missing_field): "
        f"{path}:4: invalid_json: not JSON: Expecting value: line 1 column 33 (char 32); "
        f"{path}:6: missing_field: missing 'score_rejected'; fix them or set data.on_bad_rows: drop")
    good, report = validate_rows(loaded.rows, **kwargs, on_bad="drop")
    assert good == rows[:3]
    assert (report["total"], report["good"], report["dropped"]) == (5, 3, 2)
    assert [(bad["location"], bad["reason"]) for bad in report["bad_rows"]] == [
        (f"{path}:4", "invalid_json"), (f"{path}:6", "missing_field")]
    with pytest.raises(ValueError, match=rf"^{path}:4: not JSON: Expecting value"):
        load_ultrafeedback(str(path))  # the strict loader

    path.write_text(json.dumps(rows[3]) + "\nnot json\n" + json.dumps(rows[0]) + "\n")  # bad row, then bad line
    loaded = read_rows(str(path))
    _, report = validate_rows(loaded.rows, locations=loaded.locations, unparseable=loaded.unparseable, on_bad="drop")
    assert [bad["location"] for bad in report["bad_rows"]] == [f"{path}:1", f"{path}:2"]  # file order


def test_rows_of_other_sources_are_numbered_from_1(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [make_row(index) for index in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    assert read_rows(str(tmp_path / "train.parquet")).locations == [f"{tmp_path}/train.parquet:{n}" for n in (1, 2, 3)]
    (tmp_path / "by_split.json").write_text(json.dumps({"test_prefs": rows[:2]}))
    assert read_rows(str(tmp_path / "by_split.json"), split="test_prefs").locations == [
        f"{tmp_path}/by_split.json[test_prefs]:{n}" for n in (1, 2)]


def test_error_message_lists_only_the_first_few():
    rows = [make_row(index, chosen="same", rejected="same") for index in range(25)]
    with pytest.raises(ValueError, match=r"^25 of 25 rows are bad \(25 identical_responses\): row 1: .*row 10: .*"
                                         r"; \.\.\. and 15 more; fix them or set data.on_bad_rows: drop$"):
        validate_rows(rows)
    with pytest.raises(ValueError, match=r"^data.on_bad_rows must be 'error' or 'drop', got 'ignore'$"):
        validate_rows(rows, on_bad="ignore")


def prompt_lengths(tokenizer, rows):
    return [len(tokenizer(tokenizer.apply_chat_template(prompt_messages(row), tokenize=False, add_generation_prompt=True),
                          add_special_tokens=False)["input_ids"]) for row in rows]


def test_prompt_length_check_with_the_real_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [make_row(index, prompt="word " * (5 * index + 1), chosen="ok " * (20 * index + 1)) for index in range(6)]
    lengths = prompt_lengths(tokenizer, rows)
    assert lengths == sorted(lengths) and len(set(lengths)) == 6
    limit = lengths[3]  # rows 5 and 6 (1-based) are longer
    good, report = validate_rows(rows, tokenizer=tokenizer, max_prompt_length=limit, on_bad="drop")
    assert [bad["location"] for bad in report["bad_rows"]] == ["row 5", "row 6"]
    assert report["counts"] == {"prompt_too_long": 2}
    assert report["bad_rows"][0]["detail"] == f"prompt has {lengths[4]} tokens > max_prompt_length {limit}"
    with pytest.raises(ValueError, match=r"row 5: prompt_too_long: "):
        validate_rows(rows, tokenizer=tokenizer, max_prompt_length=limit)

    # max_length: a prompt that fills it is bad; long responses are only counted (the trainer truncates).
    good, report = validate_rows(rows, tokenizer=tokenizer, max_length=lengths[5], on_bad="drop")
    assert [bad["location"] for bad in report["bad_rows"]] == ["row 6"]
    assert report["bad_rows"][0]["detail"] == f"prompt has {lengths[5]} tokens, no room within max_length {lengths[5]}"
    assert len(good) == 5 and report["truncated_responses"]["training"] >= 1
    good, report = validate_rows(rows, tokenizer=tokenizer, max_prompt_length=10_000, max_length=10_000)
    assert report["bad"] == 0 and report["truncated_responses"] == {"training": 0}


def test_labelled_length_checks_name_the_stage(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    rows = [make_row(index, prompt="word " * (5 * index + 1)) for index in range(6)]
    lengths = prompt_lengths(tokenizer, rows)
    checks = [LengthCheck("a.sft", tokenizer, 10_000, 10_001), LengthCheck("a.align", tokenizer, lengths[4], 10_000)]
    good, report = validate_rows(rows, length_checks=checks, on_bad="drop")
    assert [(bad["location"], bad["detail"]) for bad in report["bad_rows"]] == [
        ("row 6", f"prompt has {lengths[5]} tokens > max_prompt_length {lengths[4]} (a.align)")]
    assert [check["label"] for check in report["checks"]] == ["a.sft", "a.align"]
    assert set(report["truncated_responses"]) == {"a.sft", "a.align"}


def test_template_error_is_reported(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    )
    rows = [make_row(0), make_row(1)]
    for key in ("chosen", "rejected"):
        rows[1][key].insert(0, {"role": "system", "content": "be brief"})
    _, report = validate_rows(rows, tokenizer=tokenizer, max_prompt_length=100, on_bad="drop")
    assert [(bad["location"], bad["reason"]) for bad in report["bad_rows"]] == [("row 2", "template_error")]
    assert "no system role" in report["bad_rows"][0]["detail"]


# --- split and manifest ------------------------------------------------------------------------


def _prompt(row):
    return json.dumps(prompt_messages(row))


@pytest.fixture(scope="module")
def rows_with_repeated_prompts():
    rows = build_demo_dataset(300, seed=1)
    # 40 extra rows repeating earlier prompts with other responses: they must follow their prompt.
    for index in range(40):
        repeat = copy.deepcopy(rows[index * 7])
        repeat["prompt_id"] = f"repeat-{index}"
        repeat["rejected"][-1]["content"] = f"not sure ({index})"
        rows.append(repeat)
    return rows


def test_split_is_disjoint_by_prompt_and_sized_33_66(rows_with_repeated_prompts):
    rows = rows_with_repeated_prompts
    splits = split_dataset(rows, sft_fraction=0.33, eval_size=30, seed=0)
    assert set(splits) == {"sft", "pref", "eval"}
    prompts = {name: {_prompt(row) for row in split} for name, split in splits.items()}
    assert not prompts["sft"] & prompts["pref"] and not prompts["sft"] & prompts["eval"] and not prompts["pref"] & prompts["eval"]
    ids = [row["prompt_id"] for split in splits.values() for row in split]
    assert sorted(ids) == sorted(row["prompt_id"] for row in rows)  # every row used once
    assert 30 <= len(splits["eval"]) <= 31  # whole groups of at most 2 rows
    rest = len(rows) - len(splits["eval"])
    assert abs(len(splits["sft"]) - 0.33 * rest) <= 1
    assert abs(len(splits["pref"]) - 0.67 * rest) <= 1


def test_split_is_deterministic_and_seeded(rows_with_repeated_prompts):
    rows = rows_with_repeated_prompts
    first = split_dataset(rows, eval_size=0.1, seed=0)
    assert first == split_dataset(copy.deepcopy(rows), eval_size=0.1, seed=0)
    assert first["eval"] != split_dataset(rows, eval_size=0.1, seed=1)["eval"]
    assert len(first["eval"]) in (34, 35)  # 10% of 340, whole groups


def test_split_exact_eval_size_and_argument_errors():
    rows = build_demo_dataset(50, seed=0)
    splits = split_dataset(rows, eval_size=8, seed=3)
    assert [len(splits[name]) for name in ("eval", "sft", "pref")] == [8, 14, 28]
    assert split_dataset(rows, eval_size=0, seed=3)["eval"] == []
    for kwargs, message in [({"eval_size": 50}, "eval_size"), ({"eval_size": 1.5}, "eval_size"),
                            ({"eval_size": True}, "eval_size"), ({"eval_size": 5, "sft_fraction": 1.0}, "sft_fraction")]:
        with pytest.raises(ValueError, match=message):
            split_dataset(rows, **kwargs)


def test_manifest_hash_is_stable_and_changes_with_any_row():
    rows = build_demo_dataset(60, seed=0)
    source_hash = content_hash(rows)
    manifest = split_manifest(split_dataset(rows, eval_size=6, seed=0), seed=0, source_hash=source_hash)
    again = split_manifest(split_dataset(build_demo_dataset(60, seed=0), eval_size=6, seed=0), seed=0, source_hash=source_hash)
    assert manifest == again
    assert manifest["seed"] == 0 and manifest["source_sha256"] == source_hash
    assert manifest["sizes"] == {"sft": 18, "pref": 36, "eval": 6}
    assert set(manifest["sha256"]) == {"sft", "pref", "eval", "all"}

    splits = split_dataset(rows, eval_size=6, seed=0)
    splits["pref"][5]["chosen"][-1]["content"] += " "
    changed = split_manifest(splits, seed=0, source_hash=source_hash)
    assert changed["sha256"]["pref"] != manifest["sha256"]["pref"]
    assert changed["sha256"]["all"] != manifest["sha256"]["all"]
    assert changed["sha256"]["sft"] == manifest["sha256"]["sft"]
    assert content_hash(rows[:2]) != content_hash(rows[1::-1])  # order matters
    with pytest.raises(KeyError, match="train"):
        split_manifest({"train": []}, seed=0, source_hash=source_hash)


# --- scripts -----------------------------------------------------------------------------------


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "workflow" / "scripts" / name), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)


def test_demo_scripts_end_to_end_are_byte_reproducible(tmp_path):
    for name in ("raw_a.jsonl", "raw_b.jsonl"):
        result = run_script("build_demo_data.py", "--n", 80, "--seed", 0, "--out", tmp_path / name)
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "raw_a.jsonl").read_bytes() == (tmp_path / "raw_b.jsonl").read_bytes()
    assert "wrote 80 rows" in result.stderr

    for out in ("split_a", "split_b"):
        result = run_script("split_data.py", "--source", "demo", "--input", tmp_path / "raw_a.jsonl", "--sft-fraction", 0.33,
                            "--eval-size", 8, "--seed", 0, "--on-bad-rows", "error", "--out-dir", tmp_path / out)
        assert result.returncode == 0, result.stderr
    for name in ("sft.jsonl", "pref.jsonl", "eval.jsonl", "split.json"):
        assert (tmp_path / "split_a" / name).read_bytes() == (tmp_path / "split_b" / name).read_bytes(), name
    info = json.loads((tmp_path / "split_a" / "split.json").read_text())
    assert info["manifest"]["sizes"] == {"sft": 24, "pref": 48, "eval": 8}
    assert info["manifest"]["source_sha256"] == content_hash(read_jsonl(tmp_path / "raw_a.jsonl"))
    assert info["manifest"]["sha256"]["eval"] == content_hash(read_jsonl(tmp_path / "split_a" / "eval.jsonl"))
    assert info["validation"]["bad"] == 0


def error_line(stderr: str) -> str:
    """The message of the script's ERROR log line (after the logging prefix)."""
    [line] = [line for line in stderr.splitlines() if " ERROR split_data: " in line]
    return line.split(" ERROR split_data: ", 1)[1]


def test_split_script_on_ultrafeedback_sample_error_and_drop(tmp_path):
    common = ("--source", "ultrafeedback", "--input", SAMPLE, "--hf-split", "train_prefs", "--eval-size", 4, "--seed", 0)
    failed = run_script("split_data.py", *common, "--on-bad-rows", "error", "--out-dir", tmp_path / "failed")
    assert failed.returncode == 1
    message = error_line(failed.stderr)
    assert message.startswith("6 of 31 rows are bad (1 empty_response, 1 identical_responses, 1 last_not_assistant, "
                              "1 missing_field, 1 prompt_mismatch, 1 wrong_type): "
                              f"{SAMPLE}:4: missing_field: missing 'rejected'; {SAMPLE}:9: empty_response: ")
    assert message.endswith("; fix them or set data.on_bad_rows: drop")
    assert not (tmp_path / "failed" / "split.json").exists()

    result = run_script("split_data.py", *common, "--on-bad-rows", "drop", "--limit", 20, "--out-dir", tmp_path / "dropped")
    assert result.returncode == 0, result.stderr
    assert "data.on_bad_rows: drop: dropped 6 of 31 rows" in result.stderr
    info = json.loads((tmp_path / "dropped" / "split.json").read_text())
    assert info["validation"]["dropped"] == 6
    assert {bad["location"]: bad["reason"] for bad in info["validation"]["bad_rows"]} == {
        f"{SAMPLE}:{line}": reason for line, reason in SAMPLE_BAD.items()}
    assert info["manifest"]["settings"]["limit"] == 20
    sizes = info["manifest"]["sizes"]
    assert sizes["eval"] == 4 and sizes["sft"] + sizes["pref"] == 16
    written = [row for name in ("sft", "pref", "eval") for row in read_jsonl(tmp_path / "dropped" / f"{name}.jsonl")]
    assert len({row["prompt_id"] for row in written}) == 20
    assert all("messages" not in row for row in written)


def test_split_script_checks_prompt_lengths_and_bad_lines_before_training(tmp_path, tokenizer_dir):
    from transformers import AutoTokenizer

    rows = build_demo_dataset(40, seed=0)
    long_row = make_row(99, prompt="word " * 300)
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(row) + "\n" for row in rows[:16]) + "not json\n"
                   + "".join(json.dumps(row) + "\n" for row in [long_row] + rows[16:]))
    length = prompt_lengths(AutoTokenizer.from_pretrained(tokenizer_dir), [long_row])[0]
    common = ("--source", "demo", "--input", raw, "--eval-size", 4, "--seed", 0,
              "--length-check", f"tiny.sft={tokenizer_dir}:1000:2000", "--length-check", f"tiny.align={tokenizer_dir}:96:160")

    failed = run_script("split_data.py", *common, "--on-bad-rows", "error", "--out-dir", tmp_path / "failed")
    assert failed.returncode == 1
    assert error_line(failed.stderr) == (
        f"2 of 42 rows are bad (1 invalid_json, 1 prompt_too_long): "
        f"{raw}:17: invalid_json: not JSON: Expecting value: line 1 column 1 (char 0); "
        f"{raw}:18: prompt_too_long: prompt has {length} tokens > max_prompt_length 96 (tiny.align); "
        "fix them or set data.on_bad_rows: drop")

    result = run_script("split_data.py", *common, "--on-bad-rows", "drop", "--out-dir", tmp_path / "dropped")
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "dropped" / "split.json").read_text())
    assert [(bad["location"], bad["reason"]) for bad in info["validation"]["bad_rows"]] == [
        (f"{raw}:17", "invalid_json"), (f"{raw}:18", "prompt_too_long")]
    assert sum(info["manifest"]["sizes"].values()) == 40
    assert [check["label"] for check in info["manifest"]["settings"]["length_checks"]] == ["tiny.sft", "tiny.align"]
