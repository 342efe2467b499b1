"""Percentile-bootstrap confidence intervals (Efron & Tibshirani, 1993), seeded for reproducibility."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 1000,
    seed: int = 0,
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
