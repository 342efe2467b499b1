"""prefopt.io: atomic writes with normal file modes, JSON lines; tables and figures come out 0644 under umask 022."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from prefopt.io import append_jsonl, atomic_open, read_jsonl, write_json, write_jsonl, write_text_atomic
from test_figures import _metrics_file, _offline
from test_tables import _dump, make_row, make_table

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_writes_get_the_mode_open_would_give(tmp_path, umask_022):
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = [write_text_atomic(tmp_path / "a.txt", "x"), write_json(tmp_path / "b.json", {"a": 1}),
               write_jsonl(tmp_path / "c.jsonl", [{"a": 1}])]
    append_jsonl(tmp_path / "d.jsonl", {"a": 1})
    assert mode(plain) == 0o644
    assert [mode(path) for path in written] + [mode(tmp_path / "d.jsonl")] == [0o644] * 4
    os.umask(0o077)
    assert mode(write_text_atomic(tmp_path / "e.txt", "x")) == 0o600


def test_jsonl_round_trip_append_and_bad_line(tmp_path):
    rows = [{"text": "buenos días ✓", "n": 1}, {"text": "b", "n": 2}]
    path = write_jsonl(tmp_path / "deep" / "rows.jsonl", rows)
    assert read_jsonl(path) == rows
    assert "días ✓" in path.read_text(encoding="utf-8")  # not \u-escaped
    append_jsonl(path, {"n": 3})
    assert [row["n"] for row in read_jsonl(path)] == [1, 2, 3]
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]  # no temporary file left
    path.write_text('{"a": 1}\n\n{"a": \n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows.jsonl:3: not JSON: Expecting value: line 1 column 7"):
        read_jsonl(path)


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = write_json(tmp_path / "summary.json", {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write('{"new": ')
            raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    with pytest.raises(TypeError):
        write_json(path, {"not json": object()})
    assert json.loads(path.read_text()) == {"old": True}


def test_tables_and_figures_scripts_write_mode_0644(tmp_path):
    def dump(name, payload):
        return _dump(tmp_path / "results" / name, payload)

    def row(label, role, run, accuracy, chosen, value=None):
        return make_row("m", "M", label, role, {"offline": dump(f"{run}.json", _offline(accuracy, chosen))},
                        run=run, value=value)

    manifest = {
        "judge": None, "not_run": {},
        "tables": [make_table("table3", "methods", [row("Base (Pretrain)", "base", "base", 0.6, -1.0),
                                                    row("SFT", "sft", "sft", 0.6, -1.0)]),
                   make_table("table4", "ablations", [row("Full SLIME", "reference", "v0", 0.5, -1.0)], "slime"),
                   make_table("table5", "sweep", [row("2.5", "reference", "p", 0.6, -1.1, value=2.5)], "slime", "p")],
        "training_curves": [{"model": "m", "model_label": "M", "label": "DPO",
                             "metrics": _metrics_file(tmp_path / "runs" / "metrics.jsonl", -0.01)}],
    }
    manifest_path = tmp_path / "manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    for script, out in (("make_tables.py", "tables"), ("make_figures.py", "figures")):
        completed = subprocess.run(
            [sys.executable, str(REPO / "workflow" / "scripts" / script), "--manifest", str(manifest_path),
             "--out-dir", str(tmp_path / out)],
            capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.umask(0o022))
        assert completed.returncode == 0, completed.stderr
    tables = sorted((tmp_path / "tables").iterdir())
    figures = sorted((tmp_path / "figures").iterdir())
    # Tables 3-5 (csv, md, tex) + comparisons (csv, md); figures are PNGs.
    assert len(tables) == 9 + 2 and figures and all(path.suffix == ".png" for path in figures)
    assert {path.name: mode(path) for path in tables + figures} == {path.name: 0o644 for path in tables + figures}
