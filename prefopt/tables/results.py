"""Reading what the tables are built from: the manifest, each run's result files, and the per-example
file an evaluation writes beside its result (`<benchmark>.examples.jsonl`). No statistics here."""

from __future__ import annotations

import json
import math
import os

from prefopt.io import read_jsonl

TABLE_KEYS = ("name", "kind", "rows")
KINDS = ("methods", "ablations", "sweep")  # prefopt.plan.Table.kind
EVALUATION_BENCHMARKS = ("offline", "demo_generation")  # the ones with per-example files

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

OFFLINE_METRICS = ("preference_accuracy", "margin_mean", "chosen_logp_mean", "rejected_logp_mean",
                   "rejected_token_logp_floor", "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
                   "chosen_token_entropy_mean")
# Judged scores and the per-pair means with their CIs: read from result files, and the csv's first raw columns.
SCORE_KEYS = (
    "mt_bench", "mt_bench_turn1", "mt_bench_turn2",
    "arena_hard", "arena_hard_ci_low", "arena_hard_ci_high",
    "arena_hard_sc", "arena_hard_sc_ci_low", "arena_hard_sc_ci_high",
    "preference_accuracy", "preference_accuracy_ci_low", "preference_accuracy_ci_high",
    "margin_mean", "margin_mean_ci_low", "margin_mean_ci_high",
    "chosen_logp_mean", "chosen_logp_mean_ci_low", "chosen_logp_mean_ci_high", "rejected_logp_mean",
)
COUNT_KEYS = ("n_offline", "n_demo", "n_mt_bench_valid", "n_mt_bench_failed", "n_arena_hard_valid",
              "n_arena_hard_failed")
# Raw values of one run (one seed) read from its result files; with several seeds each is their mean.
RESULT_KEYS = (
    *SCORE_KEYS,
    "rejected_token_logp_floor", "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
    "chosen_token_entropy_mean",
    "demo_accuracy", "demo_accuracy_ci_low", "demo_accuracy_ci_high",
    *COUNT_KEYS,
)


# ------------------------------------------------------------------------------------------- manifest


def load_manifest(path: str | os.PathLike) -> dict:
    """The manifest `prefopt.plan.table_manifest` wrote, its tables checked for their keys and kinds."""
    with open(path, encoding="utf-8") as handle:
        manifest = json.load(handle)
    check_manifest(manifest, str(path))
    return manifest


def check_manifest(manifest: dict, where: str = "manifest") -> None:
    tables = manifest.get("tables")
    if not isinstance(tables, list):
        raise KeyError(f"{where}: manifest has no 'tables' list")
    for index, table in enumerate(tables):
        missing = [key for key in TABLE_KEYS if key not in table]
        if missing:
            raise KeyError(f"{where}: tables[{index}] has no {', '.join(map(repr, missing))}")
        if table["kind"] not in KINDS:
            raise ValueError(f"{where}: tables[{index}] ({table['name']}) has kind {table['kind']!r}; "
                             f"expected one of {KINDS}")


def manifest_table(manifest: dict, name: str) -> dict:
    """The manifest's table called `name`."""
    check_manifest(manifest)
    for table in manifest["tables"]:
        if table["name"] == name:
            return table
    raise KeyError(f"unknown table {name!r}; the manifest has {[table['name'] for table in manifest['tables']]}")


def rows_with_role(manifest: dict, role: str) -> list[tuple[str, int, dict]]:
    """(table name, row index, row) of every row of the manifest with this role."""
    return [(table["name"], index, row) for table in manifest.get("tables", [])
            for index, row in enumerate(table["rows"]) if row.get("role") == role]


def row_seed_results(entry: dict) -> list[dict]:
    """One {benchmark: result path} per seed (`seed_results`; a row without it is one run)."""
    return list(entry.get("seed_results") or [entry.get("results") or {}])


# --------------------------------------------------------------------------------------- result files


def read_result(path: str, where: str) -> dict:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{where}: result file {path} does not exist") from error
    except json.JSONDecodeError as error:
        raise ValueError(f"{where}: result file {path} is not valid JSON: {error}") from error


def number(value) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _metric(result: dict, key: str, where: str) -> float | None:
    metrics = result.get("metrics")
    if not isinstance(metrics, dict):
        raise KeyError(f"{where}: result has no 'metrics' object")
    return number(metrics.get(key))


def _ci(result: dict, key: str) -> tuple[float | None, float | None]:
    interval = (result.get("ci") or {}).get(key)
    if not interval:
        return None, None
    return number(interval[0]), number(interval[1])


def raw_values(results: dict, where: str, not_run: dict) -> tuple[dict, dict, dict, list[str]]:
    """(raw values, missing benchmark -> reason, benchmark -> caveat, judge model names) of one run's
    result files (`results`: {benchmark: path})."""
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
        result = read_result(path, f"{where} {benchmark}")
        if result.get("judge_model"):
            judges.append(str(result["judge_model"]))
        if benchmark == "mt_bench":
            score = result.get("score") or {}
            raw["mt_bench"] = number(score.get("overall"))
            raw["mt_bench_turn1"] = number(score.get("turn1"))
            raw["mt_bench_turn2"] = number(score.get("turn2"))
            raw["n_mt_bench_valid"] = number(result.get("n_valid"))
            raw["n_mt_bench_failed"] = number(result.get("n_failed"))
            if raw["mt_bench"] is None:
                missing[benchmark] = JUDGMENTS_ALL_FAILED.format(name="MT-Bench", counts="n_mt_bench_failed")
            elif raw["n_mt_bench_failed"]:
                notes[benchmark] = JUDGMENTS_SOME_FAILED.format(name="MT-Bench", counts="n_mt_bench_valid / _failed")
        elif benchmark == "arena_hard":
            raw["arena_hard"] = number(result.get("score"))
            raw["arena_hard_ci_low"] = number(result.get("ci_low"))
            raw["arena_hard_ci_high"] = number(result.get("ci_high"))
            raw["n_arena_hard_valid"] = number(result.get("n_valid"))
            raw["n_arena_hard_failed"] = number(result.get("n_failed"))
            arena_model_id = result.get("model_id")
            if raw["arena_hard"] is None:
                missing[benchmark] = JUDGMENTS_ALL_FAILED.format(name="Arena-Hard", counts="n_arena_hard_failed")
            elif raw["n_arena_hard_failed"]:
                notes[benchmark] = JUDGMENTS_SOME_FAILED.format(name="Arena-Hard",
                                                                counts="n_arena_hard_valid / _failed")
        elif benchmark == "arena_hard_style_control":
            # One file for every judged model (a joint fit, as upstream); this row's entry by model id.
            summary = (result.get("models") or {}).get(arena_model_id) or {}
            raw["arena_hard_sc"] = number(summary.get("score"))
            raw["arena_hard_sc_ci_low"] = number(summary.get("ci_low"))
            raw["arena_hard_sc_ci_high"] = number(summary.get("ci_high"))
            if "arena_hard" in missing:
                missing[benchmark] = missing["arena_hard"]
            elif raw["arena_hard_sc"] is None:
                missing[benchmark] = "Arena-Hard with style control produced no score for this model"
            elif "arena_hard" in notes:
                notes[benchmark] = notes["arena_hard"]
        elif benchmark == "offline":
            for key in OFFLINE_METRICS:
                raw[key] = _metric(result, key, f"{where} {benchmark}")
            for key in ("preference_accuracy", "margin_mean", "chosen_logp_mean"):
                raw[f"{key}_ci_low"], raw[f"{key}_ci_high"] = _ci(result, key)
            raw["n_offline"] = number(result.get("n"))
        else:
            raw["demo_accuracy"] = _metric(result, "accuracy", f"{where} {benchmark}")
            raw["demo_accuracy_ci_low"], raw["demo_accuracy_ci_high"] = _ci(result, "accuracy")
            raw["n_demo"] = number(result.get("n"))
    return raw, missing, notes, judges


def floor_quantile(entry: dict, where: str) -> float | None:
    """The rejected-floor quantile of a row's (first seed's) offline result; None without one."""
    path = row_seed_results(entry)[0].get("offline")
    if not path:
        return None
    return number(read_result(path, f"{where} offline").get("metrics", {}).get("rejected_floor_quantile"))


def evaluation_settings(seed_results: list[dict]) -> dict | None:
    """{"n_resamples", "seed"} an evaluation recorded in its result (evaluate.py `settings`), or None."""
    for results in seed_results:
        for path in results.values():
            settings = (read_result(path, path).get("settings") or {}) if path else {}
            if "n_resamples" in settings:
                return {"n_resamples": int(settings["n_resamples"]), "seed": int(settings.get("seed", 0))}
    return None


# ---------------------------------------------------------------------------------- per-example files


def examples_path(result_path: str) -> str:
    """The per-example file an evaluation writes next to its result (`rules/eval.smk`)."""
    stem = result_path[:-len(".json")] if result_path.endswith(".json") else result_path
    return stem + ".examples.jsonl"


def item_records(result_path: str | None) -> dict | None:
    """{(prompt_id, occurrence): per-example record} in file order, or None without the file."""
    if not result_path or not os.path.exists(examples_path(result_path)):
        return None
    records, seen = {}, {}
    for record in read_jsonl(examples_path(result_path)):
        prompt_id = record.get("prompt_id")
        seen[prompt_id] = seen.get(prompt_id, -1) + 1
        records[(prompt_id, seen[prompt_id])] = record
    return records


def seed_items(seed_results: list[dict], benchmark: str) -> list[dict] | None:
    """Each seed's item records of `benchmark`, or None unless every seed has them on the same items."""
    items = [item_records(results.get(benchmark)) for results in seed_results]
    if not items or any(seed is None for seed in items) or any(seed.keys() != items[0].keys() for seed in items):
        return None
    return items
