"""Figures from fake metrics files and hand-made result files: written, non-empty, right content."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefopt.figures import curve_series, write_figures

REPO = Path(__file__).resolve().parents[1]


def _offline(accuracy, chosen):
    return {"benchmark": "offline", "n": 50, "metrics": {
        "preference_accuracy": accuracy, "margin_mean": 0.3, "chosen_logp_mean": chosen, "rejected_logp_mean": chosen - 0.3,
        "rejected_token_logp_floor": -8.0, "rejected_floor_quantile": 0.01, "chosen_token_entropy_mean": 1.7},
        "ci": {"preference_accuracy": [accuracy - 0.1, accuracy + 0.1], "margin_mean": [0.2, 0.4]}}


def _metrics_file(path: Path, slope: float, with_slime_delta: bool = False) -> str:
    lines = []
    for step in range(1, 31):
        record = {"step": step, "epoch": step / 30, "loss": 0.7 - step / 100, "lr": 5e-7,
                  "logps/chosen": -1.0 + slope * step, "logps/rejected": -1.2 - 0.02 * step, "rewards/margins": 0.05 * step}
        if with_slime_delta:
            record["slime/delta"] = record["logps/chosen"] - record["logps/rejected"]
        lines.append(json.dumps(record))
        if step % 10 == 0:
            lines.append(json.dumps({"step": step, "epoch": step / 30, "eval_loss": 0.6,
                                     "eval_logps/chosen": -1.0, "eval_logps/rejected": -1.5}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def manifest(tmp_path):
    def dump(name, payload):
        path = tmp_path / "results" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload))
        return str(path)

    table3 = [{"model": "smollm2", "model_label": "SmolLM2-135M", "method_label": label, "run": run,
               "results": {"offline": dump(f"{run}.json", _offline(0.6, -1.0))}}
              for label, run in (("Base (Pretrain)", "base"), ("SFT", "sft"))]
    table4 = [{"model": "smollm2", "variant": name, "run": f"v{i}",
               "results": {"offline": dump(f"v{i}.json", _offline(0.5 + i / 20, -1.0 - i / 10))}}
              for i, name in enumerate(["Full SLIME", "w/o chosen term", "w/o rejected term"])]
    table5 = [{"model": "smollm2", "p": p, "default": p == 2.5, "run": f"p{p}",
               "results": {"offline": dump(f"p{p}.json", _offline(0.6, -1.1))}} for p in (1.5, 2.5)]
    curves = [
        {"model": "smollm2", "model_label": "SmolLM2-135M", "label": "DPO",
         "metrics": _metrics_file(tmp_path / "runs" / "dpo" / "metrics.jsonl", -0.01)},
        {"model": "smollm2", "model_label": "SmolLM2-135M", "label": "SLIME",
         "metrics": _metrics_file(tmp_path / "runs" / "slime" / "metrics.jsonl", 0.005, with_slime_delta=True)},
        {"model": "gemma", "label": "SimPO", "metrics": _metrics_file(tmp_path / "runs" / "simpo" / "metrics.jsonl", -0.03)},
    ]
    return {"judge": None, "table3": table3, "table4": table4, "table5": table5, "not_run": {},
            "training_curves": curves}


def test_curve_series_separates_train_and_eval_and_computes_delta(tmp_path):
    records = [json.loads(line) for line in Path(_metrics_file(tmp_path / "m.jsonl", 0.01)).read_text().splitlines()]
    train, evaluation = curve_series(records), curve_series(records, prefix="eval_")
    steps, delta = train["delta"]
    assert len(steps) == 30 and steps[0] == 1
    np.testing.assert_allclose(delta, (-1.0 + 0.01 * steps) - (-1.2 - 0.02 * steps))
    assert list(evaluation["chosen"][0]) == [10, 20, 30]
    np.testing.assert_allclose(evaluation["delta"][1], 0.5)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figures_written_and_non_empty(manifest, tmp_path):
    out_dir = tmp_path / "figures"
    written = write_figures(manifest, out_dir)
    names = sorted(path.name for path in written)
    assert names == ["table4_ablations.png", "table5_exponent_p.png", "training_curves_gemma.png",
                     "training_curves_smollm2.png"]
    for path in written:
        assert path.stat().st_size > 10_000 and _is_png(path)
    assert not list(out_dir.glob(".*tmp"))  # no temporary files left behind


def test_figures_skip_logs_without_logps_and_fail_on_missing_files(manifest, tmp_path, caplog):
    empty = tmp_path / "runs" / "empty" / "metrics.jsonl"
    empty.parent.mkdir(parents=True)
    empty.write_text(json.dumps({"step": 1, "loss": 0.7}) + "\n")
    manifest["training_curves"] = [{"model": "m", "label": "SFT-only", "metrics": str(empty)}]
    manifest["table4"], manifest["table5"] = [], []
    assert write_figures(manifest, tmp_path / "figs") == []
    assert "no logps" in caplog.text
    manifest["training_curves"] = [{"model": "m", "label": "gone", "metrics": str(tmp_path / "missing.jsonl")}]
    with pytest.raises(FileNotFoundError, match="gone"):
        write_figures(manifest, tmp_path / "figs")


def test_make_figures_script(manifest, tmp_path):
    manifest_path = tmp_path / "figures_manifest.json"
    manifest_path.write_text(json.dumps(manifest))
    out_dir = tmp_path / "figs"
    completed = subprocess.run([sys.executable, str(REPO / "workflow/scripts/make_figures.py"),
                                "--manifest", str(manifest_path), "--out-dir", str(out_dir)],
                               capture_output=True, text=True, timeout=180)
    assert completed.returncode == 0, completed.stderr
    assert len(list(out_dir.glob("*.png"))) == 4
