"""Figures from fake metrics files and hand-made result files: written, non-empty, right content."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from prefopt.evaluation.bootstrap import paired_bootstrap_ci_over_seeds
from prefopt.figures import PROBE_PANELS, curve_series, probe_trajectory, write_figures
from test_tables import _dump, make_row, make_table, rows

REPO = Path(__file__).resolve().parents[1]


def _offline(accuracy, chosen):
    return {"benchmark": "offline", "n": 50, "metrics": {
        "preference_accuracy": accuracy, "margin_mean": 0.3, "chosen_logp_mean": chosen, "rejected_logp_mean": chosen - 0.3,
        "rejected_token_logp_floor": -8.0, "rejected_floor_quantile": 0.01, "chosen_token_entropy_mean": 1.7},
        "ci": {"preference_accuracy": [accuracy - 0.1, accuracy + 0.1], "margin_mean": [0.2, 0.4]}}


N_PROBE_PAIRS = 12


def _probe(step: int, chosen_shift: float, rejected_shift: float, seed: int) -> dict:
    """A probe record (`prefopt.probes`) whose pairs moved by the given shifts plus seeded per-pair noise."""
    rng = np.random.default_rng(1000 * seed + step)
    base = np.linspace(-1.6, -0.8, N_PROBE_PAIRS)
    noise = 0.0 if step == 0 else 0.01
    chosen = base + chosen_shift + rng.normal(0.0, noise, N_PROBE_PAIRS)
    rejected = base - 0.2 + rejected_shift + rng.normal(0.0, noise, N_PROBE_PAIRS)
    return {"step": step, "probe": {
        "chosen_logp_mean": float(chosen.mean()), "rejected_logp_mean": float(rejected.mean()),
        "margin_mean": float((chosen - rejected).mean()), "rejected_token_logp_floor": -8.0 + rejected_shift,
        "preference_accuracy": float((chosen > rejected).mean()), "chosen": chosen.tolist(),
        "rejected": rejected.tolist()}}


def _metrics_file(path: Path, slope: float, with_slime_delta: bool = False, probe_seed: int | None = None) -> str:
    lines = []
    if probe_seed is not None:
        lines.append(json.dumps(_probe(0, 0.0, 0.0, probe_seed)))
    for step in range(1, 31):
        record = {"step": step, "epoch": step / 30, "loss": 0.7 - step / 100, "lr": 5e-7,
                  "logps/chosen": -1.0 + slope * step, "logps/rejected": -1.2 - 0.02 * step, "rewards/margins": 0.05 * step}
        if with_slime_delta:
            record["slime/delta"] = record["logps/chosen"] - record["logps/rejected"]
        lines.append(json.dumps(record))
        if probe_seed is not None and step % 10 == 0:
            lines.append(json.dumps(_probe(step, slope * step, -0.02 * step * (1 + probe_seed), probe_seed)))
        if step % 10 == 0:
            lines.append(json.dumps({"step": step, "epoch": step / 30, "eval_loss": 0.6,
                                     "eval_logps/chosen": -1.0, "eval_logps/rejected": -1.5}))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture()
def manifest(tmp_path):
    def dump(name, payload):
        return _dump(tmp_path / "results" / name, payload)

    def row(label, role, run, accuracy, chosen, value=None):
        return make_row("smollm2", "SmolLM2-135M", label, role, {"offline": dump(f"{run}.json", _offline(accuracy, chosen))},
                        run=run, value=value)

    table3 = [row("Base (Pretrain)", "base", "base", 0.6, -1.0), row("SFT", "sft", "sft", 0.6, -1.0)]
    table4 = [row(name, "reference" if i == 0 else "row", f"v{i}", 0.5 + i / 20, -1.0 - i / 10)
              for i, name in enumerate(["Full SLIME", "w/o chosen term", "w/o rejected term"])]
    table5 = [row(f"{p:g}", "reference" if p == 2.5 else "row", f"p{p}", 0.6, -1.1, value=p) for p in (1.5, 2.5)]
    curves = [
        {"model": "smollm2", "model_label": "SmolLM2-135M", "label": "DPO", "seed": 0,
         "metrics": _metrics_file(tmp_path / "runs" / "dpo" / "metrics.jsonl", -0.01, probe_seed=0)},
        *({"model": "smollm2", "model_label": "SmolLM2-135M", "label": "SLIME", "seed": seed,
           "metrics": _metrics_file(tmp_path / "runs" / f"slime-s{seed}" / "metrics.jsonl", 0.005,
                                    with_slime_delta=True, probe_seed=seed)} for seed in (0, 1)),
        {"model": "gemma", "label": "SimPO", "metrics": _metrics_file(tmp_path / "runs" / "simpo" / "metrics.jsonl", -0.03)},
    ]
    return {"judge": None, "not_run": {}, "training_curves": curves,
            "tables": [make_table("table3", "methods", table3), make_table("table4", "ablations", table4, "slime"),
                       make_table("table5", "sweep", table5, "slime", "p")]}


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
    assert names == ["probe_trajectories_gemma.png", "probe_trajectories_smollm2.png", "table4_ablations.png",
                     "table5_exponent_p.png", "training_curves_gemma.png", "training_curves_smollm2.png"]
    for path in written:
        assert path.stat().st_size > 10_000 and _is_png(path)
    assert not list(out_dir.glob(".*tmp"))  # no temporary files left behind


def test_one_figure_per_sweep_with_cis_and_the_default_marked(manifest, tmp_path, monkeypatch):
    """Two sweeps of SLIME (p: Table 5, delta), a SimPO one and a boolean one: a figure each, the metrics
    against the value with their CIs, the default value starred and lined."""
    def sweep(name, method, parameter, values, default):
        table_rows = [make_row("smollm2", "SmolLM2-135M", str(value), "reference" if value == default else "row",
                               {"offline": _dump(tmp_path / "sweeps" / f"{name}-{value}.json",
                                                 _offline(0.5 + index / 10, -1.0 - index / 10))}, value=value)
                      for index, value in enumerate(values)]
        return make_table(name, "sweep", table_rows, method, parameter)

    manifest["tables"][2:] = [sweep("table5", "slime", "p", [1.0, 2.5, 3.0], 2.5),
                              sweep("sweep_delta", "slime", "delta", [0.5, 1.25, 2.0], 1.25),
                              sweep("sweep_simpo_beta", "simpo", "beta", [2.0, 10.0], 2.0),
                              sweep("sweep_use_hard_margin", "slime", "use_hard_margin", [False, True], True)]
    manifest["training_curves"] = []
    import prefopt.figures as figures

    drawn, save = {}, figures._save
    monkeypatch.setattr(figures, "_save", lambda fig, path: (drawn.setdefault(path.name, fig), save(fig, path))[1])
    names = sorted(path.name for path in write_figures(manifest, tmp_path / "figs"))
    assert names == ["sweep_delta.png", "sweep_simpo_beta.png", "sweep_use_hard_margin.png", "table4_ablations.png",
                     "table5_exponent_p.png"]
    assert all(_is_png(tmp_path / "figs" / name) for name in names)
    for name, parameter, xs, default in (("table5_exponent_p.png", "Exponent p", [1.0, 2.5, 3.0], 2.5),
                                         ("sweep_delta.png", "delta", [0.5, 1.25, 2.0], 1.25),
                                         ("sweep_use_hard_margin.png", "use_hard_margin", [0.0, 1.0], 1.0)):
        fig = drawn[name]
        accuracy = next(axis for axis in fig.axes if axis.get_title().startswith("Preference accuracy"))
        assert accuracy.get_xlabel() == parameter
        line = accuracy.lines[0]
        assert list(line.get_xdata()) == xs
        np.testing.assert_allclose(line.get_ydata(), [50.0 + 10 * i for i in range(len(xs))])
        # Error bars: each point's CI (accuracy ± 10 points in these results).
        segments = accuracy.collections[0].get_segments()
        np.testing.assert_allclose([segment[:, 1] for segment in segments],
                                   [[40.0 + 10 * i, 60.0 + 10 * i] for i in range(len(xs))])
        stars = [line for line in accuracy.lines if line.get_marker() == "*"]
        assert [list(star.get_xdata()) for star in stars] == [[default]]
        assert any(list(line.get_xdata()) == [default, default] and line.get_linestyle() == ":"
                   for line in accuracy.lines)
        assert f"default {parameter} = " in fig._suptitle.get_text()
    assert [tick.get_text() for tick in drawn["sweep_use_hard_margin.png"].axes[0].get_xticklabels()] == ["false", "true"]
    assert drawn["table5_exponent_p.png"]._suptitle.get_text().startswith(
        "Table 5: Effect of the stabilizing loss exponent p on SLIME performance (held-out metrics)")
    assert drawn["sweep_simpo_beta.png"]._suptitle.get_text().startswith(
        "SimPO beta sweep: Effect of the hyperparameter beta on SimPO performance")


def test_figures_skip_logs_without_logps_and_fail_on_missing_files(manifest, tmp_path, caplog):
    empty = tmp_path / "runs" / "empty" / "metrics.jsonl"
    empty.parent.mkdir(parents=True)
    empty.write_text(json.dumps({"step": 1, "loss": 0.7}) + "\n")
    manifest["training_curves"] = [{"model": "m", "label": "SFT-only", "metrics": str(empty)}]
    manifest["tables"] = manifest["tables"][:1]  # no ablations: no Table 4, no sweeps
    # No per-batch curves to draw; the main figure is still written and says there are no probes.
    assert [path.name for path in write_figures(manifest, tmp_path / "figs")] == ["probe_trajectories_m.png"]
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
    assert len(list(out_dir.glob("*.png"))) == 6


def test_probe_trajectory_is_the_change_from_sft_with_paired_and_seed_bands(manifest):
    runs = [[json.loads(line) for line in Path(curve["metrics"]).read_text().splitlines()
             if "probe" in json.loads(line)] for curve in manifest["training_curves"] if curve["label"] == "SLIME"]
    assert [len(run) for run in runs] == [4, 4]
    settings = {"n_resamples": 500, "seed": 0}
    panels = {key: values for key, _, values in PROBE_PANELS}
    chosen = probe_trajectory(runs, "chosen_logp_mean", panels["chosen_logp_mean"], settings)
    assert list(chosen["steps"]) == [0, 10, 20, 30] and chosen["n_seeds"] == 2
    assert chosen["mean"][0] == 0.0 and chosen["ci_low"][0] == chosen["ci_high"][0] == 0.0
    np.testing.assert_allclose(chosen["mean"][1:], [0.05, 0.10, 0.15], atol=0.01)  # slope 0.005 per step
    # The band is the paired bootstrap over the probe pairs of the seed-averaged change from step 0.
    at = lambda run, step, side: next(r["probe"][side] for r in run if r["step"] == step)  # noqa: E731
    expected = paired_bootstrap_ci_over_seeds([at(run, 20, "chosen") for run in runs],
                                              [at(run, 0, "chosen") for run in runs], **settings)
    assert (chosen["ci_low"][2], chosen["ci_high"][2]) == pytest.approx(expected)
    assert chosen["ci_low"][2] < chosen["mean"][2] < chosen["ci_high"][2]
    # Seed 1's rejected answers fall twice as fast: the seed band spans both seeds' changes.
    rejected = probe_trajectory(runs, "rejected_logp_mean", panels["rejected_logp_mean"], settings)
    assert rejected["seed_low"][3] == pytest.approx(-1.2, abs=0.02)
    assert rejected["seed_high"][3] == pytest.approx(-0.6, abs=0.02)
    # The floor keeps no per-pair values: a seed band, no pair CI.
    floor = probe_trajectory(runs, "rejected_token_logp_floor", None, settings)
    assert np.isnan(floor["ci_low"]).all()
    np.testing.assert_allclose(floor["mean"], [0.0, -0.3, -0.6, -0.9])
    assert probe_trajectory([[]], "chosen_logp_mean", None, settings) is None


def test_tables_and_figures_import_without_torch_or_transformers():
    # The report environment (envs/report.yaml) has numpy/pandas/matplotlib only.
    code = ("import sys, prefopt.figures, prefopt.tables; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"
