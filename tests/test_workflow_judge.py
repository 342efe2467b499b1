"""The judge path inside the DAG: answers -> judgments -> scores -> tables, against a local fake judge."""

from __future__ import annotations

import pandas as pd
import pytest

from fake_judge_server import FakeJudgeServer
from workflow_utils import clone_workdir, snakemake, tiny_config, write_config

pytestmark = pytest.mark.slow

SECRET = "sk-test-DO-NOT-LEAK-4242"


def reply(body, index):
    text = " ".join(message.get("content", "") for message in body["messages"])
    if "[[A>>B]]" in text or "[[A>B]]" in text:  # an Arena-Hard pairwise prompt
        return "Both answers are short. My final verdict is [[A=B]]."
    return "The answer is brief. Rating: [[6]]"


def test_judged_tables(tiny_model_dir, tiny_a_sft_workdir, tmp_path, monkeypatch):
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path / "workflow")  # tiny-a's split and SFT done
    with FakeJudgeServer(reply) as server:
        config = tiny_config({"tiny-a": tiny_model_dir})
        config["methods"] = {"slime": {"preset": "paper"}}
        config["ablations"] = {}
        config["evaluation"]["benchmarks"] = ["offline"]
        config["judge"] = {
            "base_url": server.base_url, "model": "fake-judge-1", "api_key_env": "PREFOPT_TEST_JUDGE_KEY",
            "benchmarks": ["mt_bench", "arena_hard"], "question_limit": 2, "max_retries": 2, "timeout_s": 30,
            "mt_bench": {"max_new_tokens": 4, "max_tokens": 64},
            "arena_hard": {"model": "fake-judge-2", "max_new_tokens": 4, "n_bootstrap": 20},
            "baseline": {"name": "tiny-baseline", "source": {"path": tiny_model_dir}},
        }
        path = write_config(workdir / "judged.yaml", config)
        monkeypatch.setenv("PREFOPT_TEST_JUDGE_KEY", SECRET)
        snakemake(workdir, "--cores", "2", "--configfile", str(path))
        requests = server.request_count
        # A rerun has nothing to do and sends nothing.
        snakemake(workdir, "--cores", "2", "--configfile", str(path))
        assert server.request_count == requests
    assert requests > 0 and all(header == f"Bearer {SECRET}" for header in server.authorization_headers)
    # Each benchmark's judge settings reach its jobs: schema defaults filled in, section overrides applied.
    by_model = {}
    for body in server.requests:
        by_model.setdefault(body["model"], set()).add((body["temperature"], body["max_tokens"]))
    assert by_model == {"fake-judge-1": {(0, 64)}, "fake-judge-2": {(0, 16000)}}

    table3 = pd.read_csv(workdir / "results" / "tables" / "table3.csv")
    rows = table3.set_index("method")
    assert rows.loc["SFT", "mt_bench"] == pytest.approx(6.0)
    assert rows.loc["+ SLIME (ours)", "arena_hard"] == pytest.approx(50.0)  # every game a tie
    assert rows.loc["+ SLIME (ours)", "n_mt_bench_valid"] > 0
    markdown = (workdir / "results" / "tables" / "table3.md").read_text()
    assert "fake-judge-1" in markdown and "fake-judge-2" in markdown
    # Every game a tie and answers of four tokens: style control has length (and maybe nothing
    # else) to control for; its score is there, labelled, beside the plain one.
    assert "Arena-Hard SC" in markdown
    assert rows.loc["+ SLIME (ours)", "n_arena_hard_failed"] == 0

    for path in workdir.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
