"""Atomic file writes and JSON lines: the one place results are written from.

Every write goes to a temporary file in the target's folder, is fsync'd, gets the mode a
plain `open(path, "w")` would give (``0o666 & ~umask``; `tempfile.mkstemp` makes 0600), and
is renamed over the target, so a reader sees the old file or the new one, never a half.

    write_json(out / "summary.json", summary)
    write_jsonl(out / "eval.jsonl", rows)
    with atomic_open(out / "figure.png", "wb") as handle:
        fig.savefig(handle, format="png")
    append_jsonl(out / "metrics.jsonl", {"step": 3, "loss": 0.41})   # fsync'd per record
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Literal


def default_file_mode() -> int:
    """The mode `open(path, "w")` gives a new file: 0o666 less the process umask."""
    umask = os.umask(0)  # the only way to read the umask; set it straight back
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: Literal["w", "wb"] = "w", *, encoding: str = "utf-8") -> Iterator[IO]:
    """A handle on a temporary file beside `path` that replaces `path` when the block ends without error.

    The folder is created if needed. On an error the temporary file is removed and `path` is
    left as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": encoding})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, default_file_mode())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, sort_keys: bool = False) -> Path:
    """Indented JSON (2 spaces, non-ASCII kept, trailing newline), written atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=sort_keys) + "\n")


def jsonl_line(record: Any) -> str:
    """One JSON-lines line: compact JSON with non-ASCII kept, then a newline."""
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """One JSON value per line, written atomically."""
    with atomic_open(path, "w") as handle:
        for row in rows:
            handle.write(jsonl_line(row))
    return Path(path)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any, json.JSONDecodeError | None]]:
    """(1-based line number, value, None) for each non-blank line of a JSON-lines file, or
    (line number, None, the decode error) for a line that is not JSON; the caller decides what that means."""
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line.rstrip("\r\n")), None
            except json.JSONDecodeError as error:
                yield line_number, None, error


def read_jsonl(path: str | os.PathLike) -> list:
    """The values of a JSON-lines file; blank lines are skipped.

    A line that is not JSON raises ``ValueError("PATH:LINE: not JSON: ...")`` with its
    1-based line number.
    """
    rows = []
    for line_number, value, error in iter_jsonl(path):
        if error is not None:
            raise ValueError(f"{path}:{line_number}: not JSON: {error}") from error
        rows.append(value)
    return rows


def append_jsonl(path: str | os.PathLike, record: Any) -> None:
    """Append one JSON line to `path` (created with the normal mode if missing) and fsync it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(jsonl_line(record))
        handle.flush()
        os.fsync(handle.fileno())
