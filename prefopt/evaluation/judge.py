"""An LLM judge over the OpenAI chat-completions protocol: cached, retried, and careful with the key.

Any server that speaks ``POST {base_url}/chat/completions`` works: OpenAI, or a local vLLM,
SGLang or llama.cpp server. The judge is configured by a small JSON file:

    {"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5-72B-Instruct",
     "api_key_env": "OPENAI_API_KEY", "temperature": 0, "max_tokens": 2048,
     "timeout_s": 120, "max_retries": 8, "parallel": 4}

    client = JudgeClient(JudgeConfig.from_file("judge.json"))
    with JudgmentCache("results/judge_cache.jsonl") as cache:
        results, stats = run_judgments(requests, client, cache)

Guarantees (docs/judging.md):
- The API key is read from the environment variable named by ``api_key_env`` at each request,
  sent only in the ``Authorization`` header, and never kept on an object, logged, cached or put
  in an exception message (every error text passes through `JudgeClient.redact`).
- Every judgment is appended to the cache and fsync'd as soon as it is made, keyed by
  `judgment_key` (benchmark, question, turn/game, model, judge model, prompt), so a rerun after a
  crash sends only the missing calls.
- Timeouts, connection errors, HTTP 408/429/5xx and malformed replies are retried with
  exponential backoff and jitter (``Retry-After`` is honoured), at most ``max_retries`` times.
  Other HTTP errors (400, 401, 404, ...) fail at once: retrying cannot fix them.
- A reply whose verdict cannot be parsed is asked again ``parse_retries`` times, then recorded
  (and cached) as a parse failure, which the scores count.
- A judge that stays down stops the run with `JudgingFailed`, whose message says how many
  judgments were made, how many came from the cache, how many are missing and where the cache is.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import logging
import os
import random
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

REDACTED = "***"
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# HTTP statuses worth retrying: request timeout, rate limit, and server-side errors (>= 500).
RETRIABLE_STATUSES = {408, 409, 429}
# How much of an error body goes into a message.
ERROR_BODY_CHARS = 300


class JudgeError(RuntimeError):
    """Base class of judge failures; messages never contain the API key."""


class JudgeConfigError(JudgeError, ValueError):
    """The judge configuration (or the environment it names) is unusable."""


class JudgeRequestError(JudgeError):
    """The server rejected a request in a way retrying cannot fix (HTTP 400, 401, 403, 404, ...)."""


class JudgeUnavailableError(JudgeError):
    """The judge kept failing (timeouts, 429, 5xx, refused connections) through every retry."""


class JudgingFailed(JudgeError):
    """A judging run stopped early; completed judgments stay in the cache for the next run."""


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how to call it. Holds the *name* of the key variable, never the key."""

    base_url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout_s: float = 120.0
    max_retries: int = 8
    parallel: int = 4
    parse_retries: int = 2
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 300.0

    def __post_init__(self):
        if not isinstance(self.base_url, str) or not self.base_url.startswith(("http://", "https://")):
            raise JudgeConfigError(f"judge config 'base_url': expected an http(s) URL, got {self.base_url!r}")
        if not isinstance(self.model, str) or not self.model:
            raise JudgeConfigError("judge config 'model': expected the judge model's name")
        if self.api_key_env is not None and not isinstance(self.api_key_env, str):
            raise JudgeConfigError("judge config 'api_key_env': expected an environment variable name or null")
        checks = {
            "temperature": self.temperature >= 0,
            "max_tokens": self.max_tokens >= 1,
            "timeout_s": self.timeout_s > 0,
            "max_retries": self.max_retries >= 0,
            "parallel": self.parallel >= 1,
            "parse_retries": self.parse_retries >= 0,
            "backoff_base_s": self.backoff_base_s >= 0,
            "backoff_max_s": self.backoff_max_s >= 0,
            "retry_after_max_s": self.retry_after_max_s >= 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise JudgeConfigError(f"judge config '{name}': invalid value {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "JudgeConfig":
        """Build from a dict; an unknown or missing key fails naming it."""
        if not isinstance(data, dict):
            raise JudgeConfigError(f"judge config: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JudgeConfigError(f"judge config: unknown key(s) {unknown}; known keys are {sorted(known)}")
        for required in ("base_url", "model"):
            if required not in data:
                raise JudgeConfigError(f"judge config: missing required key '{required}'")
        numeric = {"temperature": float, "timeout_s": float, "backoff_base_s": float, "backoff_max_s": float,
                   "retry_after_max_s": float, "max_tokens": int, "max_retries": int, "parallel": int,
                   "parse_retries": int}
        values = dict(data)
        for name, kind in numeric.items():
            if name in values:
                value = values[name]
                if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
                    raise JudgeConfigError(f"judge config '{name}': expected a number, got {value!r}")
                values[name] = kind(value)
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "JudgeConfig":
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise JudgeConfigError(f"judge config {path}: invalid JSON ({error})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# HTTP client


@dataclass
class Completion:
    """One judge reply: its text and how many HTTP attempts it took."""

    text: str
    attempts: int


class _RetriableError(Exception):
    def __init__(self, description: str, retry_after: float | None = None):
        super().__init__(description)
        self.retry_after = retry_after


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _reply_text(raw: bytes) -> str:
    """``choices[0].message.content`` of a chat-completions reply; anything else is malformed."""
    try:
        reply = json.loads(raw.decode("utf-8"))
        content = reply["choices"][0]["message"].get("content")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError):
        raise _RetriableError(f"malformed chat-completions reply: {raw[:ERROR_BODY_CHARS]!r}") from None
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class JudgeClient:
    """Sends chat-completions requests with retries. Thread-safe; holds no secret.

    `sleep` and `rng` are injectable so tests can check the backoff without waiting.
    """

    def __init__(self, config: JudgeConfig, *, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._rng_lock = threading.Lock()
        host = urllib.parse.urlsplit(self.url).hostname or ""
        # Loopback servers (vLLM, llama.cpp, the tests' fake judge) never go through a proxy.
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)
        self._api_key()  # fail now, naming the variable, if the key is missing

    def __repr__(self) -> str:
        return f"JudgeClient(url={self.url!r}, model={self.config.model!r}, api_key_env={self.config.api_key_env!r})"

    def _api_key(self) -> str | None:
        name = self.config.api_key_env
        if not name:
            return None
        key = os.environ.get(name)
        if not key:
            raise JudgeConfigError(
                f"judge: environment variable {name} (judge config 'api_key_env') is not set; export it, or set "
                "'api_key_env' to null for a local server that needs no key"
            )
        return key

    def redact(self, text: str) -> str:
        """`text` with the API key (and any bearer token) masked."""
        text = str(text)
        name = self.config.api_key_env
        key = os.environ.get(name) if name else None
        if key:
            text = text.replace(key, REDACTED)
        # A server may echo the header back; mask whatever follows "Bearer".
        parts = text.split("Bearer ")
        if len(parts) > 1:
            text = parts[0] + "".join("Bearer " + REDACTED + _after_token(part) for part in parts[1:])
        return text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.config.retry_after_max_s)
        ceiling = min(self.config.backoff_max_s, self.config.backoff_base_s * (2 ** attempt))
        with self._rng_lock:
            # "Equal jitter": half the ceiling for sure, the other half at random.
            return ceiling * (0.5 + 0.5 * self._rng.random())

    def _post_once(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            status = error.code
            try:
                detail = error.read()[:ERROR_BODY_CHARS].decode("utf-8", "replace")
            except Exception:
                detail = ""
            description = f"HTTP {status} {detail}".strip()
            if status in RETRIABLE_STATUSES or status >= 500:
                raise _RetriableError(description, _parse_retry_after(error.headers.get("Retry-After"))) from None
            raise JudgeRequestError(self.redact(f"judge {self.url} rejected the request: {description}")) from None
        except (TimeoutError, socket.timeout):
            raise _RetriableError(f"no reply within timeout_s={self.config.timeout_s}") from None
        except urllib.error.URLError as error:
            reason = error.reason
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _RetriableError(f"no reply within timeout_s={self.config.timeout_s}") from None
            raise _RetriableError(f"connection failed: {reason}") from None
        except (ConnectionError, http.client.HTTPException, OSError) as error:
            raise _RetriableError(f"connection failed: {type(error).__name__}: {error}") from None
        return _reply_text(raw)

    def chat(self, messages: list[dict]) -> Completion:
        """The judge's reply to `messages`, retrying transient failures (see the module docstring)."""
        payload = {"model": self.config.model, "messages": list(messages),
                   "temperature": self.config.temperature, "max_tokens": self.config.max_tokens}
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            try:
                return Completion(self._post_once(body), attempt + 1)
            except _RetriableError as error:
                last_error = self.redact(str(error))
                if attempt == self.config.max_retries:
                    break
                delay = self._backoff(attempt, error.retry_after)
                log.warning("judge %s: %s; retry %d/%d in %.1fs", self.url, last_error, attempt + 1,
                            self.config.max_retries, delay)
                self._sleep(delay)
        raise JudgeUnavailableError(
            f"judge {self.url} (model {self.config.model}) failed {self.config.max_retries + 1} attempts; "
            f"last error: {last_error}"
        )


def _after_token(text: str) -> str:
    # What follows a masked bearer token: everything from the first whitespace or quote on.
    for index, char in enumerate(text):
        if char.isspace() or char in "\"',;}":
            return text[index:]
    return ""


# ---------------------------------------------------------------------------------------------
# Cache


def judgment_key(benchmark: str, question_id: Any, slot: str, model_id: str, judge_model: str,
                 messages: list[dict]) -> str:
    """sha256 of (benchmark, question id, turn or game, model id, judge model, full prompt)."""
    material = json.dumps([benchmark, str(question_id), slot, model_id, judge_model, list(messages)],
                          ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Append-only JSON-lines cache of judge replies, one fsync'd line per judgment.

    A line cut short by a crash is skipped on load (and a newline is written before the next
    record), so the file stays readable after ``kill -9``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, dict] = {}
        self._lock = threading.Lock()
        self.skipped_lines: list[int] = []
        if self.path.exists():
            with open(self.path, encoding="utf-8", errors="replace") as handle:
                for line_number, line in enumerate(handle, start=1):
                    if not line.strip():
                        continue
                    try:
                        record = json.loads(line)
                        self._records[record["key"]] = record
                    except (json.JSONDecodeError, KeyError, TypeError):
                        self.skipped_lines.append(line_number)
            if self.skipped_lines:
                log.warning("judge cache %s: skipped unreadable line(s) %s (a write cut short by a crash)",
                            self.path, self.skipped_lines[:10])
        self._handle = open(self.path, "a+b")
        self._handle.seek(0, os.SEEK_END)
        if self._handle.tell() > 0:
            self._handle.seek(-1, os.SEEK_END)
            if self._handle.read(1) != b"\n":
                self._handle.write(b"\n")
                self._fsync()

    def __enter__(self) -> "JudgmentCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._handle.closed:
            self._handle.close()

    def __len__(self) -> int:
        return len(self._records)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def get(self, key: str) -> dict | None:
        return self._records.get(key)

    def _fsync(self) -> None:
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def put(self, record: dict) -> None:
        """Append `record` (which has a ``key``) and fsync before returning."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._handle.write(line)
            self._fsync()
            self._records[record["key"]] = record


# ---------------------------------------------------------------------------------------------
# Running many judgments


@dataclass(eq=False)
class JudgeRequest:
    """One judgment to make. `parse` maps the judge's text to a verdict, or None if unparseable."""

    benchmark: str
    question_id: Any
    slot: str  # "turn1" / "turn2" (MT-Bench) or "game1" / "game2" (Arena-Hard)
    model_id: str
    messages: list[dict]
    parse: Callable[[str], Any]
    meta: dict = field(default_factory=dict)


@dataclass
class JudgeResult:
    request: JudgeRequest
    key: str
    judgment: str
    verdict: Any  # None: the verdict could not be parsed after every retry
    from_cache: bool
    calls: int  # HTTP attempts this judgment cost when it was made


@dataclass
class JudgingStats:
    n_requests: int = 0
    n_unique: int = 0
    n_cached: int = 0
    n_new: int = 0
    n_parse_failed: int = 0
    n_http_attempts: int = 0
    cache_path: str = ""

    def summary(self) -> str:
        return (f"{self.n_unique} judgments: {self.n_cached} from cache, {self.n_new} new "
                f"({self.n_http_attempts} HTTP attempts), {self.n_parse_failed} unparseable; cache {self.cache_path}")


def run_judgments(requests: list[JudgeRequest], client: JudgeClient, cache: JudgmentCache, *,
                  desc: str = "judging") -> tuple[list[JudgeResult], JudgingStats]:
    """Judge every request (cached ones cost nothing), in parallel threads; results in input order.

    Raises `JudgingFailed` if the judge stays down or rejects a request; what was judged before
    that is in the cache.
    """
    judge_model = client.config.model
    keys = [judgment_key(r.benchmark, r.question_id, r.slot, r.model_id, judge_model, r.messages) for r in requests]
    stats = JudgingStats(n_requests=len(requests), cache_path=str(cache.path))
    first_by_key: dict[str, JudgeRequest] = {}
    for key, request in zip(keys, requests):
        first_by_key.setdefault(key, request)
    stats.n_unique = len(first_by_key)
    cached_keys = {key for key in first_by_key if key in cache}
    stats.n_cached = len(cached_keys)
    pending = [(key, request) for key, request in first_by_key.items() if key not in cached_keys]
    stop = threading.Event()
    counter_lock = threading.Lock()

    def judge_one(key: str, request: JudgeRequest) -> dict | None:
        if stop.is_set():
            return None
        calls = 0
        text = ""
        verdict = None
        for _ in range(client.config.parse_retries + 1):
            completion = client.chat(request.messages)
            calls += completion.attempts
            text = completion.text
            verdict = request.parse(text)
            if verdict is not None:
                break
            log.warning("judge: no verdict in the reply for %s %s %s (%s); asking again",
                        request.benchmark, request.question_id, request.slot, request.model_id)
        record = {"key": key, "benchmark": request.benchmark, "question_id": request.question_id,
                  "slot": request.slot, "model_id": request.model_id, "judge_model": judge_model,
                  "judgment": client.redact(text), "parse_ok": verdict is not None, "calls": calls,
                  "tstamp": time.time()}
        cache.put(record)
        with counter_lock:
            stats.n_http_attempts += calls
        return record

    failure: JudgeError | None = None
    if pending:
        with ThreadPoolExecutor(max_workers=client.config.parallel) as pool:
            futures = [pool.submit(judge_one, key, request) for key, request in pending]
            try:
                with tqdm(total=len(futures), desc=desc, unit="judgment") as progress:
                    for future in as_completed(futures):
                        try:
                            if future.result() is not None:
                                stats.n_new += 1
                        except JudgeError as error:
                            if failure is None:
                                failure = error
                            stop.set()
                        progress.update(1)
            except BaseException:
                # A bug or Ctrl-C: send nothing more (the pool would otherwise drain the queue).
                stop.set()
                for future in futures:
                    future.cancel()
                raise
    if failure is not None:
        missing = stats.n_unique - stats.n_cached - stats.n_new
        raise JudgingFailed(client.redact(
            f"judging stopped: {failure}\n"
            f"  judged in this run: {stats.n_new}; already cached: {stats.n_cached}; missing: {missing} "
            f"of {stats.n_unique}\n"
            f"  the cache is kept at {cache.path}; rerun the same command to send only the missing calls"
        ))

    results = []
    for key, request in zip(keys, requests):
        record = cache.get(key)
        verdict = request.parse(record["judgment"])
        results.append(JudgeResult(request, key, record["judgment"], verdict, key in cached_keys, record["calls"]))
    stats.n_parse_failed = sum(1 for key in first_by_key if first_by_key[key].parse(cache.get(key)["judgment"]) is None)
    return results, stats
