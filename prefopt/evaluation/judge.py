"""An LLM judge over the OpenAI chat-completions protocol, through the official `openai` client.

Any server that speaks ``POST {base_url}/chat/completions`` works: OpenAI, or a local vLLM,
SGLang, llama.cpp or ``transformers serve`` server. One benchmark's judge is a small JSON file
(written by the DAG from the config's ``judge:`` block, `judge_settings`):

    {"base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5-72B-Instruct",
     "api_key_env": "OPENAI_API_KEY", "temperature": 0, "max_tokens": 2048,
     "timeout_s": 120, "max_retries": 8, "parallel": 4, "parse_retries": 0}

    client = JudgeClient(JudgeConfig.from_file("judge.json"))
    with JudgmentCache("checkpoints/judge_cache/mt_bench.jsonl") as cache:
        results, stats = run_judgments(requests, client, cache)

Guarantees (docs/judging.md):
- The API key is read from the environment variable named by ``api_key_env`` when a run starts
  and handed only to the `openai` client of that run, which sends it in the ``Authorization``
  header. No object of this module keeps it, and it never reaches a log, the cache or an
  exception message (every error text passes through `JudgeClient.redact`).
- Every judgment is appended to the cache and fsync'd as soon as it is made, keyed by
  `judgment_key` (judge model, temperature, max_tokens, messages): a byte-identical request is
  paid for once, whichever model or question it came from, and a rerun after a crash sends only
  the missing calls.
- Timeouts, connection errors and HTTP 408/409/429/5xx are retried by the `openai` client with
  its exponential backoff (``Retry-After`` honoured), at most ``max_retries`` times; a reply that
  is not chat-completions JSON is retried as often.
- HTTP 400 fails that one judgment (as upstream drops that game): it is counted, not cached, and
  the run goes on. Other client errors (401, 403, 404, ...) stop the run: retrying cannot fix them.
- A reply without a verdict is asked again ``parse_retries`` times (upstream: never), then recorded
  (and cached) as a parse failure, which the scores count.
- Once a request gives up, nothing new is sent: the requests in flight are cancelled and the run
  stops with `JudgingFailed`, whose message says how many judgments were made, how many came
  from the cache, how many are missing and where the cache is.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

REDACTED = "***"
# How much of an error body goes into a message.
ERROR_BODY_CHARS = 300
# Keys of one benchmark's judge settings (the JSON file above); every one is required.
CONFIG_KEYS = ("base_url", "model", "api_key_env", "temperature", "max_tokens", "timeout_s", "max_retries",
               "parallel", "parse_retries")
# Keys of the config's `judge:` block shared by both benchmarks; a benchmark's section overrides.
SHARED_KEYS = ("base_url", "model", "api_key_env", "timeout_s", "max_retries", "parallel", "parse_retries")
BENCHMARK_KEYS = ("model", "temperature", "max_tokens")


class JudgeError(RuntimeError):
    """Base class of judge failures; messages never contain the API key."""


class JudgeConfigError(JudgeError, ValueError):
    """The judge configuration (or the environment it names) is unusable."""


class JudgeRequestError(JudgeError):
    """The server rejected a request in a way retrying cannot fix (HTTP 401, 403, 404, ...)."""


class JudgeUnavailableError(JudgeError):
    """The judge kept failing (timeouts, 429, 5xx, refused connections) through every retry."""


class JudgingFailed(JudgeError):
    """A judging run stopped early; completed judgments stay in the cache for the next run."""


# ---------------------------------------------------------------------------------------------
# Configuration


def judge_settings(judge: dict, benchmark: str) -> dict:
    """One benchmark's judge settings from the config's (schema-validated) ``judge:`` block.

    The shared connection keys, overridden by the benchmark's section; the section's ``model``
    falls back to the shared ``model``.
    """
    section = judge.get(benchmark) or {}
    settings = {key: judge[key] for key in SHARED_KEYS if key in judge}
    settings.update({key: section[key] for key in BENCHMARK_KEYS if section.get(key) is not None})
    return settings


@dataclass(frozen=True)
class JudgeConfig:
    """Where the judge is and how to call it. Holds the *name* of the key variable, never the key."""

    base_url: str
    model: str
    api_key_env: str | None
    temperature: float
    max_tokens: int
    timeout_s: float
    max_retries: int
    parallel: int
    parse_retries: int

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
        for required in CONFIG_KEYS:
            if required not in data:
                raise JudgeConfigError(f"judge config: missing required key '{required}'")
        numeric = {"temperature": float, "timeout_s": float, "max_tokens": int, "max_retries": int, "parallel": int,
                   "parse_retries": int}
        values = dict(data)
        for name, kind in numeric.items():
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
# Client


@dataclass
class Completion:
    """One judge reply: its text and how many HTTP attempts it took."""

    text: str
    attempts: int


class _Rejected(Exception):
    """HTTP 400: this request fails, the run goes on."""


def _content_text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, list):  # content parts
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class JudgeClient:
    """Sends chat-completions requests through `openai.AsyncOpenAI`. Holds no secret.

    The `openai` client (and with it the key) lives only inside `session`, one per run.
    """

    def __init__(self, config: JudgeConfig):
        self.config = config
        self.url = config.base_url.rstrip("/") + "/chat/completions"
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

    def session(self):
        """A fresh `openai.AsyncOpenAI` for one run (close it with ``await session.close()``)."""
        import openai

        key = self._api_key()
        # One INFO line per HTTP request from the transport is noise; openai's own retry notices stay.
        for name in ("httpx", "httpx2"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
        # A local server without a key: the client wants some key, and the header is omitted per request.
        return openai.AsyncOpenAI(base_url=self.config.base_url, api_key=key or "no-key",
                                  timeout=self.config.timeout_s, max_retries=self.config.max_retries)

    def credentials_hint(self) -> str:
        """Which variable to fix when the judge rejects the credentials (HTTP 401/403)."""
        name = self.config.api_key_env
        if name is None:
            return "no API key was sent (judge config 'api_key_env' is null): set it to the variable holding the key"
        return f"check the API key in environment variable {name} (judge config 'api_key_env')"

    async def achat(self, session, messages: list[dict]) -> Completion:
        """The judge's reply to `messages`; raises `_Rejected` on HTTP 400, `JudgeError` otherwise."""
        import openai

        config = self.config
        headers = {} if config.api_key_env else {"Authorization": openai.Omit()}
        attempts = 0
        last_error = ""
        # The openai client retries transport errors and 408/409/429/5xx itself; this loop only
        # retries a 200 reply that is not chat-completions JSON, as often.
        for _ in range(config.max_retries + 1):
            try:
                raw = await session.chat.completions.with_raw_response.create(
                    model=config.model, messages=list(messages), temperature=config.temperature,
                    max_tokens=config.max_tokens, extra_headers=headers)
            except openai.BadRequestError as error:
                raise _Rejected(self.redact(f"HTTP 400 {_error_text(error)}")) from None
            except openai.APIStatusError as error:
                attempts += config.max_retries + 1 if _retriable(error.status_code) else 1
                description = f"HTTP {error.status_code} {_error_text(error)}"
                if _retriable(error.status_code):
                    last_error = self.redact(description)
                    break
                if error.status_code in (401, 403):
                    description += f"; {self.credentials_hint()}"
                raise JudgeRequestError(self.redact(f"judge {self.url} rejected the request: {description}")) from None
            except openai.APITimeoutError:
                attempts += config.max_retries + 1
                last_error = f"no reply within timeout_s={config.timeout_s}"
                break
            except openai.APIConnectionError as error:
                attempts += config.max_retries + 1
                cause = error.__cause__
                last_error = self.redact(f"connection failed: {type(cause).__name__ if cause else ''} {cause or error}")
                break
            attempts += getattr(raw, "retries_taken", 0) + 1
            try:
                reply = raw.parse()
                return Completion(_content_text(reply.choices[0].message.content), attempts)
            except (ValueError, TypeError, AttributeError, IndexError, openai.APIResponseValidationError):
                last_error = self.redact(f"malformed chat-completions reply: {raw.http_response.text[:ERROR_BODY_CHARS]!r}")
                log.warning("judge %s: %s", self.url, last_error)
        raise JudgeUnavailableError(
            f"judge {self.url} (model {config.model}) failed {attempts} attempts; last error: {last_error}"
        )

    def chat(self, messages: list[dict]) -> Completion:
        """`achat` for one request, outside any event loop (HTTP 400 raises `JudgeRequestError`)."""

        async def once():
            session = self.session()
            try:
                return await self.achat(session, messages)
            except _Rejected as error:
                raise JudgeRequestError(f"judge {self.url} rejected the request: {error}") from None
            finally:
                await session.close()

        return asyncio.run(once())


def _retriable(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


def _error_text(error) -> str:
    body = getattr(error, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])[:ERROR_BODY_CHARS]
    return str(getattr(error, "message", error))[:ERROR_BODY_CHARS]


def _after_token(text: str) -> str:
    # What follows a masked bearer token: everything from the first whitespace or quote on.
    for index, char in enumerate(text):
        if char.isspace() or char in "\"',;})":
            return text[index:]
    return ""


# ---------------------------------------------------------------------------------------------
# Cache


def judgment_key(judge_model: str, temperature: float, max_tokens: int, messages: list[dict]) -> str:
    """sha256 of what is sent: judge model, sampling settings and the full messages."""
    material = json.dumps([judge_model, float(temperature), int(max_tokens), list(messages)],
                          ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


class JudgmentCache:
    """Append-only JSON-lines cache of judge replies, one fsync'd line per judgment.

    A line cut short by a crash is skipped on load (and a newline is written before the next
    record), so the file stays readable after ``kill -9``. Appends hold an exclusive ``flock``,
    so judging jobs running side by side can share one cache file.
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

    def put(self, record: dict) -> None:
        """Append `record` (which has a ``key``) and fsync before returning."""
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            fcntl.flock(self._handle.fileno(), fcntl.LOCK_EX)
            try:
                self._handle.seek(0, os.SEEK_END)
                if self._handle.tell() > 0:
                    self._handle.seek(-1, os.SEEK_END)
                    if self._handle.read(1) != b"\n":  # a line cut short by a crash
                        line = b"\n" + line
                self._handle.write(line)
                self._handle.flush()
                os.fsync(self._handle.fileno())
            finally:
                fcntl.flock(self._handle.fileno(), fcntl.LOCK_UN)
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
    verdict: Any  # None: no verdict (unparseable after every retry, or the request was rejected)
    from_cache: bool
    calls: int  # HTTP attempts this judgment cost when it was made
    error: str | None = None  # why the judge gave no reply (HTTP 400), else None


@dataclass
class JudgingStats:
    n_requests: int = 0
    n_unique: int = 0
    n_cached: int = 0
    n_new: int = 0
    n_parse_failed: int = 0
    n_rejected: int = 0
    n_http_attempts: int = 0
    cache_path: str = ""

    def summary(self) -> str:
        return (f"{self.n_unique} judgments: {self.n_cached} from cache, {self.n_new} new "
                f"({self.n_http_attempts} HTTP attempts), {self.n_parse_failed} unparseable, "
                f"{self.n_rejected} rejected (HTTP 400); cache {self.cache_path}")


def run_judgments(requests: list[JudgeRequest], client: JudgeClient, cache: JudgmentCache, *,
                  desc: str = "judging") -> tuple[list[JudgeResult], JudgingStats]:
    """Judge every request (cached ones cost nothing), `parallel` at a time; results in input order.

    Requests with the same `judgment_key` are sent once. Raises `JudgingFailed` as soon as one
    request gives up (the judge stays down, or rejects a request with a non-400 client error);
    what was judged before that is in the cache.
    """
    config = client.config
    keys = [judgment_key(config.model, config.temperature, config.max_tokens, r.messages) for r in requests]
    stats = JudgingStats(n_requests=len(requests), cache_path=str(cache.path))
    first_by_key: dict[str, JudgeRequest] = {}
    for key, request in zip(keys, requests):
        first_by_key.setdefault(key, request)
    stats.n_unique = len(first_by_key)
    cached_keys = {key for key in first_by_key if key in cache}
    stats.n_cached = len(cached_keys)
    pending = [(key, request) for key, request in first_by_key.items() if key not in cached_keys]
    rejected: dict[str, str] = {}

    async def judge_all() -> None:
        session = client.session()
        semaphore = asyncio.Semaphore(config.parallel)
        progress = tqdm(total=len(pending), desc=desc, unit="judgment")

        async def judge_one(key: str, request: JudgeRequest) -> None:
            async with semaphore:
                calls = 0
                text = ""
                verdict = None
                try:
                    for attempt in range(config.parse_retries + 1):
                        completion = await client.achat(session, request.messages)
                        calls += completion.attempts
                        text = completion.text
                        verdict = request.parse(text)
                        if verdict is not None:
                            break
                        if attempt < config.parse_retries:
                            log.warning("judge: no verdict in the reply for %s %s %s (%s); asking again",
                                        request.benchmark, request.question_id, request.slot, request.model_id)
                except _Rejected as error:
                    log.warning("judge rejected %s %s %s (%s): %s; this judgment fails, the others go on",
                                request.benchmark, request.question_id, request.slot, request.model_id, error)
                    rejected[key] = str(error)
                    stats.n_http_attempts += calls + 1
                    progress.update(1)
                    return
                cache.put({"key": key, "benchmark": request.benchmark, "question_id": request.question_id,
                           "slot": request.slot, "model_id": request.model_id, "judge_model": config.model,
                           "temperature": config.temperature, "max_tokens": config.max_tokens,
                           "judgment": client.redact(text), "parse_ok": verdict is not None, "calls": calls,
                           "tstamp": time.time()})
                stats.n_new += 1
                stats.n_http_attempts += calls
                progress.update(1)

        tasks = [asyncio.ensure_future(judge_one(key, request)) for key, request in pending]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failures = [task.exception() for task in done if not task.cancelled() and task.exception()]
            if failures:
                raise failures[0]
        finally:
            # The first failure (or Ctrl-C) cancels every other task: requests in flight are
            # dropped and those still waiting for a slot never start.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            progress.close()
            await session.close()

    if pending:
        try:
            asyncio.run(judge_all())
        except JudgeError as failure:
            missing = stats.n_unique - stats.n_cached - stats.n_new - len(rejected)
            raise JudgingFailed(client.redact(
                f"judging stopped: {failure}\n"
                f"  judged in this run: {stats.n_new}; already cached: {stats.n_cached}; missing: {missing} "
                f"of {stats.n_unique}\n"
                f"  the cache is kept at {cache.path}; rerun the same command to send only the missing calls"
            )) from None

    results = []
    for key, request in zip(keys, requests):
        if key in rejected:
            results.append(JudgeResult(request, key, "", None, False, 0, rejected[key]))
            continue
        record = cache.get(key)
        verdict = request.parse(record["judgment"])
        results.append(JudgeResult(request, key, record["judgment"], verdict, key in cached_keys, record["calls"]))
    stats.n_rejected = len(rejected)
    stats.n_parse_failed = sum(1 for key, request in first_by_key.items()
                               if key not in rejected and request.parse(cache.get(key)["judgment"]) is None)
    return results, stats
