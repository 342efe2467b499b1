"""A real HTTP server on 127.0.0.1 that speaks OpenAI chat-completions and returns canned verdicts.

    def reply(body, index):                       # body: the request JSON; index: 0, 1, 2, ...
        return "Rating: [[7]]"
    with FakeJudgeServer(reply) as server:
        config = {"base_url": server.base_url, "model": "fake-judge", ...}
        ...
        assert server.request_count == 4

Faults are injected per request by `fault(body, index) -> Fault | None` or queued with
`queue_faults`: an HTTP status (429 with ``Retry-After``, 500, ...), a delay longer than the
client's timeout, a non-JSON body, or a hold that blocks until `release_holds()`. A malformed
verdict is just a reply text without a label. The server counts every request it receives and
every reply it finishes sending, and records each ``Authorization`` header it sees. It binds a
random free port on loopback only, serves from a daemon thread, and `stop()` ends it.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable


@dataclass
class Fault:
    """What to do instead of (or before) a normal reply."""

    status: int | None = None  # send this HTTP error status
    retry_after: str | None = None  # Retry-After header with the error
    delay_s: float = 0.0  # sleep before replying (beyond the client's timeout: a timeout)
    raw_body: str | None = None  # a 200 reply with this body instead of chat-completions JSON
    hold: bool = False  # block until release_holds() or stop()
    echo_authorization: bool = False  # put the Authorization header in the error body


class FakeJudgeServer:
    def __init__(self, reply: Callable[[dict, int], str], fault: Callable[[dict, int], Fault | None] | None = None):
        self.reply = reply
        self.fault = fault
        self.requests: list[dict] = []
        self.authorization_headers: list[str | None] = []
        self.answered_count = 0
        self.held_count = 0
        self._queued: collections.deque[Fault] = collections.deque()
        self._lock = threading.Lock()
        self._release = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ---------------------------------------------------------------------------
    def start(self) -> "FakeJudgeServer":
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                owner._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-judge", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "FakeJudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def request_count(self) -> int:
        with self._lock:
            return len(self.requests)

    def queue_faults(self, faults: list[Fault]) -> None:
        """Apply these faults, in order, to the next requests (before `fault` is consulted)."""
        with self._lock:
            self._queued.extend(faults)

    def release_holds(self) -> None:
        self._release.set()

    # -- serving ---------------------------------------------------------------------------
    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(handler, 400, {"error": {"message": "request body is not JSON"}})
            return
        with self._lock:
            index = len(self.requests)
            self.requests.append(body)
            self.authorization_headers.append(handler.headers.get("Authorization"))
            fault = self._queued.popleft() if self._queued else None
        if handler.path.rstrip("/") != "/v1/chat/completions":
            self._send(handler, 404, {"error": {"message": f"no route {handler.path}"}})
            return
        if fault is None and self.fault is not None:
            fault = self.fault(body, index)
        if fault is not None:
            if fault.hold:
                with self._lock:
                    self.held_count += 1
                self._release.wait()
                return  # the client (killed meanwhile) gets nothing
            if fault.delay_s:
                time.sleep(fault.delay_s)
            if fault.status is not None:
                message = f"injected HTTP {fault.status}"
                if fault.echo_authorization:
                    message += f" (you sent Authorization: {handler.headers.get('Authorization')})"
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send(handler, fault.status, {"error": {"message": message}}, headers)
                return
            if fault.raw_body is not None:
                self._send_bytes(handler, 200, fault.raw_body.encode("utf-8"), {})
                return
        text = self.reply(body, index)
        completion = {
            "id": f"chatcmpl-fake-{index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-judge"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        }
        # Counted before the write so a client that has its reply is always counted; undone if it fails.
        with self._lock:
            self.answered_count += 1
        if not self._send(handler, 200, completion):
            with self._lock:
                self.answered_count -= 1

    def _send(self, handler, status: int, payload: dict, headers: dict | None = None) -> bool:
        return self._send_bytes(handler, status, json.dumps(payload).encode("utf-8"), headers or {})

    @staticmethod
    def _send_bytes(handler, status: int, data: bytes, headers: dict) -> bool:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            handler.wfile.flush()
            return True
        except (BrokenPipeError, ConnectionResetError):
            return False  # the client gave up (timeout) or was killed


def rating_reply(rating_for: Callable[[dict], float | None]) -> Callable[[dict, int], str]:
    """A reply function that writes ``Rating: [[r]]`` (or no rating when `rating_for` returns None)."""

    def reply(body: dict, index: int) -> str:
        rating = rating_for(body)
        if rating is None:
            return "The answer is fine, I think. No verdict here."
        return f"The assistant's answer is reasonable.\n\nRating: [[{rating}]]"

    return reply


def pairwise_reply(label_for: Callable[[dict], str | None]) -> Callable[[dict, int], str]:
    """A reply function that ends with ``My final verdict is: [[label]]`` (no label when None)."""

    def reply(body: dict, index: int) -> str:
        label = label_for(body)
        if label is None:
            return "Both answers have merit. I cannot decide."
        return f"Comparing both answers with my own.\n\nMy final verdict is: [[{label}]]"

    return reply


def user_prompt(body: dict) -> str:
    """The user message of a judge request (the filled-in judge template)."""
    return next(m["content"] for m in body["messages"] if m["role"] == "user")


# ---------------------------------------------------------------------------------------------
# Helpers for tests that run the judge-path scripts as subprocesses.

REPO_ROOT = Path(__file__).resolve().parents[1]
FAKE_API_KEY = "sk-fake-PREFOPT-9f3c1e7a5b2d4c6e"  # distinctive, so a leak is easy to grep for
FAKE_KEY_ENV = "PREFOPT_TEST_JUDGE_KEY"


def judge_config(server: FakeJudgeServer, **overrides) -> dict:
    """A judge config for the fake server: small timeouts, the fake key's variable."""
    config = {"base_url": server.base_url, "model": "fake-judge-1", "api_key_env": FAKE_KEY_ENV,
              "temperature": 0, "max_tokens": 256, "timeout_s": 10, "max_retries": 3, "parallel": 2,
              "parse_retries": 0}
    config.update(overrides)
    return config


def script_env() -> dict:
    env = dict(os.environ)
    env[FAKE_KEY_ENV] = FAKE_API_KEY
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def script_command(name: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / "workflow" / "scripts" / name), *map(str, args)]


def load_script(name: str):
    """A workflow script imported as a module, to call its main() in-process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "workflow" / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name: str, *args: str, check: bool = True, timeout: float = 120):
    """Run workflow/scripts/`name` with the fake key in its environment; returns CompletedProcess."""
    completed = subprocess.run(script_command(name, *args), env=script_env(), capture_output=True, text=True,
                               timeout=timeout)
    if check and completed.returncode != 0:
        raise AssertionError(f"{name} exited {completed.returncode}\nstdout:\n{completed.stdout}\n"
                             f"stderr:\n{completed.stderr[-4000:]}")
    return completed
