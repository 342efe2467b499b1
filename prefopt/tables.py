"""Tables 3-5 of the paper from result files, as .csv (raw numbers), .md and .tex.

    python workflow/scripts/make_tables.py --manifest results/tables/manifest.json --out-dir results/tables

The manifest (written by the DAG, `prefopt.plan.table_manifest_rows`) lists the rows of each table
and, per row, the result file of each benchmark (`results`, the first seed's) and of every seed
(`seed_results`, optional: a row without it is one run)::

    {"judge": "gpt-4o-2024-08-06" | null,
     "table3": [{"model": "smollm2", "model_label": "SmolLM2-135M", "method_label": "+ SLIME (ours)",
                 "run": "slime-1a2b", "results": {"offline": "...json", "demo_generation": "...json",
                                                  "mt_bench": "...json", "arena_hard": "...json"}}, ...],
     "table4": [{"model": "smollm2", "variant": "Full SLIME", "run": ..., "results": {...}}, ...],
     "table5": [{"model": "smollm2", "p": 2.5, "default": true, "run": ..., "results": {...}}, ...],
     "not_run": {"mt_bench": "why it was not run", ...}}

Columns: the paper's (MT-Bench, Arena-Hard and its CI, "-1.1 / +1.0" offsets as in the paper), then
the offline ones of `prefopt.evaluation.offline` / `demo_accuracy`. As in the paper, the best value
per model block and ranked column is bold and the second underlined; ties share the mark, values
are compared as displayed, and "Base (Pretrain)" rows are not ranked (in the paper's Table 3 the
Qwen3 base row beats the underlined SimPO row). "Δ chosen logp vs SFT" is this row's mean l̄_w minus
that of the same model's SFT row in Table 3 (the paper's "unlearning", section 7, is a negative
value). A benchmark without a result shows "—" and a footnote saying why.

Uncertainty (docs/uncertainty.md): every offline cell carries a 95% percentile-bootstrap CI over the
held-out items, computed from the per-example file next to each result (`<benchmark>.examples.jsonl`,
items matched by prompt_id and occurrence). Δ chosen logp vs SFT and demo accuracy vs SFT use a
paired bootstrap over the items both rows scored; "†" marks those whose CI excludes zero. With
several seeds a cell is the across-seed mean, "± sd" its spread, and the CIs average each item over
seeds first. One seed and no per-example files give the result files' own CIs.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prefopt.evaluation.bootstrap import (PooledQuantile, bootstrap_ci, item_bootstrap_ci,
                                          paired_bootstrap_ci_over_seeds, seed_mean_items)
from prefopt.io import read_jsonl, write_text_atomic

TABLE_NAMES = ("table3", "table4", "table5")
JUDGMENTS_ALL_FAILED = ("every {name} judgment failed (no verdict in the judge's reply, or the judge rejected the "
                        "request); the csv column {counts} counts them")
JUDGMENTS_SOME_FAILED = ("some {name} judgments failed (no verdict, or rejected by the judge) and the score covers "
                         "the others; the csv columns {counts} count them")

BENCHMARK_NAMES = {
    "mt_bench": "MT-Bench",
    "arena_hard": "Arena-Hard",
    "arena_hard_style_control": "Arena-Hard (style control)",
    "offline": "offline preference metrics",
    "demo_generation": "demo accuracy",
}

CAPTIONS = {
    "table3": ("Evaluation results across benchmarks. We compare the raw pretrained base model, the supervised "
               "fine-tuned (SFT) baseline, and subsequent preference optimization methods."),
    "table4": "Ablation results for individual components of the SLIME loss.",
    "table5": "Effect of the stabilizing loss exponent p on SLIME performance.",
}


@dataclass(frozen=True)
class Column:
    """One displayed benchmark column. `key` names the raw value in the csv and in `TableRow.raw`."""

    key: str
    header: str
    tex_header: str
    benchmark: str
    decimals: int
    scale: float = 1.0
    higher_is_better: bool | None = True  # None: not ranked
    signed: bool = False
    ci_keys: tuple[str, str] | None = None  # raw keys of a CI printed after the value as "[lo, hi]"
    kind: str = "number"  # "number" | "offset_ci" (Arena-Hard's "-low / +high")
    significance_key: str | None = None  # raw key: True where the paired CI of the difference from SFT excludes 0

    @property
    def seed_sd_key(self) -> str:
        return f"{self.key}_seed_sd"


def _ci_keys(key: str) -> tuple[str, str]:
    return f"{key}_ci_low", f"{key}_ci_high"


def _columns(floor_quantile: float) -> list[Column]:
    quantile = f"q{round(floor_quantile * 100):02d}" if floor_quantile < 0.1 else f"q{floor_quantile:g}"
    return [
        Column("mt_bench", "MT-Bench ↑", r"MT-Bench $\uparrow$", "mt_bench", 2),
        Column("arena_hard", "Arena-Hard ↑", r"Arena-Hard $\uparrow$", "arena_hard", 1),
        Column("arena_hard_ci", "Arena-Hard CI", "Arena-Hard CI", "arena_hard", 1, higher_is_better=None,
               ci_keys=("arena_hard_ci_low", "arena_hard_ci_high"), kind="offset_ci"),
        Column("arena_hard_sc", "Arena-Hard SC ↑", r"Arena-Hard SC $\uparrow$", "arena_hard_style_control", 1),
        Column("arena_hard_sc_ci", "Arena-Hard SC CI", "Arena-Hard SC CI", "arena_hard_style_control", 1,
               higher_is_better=None, ci_keys=("arena_hard_sc_ci_low", "arena_hard_sc_ci_high"), kind="offset_ci"),
        Column("preference_accuracy", "Pref. acc. (%) ↑", r"Pref.\ acc.\ (\%) $\uparrow$", "offline", 1, scale=100.0,
               ci_keys=_ci_keys("preference_accuracy")),
        Column("margin_mean", "Margin ↑", r"Margin $\uparrow$", "offline", 3, ci_keys=_ci_keys("margin_mean")),
        Column("delta_chosen_logp_vs_sft", "Δ chosen logp vs SFT ↑", r"$\Delta$ chosen logp vs SFT $\uparrow$",
               "offline", 3, signed=True, ci_keys=_ci_keys("delta_chosen_logp_vs_sft"),
               significance_key="delta_chosen_logp_vs_sft_ci_excludes_zero"),
        Column("rejected_token_logp_floor", f"Rejected floor ({quantile}) ↑",
               rf"Rejected floor ({quantile}) $\uparrow$", "offline", 2, ci_keys=_ci_keys("rejected_token_logp_floor")),
        Column("chosen_token_entropy_mean", "Entropy", "Entropy", "offline", 2, higher_is_better=None,
               ci_keys=_ci_keys("chosen_token_entropy_mean")),
        Column("demo_accuracy", "Demo acc. (%) ↑ [95% CI]", r"Demo acc.\ (\%) $\uparrow$ [95\% CI]",
               "demo_generation", 1, scale=100.0, ci_keys=_ci_keys("demo_accuracy"),
               significance_key="demo_accuracy_vs_sft_ci_excludes_zero"),
    ]


# Judged scores and the per-pair means with their CIs: read from result files, and the csv's first raw columns.
_SCORE_KEYS = (
    "mt_bench", "mt_bench_turn1", "mt_bench_turn2",
    "arena_hard", "arena_hard_ci_low", "arena_hard_ci_high",
    "arena_hard_sc", "arena_hard_sc_ci_low", "arena_hard_sc_ci_high",
    "preference_accuracy", "preference_accuracy_ci_low", "preference_accuracy_ci_high",
    "margin_mean", "margin_mean_ci_low", "margin_mean_ci_high",
    "chosen_logp_mean", "chosen_logp_mean_ci_low", "chosen_logp_mean_ci_high", "rejected_logp_mean",
)
_COUNT_KEYS = ("n_offline", "n_demo", "n_mt_bench_valid", "n_mt_bench_failed", "n_arena_hard_valid",
               "n_arena_hard_failed")
# Raw values of one run (one seed) read from its result files; with several seeds each is their mean.
RESULT_KEYS = (
    *_SCORE_KEYS,
    "rejected_token_logp_floor", "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
    "chosen_token_entropy_mean",
    "demo_accuracy", "demo_accuracy_ci_low", "demo_accuracy_ci_high",
    *_COUNT_KEYS,
)
# Values with an across-seed spread (csv `<key>_seed_sd`); the differences from SFT are per seed too.
SEED_KEYS = ("mt_bench", "arena_hard", "arena_hard_sc", "preference_accuracy", "margin_mean", "chosen_logp_mean",
             "rejected_logp_mean", "delta_chosen_logp_vs_sft", "rejected_token_logp_floor",
             "chosen_token_entropy_mean", "demo_accuracy", "demo_accuracy_vs_sft")
# Raw csv columns after the label columns, in order.
RAW_KEYS = (
    *_SCORE_KEYS,
    "delta_chosen_logp_vs_sft", "delta_chosen_logp_vs_sft_ci_low", "delta_chosen_logp_vs_sft_ci_high",
    "delta_chosen_logp_vs_sft_ci_excludes_zero",
    "rejected_token_logp_floor", "rejected_token_logp_floor_ci_low", "rejected_token_logp_floor_ci_high",
    "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
    "chosen_token_entropy_mean", "chosen_token_entropy_mean_ci_low", "chosen_token_entropy_mean_ci_high",
    "demo_accuracy", "demo_accuracy_ci_low", "demo_accuracy_ci_high",
    "demo_accuracy_vs_sft", "demo_accuracy_vs_sft_ci_low", "demo_accuracy_vs_sft_ci_high",
    "demo_accuracy_vs_sft_ci_excludes_zero",
    *_COUNT_KEYS,
    "n_seeds", *(f"{key}_seed_sd" for key in SEED_KEYS),
)


@dataclass
class TableRow:
    block: str                      # model label; rows of one block are ranked together
    labels: list[str]               # the label cells (Model, Method / Variant / Exponent p)
    ranked: bool                    # False for the base model (not ranked, as in the paper)
    raw: dict[str, float | None]
    missing: dict[str, str] = field(default_factory=dict)  # benchmark -> why it has no value
    notes: dict[str, str] = field(default_factory=dict)  # benchmark -> a caveat on the value it has
    csv_labels: dict = field(default_factory=dict)  # label columns of the csv (raw p, default flag, ...)


@dataclass
class Table:
    name: str
    caption: str
    label_headers: list[str]
    columns: list[Column]
    rows: list[TableRow]
    notes: list[str]
    marks: dict[tuple[int, str], str] = field(default_factory=dict)  # (row, column key) -> "best" | "second"
    footnotes: dict[str, str] = field(default_factory=dict)  # reason -> letter
    footnote_columns: dict[str, list[str]] = field(default_factory=dict)  # reason -> column headers


# ---------------------------------------------------------------------------------------------
# Reading results


def load_manifest(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    for name in TABLE_NAMES:
        if name not in manifest:
            raise KeyError(f"{path}: manifest has no {name!r} list")
    return manifest


def _read_result(path: str, where: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}: result file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: result file {path} is not valid JSON: {error}") from error


def _number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metric(result: dict, key: str, where: str) -> float | None:
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        raise KeyError(f"{where}: result has no 'metrics' object")
    return _number(metrics.get(key))


def _ci(result: dict, key: str) -> tuple[float | None, float | None]:
    interval = (result.get("ci") or {}).get(key)
    if not interval:
        return None, None
    return _number(interval[0]), _number(interval[1])


def _raw_values(entry: dict, where: str, not_run: dict) -> tuple[dict, dict, list[str]]:
    """(raw values, missing benchmark -> reason, benchmark -> caveat, judge model names) of one manifest row."""
    results = entry.get("results") or {}
    raw: dict[str, float | None] = {key: None for key in RESULT_KEYS}
    missing: dict[str, str] = {}
    notes: dict[str, str] = {}
    arena_model_id = None
    judges: list[str] = []
    for benchmark in BENCHMARK_NAMES:
        path = results.get(benchmark)
        if not path:
            missing[benchmark] = (not_run.get(benchmark) or not_run.get(benchmark.replace("_style_control", ""))
                                  or f"not evaluated (the manifest lists no '{benchmark}' result)")
            continue
        result = _read_result(path, f"{where} {benchmark}")
        if result.get("judge_model"):
            judges.append(str(result["judge_model"]))
        if benchmark == "mt_bench":
            score = result.get("score") or {}
            raw["mt_bench"] = _number(score.get("overall"))
            raw["mt_bench_turn1"] = _number(score.get("turn1"))
            raw["mt_bench_turn2"] = _number(score.get("turn2"))
            raw["n_mt_bench_valid"] = _number(result.get("n_valid"))
            raw["n_mt_bench_failed"] = _number(result.get("n_failed"))
            if raw["mt_bench"] is None:
                missing[benchmark] = JUDGMENTS_ALL_FAILED.format(name="MT-Bench", counts="n_mt_bench_failed")
            elif raw["n_mt_bench_failed"]:
                notes[benchmark] = JUDGMENTS_SOME_FAILED.format(name="MT-Bench", counts="n_mt_bench_valid / _failed")
        elif benchmark == "arena_hard":
            raw["arena_hard"] = _number(result.get("score"))
            raw["arena_hard_ci_low"] = _number(result.get("ci_low"))
            raw["arena_hard_ci_high"] = _number(result.get("ci_high"))
            raw["n_arena_hard_valid"] = _number(result.get("n_valid"))
            raw["n_arena_hard_failed"] = _number(result.get("n_failed"))
            arena_model_id = result.get("model_id")
            if raw["arena_hard"] is None:
                missing[benchmark] = JUDGMENTS_ALL_FAILED.format(name="Arena-Hard", counts="n_arena_hard_failed")
            elif raw["n_arena_hard_failed"]:
                notes[benchmark] = JUDGMENTS_SOME_FAILED.format(name="Arena-Hard",
                                                                counts="n_arena_hard_valid / _failed")
        elif benchmark == "arena_hard_style_control":
            # One file for every judged model (a joint fit, as upstream); this row's entry by model id.
            summary = (result.get("models") or {}).get(arena_model_id) or {}
            raw["arena_hard_sc"] = _number(summary.get("score"))
            raw["arena_hard_sc_ci_low"] = _number(summary.get("ci_low"))
            raw["arena_hard_sc_ci_high"] = _number(summary.get("ci_high"))
            if "arena_hard" in missing:
                missing[benchmark] = missing["arena_hard"]
            elif raw["arena_hard_sc"] is None:
                missing[benchmark] = "Arena-Hard with style control produced no score for this model"
            elif "arena_hard" in notes:
                notes[benchmark] = notes["arena_hard"]
        elif benchmark == "offline":
            for key in ("preference_accuracy", "margin_mean", "chosen_logp_mean", "rejected_logp_mean",
                        "rejected_token_logp_floor", "rejected_token_logp_min",
                        "rejected_token_frac_below_neg_delta", "chosen_token_entropy_mean"):
                raw[key] = _metric(result, key, f"{where} {benchmark}")
            raw["preference_accuracy_ci_low"], raw["preference_accuracy_ci_high"] = _ci(result, "preference_accuracy")
            raw["margin_mean_ci_low"], raw["margin_mean_ci_high"] = _ci(result, "margin_mean")
            raw["chosen_logp_mean_ci_low"], raw["chosen_logp_mean_ci_high"] = _ci(result, "chosen_logp_mean")
            raw["n_offline"] = _number(result.get("n"))
        else:
            raw["demo_accuracy"] = _metric(result, "accuracy", f"{where} {benchmark}")
            raw["demo_accuracy_ci_low"], raw["demo_accuracy_ci_high"] = _ci(result, "accuracy")
            raw["n_demo"] = _number(result.get("n"))
    return raw, missing, notes, judges


def _is_sft(entry: dict) -> bool:
    return entry.get("run") == "sft" or str(entry.get("method_label", "")).strip().lower() == "sft"


def _is_base(entry: dict) -> bool:
    return entry.get("run") == "base" or str(entry.get("method_label", "")).strip().lower().startswith("base")


# ---------------------------------------------------------------------------------------------
# Seeds and per-item uncertainty


NO_EXAMPLES = ("a result without its per-example file (<benchmark>.examples.jsonl) keeps its result file's CIs; "
               "its differences from SFT and its rejected floor then have no CI")
NO_FLOOR_TOKENS = ("a per-example file without rejected_token_logps (written before they were recorded) gives "
                   "the rejected floor no CI")
ITEMS_DIFFER = "a row scored on other held-out items than its SFT row has no paired CI of its difference from SFT"


def row_seed_results(entry: dict) -> list[dict]:
    """One {benchmark: result path} per seed (`seed_results`; a row without it is one run)."""
    return list(entry.get("seed_results") or [entry.get("results") or {}])


def examples_path(result_path: str) -> str:
    """The per-example file an evaluation writes next to its result (`rules/eval.smk`)."""
    return result_path[:-len(".json")] + ".examples.jsonl" if result_path.endswith(".json") else result_path + ".examples.jsonl"


def _item_records(result_path: str | None) -> dict | None:
    """{(prompt_id, occurrence): per-example record} in file order, or None without the file."""
    if not result_path or not os.path.exists(examples_path(result_path)):
        return None
    records, seen = {}, {}
    for record in read_jsonl(examples_path(result_path)):
        prompt_id = record.get("prompt_id")
        seen[prompt_id] = seen.get(prompt_id, -1) + 1
        records[(prompt_id, seen[prompt_id])] = record
    return records


def _seed_items(seed_results: list[dict], benchmark: str) -> list[dict] | None:
    """Each seed's item records of `benchmark`, or None unless every seed has them on the same items."""
    items = [_item_records(results.get(benchmark)) for results in seed_results]
    if not items or any(seed is None for seed in items) or any(seed.keys() != items[0].keys() for seed in items):
        return None
    return items


def _matrix(items: list[dict], field_name: str, keys) -> np.ndarray:
    """`[seeds, items]` of one per-example field, items in `keys` order."""
    return np.array([[float(seed[key][field_name]) for key in keys] for seed in items], dtype=np.float64)


@dataclass
class Reference:
    """The same model's SFT row of Table 3, what "vs SFT" differences are taken from."""

    chosen_logp_mean: float | None = None
    demo_accuracy: float | None = None
    offline_items: list[dict] | None = None
    demo_items: list[dict] | None = None


def bootstrap_settings(seed_results: list[dict]) -> dict:
    """n_resamples and seed of the evaluation's own CIs (evaluate.py `settings`), so recomputed ones match."""
    for results in seed_results:
        for path in results.values():
            settings = (_read_result(path, path).get("settings") or {}) if path else {}
            if "n_resamples" in settings:
                return {"n_resamples": int(settings["n_resamples"]), "seed": int(settings.get("seed", 0))}
    return {"n_resamples": 1000, "seed": 0}


def _excludes_zero(low: float, high: float) -> bool:
    return bool(low > 0.0 or high < 0.0)


def _offline_cis(raw: dict, items: list[dict], reference: Reference, floor_quantile: float, settings: dict,
                 caveats: set[str]) -> None:
    """CIs of the offline cells over held-out pairs, each pair first averaged over seeds."""
    keys = list(items[0])
    for key, field_name in (("preference_accuracy", "correct"), ("margin_mean", "margin"),
                            ("chosen_logp_mean", "chosen_logp_mean")):
        raw[f"{key}_ci_low"], raw[f"{key}_ci_high"] = bootstrap_ci(
            seed_mean_items(_matrix(items, field_name, keys)), **settings)
    if all("chosen_entropy_mean" in seed[key] and "chosen_tokens" in seed[key] for seed in items for key in keys):
        # Token-pooled mean entropy per seed: a ratio over the resampled pairs, then the seed mean.
        weighted = _matrix(items, "chosen_entropy_mean", keys) * _matrix(items, "chosen_tokens", keys)
        tokens = _matrix(items, "chosen_tokens", keys)
        raw["chosen_token_entropy_mean_ci_low"], raw["chosen_token_entropy_mean_ci_high"] = item_bootstrap_ci(
            lambda i: float(np.mean(weighted[:, i].sum(axis=1) / tokens[:, i].sum(axis=1))), n_items=len(keys),
            **settings)
    if all("rejected_token_logps" in seed[key] for seed in items for key in keys):
        floors = [PooledQuantile([seed[key]["rejected_token_logps"] for key in keys], floor_quantile) for seed in items]
        raw["rejected_token_logp_floor_ci_low"], raw["rejected_token_logp_floor_ci_high"] = item_bootstrap_ci(
            lambda i: float(np.mean([floor(i) for floor in floors])), n_items=len(keys), **settings)
    else:
        caveats.add(NO_FLOOR_TOKENS)
    if reference.offline_items is None:
        caveats.add(NO_EXAMPLES)
    elif reference.offline_items[0].keys() != items[0].keys():
        caveats.add(ITEMS_DIFFER)
    elif raw.get("delta_chosen_logp_vs_sft") is not None:
        low, high = paired_bootstrap_ci_over_seeds(_matrix(items, "chosen_logp_mean", keys),
                                                   _matrix(reference.offline_items, "chosen_logp_mean", keys),
                                                   **settings)
        raw["delta_chosen_logp_vs_sft_ci_low"], raw["delta_chosen_logp_vs_sft_ci_high"] = low, high
        raw["delta_chosen_logp_vs_sft_ci_excludes_zero"] = _excludes_zero(low, high)


def _demo_cis(raw: dict, items: list[dict], reference: Reference, settings: dict, caveats: set[str]) -> None:
    """CIs of demo accuracy and of its difference from SFT over demo prompts, averaged over seeds first."""
    keys = list(items[0])
    correct = _matrix(items, "correct", keys)
    raw["demo_accuracy_ci_low"], raw["demo_accuracy_ci_high"] = bootstrap_ci(seed_mean_items(correct), **settings)
    if reference.demo_items is None:
        caveats.add(NO_EXAMPLES)
    elif reference.demo_items[0].keys() != items[0].keys():
        caveats.add(ITEMS_DIFFER)
    elif raw.get("demo_accuracy_vs_sft") is not None:
        low, high = paired_bootstrap_ci_over_seeds(correct, _matrix(reference.demo_items, "correct", keys), **settings)
        raw["demo_accuracy_vs_sft_ci_low"], raw["demo_accuracy_vs_sft_ci_high"] = low, high
        raw["demo_accuracy_vs_sft_ci_excludes_zero"] = _excludes_zero(low, high)


def _floor_quantile(entry: dict, where: str) -> float | None:
    """The rejected-floor quantile of a row's (first seed's) offline result."""
    path = row_seed_results(entry)[0].get("offline")
    if not path:
        return None
    return _number(_read_result(path, f"{where} offline").get("metrics", {}).get("rejected_floor_quantile"))


def _seed_mean(values: list) -> float | None:
    return None if any(value is None for value in values) else float(np.mean(values))


def _row_values(entry: dict, where: str, not_run: dict, reference: Reference, floor_quantile: float,
                caveats: set[str]) -> tuple[dict, dict, dict, list[str]]:
    """(raw, missing, notes, judges) of one manifest row: the across-seed mean (and sd) of each value,
    95% CIs over held-out items (each item averaged over seeds), paired ones for the differences from SFT."""
    seed_results = row_seed_results(entry)
    per_seed = []
    for seed_index, results in enumerate(seed_results):
        seed_where = where if len(seed_results) == 1 else f"{where} seed {seed_index}"
        values, missing_s, notes_s, judges_s = _raw_values({"results": results}, seed_where, not_run)
        for key, reference_value, own in (("delta_chosen_logp_vs_sft", reference.chosen_logp_mean, "chosen_logp_mean"),
                                          ("demo_accuracy_vs_sft", reference.demo_accuracy, "demo_accuracy")):
            values[key] = (None if values[own] is None or reference_value is None
                           else values[own] - reference_value)
        per_seed.append((values, missing_s, notes_s, judges_s))
    n_seeds = len(per_seed)
    raw: dict = {key: None for key in RAW_KEYS}
    missing, notes, judges = {}, {}, []
    for values, missing_s, notes_s, judges_s in per_seed:
        for benchmark, reason in missing_s.items():
            missing.setdefault(benchmark, reason)
        for benchmark, note in notes_s.items():
            notes.setdefault(benchmark, note)
        judges.extend(judges_s)
    for key in per_seed[0][0]:
        raw[key] = _seed_mean([values[key] for values, *_ in per_seed])
    raw["n_seeds"] = n_seeds
    if n_seeds > 1:
        for key in SEED_KEYS:
            seed_values = [values[key] for values, *_ in per_seed]
            raw[f"{key}_seed_sd"] = None if None in seed_values else float(np.std(seed_values, ddof=1))
        # One run's CI says nothing about the seed mean: recomputed below over items, or none.
        for key in RESULT_KEYS:
            if key.endswith(("_ci_low", "_ci_high")):
                raw[key] = None
    settings = bootstrap_settings(seed_results)
    if "offline" not in missing:
        offline_items = _seed_items(seed_results, "offline")
        if offline_items is not None:
            _offline_cis(raw, offline_items, reference, floor_quantile, settings, caveats)
        else:
            caveats.add(NO_EXAMPLES)
    if "demo_generation" not in missing:
        demo_items = _seed_items(seed_results, "demo_generation")
        if demo_items is not None:
            _demo_cis(raw, demo_items, reference, settings, caveats)
        else:
            caveats.add(NO_EXAMPLES)
    return raw, missing, notes, judges


def _sft_references(manifest: dict, not_run: dict) -> dict[str, Reference]:
    """Model -> its SFT row of Table 3 (the reference of "Δ chosen logp vs SFT" and "demo accuracy vs SFT")."""
    references = {}
    for index, entry in enumerate(manifest.get("table3", [])):
        if not _is_sft(entry):
            continue
        seed_results = row_seed_results(entry)
        per_seed = [_raw_values({"results": results}, f"table3 row {index} (SFT)", not_run)[0]
                    for results in seed_results]
        references[entry.get("model")] = Reference(
            chosen_logp_mean=_seed_mean([values["chosen_logp_mean"] for values in per_seed]),
            demo_accuracy=_seed_mean([values["demo_accuracy"] for values in per_seed]),
            offline_items=_seed_items(seed_results, "offline"),
            demo_items=_seed_items(seed_results, "demo_generation"))
    return references


def _model_label(entry: dict, model_labels: dict) -> str:
    return str(entry.get("model_label") or model_labels.get(entry.get("model")) or entry.get("model") or "")


def _p_label(entry: dict, where: str) -> str:
    if "p" not in entry:
        raise KeyError(f"{where}: table5 rows need 'p'")
    p = float(entry["p"])
    text = f"{p:.1f}" if round(p, 1) == p else f"{p:g}"
    return f"{text} (default)" if entry.get("default") else text


# ---------------------------------------------------------------------------------------------
# Building a table


def build_table(manifest: dict, name: str) -> Table:
    """Rows, marks (bold / underline) and footnotes of one of Tables 3-5."""
    if name not in TABLE_NAMES:
        raise KeyError(f"unknown table {name!r}; expected one of {TABLE_NAMES}")
    entries = manifest.get(name) or []
    not_run = manifest.get("not_run") or {}
    references = _sft_references(manifest, not_run)
    # Table 4/5 rows name the model by key only; Table 3 has its display label.
    model_labels = {entry.get("model"): entry["model_label"] for entry in manifest.get("table3", [])
                    if entry.get("model_label")}
    models = []
    for entry in entries:
        model = _model_label(entry, model_labels)
        if model not in models:
            models.append(model)
    with_model_column = name == "table3" or len(models) > 1
    judges = []
    floor_quantile = None
    caveats: set[str] = set()
    rows: list[TableRow] = []
    for index, entry in enumerate(entries):
        where = f"{name} row {index}"
        row_quantile = _floor_quantile(entry, where)
        if floor_quantile is None:
            floor_quantile = row_quantile
        raw, missing, notes, row_judges = _row_values(entry, where, not_run, references.get(entry.get("model"),
                                                      Reference()), row_quantile or 0.01, caveats)
        judges.extend(row_judges)
        model = _model_label(entry, model_labels)
        if name == "table3":
            if "method_label" not in entry:
                raise KeyError(f"{where}: table3 rows need 'method_label'")
            label = str(entry["method_label"])
        elif name == "table4":
            if "variant" not in entry:
                raise KeyError(f"{where}: table4 rows need 'variant'")
            label = str(entry["variant"])
        else:
            label = _p_label(entry, where)
        labels = [model, label] if with_model_column else [label]
        if name == "table3":
            csv_labels = {"model": model, "method": label}
        elif name == "table4":
            csv_labels = {"model": model, "variant": label}
        else:
            csv_labels = {"model": model, "p": float(entry["p"]), "default": bool(entry.get("default", False))}
        rows.append(TableRow(block=model, labels=labels, ranked=not _is_base(entry), raw=raw, missing=missing,
                             notes=notes, csv_labels=csv_labels))

    columns = _columns(floor_quantile if floor_quantile is not None else 0.01)
    label_headers = {"table3": ["Model", "Method"], "table4": ["Variant"], "table5": ["Exponent p"]}[name]
    if with_model_column and name != "table3":
        label_headers = ["Model"] + label_headers
    table = Table(name=name, caption="", label_headers=label_headers, columns=columns, rows=rows, notes=[])
    _mark_best(table)
    _collect_footnotes(table)
    table.caption = _caption(name, models, with_model_column, judges, manifest.get("judge"))
    table.notes = _notes(table, caveats)
    return table


def _displayed(value: float, column: Column) -> float:
    rounded = round(value * column.scale, column.decimals)
    return 0.0 if rounded == 0 else rounded  # no "-0.0"


def _mark_best(table: Table) -> None:
    """Bold the best and underline the second-best displayed value per block and ranked column."""
    for block in dict.fromkeys(row.block for row in table.rows):
        members = [i for i, row in enumerate(table.rows) if row.block == block and row.ranked]
        for column in table.columns:
            if column.higher_is_better is None:
                continue
            values = {i: _displayed(table.rows[i].raw[column.key], column)
                      for i in members if table.rows[i].raw.get(column.key) is not None}
            if len(values) < 2:
                continue
            distinct = sorted(set(values.values()), reverse=column.higher_is_better)
            if len(distinct) < 2:
                continue  # all equal: nothing to single out
            for i, value in values.items():
                if value == distinct[0]:
                    table.marks[(i, column.key)] = "best"
                elif len(distinct) > 1 and value == distinct[1]:
                    table.marks[(i, column.key)] = "second"


def _cell_missing_reason(row: TableRow, column: Column) -> str | None:
    if column.benchmark in row.missing:
        return row.missing[column.benchmark]
    if column.kind == "offset_ci":
        if (row.raw.get("n_seeds") or 1) > 1:
            return ("the CI of one judged run does not cover the mean of several seeds; the score column shows "
                    "mean ± sd across seeds")
        if any(row.raw.get(key) is None for key in column.ci_keys):
            return f"the {BENCHMARK_NAMES[column.benchmark]} result has no confidence interval"
        return None
    if row.raw.get(column.key) is None:
        if column.key == "delta_chosen_logp_vs_sft":
            return "no offline result of this model's SFT row in Table 3 to compare with"
        return f"the {BENCHMARK_NAMES[column.benchmark]} result has no '{column.key}'"
    return None


def _cell_note(row: TableRow, column: Column) -> str | None:
    """A footnote on a value that is there (some of its judgments failed), else None."""
    if _cell_missing_reason(row, column) is not None or column.kind == "offset_ci":
        return None
    return row.notes.get(column.benchmark)


def _collect_footnotes(table: Table) -> None:
    for row in table.rows:
        for column in table.columns:
            reason = _cell_missing_reason(row, column) or _cell_note(row, column)
            if reason is None:
                continue
            if reason not in table.footnotes:
                table.footnotes[reason] = "abcdefghijklmnopqrstuvwxyz"[len(table.footnotes) % 26]
                table.footnote_columns[reason] = []
            header = column.header.replace(" ↑", "").split(" [")[0]
            if header not in table.footnote_columns[reason]:
                table.footnote_columns[reason].append(header)


def _caption(name: str, models: list[str], with_model_column: bool, judges: list[str], manifest_judge) -> str:
    caption = CAPTIONS[name]
    if name != "table3" and not with_model_column and models and models[0]:
        caption = caption.rstrip(".") + f" (base model: {models[0]})."
    caption += (" ↑: higher is better. The best result per model and benchmark is in bold, the second best "
                "underlined; ties share the mark.")
    if name == "table3":
        caption += " Base (Pretrain) rows are not ranked."
    if isinstance(manifest_judge, dict):
        manifest_judge = manifest_judge.get("model")
    names = list(dict.fromkeys(([str(manifest_judge)] if manifest_judge else []) + judges))
    if names:
        caption += f" MT-Bench and Arena-Hard judge: {', '.join(names)}."
    return caption


def _notes(table: Table, caveats: set[str] = frozenset()) -> list[str]:
    floor = next(c for c in table.columns if c.key == "rejected_token_logp_floor")
    quantile = floor.header.split("(")[1].split(")")[0]
    seeds = sorted({int(row.raw.get("n_seeds") or 1) for row in table.rows}) or [1]
    uncertainty = [
        "[lo, hi] = 95% percentile-bootstrap CI over the held-out items (pairs; prompts for Demo acc.); for the "
        "rejected floor each resample of pairs pools their rejected tokens. Δ chosen logp vs SFT and Demo acc. vs "
        "SFT (csv: demo_accuracy_vs_sft) use a paired bootstrap over the same items as the same model's SFT row; "
        "† = that paired CI excludes zero (on Demo acc., the mark is about its difference from SFT).",
    ]
    if seeds[-1] > 1:
        uncertainty.append(
            f"Rows trained with several seeds (here up to {seeds[-1]}; csv: n_seeds) show the mean ± sd across "
            "seeds (csv: <column>_seed_sd); their CIs average each item over seeds first, so they are over "
            "held-out items, not over seeds.")
    uncertainty.extend(f"Where no CI is shown: {caveat}." for caveat in sorted(caveats))
    return uncertainty + [
        "Offline columns are measured on the held-out preference pairs: Pref. acc. = share of pairs with "
        "l̄_w > l̄_l (mean completion log-probs); Margin = mean l̄_w − l̄_l; Δ chosen logp vs SFT = mean l̄_w "
        "minus the same model's SFT row (negative: the chosen answers lost likelihood, the paper's "
        f"\"unlearning\"); Rejected floor ({quantile}) = quantile of all rejected-token log-probs.",
        "Entropy = mean next-token entropy (nats) over chosen-answer positions; it is not ranked, since "
        "neither a higher nor a lower value is better in itself.",
        "Demo acc. = greedy-answer accuracy on the demo tasks, with a 95% percentile-bootstrap CI.",
        "Arena-Hard = win rate (%) against the baseline, arena-hard-auto v2's plain score; Arena-Hard SC = the "
        "same judgments with style control (answer length and markdown as Bradley-Terry features, fit over "
        "every judged model at once), arena-hard-auto's official configuration.",
    ]


# ---------------------------------------------------------------------------------------------
# Rendering


def _format_value(value: float, column: Column) -> str:
    shown = _displayed(value, column)
    return f"{shown:+.{column.decimals}f}" if column.signed else f"{shown:.{column.decimals}f}"


def _cell_parts(table: Table, row_index: int, column: Column, plus_minus: str = "±"
                ) -> tuple[str | None, str, str | None, bool]:
    """(value text or None when missing, suffix text (" ± sd" across seeds, " [lo, hi]"), footnote letter,
    whether the paired CI of the difference from SFT excludes zero)."""
    row = table.rows[row_index]
    reason = _cell_missing_reason(row, column)
    if reason is not None:
        return None, "", table.footnotes[reason], False
    if column.kind == "offset_ci":
        low, high = (row.raw[key] for key in column.ci_keys)
        return f"-{abs(low):.{column.decimals}f} / +{abs(high):.{column.decimals}f}", "", None, False
    note = _cell_note(row, column)
    suffix = ""
    sd = row.raw.get(column.seed_sd_key)
    if (row.raw.get("n_seeds") or 1) > 1 and sd is not None:
        suffix += f" {plus_minus} {_displayed(sd, column):.{column.decimals}f}"
    if column.ci_keys and row.raw.get(column.ci_keys[0]) is not None and row.raw.get(column.ci_keys[1]) is not None:
        low, high = (_format_value(row.raw[key], column) for key in column.ci_keys)
        suffix += f" [{low}, {high}]"
    significant = bool(column.significance_key and row.raw.get(column.significance_key))
    return _format_value(row.raw[column.key], column), suffix, table.footnotes[note] if note else None, significant


def _md_escape(text: str) -> str:
    return text.replace("|", r"\|")


def _marked_cells(table, index: int, *, missing, best, second, note, significant="†", plus_minus="±") -> list[str]:
    """One row's benchmark cells: `missing(footnote)` for a result that is absent, else the value
    wrapped by `best` or `second` where the row ranks first or second, `significant` after it where its
    paired difference from SFT excludes zero, then its suffix (± sd, [CI]) and `note(footnote)` where the
    value has a caveat."""
    cells = []
    for column in table.columns:
        value, suffix, footnote, is_significant = _cell_parts(table, index, column, plus_minus)
        if value is None:
            cells.append(missing(footnote))
            continue
        mark = table.marks.get((index, column.key))
        if mark == "best":
            value = best(value)
        elif mark == "second":
            value = second(value)
        if is_significant:
            value += significant
        cells.append(value + suffix + (note(footnote) if footnote else ""))
    return cells


def render_markdown(table: Table) -> str:
    headers = table.label_headers + [column.header for column in table.columns]
    lines = [f"**{table.name.replace('table', 'Table ')}.** {table.caption}", ""]
    lines.append("| " + " | ".join(_md_escape(h) for h in headers) + " |")
    lines.append("|" + "|".join([":---"] * len(table.label_headers) + ["---:"] * len(table.columns)) + "|")
    previous_block = None
    for index, row in enumerate(table.rows):
        labels = list(row.labels)
        if len(table.label_headers) > 1 and row.block == previous_block:
            labels[0] = ""  # the model name only on a block's first row, as in the paper
        previous_block = row.block
        cells = [_md_escape(label) for label in labels]
        cells += _marked_cells(table, index, missing=lambda note: f"—<sup>{note}</sup>",
                               best=lambda value: f"**{value}**", second=lambda value: f"<u>{value}</u>",
                               note=lambda letter: f"<sup>{letter}</sup>")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for reason, letter in table.footnotes.items():
        lines.append(f"<sup>{letter}</sup> {', '.join(table.footnote_columns[reason])}: {_md_escape(reason)}  ")
    lines.extend(f"{note}  " for note in table.notes)
    return "\n".join(lines).rstrip() + "\n"


_TEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                 "Δ": r"$\Delta$", "↑": r"$\uparrow$", "−": "$-$", "<": r"$<$", ">": r"$>$", "—": "---", "l̄": r"$\bar{l}$",
                 "†": r"$^\dagger$", "±": r"$\pm$"}


def _tex_escape_plain(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i:i + 2] == "l̄":
            if text[i + 2:i + 4] in ("_w", "_l"):
                out.append(rf"$\bar{{l}}_{text[i + 3]}$")
                i += 4
            else:
                out.append(_TEX_SPECIALS["l̄"])
                i += 2
            continue
        out.append(_TEX_SPECIALS.get(text[i], text[i]))
        i += 1
    return "".join(out)


def tex_escape(text: str) -> str:
    """Text-mode LaTeX for labels, captions and notes; `code` spans become \\texttt."""
    parts = text.split("`")
    if len(parts) % 2 == 0:  # unbalanced backticks: escape literally
        return _tex_escape_plain(text)
    return "".join(_tex_escape_plain(part) if i % 2 == 0 else rf"\texttt{{{_tex_escape_plain(part)}}}"
                   for i, part in enumerate(parts))


def render_latex(table: Table) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`)."""
    spec = "l" * len(table.label_headers) + "r" * len(table.columns)
    headers = [tex_escape(h) for h in table.label_headers] + [column.tex_header for column in table.columns]
    lines = [
        f"% {table.name} generated by prefopt.tables; needs \\usepackage{{booktabs}}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(table.caption)}}}",
        rf"\label{{tab:{table.name}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(headers) + r" \\",
        r"\midrule",
    ]
    previous_block = None
    for index, row in enumerate(table.rows):
        labels = [tex_escape(label) for label in row.labels]
        if len(table.label_headers) > 1:
            if previous_block is not None and row.block != previous_block:
                lines.append(r"\midrule")
            if row.block == previous_block:
                labels[0] = ""
        previous_block = row.block
        cells = list(labels)
        cells += _marked_cells(table, index, missing=lambda note: rf"---\textsuperscript{{{note}}}",
                               best=lambda value: rf"\textbf{{{value}}}",
                               second=lambda value: rf"\underline{{{value}}}",
                               note=lambda letter: rf"\textsuperscript{{{letter}}}",
                               significant=r"$^\dagger$", plus_minus=r"$\pm$")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}}", r"\par\smallskip\footnotesize"]
    for reason, letter in table.footnotes.items():
        lines.append(f"\\textsuperscript{{{letter}}} {tex_escape(', '.join(table.footnote_columns[reason]))}: "
                     f"{tex_escape(reason)}\\\\")
    lines.extend(tex_escape(note) + r"\\" for note in table.notes)
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def render_csv(table: Table) -> str:
    """Raw numbers (no rounding, no marks); empty cells where a value is missing."""
    label_keys = {"table3": ["model", "method"], "table4": ["model", "variant"],
                  "table5": ["model", "p", "default"]}[table.name]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(label_keys + list(RAW_KEYS))
    for row in table.rows:
        labels = [row.csv_labels[key] for key in label_keys]
        writer.writerow(labels + ["" if row.raw.get(key) is None else repr(row.raw[key]) for key in RAW_KEYS])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Paired comparisons between rows (the claims of issue 11: SLIME vs DPO / SimPO, ablations, p)

COMPARISON_METRICS = (  # (name, benchmark, per-example field or None for the pooled rejected floor)
    ("chosen_logp_mean", "offline", "chosen_logp_mean"),
    ("rejected_logp_mean", "offline", "rejected_logp_mean"),
    ("margin_mean", "offline", "margin"),
    ("preference_accuracy", "offline", "correct"),
    ("rejected_token_logp_floor", "offline", None),
    ("demo_accuracy", "demo_generation", "correct"),
)
COMPARISON_HEADER = ("table", "model", "row", "reference", "metric", "difference", "ci_low", "ci_high",
                     "ci_excludes_zero", "n_items", "n_seeds", "n_seeds_reference")


def _row_label(name: str, entry: dict) -> str:
    if name == "table3":
        return str(entry.get("method_label"))
    if name == "table4":
        return str(entry.get("variant"))
    return _p_label(entry, name)


def _comparison_reference(name: str, entries: list[dict]) -> dict | None:
    """The row a table's other rows are compared with: SLIME in Table 3, Full SLIME (the first row) in
    Table 4, the default p in Table 5."""
    if name == "table3":
        return next((entry for entry in entries if "slime" in str(entry.get("method_label", "")).lower()), None)
    if name == "table4":
        return entries[0] if entries else None
    return next((entry for entry in entries if entry.get("default")), None)


def paired_difference(items: list[dict], reference_items: list[dict], field_name: str | None, *,
                      floor_quantile: float, n_resamples: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """(difference, ci_low, ci_high) of a row minus a reference row on the same items, each seed-averaged
    first: the mean of `field_name`, or with `field_name=None` the rejected-token floor (pairs resampled
    jointly for both rows, each row's tokens pooled per seed)."""
    keys = list(items[0])
    settings = {"n_resamples": n_resamples, "seed": seed}
    if field_name is not None:
        run, reference = _matrix(items, field_name, keys), _matrix(reference_items, field_name, keys)
        difference = float(seed_mean_items(run).mean() - seed_mean_items(reference).mean())
        return (difference, *paired_bootstrap_ci_over_seeds(run, reference, **settings))
    floors = [PooledQuantile([seed_items[key]["rejected_token_logps"] for key in keys], floor_quantile)
              for seed_items in items]
    reference_floors = [PooledQuantile([seed_items[key]["rejected_token_logps"] for key in keys], floor_quantile)
                        for seed_items in reference_items]

    def statistic(indices=None) -> float:
        return float(np.mean([floor(indices) for floor in floors])
                     - np.mean([floor(indices) for floor in reference_floors]))

    return (statistic(), *item_bootstrap_ci(statistic, n_items=len(keys), **settings))


def paired_comparisons(manifest: dict) -> list[dict]:
    """Each row of Tables 3-5 minus its table's reference row of the same model (`_comparison_reference`),
    per `COMPARISON_METRICS`, with the paired-bootstrap 95% CI over the items both rows scored. Rows
    without per-example files, on other items, or without token lists (the floor) are left out."""
    comparisons = []
    model_labels = {entry.get("model"): entry["model_label"] for entry in manifest.get("table3", [])
                    if entry.get("model_label")}
    for name in TABLE_NAMES:
        entries = manifest.get(name) or []
        for model in dict.fromkeys(entry.get("model") for entry in entries):
            block = [entry for entry in entries if entry.get("model") == model]
            reference = _comparison_reference(name, block)
            if reference is None:
                continue
            reference_results = row_seed_results(reference)
            settings = bootstrap_settings(reference_results)
            floor_quantile = _floor_quantile(reference, name) or 0.01
            reference_items = {benchmark: _seed_items(reference_results, benchmark)
                               for benchmark in ("offline", "demo_generation")}
            for entry in block:
                if entry is reference or _is_base(entry):
                    continue
                seed_results = row_seed_results(entry)
                for metric, benchmark, field_name in COMPARISON_METRICS:
                    items, base = _seed_items(seed_results, benchmark), reference_items[benchmark]
                    if items is None or base is None or items[0].keys() != base[0].keys():
                        continue
                    if field_name is None and not all("rejected_token_logps" in record for seed_items in items + base
                                                      for record in seed_items.values()):
                        continue
                    difference, low, high = paired_difference(items, base, field_name, floor_quantile=floor_quantile,
                                                              **settings)
                    comparisons.append({
                        "table": name, "model": model_labels.get(model, model), "row": _row_label(name, entry),
                        "reference": _row_label(name, reference), "metric": metric, "difference": difference,
                        "ci_low": low, "ci_high": high, "ci_excludes_zero": _excludes_zero(low, high),
                        "n_items": len(items[0]), "n_seeds": len(items), "n_seeds_reference": len(base)})
    return comparisons


def render_comparisons_csv(comparisons: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COMPARISON_HEADER, lineterminator="\n")
    writer.writeheader()
    writer.writerows(comparisons)
    return buffer.getvalue()


def render_comparisons_markdown(comparisons: list[dict]) -> str:
    lines = ["**Paired comparisons.** Each row minus its table's reference row of the same model (Table 3: "
             "SLIME; Table 4: Full SLIME; Table 5: the default p), on the same held-out items, each item "
             "averaged over seeds first; [95% paired-bootstrap CI]; † = the CI excludes zero. Log-probs in nats "
             "per token, accuracies as fractions.", "",
             "| Table | Model | Row | Reference | Metric | Difference [95% CI] |", "|:---|:---|:---|:---|:---|---:|"]
    for row in comparisons:
        mark = "†" if row["ci_excludes_zero"] else ""
        low, high, difference = (f"{round(row[key], 4) + 0.0:+.4f}" for key in ("ci_low", "ci_high", "difference"))
        lines.append(f"| {row['table'].replace('table', '')} | {_md_escape(str(row['model']))} | "
                     f"{_md_escape(row['row'])} | {_md_escape(row['reference'])} | {row['metric']} | "
                     f"{difference}{mark} [{low}, {high}] |")
    if not comparisons:
        lines.append("| — | — | — | — | — | no per-example files to compare |")
    return "\n".join(lines) + "\n"


def write_tables(manifest: dict | str | os.PathLike, out_dir: str | os.PathLike) -> list[Path]:
    """Write table3/4/5 as .csv, .md and .tex, and the paired comparisons as comparisons.csv / .md, into
    `out_dir`; returns the paths written."""
    if not isinstance(manifest, dict):
        manifest = load_manifest(manifest)
    out_dir = Path(out_dir)
    written = []
    for name in TABLE_NAMES:
        table = build_table(manifest, name)
        for suffix, render in ((".csv", render_csv), (".md", render_markdown), (".tex", render_latex)):
            path = out_dir / f"{name}{suffix}"
            write_text_atomic(path, render(table))
            written.append(path)
    comparisons = paired_comparisons(manifest)
    for suffix, render in ((".csv", render_comparisons_csv), (".md", render_comparisons_markdown)):
        written.append(write_text_atomic(out_dir / f"comparisons{suffix}", render(comparisons)))
    return written
