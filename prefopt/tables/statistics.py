"""The numbers of a table row (docs/uncertainty.md): across-seed means and spreads, 95% bootstrap CIs
over held-out items, paired CIs of differences (from the model's SFT row, and between two rows).

Every offline cell carries a percentile-bootstrap CI over the held-out items, computed from the
per-example files; differences use a paired bootstrap over the items both rows scored. With several
seeds a value is the across-seed mean with its sd, and the CIs average each item over seeds first.
One seed and no per-example files give the result files' own CIs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prefopt.evaluation.bootstrap import (BOOTSTRAP_SEED, FLOOR_QUANTILE, N_RESAMPLES, PooledQuantile,
                                          bootstrap_ci, item_bootstrap_ci, paired_bootstrap_ci_over_seeds,
                                          seed_mean_items)
from prefopt.tables.results import (COUNT_KEYS, RESULT_KEYS, SCORE_KEYS, evaluation_settings, raw_values,
                                    row_seed_results, seed_items)

# Where a result does not record its bootstrap settings or floor quantile, the evaluation's own
# (prefopt.evaluation.bootstrap), so recomputed CIs match.
DEFAULT_FLOOR_QUANTILE = FLOOR_QUANTILE

NO_EXAMPLES = ("a result without its per-example file (<benchmark>.examples.jsonl) keeps its result file's CIs; "
               "its differences from SFT and its rejected floor then have no CI")
NO_FLOOR_TOKENS = ("a per-example file without rejected_token_logps (written before they were recorded) gives "
                   "the rejected floor no CI")
ITEMS_DIFFER = "a row scored on other held-out items than its SFT row has no paired CI of its difference from SFT"

# Values with an across-seed spread (csv `<key>_seed_sd`); the differences from SFT are per seed too.
SEED_KEYS = ("mt_bench", "arena_hard", "arena_hard_sc", "preference_accuracy", "margin_mean", "chosen_logp_mean",
             "rejected_logp_mean", "delta_chosen_logp_vs_sft", "rejected_token_logp_floor",
             "chosen_token_entropy_mean", "demo_accuracy", "demo_accuracy_vs_sft")
# Every raw value of a row (the csv's columns after the label columns, in order).
RAW_KEYS = (
    *SCORE_KEYS,
    "delta_chosen_logp_vs_sft", "delta_chosen_logp_vs_sft_ci_low", "delta_chosen_logp_vs_sft_ci_high",
    "delta_chosen_logp_vs_sft_ci_excludes_zero",
    "rejected_token_logp_floor", "rejected_token_logp_floor_ci_low", "rejected_token_logp_floor_ci_high",
    "rejected_token_logp_min", "rejected_token_frac_below_neg_delta",
    "chosen_token_entropy_mean", "chosen_token_entropy_mean_ci_low", "chosen_token_entropy_mean_ci_high",
    "demo_accuracy", "demo_accuracy_ci_low", "demo_accuracy_ci_high",
    "demo_accuracy_vs_sft", "demo_accuracy_vs_sft_ci_low", "demo_accuracy_vs_sft_ci_high",
    "demo_accuracy_vs_sft_ci_excludes_zero",
    *COUNT_KEYS,
    "n_seeds", *(f"{key}_seed_sd" for key in SEED_KEYS),
)


def bootstrap_settings(seed_results: list[dict]) -> dict:
    """n_resamples and seed of the evaluation's own CIs (evaluate.py `settings`), so recomputed ones match;
    the evaluation's defaults where no result records them."""
    return evaluation_settings(seed_results) or {"n_resamples": N_RESAMPLES, "seed": BOOTSTRAP_SEED}


def excludes_zero(low: float, high: float) -> bool:
    return bool(low > 0.0 or high < 0.0)


def seed_mean(values: list) -> float | None:
    return None if any(value is None for value in values) else float(np.mean(values))


def matrix(items: list[dict], field_name: str, keys) -> np.ndarray:
    """`[seeds, items]` of one per-example field, items in `keys` order."""
    return np.array([[float(seed[key][field_name]) for key in keys] for seed in items], dtype=np.float64)


# ----------------------------------------------------------------------------------- one row's values


@dataclass
class Reference:
    """A model's SFT row, what "vs SFT" differences are taken from."""

    chosen_logp_mean: float | None = None
    demo_accuracy: float | None = None
    offline_items: list[dict] | None = None
    demo_items: list[dict] | None = None


def sft_reference(entry: dict, where: str, not_run: dict) -> Reference:
    """The "vs SFT" reference of one SFT row: its seed-mean values and its per-item records."""
    seed_results = row_seed_results(entry)
    per_seed = [raw_values(results, where, not_run)[0] for results in seed_results]
    return Reference(chosen_logp_mean=seed_mean([values["chosen_logp_mean"] for values in per_seed]),
                     demo_accuracy=seed_mean([values["demo_accuracy"] for values in per_seed]),
                     offline_items=seed_items(seed_results, "offline"),
                     demo_items=seed_items(seed_results, "demo_generation"))


def _offline_cis(raw: dict, items: list[dict], reference: Reference, floor_quantile: float, settings: dict,
                 caveats: set[str]) -> None:
    """CIs of the offline cells over held-out pairs, each pair first averaged over seeds."""
    keys = list(items[0])
    for key, field_name in (("preference_accuracy", "correct"), ("margin_mean", "margin"),
                            ("chosen_logp_mean", "chosen_logp_mean")):
        raw[f"{key}_ci_low"], raw[f"{key}_ci_high"] = bootstrap_ci(
            seed_mean_items(matrix(items, field_name, keys)), **settings)
    if all("chosen_entropy_mean" in seed[key] and "chosen_tokens" in seed[key] for seed in items for key in keys):
        # Token-pooled mean entropy per seed: a ratio over the resampled pairs, then the seed mean.
        weighted = matrix(items, "chosen_entropy_mean", keys) * matrix(items, "chosen_tokens", keys)
        tokens = matrix(items, "chosen_tokens", keys)
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
        low, high = paired_bootstrap_ci_over_seeds(matrix(items, "chosen_logp_mean", keys),
                                                   matrix(reference.offline_items, "chosen_logp_mean", keys),
                                                   **settings)
        raw["delta_chosen_logp_vs_sft_ci_low"], raw["delta_chosen_logp_vs_sft_ci_high"] = low, high
        raw["delta_chosen_logp_vs_sft_ci_excludes_zero"] = excludes_zero(low, high)


def _demo_cis(raw: dict, items: list[dict], reference: Reference, settings: dict, caveats: set[str]) -> None:
    """CIs of demo accuracy and of its difference from SFT over demo prompts, averaged over seeds first."""
    keys = list(items[0])
    correct = matrix(items, "correct", keys)
    raw["demo_accuracy_ci_low"], raw["demo_accuracy_ci_high"] = bootstrap_ci(seed_mean_items(correct), **settings)
    if reference.demo_items is None:
        caveats.add(NO_EXAMPLES)
    elif reference.demo_items[0].keys() != items[0].keys():
        caveats.add(ITEMS_DIFFER)
    elif raw.get("demo_accuracy_vs_sft") is not None:
        low, high = paired_bootstrap_ci_over_seeds(correct, matrix(reference.demo_items, "correct", keys), **settings)
        raw["demo_accuracy_vs_sft_ci_low"], raw["demo_accuracy_vs_sft_ci_high"] = low, high
        raw["demo_accuracy_vs_sft_ci_excludes_zero"] = excludes_zero(low, high)


def row_values(entry: dict, where: str, not_run: dict, reference: Reference, floor_quantile: float,
               caveats: set[str]) -> tuple[dict, dict, dict, list[str]]:
    """(raw, missing, notes, judges) of one manifest row: the across-seed mean (and sd) of each value,
    95% CIs over held-out items (each item averaged over seeds), paired ones for the differences from SFT.
    Reasons a CI is missing are added to `caveats`."""
    seed_results = row_seed_results(entry)
    per_seed = []
    for seed_index, results in enumerate(seed_results):
        seed_where = where if len(seed_results) == 1 else f"{where} seed {seed_index}"
        values, missing_s, notes_s, judges_s = raw_values(results, seed_where, not_run)
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
        raw[key] = seed_mean([values[key] for values, *_ in per_seed])
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
        offline_items = seed_items(seed_results, "offline")
        if offline_items is not None:
            _offline_cis(raw, offline_items, reference, floor_quantile, settings, caveats)
        else:
            caveats.add(NO_EXAMPLES)
    if "demo_generation" not in missing:
        demo_items = seed_items(seed_results, "demo_generation")
        if demo_items is not None:
            _demo_cis(raw, demo_items, reference, settings, caveats)
        else:
            caveats.add(NO_EXAMPLES)
    return raw, missing, notes, judges


# ------------------------------------------------------------------------- paired row-vs-row differences

COMPARISON_METRICS = (  # (name, benchmark, per-example field or None for the pooled rejected floor)
    ("chosen_logp_mean", "offline", "chosen_logp_mean"),
    ("rejected_logp_mean", "offline", "rejected_logp_mean"),
    ("margin_mean", "offline", "margin"),
    ("preference_accuracy", "offline", "correct"),
    ("rejected_token_logp_floor", "offline", None),
    ("demo_accuracy", "demo_generation", "correct"),
)


def paired_difference(items: list[dict], reference_items: list[dict], field_name: str | None, *,
                      floor_quantile: float, n_resamples: int = N_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED) -> tuple[float, float, float]:
    """(difference, ci_low, ci_high) of a row minus a reference row on the same items, each seed-averaged
    first: the mean of `field_name`, or with `field_name=None` the rejected-token floor (pairs resampled
    jointly for both rows, each row's tokens pooled per seed)."""
    keys = list(items[0])
    settings = {"n_resamples": n_resamples, "seed": seed}
    if field_name is not None:
        run, reference = matrix(items, field_name, keys), matrix(reference_items, field_name, keys)
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


class PairedReference:
    """A row the others are compared with: its per-item records of each evaluation, read once."""

    def __init__(self, entry: dict, floor_quantile: float):
        seed_results = row_seed_results(entry)
        self.settings = bootstrap_settings(seed_results)
        self.floor_quantile = floor_quantile
        self.items = {benchmark: seed_items(seed_results, benchmark) for benchmark in ("offline", "demo_generation")}

    def compare(self, entry: dict) -> list[dict]:
        """`entry` minus this reference per `COMPARISON_METRICS`, with the paired-bootstrap 95% CI over the
        items both scored: {"metric", "difference", "ci_low", "ci_high", "ci_excludes_zero", "n_items",
        "n_seeds", "n_seeds_reference"}. Metrics without per-example files on the same items, or without
        token lists (the floor), are left out."""
        seed_results = row_seed_results(entry)
        out = []
        for metric, benchmark, field_name in COMPARISON_METRICS:
            items, reference = seed_items(seed_results, benchmark), self.items[benchmark]
            if items is None or reference is None or items[0].keys() != reference[0].keys():
                continue
            if field_name is None and not all("rejected_token_logps" in record for seed in items + reference
                                              for record in seed.values()):
                continue
            difference, low, high = paired_difference(items, reference, field_name,
                                                      floor_quantile=self.floor_quantile, **self.settings)
            out.append({"metric": metric, "difference": difference, "ci_low": low, "ci_high": high,
                        "ci_excludes_zero": excludes_zero(low, high), "n_items": len(items[0]),
                        "n_seeds": len(items), "n_seeds_reference": len(reference)})
        return out
