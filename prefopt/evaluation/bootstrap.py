"""Percentile-bootstrap confidence intervals (Efron & Tibshirani, 1993), seeded for reproducibility.

`bootstrap_ci` resamples values; `paired_bootstrap_ci` the differences of two models on the same items
(`..._over_seeds` averages each item over training seeds first); `item_bootstrap_ci` any statistic of
resampled item indices, e.g. `PooledQuantile`, the rejected-token floor of a resample of pairs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

# The evaluation's bootstrap settings (every CI of the tables; recorded in each result file), and the
# rejected-token floor's quantile (the offline metric `rejected_token_logp_floor`): their one home.
N_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
FLOOR_QUANTILE = 0.01


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """(low, high) percentile-bootstrap interval of `statistic` over `values`.

    Resamples `values` with replacement `n_resamples` times from `np.random.default_rng(seed)` and
    takes the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled statistic. A single
    value gives a zero-width interval; an empty input raises.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 1:
        raise ValueError(f"bootstrap_ci: values must be one-dimensional, got shape {data.shape}")
    if data.size == 0:
        raise ValueError("bootstrap_ci: values is empty")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples}")
    rng = np.random.default_rng(seed)
    # Resample in blocks so 1000 x 100k values never materialise at once.
    block = max(1, min(n_resamples, 2_000_000 // data.size))
    stats = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, block):
        stop = min(n_resamples, start + block)
        indices = rng.integers(0, data.size, size=(stop - start, data.size))
        resampled = data[indices]
        if statistic is np.mean:
            stats[start:stop] = resampled.mean(axis=1)
        else:
            stats[start:stop] = [statistic(sample) for sample in resampled]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def _resample_indices(rng: np.random.Generator, n_items: int, n_resamples: int):
    """Blocks of `[block, n_items]` resampled item indices; the same stream as `bootstrap_ci`'s."""
    block = max(1, min(n_resamples, 2_000_000 // n_items))
    for start in range(0, n_resamples, block):
        yield rng.integers(0, n_items, size=(min(n_resamples, start + block) - start, n_items))


def _check(n_items: int, n_resamples: int, confidence: float, name: str) -> None:
    if n_items == 0:
        raise ValueError(f"{name}: no items")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"{name}: confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"{name}: n_resamples must be >= 1, got {n_resamples}")


def _interval(stats: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(low), float(high)


def item_bootstrap_ci(
    statistic: Callable[[np.ndarray], float],
    *,
    n_items: int,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of `statistic(indices)`, where `indices` resample the items
    0..n_items-1 with replacement; for statistics that are no plain mean (a pooled quantile, a ratio).
    With `statistic = lambda i: values[i].mean()` it equals `bootstrap_ci(values)` for the same seed."""
    _check(n_items, n_resamples, confidence, "item_bootstrap_ci")
    rng = np.random.default_rng(seed)
    stats = np.concatenate([[statistic(indices) for indices in block]
                            for block in _resample_indices(rng, n_items, n_resamples)])
    return _interval(stats, confidence)


def paired_bootstrap_ci(
    run_values: Sequence[float] | np.ndarray,
    reference_values: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """(low, high) of mean(run) − mean(reference) over the same items, resampled together.

    `run_values[i]` and `reference_values[i]` are one item (a held-out pair or prompt) scored by
    the two models; resampling items keeps each pair of scores together, so the interval reflects
    the spread of the per-item differences, not of two independent means."""
    run = np.asarray(run_values, dtype=np.float64)
    reference = np.asarray(reference_values, dtype=np.float64)
    if run.ndim != 1 or run.shape != reference.shape:
        raise ValueError(f"paired_bootstrap_ci: run_values {run.shape} and reference_values {reference.shape} "
                         "must be one-dimensional and of the same length")
    _check(run.size, n_resamples, confidence, "paired_bootstrap_ci")
    return bootstrap_ci(run - reference, n_resamples=n_resamples, seed=seed, confidence=confidence)


def seed_mean_items(values: Sequence | np.ndarray, name: str = "values") -> np.ndarray:
    """`[items]` from `[items]` or `[seeds, items]`: each item averaged over seeds."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim == 2:
        return data.mean(axis=0)
    if data.ndim != 1:
        raise ValueError(f"{name} must be [items] or [seeds, items], got shape {data.shape}")
    return data


def paired_bootstrap_ci_over_seeds(
    run_values: Sequence | np.ndarray,
    reference_values: Sequence | np.ndarray,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """`paired_bootstrap_ci` for runs trained with several seeds: `run_values` is `[seeds, items]`
    (or `[items]`), as is `reference_values`; each item is first averaged over seeds, so the interval
    is over held-out items of the seed-mean difference (seed-to-seed spread is reported apart)."""
    return paired_bootstrap_ci(seed_mean_items(run_values, "run_values"),
                               seed_mean_items(reference_values, "reference_values"),
                               n_resamples=n_resamples, seed=seed, confidence=confidence)


class PooledQuantile:
    """The q-quantile of the tokens pooled over a resample of items (pairs), as `np.quantile(np.concatenate(
    [tokens[i] for i in indices]), q)` ('linear' method) but from one sort: a resample only reweights tokens."""

    def __init__(self, token_values: Sequence[Sequence[float]], quantile: float):
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"PooledQuantile: quantile must be in [0, 1], got {quantile}")
        lengths = np.array([len(tokens) for tokens in token_values])
        if lengths.size == 0 or lengths.sum() == 0:
            raise ValueError("PooledQuantile: no tokens")
        values = np.concatenate([np.asarray(tokens, dtype=np.float64) for tokens in token_values])
        owner = np.repeat(np.arange(lengths.size), lengths)
        order = np.argsort(values, kind="stable")
        self.sorted_values, self.sorted_owner = values[order], owner[order]
        self.n_items, self.quantile = lengths.size, quantile

    def __call__(self, indices: np.ndarray | None = None) -> float:
        if indices is None:
            indices = np.arange(self.n_items)
        weights = np.bincount(indices, minlength=self.n_items)[self.sorted_owner]
        cumulative = np.cumsum(weights)
        total = int(cumulative[-1])
        if total == 0:
            return float("nan")
        position = self.quantile * (total - 1)
        below = int(np.floor(position))
        above = min(below + 1, total - 1)
        # The value at pooled position j is the first sorted token whose cumulative weight exceeds j.
        low_value, high_value = self.sorted_values[np.searchsorted(cumulative, [below, above], side="right")]
        return float(low_value + (position - below) * (high_value - low_value))
