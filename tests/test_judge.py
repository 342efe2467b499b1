"""The judge client and cache against a real HTTP server: protocol, retries, caching, resume, key hygiene."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest
from fake_judge_server import (
    FAKE_API_KEY,
    FAKE_KEY_ENV,
    Fault,
    FakeJudgeServer,
    judge_config,
    rating_reply,
    run_script,
    script_command,
    script_env,
)

from prefopt.evaluation.judge import (
    JudgeClient,
    JudgeConfig,
    JudgeConfigError,
    JudgeRequest,
    JudgeRequestError,
    JudgeUnavailableError,
    JudgingFailed,
    JudgmentCache,
    judge_settings,
    judgment_key,
    run_judgments,
)
from prefopt.evaluation.mtbench import parse_rating

MESSAGES = [{"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Rate: 2 + 2 = 4"}]


@pytest.fixture(autouse=True)
def fake_key(monkeypatch):
    monkeypatch.setenv(FAKE_KEY_ENV, FAKE_API_KEY)


@pytest.fixture
def server():
    with FakeJudgeServer(rating_reply(lambda body: 7)) as running:
        yield running


def make_client(server, **overrides) -> JudgeClient:
    return JudgeClient(JudgeConfig.from_dict(judge_config(server, **overrides)))


def rating_requests(n: int, model_id: str = "model-x") -> list[JudgeRequest]:
    return [JudgeRequest("mt_bench", 81 + i, "turn1", model_id,
                         [{"role": "system", "content": "judge"}, {"role": "user", "content": f"question {i}"}],
                         parse_rating) for i in range(n)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# Configuration


def test_config_rejects_unknown_missing_and_bad_values():
    with pytest.raises(JudgeConfigError, match="unknown key.*'api_key'"):
        JudgeConfig.from_dict({"base_url": "http://127.0.0.1:1/v1", "model": "m", "api_key": "sk-literal"})
    full = {"base_url": "http://127.0.0.1:8000/v1", "model": "m", "api_key_env": "K", "temperature": 0,
            "max_tokens": 16, "timeout_s": 5, "max_retries": 1, "parallel": 1, "parse_retries": 0}
    with pytest.raises(JudgeConfigError, match="missing required key 'model'"):
        JudgeConfig.from_dict({key: value for key, value in full.items() if key != "model"})
    with pytest.raises(JudgeConfigError, match="missing required key 'parse_retries'"):
        JudgeConfig.from_dict({key: value for key, value in full.items() if key != "parse_retries"})
    with pytest.raises(JudgeConfigError, match="'parallel'"):
        JudgeConfig.from_dict({**full, "parallel": 0})
    with pytest.raises(JudgeConfigError, match="'base_url'"):
        JudgeConfig.from_dict({**full, "base_url": "127.0.0.1:8000"})
    config = JudgeConfig.from_dict(full)
    assert config.timeout_s == 5.0 and config.temperature == 0.0


def test_judge_settings_per_benchmark():
    judge = {"base_url": "http://x/v1", "model": "gpt-4.1", "api_key_env": "K", "timeout_s": 120, "max_retries": 8,
             "parallel": 4, "parse_retries": 0, "benchmarks": ["mt_bench", "arena_hard"], "question_limit": None,
             "mt_bench": {"model": "gpt-4", "temperature": 0, "max_tokens": 2048, "max_new_tokens": 1024},
             "arena_hard": {"temperature": 0, "max_tokens": 16000, "max_new_tokens": 8196, "questions": None,
                            "n_bootstrap": 100}}
    mt, arena = judge_settings(judge, "mt_bench"), judge_settings(judge, "arena_hard")
    assert mt["model"] == "gpt-4" and mt["max_tokens"] == 2048
    assert arena["model"] == "gpt-4.1" and arena["max_tokens"] == 16000
    # Each is a complete judge config: every key the job uses, nothing else.
    assert JudgeConfig.from_dict(mt).model == "gpt-4" and JudgeConfig.from_dict(arena).max_tokens == 16000


def test_missing_key_variable_fails_naming_the_variable(monkeypatch, server):
    monkeypatch.delenv(FAKE_KEY_ENV)
    with pytest.raises(JudgeConfigError, match=FAKE_KEY_ENV):
        make_client(server)


def test_no_object_holds_or_shows_the_key(server):
    client = make_client(server)
    assert FAKE_API_KEY not in repr(client)
    assert FAKE_API_KEY not in repr(client.config)
    assert FAKE_API_KEY not in json.dumps(client.config.to_dict())
    assert FAKE_API_KEY not in repr(vars(client))
    assert client.redact(f"header was Bearer {FAKE_API_KEY}, ok") == "header was Bearer ***, ok"
    assert client.redact(f"raw {FAKE_API_KEY}") == "raw ***"


# ---------------------------------------------------------------------------------------------
# Protocol and retries


def test_chat_completions_request_and_reply(server):
    completion = make_client(server).chat(MESSAGES)
    assert completion.text.endswith("Rating: [[7]]") and completion.attempts == 1
    body = server.requests[0]
    assert body["model"] == "fake-judge-1" and body["messages"] == MESSAGES
    assert body["temperature"] == 0 and body["max_tokens"] == 256
    assert server.authorization_headers == [f"Bearer {FAKE_API_KEY}"]


def test_local_server_needs_no_key(server):
    client = make_client(server, api_key_env=None)
    client.chat(MESSAGES)
    assert server.authorization_headers == [None]


def test_429_and_500_are_retried_honouring_retry_after(server):
    server.queue_faults([Fault(status=429, retry_after="1"), Fault(status=500)])
    start = time.monotonic()
    completion = make_client(server).chat(MESSAGES)
    assert completion.attempts == 3 and server.request_count == 3
    assert time.monotonic() - start >= 1.0  # Retry-After: 1


def test_timeout_and_malformed_reply_are_retried(server):
    server.queue_faults([Fault(delay_s=1.5), Fault(raw_body="<html>bad gateway</html>")])
    start = time.monotonic()
    completion = make_client(server, timeout_s=0.4).chat(MESSAGES)
    assert completion.attempts == 3 and server.request_count == 3
    assert time.monotonic() - start < 5


def test_client_error_fails_at_once_with_the_key_redacted(server):
    server.queue_faults([Fault(status=401, echo_authorization=True)])
    with pytest.raises(JudgeRequestError) as raised:
        make_client(server).chat(MESSAGES)
    assert server.request_count == 1
    assert "401" in str(raised.value) and "***" in str(raised.value)
    assert FAKE_API_KEY not in str(raised.value) and FAKE_API_KEY not in repr(raised.value)
    # One line that names the variable to fix.
    assert f"environment variable {FAKE_KEY_ENV}" in str(raised.value) and "\n" not in str(raised.value)
    server.queue_faults([Fault(status=403)])
    with pytest.raises(JudgeRequestError, match=f"403.*check the API key in environment variable {FAKE_KEY_ENV}"):
        make_client(server).chat(MESSAGES)


def test_retries_are_bounded_and_the_error_is_redacted(server):
    server.fault = lambda body, index: Fault(status=500, echo_authorization=True)
    with pytest.raises(JudgeUnavailableError) as raised:
        make_client(server, max_retries=2).chat(MESSAGES)
    assert server.request_count == 3
    assert "failed 3 attempts" in str(raised.value) and "HTTP 500" in str(raised.value)
    assert FAKE_API_KEY not in str(raised.value) and "Bearer ***" in str(raised.value)


# ---------------------------------------------------------------------------------------------
# Cache


def test_judgment_key_is_what_is_sent():
    base = ("judge-1", 0, 2048, MESSAGES)
    variants = [("judge-2", 0, 2048, MESSAGES), ("judge-1", 0.7, 2048, MESSAGES), ("judge-1", 0, 16000, MESSAGES),
                ("judge-1", 0, 2048, MESSAGES[:1])]
    keys = {judgment_key(*base)} | {judgment_key(*variant) for variant in variants}
    assert len(keys) == 1 + len(variants)
    assert judgment_key(*base) == judgment_key("judge-1", 0.0, 2048, [dict(m) for m in MESSAGES])


def test_byte_identical_prompts_are_paid_once(server, tmp_path):
    # Two models, one question, the same answer: the judge prompt is the same, so one request.
    shared = [{"role": "system", "content": "judge"}, {"role": "user", "content": "same prompt"}]
    requests = [JudgeRequest("mt_bench", 81, "turn1", model, shared, parse_rating) for model in ("m-a", "m-b")]
    requests.append(JudgeRequest("mt_bench", 82, "turn1", "m-a", MESSAGES, parse_rating))
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(requests, make_client(server), cache)
    assert server.request_count == 2 and stats.n_unique == 2 and stats.n_new == 2
    assert [r.verdict for r in results] == [7.0, 7.0, 7.0]
    # Another job with the same prompt, sharing the cache file, pays nothing.
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        run_judgments([JudgeRequest("mt_bench", 81, "turn1", "m-c", shared, parse_rating)], make_client(server), cache)
    assert server.request_count == 2


def test_http_400_fails_that_judgment_and_the_run_goes_on(server, tmp_path):
    server.fault = lambda body, index: Fault(status=400) if "question 1" in body["messages"][-1]["content"] else None
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(4), make_client(server), cache)
    assert server.request_count == 4  # a 400 is not retried
    assert [r.verdict for r in results] == [7.0, None, 7.0, 7.0]
    assert results[1].error.startswith("HTTP 400") and stats.n_rejected == 1 and stats.n_new == 3
    # Not cached: a rerun asks again (and only for that one).
    server.fault = None
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(4), make_client(server), cache)
    assert server.request_count == 5 and results[1].verdict == 7.0 and stats.n_rejected == 0


def test_every_verdict_unparseable_is_counted_not_fatal(server, tmp_path):
    server.reply = rating_reply(lambda body: None)
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(3), make_client(server), cache)
    assert [r.verdict for r in results] == [None] * 3 and stats.n_parse_failed == 3
    assert server.request_count == 3  # parse_retries 0: never asked again, as upstream


def test_cache_survives_a_line_cut_short(tmp_path):
    path = tmp_path / "cache.jsonl"
    with JudgmentCache(path) as cache:
        cache.put({"key": "a", "judgment": "[[5]]", "calls": 1})
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('{"key": "b", "judgm')  # a kill in the middle of a write
    with JudgmentCache(path) as cache:
        assert "a" in cache and "b" not in cache and cache.skipped_lines == [2]
        cache.put({"key": "c", "judgment": "[[6]]", "calls": 1})
    with JudgmentCache(path) as cache:
        assert set(cache._records) == {"a", "c"}
        assert cache.get("c")["judgment"] == "[[6]]"


def test_cached_judgments_cost_nothing(server, tmp_path):
    client = make_client(server)
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(5), client, cache)
    assert [r.verdict for r in results] == [7.0] * 5
    assert stats.n_new == 5 and stats.n_cached == 0 and server.request_count == 5
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(6), client, cache)
    assert stats.n_cached == 5 and stats.n_new == 1 and server.request_count == 6
    assert [r.from_cache for r in results] == [True] * 5 + [False]


def test_parse_retries_ask_again_then_count(server, tmp_path):
    # Question 83 never gets a rating; everything else does.
    server.reply = rating_reply(lambda body: None if "question 2" in body["messages"][-1]["content"] else 6)
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(4), make_client(server, parse_retries=2), cache)
    assert [r.verdict for r in results] == [6.0, 6.0, None, 6.0]
    assert stats.n_parse_failed == 1 and results[2].calls == 3
    # unique judgments + parse retries
    assert server.request_count == 4 + 2
    # The failure is cached: a rerun does not pay for it again.
    with JudgmentCache(tmp_path / "cache.jsonl") as cache:
        results, stats = run_judgments(rating_requests(4), make_client(server), cache)
    assert stats.n_parse_failed == 1 and stats.n_new == 0 and server.request_count == 6


def test_judge_down_fails_clearly_and_keeps_the_cache(server, tmp_path):
    cache_path = tmp_path / "cache.jsonl"
    with JudgmentCache(cache_path) as cache:
        run_judgments(rating_requests(3), make_client(server), cache)
    down = JudgeConfig.from_dict(judge_config(server, base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=2))
    with JudgmentCache(cache_path) as cache, pytest.raises(JudgingFailed) as raised:
        run_judgments(rating_requests(6), JudgeClient(down), cache)
    message = str(raised.value)
    assert "connection failed" in message and "failed 3 attempts" in message
    assert "judged in this run: 0; already cached: 3; missing: 3 of 6" in message
    assert str(cache_path) in message and FAKE_API_KEY not in message
    with JudgmentCache(cache_path) as cache:
        assert len(cache) == 3


def test_once_a_request_gives_up_no_new_request_starts(server, tmp_path):
    # The judge goes down for good after two replies; 20 judgments, 4 at a time.
    server.fault = lambda body, index: Fault(status=503) if index >= 2 else None
    client = make_client(server, parallel=4, max_retries=2)
    start = time.monotonic()
    with JudgmentCache(tmp_path / "cache.jsonl") as cache, pytest.raises(JudgingFailed) as raised:
        run_judgments(rating_requests(20), client, cache)
    elapsed = time.monotonic() - start
    # Two answered, then at most `parallel` requests in flight each spend their 3 attempts; the
    # first to give up cancels the others, and none of the 14 still waiting is ever sent.
    assert server.request_count <= 2 + 4 * 3
    assert "HTTP 503" in str(raised.value) and "judged in this run: 2" in str(raised.value)
    assert elapsed < 15  # one retry cycle (openai's backoff: about 0.5 s + 1 s), not one per request


# ---------------------------------------------------------------------------------------------
# The judge_answers.py script: kill -9 and resume, judge down, key hygiene


def write_mtbench_answers(path, question_ids, model_id="tiny-model"):
    with open(path, "w", encoding="utf-8") as handle:
        for qid in question_ids:
            record = {"question_id": qid, "answer_id": f"a{qid}", "model_id": model_id,
                      "choices": [{"index": 0, "turns": [f"first answer {qid}", f"second answer {qid}"]}],
                      "tstamp": 0.0}
            handle.write(json.dumps(record) + "\n")


def count_lines(path) -> int:
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def test_killed_judging_job_resumes_without_repeating_calls(tmp_path):
    # Writing questions 81-86 (no reference answers): 6 questions x 2 turns = 12 unique judgments.
    answers, config_path = tmp_path / "answers.jsonl", tmp_path / "judge.json"
    cache, out = tmp_path / "cache.jsonl", tmp_path / "judgments.jsonl"
    write_mtbench_answers(answers, range(81, 87))
    holding = {"on": True}
    hold_from = 4  # the 5th and later requests hang until the job is killed

    def fault(body, index):
        return Fault(hold=True) if holding["on"] and index >= hold_from else None

    with FakeJudgeServer(rating_reply(lambda body: 8), fault) as server:
        config_path.write_text(json.dumps(judge_config(server, parallel=2)))
        args = ["--benchmark", "mt_bench", "--answers", answers, "--model-id", "tiny-model",
                "--judge-config", config_path, "--cache", cache, "--out", out]
        process = subprocess.Popen(script_command("judge_answers.py", *args), env=script_env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while not (count_lines(cache) == hold_from and server.held_count == 2):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the judging job never reached the hold"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        _, first_stderr = process.communicate(timeout=30)
        assert not out.exists()
        holding["on"] = False
        server.release_holds()

        rerun = run_script("judge_answers.py", *args)
        # Each of the 12 judgments was answered exactly once; the two requests in flight at the kill
        # were never answered, so they (and only they) were sent again.
        assert server.answered_count == 12
        assert server.request_count == 12 + 2
        assert set(server.authorization_headers) == {f"Bearer {FAKE_API_KEY}"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and {row["score"] for row in rows} == {8}
    assert count_lines(cache) == 12
    assert "12 judgments: 4 from cache, 8 new" in rerun.stderr
    for text in (first_stderr.decode(), rerun.stderr, rerun.stdout, cache.read_text(), out.read_text()):
        assert FAKE_API_KEY not in text


def test_script_judge_down_exits_clearly_and_keeps_the_cache(tmp_path):
    answers, config_path = tmp_path / "answers.jsonl", tmp_path / "judge.json"
    cache, out = tmp_path / "cache.jsonl", tmp_path / "judgments.jsonl"
    write_mtbench_answers(answers, [81, 82])
    # Three judgments succeed, then the judge answers 500 (echoing the key) for good.
    with FakeJudgeServer(rating_reply(lambda body: 5),
                         lambda body, index: Fault(status=500, echo_authorization=True) if index >= 3 else None) as server:
        config_path.write_text(json.dumps(judge_config(server, parallel=1, max_retries=2)))
        result = run_script("judge_answers.py", "--benchmark", "mt_bench", "--answers", answers, "--model-id",
                            "tiny-model", "--judge-config", config_path, "--cache", cache, "--out", out, check=False)
        assert server.request_count == 3 + 3
    assert result.returncode == 2
    assert "judging stopped" in result.stderr and "judged in this run: 3; already cached: 0; missing: 1 of 4" in result.stderr
    assert f"the cache is kept at {cache}" in result.stderr
    assert "Bearer ***" in result.stderr and FAKE_API_KEY not in result.stderr + result.stdout
    assert count_lines(cache) == 3 and FAKE_API_KEY not in cache.read_text()
    assert not out.exists()
