"""Figures from training logs and result files (PNG, matplotlib Agg).

    python workflow/scripts/make_figures.py --manifest results/figures_manifest.json --out-dir results/figures

- ``probe_trajectories_<model>.png`` (the main figure): per method of Table 3, the held-out probes
  (`prefopt.probes`) as differences from step 0, the SFT model every run starts from: mean chosen
  and rejected log-probs l̄_w, l̄_l, Δ = l̄_w − l̄_l and the rejected-token floor. The shaded band is
  the paired-bootstrap 95% CI over the probe pairs (each pair's change from step 0, averaged over
  seeds first); with several seeds a lighter band spans their min-max. The floor's band is seeds
  only: a probe record keeps no token log-probs to resample. Without probe records the figure says so.
- ``training_curves_<model>.png`` (secondary): per method, the per-batch mean chosen and rejected completion log-probs
  l̄_w, l̄_l (``logps/chosen``, ``logps/rejected``, appendix A) and their distance Δ = l̄_w − l̄_l
  (SLIME's ``slime/delta``) over training steps. Δ is computed from the two log-probs for every
  method, so DPO's β-scaled, reference-relative ``rewards/margins`` is not mixed in. The paper's
  "unlearning" (section 7) shows as a falling l̄_w.
- ``table4_ablations.png``: bars of the offline metrics of Table 4 (the ablations), the full method's
  bar in orange, with the 95% bootstrap CI as error bars where the result has one.
- one figure per hyperparameter sweep (``table5_exponent_p.png`` for the paper's p sweep,
  ``sweep_<name>.png`` for the others, e.g. ``sweep_delta.png``, ``sweep_simpo_beta.png``): the offline
  metrics, and demo accuracy where evaluated, against the hyperparameter's value with their 95% CIs
  (the same numbers as the sweep's table), the default value marked.

The manifest is the tables manifest (`prefopt.tables`: ``{"tables": [...], "not_run": ...}``) plus
``"training_curves": [{"model": "smollm2", "model_label": "SmolLM2-135M", "label": "SLIME", "seed": 0,
"metrics": ".../metrics.jsonl"}]`` (one entry per method of Table 3 and seed, labelled by the objective
registry), where each metrics file holds one JSON record per logging step
(`prefopt.checkpoints.MetricsFileCallback`) and the probe records. Which tables get a figure follows their
kind (ablations: bars; sweep: metrics against the value), the marked bar or point their role.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from prefopt.evaluation.bootstrap import paired_bootstrap_ci_over_seeds  # noqa: E402
from prefopt.io import atomic_open, read_jsonl  # noqa: E402
from prefopt.tables import (Table, bootstrap_settings, build_table, check_manifest, format_value,  # noqa: E402
                            load_manifest, row_seed_results)

log = logging.getLogger(__name__)

CURVE_PANELS = (
    ("chosen", r"$\bar{l}_w$: chosen log-prob (logps/chosen)"),
    ("rejected", r"$\bar{l}_l$: rejected log-prob (logps/rejected)"),
    ("delta", r"$\Delta = \bar{l}_w - \bar{l}_l$"),
)

# (raw key in prefopt.tables rows, panel title, scale, CI raw keys)
BAR_METRICS = (
    ("preference_accuracy", "Preference accuracy (%) ↑", 100.0, ("preference_accuracy_ci_low", "preference_accuracy_ci_high")),
    ("margin_mean", r"Margin $\bar{l}_w - \bar{l}_l$ ↑", 1.0, ("margin_mean_ci_low", "margin_mean_ci_high")),
    ("delta_chosen_logp_vs_sft", "Δ chosen logp vs SFT ↑", 1.0,
     ("delta_chosen_logp_vs_sft_ci_low", "delta_chosen_logp_vs_sft_ci_high")),
    ("rejected_token_logp_floor", "Rejected-token log-prob floor ↑", 1.0,
     ("rejected_token_logp_floor_ci_low", "rejected_token_logp_floor_ci_high")),
    ("chosen_token_entropy_mean", "Entropy on chosen (nats)", 1.0,
     ("chosen_token_entropy_mean_ci_low", "chosen_token_entropy_mean_ci_high")),
    ("demo_accuracy", "Demo accuracy (%) ↑", 100.0, ("demo_accuracy_ci_low", "demo_accuracy_ci_high")),
)


def curve_series(records: list[dict], prefix: str = "") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"chosen" | "rejected" | "delta": (steps, values)} from training (prefix "") or eval ("eval_") records."""
    series: dict[str, list[tuple[float, float]]] = {"chosen": [], "rejected": [], "delta": []}
    for record in records:
        if "step" not in record:
            continue
        if prefix == "" and "loss" not in record:
            continue  # evaluation records carry eval_* keys only
        # Every objective logs the length-normalised l̄ under *_mean; older logs (and TRL's DPO names) only
        # logps/chosen and logps/rejected.
        chosen = record.get(f"{prefix}logps/chosen_mean", record.get(f"{prefix}logps/chosen"))
        rejected = record.get(f"{prefix}logps/rejected_mean", record.get(f"{prefix}logps/rejected"))
        if chosen is not None:
            series["chosen"].append((record["step"], chosen))
        if rejected is not None:
            series["rejected"].append((record["step"], rejected))
        if chosen is not None and rejected is not None:
            series["delta"].append((record["step"], chosen - rejected))
        elif record.get(f"{prefix}slime/delta") is not None:
            series["delta"].append((record["step"], record[f"{prefix}slime/delta"]))
    return {key: (np.array([s for s, _ in points], dtype=float), np.array([v for _, v in points], dtype=float))
            for key, points in series.items() if points}


def _ema(values: np.ndarray, alpha: float) -> np.ndarray:
    smoothed = np.empty_like(values)
    running = values[0]
    for i, value in enumerate(values):
        running = alpha * value + (1 - alpha) * running
        smoothed[i] = running
    return smoothed


def _save(fig, path: Path) -> Path:
    try:
        with atomic_open(path, "wb") as handle:
            fig.savefig(handle, format="png", dpi=130, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_training_curves(curves: list[dict], out_path: str | os.PathLike, title: str) -> Path | None:
    """The secondary figure: the three `CURVE_PANELS` subplots of the per-batch training log, one line per
    method and seed (EMA-smoothed; raw faint), a method's seeds in one colour."""
    fig, axes = plt.subplots(1, len(CURVE_PANELS), figsize=(15, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(curve["label"] for curve in curves))
    legend_done: set[str] = set()
    plotted = False
    for curve in curves:
        if not Path(curve["metrics"]).exists():
            raise FileNotFoundError(f"training curve {curve.get('label')!r}: {curve['metrics']} does not exist")
        records = read_jsonl(curve["metrics"])
        train, evaluation = curve_series(records), curve_series(records, prefix="eval_")
        if not train and not evaluation:
            log.warning("training curve %r: %s has no logps/* records", curve.get("label"), curve["metrics"])
            continue
        color = colors[methods.index(curve["label"]) % len(colors)]
        first_seed = curve["label"] not in legend_done
        legend_done.add(curve["label"])
        for axis, (key, _) in zip(axes, CURVE_PANELS):
            if key in train:
                steps, values = train[key]
                alpha = min(1.0, 10.0 / max(len(values), 1))  # ~10-point smoothing window
                axis.plot(steps, values, color=color, alpha=0.25, linewidth=0.8)
                axis.plot(steps, _ema(values, alpha), color=color, linewidth=1.8,
                          label=curve["label"] if first_seed else None)
                plotted = True
            if key in evaluation:
                steps, values = evaluation[key]
                axis.plot(steps, values, color=color, linestyle="--", marker="o", markersize=3,
                          label=f"{curve['label']} (eval)" if first_seed else None)
                plotted = True
    if not plotted:
        plt.close(fig)
        return None
    for axis, (key, panel_title) in zip(axes, CURVE_PANELS):
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("training step")
        axis.set_ylabel("mean log-prob per token" if key != "delta" else "Δ (nats per token)")
        axis.grid(alpha=0.3)
    axes[-1].axhline(0.0, color="grey", linewidth=0.8)
    handles, labels = axes[0].get_legend_handles_labels()
    for axis in axes[1:]:
        for handle, label in zip(*axis.get_legend_handles_labels()):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), frameon=False,
               bbox_to_anchor=(0.5, 1.06))
    fig.suptitle(f"{title}\n(bold: EMA-smoothed per-batch training log, one line per seed, faint: raw; "
                 "dashed: held-out eval during training)",
                 y=1.16, fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(out_path))


# (key, panel title, per-pair values of a probe record or None where the record keeps none)
PROBE_PANELS = (
    ("chosen_logp_mean", r"$\bar{l}_w$ (chosen) − SFT", lambda probe: np.asarray(probe["chosen"], dtype=float)),
    ("rejected_logp_mean", r"$\bar{l}_l$ (rejected) − SFT", lambda probe: np.asarray(probe["rejected"], dtype=float)),
    ("margin_mean", r"$\Delta = \bar{l}_w - \bar{l}_l$, − SFT",
     lambda probe: np.asarray(probe["chosen"], dtype=float) - np.asarray(probe["rejected"], dtype=float)),
    ("rejected_token_logp_floor", "rejected-token floor − SFT (band: seeds only)", None),
)


def probe_records(records: list[dict]) -> list[dict]:
    """The probe records of a metrics file in step order (as `prefopt.probes.probe_records`; not imported
    because that module's callback side needs torch, which the report environment lacks)."""
    return sorted((record for record in records if "probe" in record), key=lambda record: record["step"])


def probe_trajectory(runs: list[list[dict]], key: str, pair_values, settings: dict) -> dict | None:
    """One method's trajectory of probe `key` as the change from step 0 (its SFT start), over the steps
    every seed probed: {"steps", "mean", "ci_low", "ci_high", "seed_low", "seed_high", "n_seeds"}.

    `runs` holds each seed's probe records. The mean is over seeds of each seed's change; the CI is the
    paired bootstrap over probe pairs of (value at step k − value at step 0), each pair averaged over
    seeds first (None where `pair_values` is None or the seeds probed different numbers of pairs)."""
    by_step = [{record["step"]: record["probe"] for record in records} for records in runs]
    by_step = [steps for steps in by_step if 0 in steps]
    if not by_step:
        return None
    steps = sorted(set.intersection(*(set(seed) for seed in by_step)))
    n = len(steps)
    out = {"steps": np.array(steps, dtype=float), "mean": np.empty(n), "ci_low": np.full(n, np.nan),
           "ci_high": np.full(n, np.nan), "seed_low": np.empty(n), "seed_high": np.empty(n), "n_seeds": len(by_step)}
    for index, step in enumerate(steps):
        changes = [seed[step][key] - seed[0][key] for seed in by_step]
        out["mean"][index] = np.mean(changes)
        out["seed_low"][index], out["seed_high"][index] = min(changes), max(changes)
        if pair_values is None:
            continue
        current = [pair_values(seed[step]) for seed in by_step]
        start = [pair_values(seed[0]) for seed in by_step]
        if len({values.size for values in current + start}) == 1 and current[0].size:
            out["ci_low"][index], out["ci_high"][index] = paired_bootstrap_ci_over_seeds(
                np.vstack(current), np.vstack(start), **settings)
    return out


def plot_probe_trajectories(curves: list[dict], out_path: str | os.PathLike, title: str,
                            settings: dict | None = None) -> Path:
    """The main figure: `PROBE_PANELS` per method (curves grouped by label, one per seed), as changes
    from step 0 with paired-bootstrap CI bands; a figure that says so where no run has probe records."""
    settings = settings or bootstrap_settings([])  # the evaluation's defaults
    methods: dict[str, list[list[dict]]] = {}
    for curve in curves:
        if not Path(curve["metrics"]).exists():
            raise FileNotFoundError(f"training curve {curve.get('label')!r}: {curve['metrics']} does not exist")
        records = probe_records(read_jsonl(curve["metrics"]))
        if records:
            methods.setdefault(curve["label"], []).append(records)
    if not methods:
        fig, axis = plt.subplots(figsize=(8, 2.5))
        axis.axis("off")
        axis.text(0.5, 0.5, "No held-out probe records in these runs' metrics.jsonl\n"
                  "(set evaluation.probes in the config to log them during training).\n"
                  "The per-batch training curves are in the training_curves figure.",
                  ha="center", va="center", fontsize=11, wrap=True)
        fig.suptitle(title, fontsize=12)
        return _save(fig, Path(out_path))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for method_index, (label, runs) in enumerate(methods.items()):
        color = colors[method_index % len(colors)]
        for axis, (key, _, pair_values) in zip(axes.flat, PROBE_PANELS):
            trajectory = probe_trajectory(runs, key, pair_values, settings)
            if trajectory is None:
                log.warning("probes of %r have no step-0 record; not plotted", label)
                continue
            steps = trajectory["steps"]
            seeds = trajectory["n_seeds"]
            axis.plot(steps, trajectory["mean"], color=color, linewidth=1.8, marker="o", markersize=3,
                      label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
            if not np.all(np.isnan(trajectory["ci_low"])):
                axis.fill_between(steps, trajectory["ci_low"], trajectory["ci_high"], color=color, alpha=0.25,
                                  linewidth=0)
            if seeds > 1:
                axis.fill_between(steps, trajectory["seed_low"], trajectory["seed_high"], color=color, alpha=0.10,
                                  linewidth=0, hatch="//", edgecolor=color)
    for axis, (_, panel_title, _) in zip(axes.flat, PROBE_PANELS):
        axis.set_title(panel_title, fontsize=10)
        axis.set_xlabel("training step")
        axis.set_ylabel("change from step 0 (nats per token)")
        axis.axhline(0.0, color="grey", linewidth=0.8)
        axis.grid(alpha=0.3)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(max(len(labels), 1), 5), frameon=False,
               bbox_to_anchor=(0.5, 1.02))
    fig.suptitle(f"{title}\n(held-out probe pairs; dark band: paired-bootstrap 95% CI over pairs, "
                 "hatched band: min-max across seeds)", y=1.08, fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def _metrics_present(table: Table) -> list[tuple]:
    return [metric for metric in BAR_METRICS if any(row.raw.get(metric[0]) is not None for row in table.rows)]


def _scaled(table: Table, key: str, scale: float) -> np.ndarray:
    return np.array([np.nan if row.raw.get(key) is None else row.raw[key] * scale for row in table.rows])


def _error_bars(table: Table, key: str, scale: float, ci_keys, values: np.ndarray) -> np.ndarray | None:
    """[2, rows] distances of the CI ends from the values (0 where a row has no CI); None without any CI."""
    if not ci_keys or all(row.raw.get(ci_keys[0]) is None for row in table.rows):
        return None
    low, high = _scaled(table, ci_keys[0], scale), _scaled(table, ci_keys[1], scale)
    return np.nan_to_num(np.vstack([np.clip(values - low, 0, None), np.clip(high - values, 0, None)]))


def _panel_grid(count: int, width: float = 5.2, height: float = 3.9):
    columns = min(3, count)
    grid_rows = -(-count // columns)
    fig, axes = plt.subplots(grid_rows, columns, figsize=(width * columns, height * grid_rows), squeeze=False)
    for axis in list(axes.flat)[count:]:
        axis.set_visible(False)
    return fig, axes


def plot_offline_bars(table: Table, out_path: str | os.PathLike, title: str) -> Path | None:
    """Bars of the offline metrics of a table (rows in table order), CI error bars where known, the
    reference row's bar (Table 4's full method) in orange."""
    metrics = _metrics_present(table)
    if not table.rows or not metrics:
        return None
    labels = [row.labels[-1] if len({r.block for r in table.rows}) == 1 else f"{row.block}\n{row.labels[-1]}"
              for row in table.rows]
    fig, axes = _panel_grid(len(metrics))
    x = np.arange(len(labels))
    colors = ["tab:orange" if row.role == "reference" else "tab:blue" for row in table.rows]
    for axis, (key, panel_title, scale, ci_keys) in zip(axes.flat, metrics):
        values = _scaled(table, key, scale)
        errors = None
        if ci_keys and all(row.raw.get(ci_keys[0]) is not None for row in table.rows if row.raw.get(key) is not None):
            errors = _error_bars(table, key, scale, ci_keys, values)
        bars = axis.bar(x, np.nan_to_num(values), color=colors, yerr=errors, capsize=4, edgecolor="black",
                        linewidth=0.5)
        axis.bar_label(bars, labels=["n/a" if np.isnan(v) else f"{v:.3g}" for v in values], fontsize=7,
                       padding=2)
        axis.set_title(panel_title, fontsize=10)
        axis.set_xticks(x)
        axis.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
        axis.axhline(0.0, color="black", linewidth=0.6)
        axis.grid(axis="y", alpha=0.3)
        if np.isfinite(values).any() and key in ("preference_accuracy", "demo_accuracy"):
            axis.set_ylim(0, 100)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def sweep_positions(table: Table) -> tuple[np.ndarray, list[str]]:
    """x positions of a sweep's rows and their tick labels: the values themselves, or 0 / 1 for a boolean."""
    return np.array([float(row.value) for row in table.rows]), [format_value(row.value) for row in table.rows]


def plot_sweep(table: Table, out_path: str | os.PathLike, title: str) -> Path | None:
    """One panel per offline metric (and demo accuracy where evaluated): the metric against the swept
    hyperparameter's value with its 95% CI (one line per model), the default value (the reference row)
    marked by a star and a dotted line."""
    metrics = _metrics_present(table)
    if not table.rows or not metrics:
        return None
    x, tick_labels = sweep_positions(table)
    parameter = table.label_headers[-1]
    fig, axes = _panel_grid(len(metrics))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    blocks = list(dict.fromkeys(row.block for row in table.rows))
    for axis, (key, panel_title, scale, ci_keys) in zip(axes.flat, metrics):
        values = _scaled(table, key, scale)
        errors = _error_bars(table, key, scale, ci_keys, values)
        for block_index, block in enumerate(blocks):
            members = np.array([i for i, row in enumerate(table.rows) if row.block == block])
            order = members[np.argsort(x[members], kind="stable")]
            color = colors[block_index % len(colors)]
            axis.errorbar(x[order], values[order], yerr=None if errors is None else errors[:, order], color=color,
                          marker="o", markersize=5, capsize=4, linewidth=1.5,
                          label=block if len(blocks) > 1 else None)
            for i in order:
                if table.rows[i].role == "reference" and not np.isnan(values[i]):
                    axis.plot(x[i], values[i], marker="*", markersize=15, color="tab:orange",
                              markeredgecolor="black", zorder=5)
        for row, position in zip(table.rows, x):
            if row.role == "reference":
                axis.axvline(position, color="tab:orange", linestyle=":", linewidth=1.2)
        for i, value in enumerate(values):
            if np.isnan(value):
                axis.annotate("n/a", (x[i], 0), fontsize=7, ha="center", textcoords="offset points", xytext=(0, 2))
        axis.set_title(panel_title, fontsize=10)
        axis.set_xticks(sorted(set(x)))
        axis.set_xticklabels([dict(zip(x, tick_labels))[position] for position in sorted(set(x))], fontsize=8)
        axis.set_xlabel(parameter)
        axis.grid(alpha=0.3)
        if key == "delta_chosen_logp_vs_sft":
            axis.axhline(0.0, color="black", linewidth=0.6)
        if np.isfinite(values).any() and key in ("preference_accuracy", "demo_accuracy"):
            axis.set_ylim(0, 100)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper right", frameon=False)
    defaults = sorted({format_value(row.value) for row in table.rows if row.role == "reference"})
    fig.suptitle(f"{title}\n(error bars: 95% bootstrap CI over held-out items; ★ and dotted line: the default "
                 f"{parameter} = {', '.join(defaults) or 'n/a'})", fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(out_path))


def figure_name(table: Table) -> str:
    """The PNG of an ablations or sweep table: table4_ablations.png; a sweep named after its hyperparameter
    keeps its name (sweep_delta.png), the paper's numbered one adds its label header (table5_exponent_p.png)."""
    if table.kind == "ablations":
        return f"{table.name}_ablations.png"
    if table.parameter and table.name.endswith(table.parameter):
        return f"{table.name}.png"
    return f"{table.name}_{re.sub(r'[^a-z0-9]+', '_', table.label_headers[-1].lower()).strip('_')}.png"


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text).strip("-") or "model"


FIGURE_KINDS = ("ablations", "sweep")  # the kinds of table with a figure (Table 3 has none)


def write_figures(manifest: dict | str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """All figures of the manifest into `out_dir`; returns the paths written."""
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    check_manifest(manifest)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    curves_by_model: dict[str, list[dict]] = {}
    for index, curve in enumerate(manifest.get("training_curves") or []):
        for key in ("model", "label", "metrics"):
            if key not in curve:
                raise KeyError(f"training_curves[{index}] has no {key!r}")
        curves_by_model.setdefault(curve["model"], []).append(curve)
    methods_rows = [row for table in manifest["tables"] if table["kind"] == "methods" for row in table["rows"]]
    for model, curves in curves_by_model.items():
        label = curves[0].get("model_label") or model
        settings = bootstrap_settings([results for row in methods_rows if row.get("model") == model
                                       for results in row_seed_results(row)])
        written.append(plot_probe_trajectories(
            curves, out_dir / f"probe_trajectories_{_slug(model)}.png",
            f"{label}: held-out probes during preference training, change from SFT", settings))
        path = plot_training_curves(curves, out_dir / f"training_curves_{_slug(model)}.png",
                                    f"{label}: per-batch chosen / rejected log-probs during preference training")
        if path:
            written.append(path)
    for table in [build_table(manifest, spec["name"]) for spec in manifest["tables"] if spec["kind"] in FIGURE_KINDS]:
        method = table.method_label or ""
        if table.kind == "ablations":
            path = plot_offline_bars(table, out_dir / figure_name(table),
                                     f"{table.title}: {method} component ablations (held-out offline metrics)")
        else:
            path = plot_sweep(table, out_dir / figure_name(table),
                              f"{table.title}: {table.description.rstrip('.')} (held-out metrics)")
        if path:
            written.append(path)
    return written
