"""Means with percentile-bootstrap confidence intervals, seeded so a report is reproducible."""

from __future__ import annotations

import numpy as np


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def mean_ci(values: list[float], samples: int, confidence: float, seed: int) -> dict:
    """{mean, ci_low, ci_high, n, confidence}; None values (unjudged items) are left out and n says so."""
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "confidence": confidence}
    rng = np.random.default_rng(seed)
    draws = x[rng.integers(0, x.size, size=(samples, x.size))].mean(axis=1)
    lo, hi = _interval(draws, confidence)
    return {"mean": float(x.mean()), "ci_low": lo, "ci_high": hi, "n": int(x.size), "confidence": confidence}


def paired_diff_ci(a: list[float], b: list[float], samples: int, confidence: float, seed: int) -> dict:
    """mean(a - b) over items measured in both, resampling items (not a and b separately)."""
    pairs = np.asarray([(x, y) for x, y in zip(a, b) if x is not None and y is not None], dtype=np.float64)
    if pairs.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "confidence": confidence}
    d = pairs[:, 0] - pairs[:, 1]
    rng = np.random.default_rng(seed)
    draws = d[rng.integers(0, d.size, size=(samples, d.size))].mean(axis=1)
    lo, hi = _interval(draws, confidence)
    return {"mean": float(d.mean()), "ci_low": lo, "ci_high": hi, "n": int(d.size), "confidence": confidence}
