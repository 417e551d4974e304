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


def _lc_fit(y: np.ndarray, x: np.ndarray, ridge: float = 1e-2, steps: int = 25) -> float:
    """The intercept of a logistic regression of y (1 win, 0.5 tie, 0 loss) on x (the length term), fitted by
    Newton's method with a small ridge (so a sample where every answer wins still has a finite fit)."""
    X = np.stack([np.ones_like(x), x], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(X @ w)))
        grad = X.T @ (p - y) + ridge * w
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        w -= np.linalg.solve(hess, grad)
    return float(w[0])


def length_controlled_ci(wins: list[float | None], cand_len: list[int], ref_len: list[int], samples: int,
                         confidence: float, seed: int) -> dict:
    """AlpacaEval 2's length-controlled win rate, for one method against the references: a logistic model of
    the verdict on tanh(length difference / its standard deviation), read at a length difference of zero
    (sigmoid of the intercept), so a longer answer is not credited for its length. (AlpacaEval's GLM also has
    an instruction-difficulty term fitted across many models; with one method at a time it is left out.) The
    interval resamples items and refits."""
    keep = [(w, c - r) for w, c, r in zip(wins, cand_len, ref_len) if w is not None]
    if not keep:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0, "confidence": confidence}
    y = np.asarray([w for w, _ in keep], dtype=np.float64)
    d = np.asarray([dl for _, dl in keep], dtype=np.float64)
    sd = d.std() or 1.0
    x = np.tanh(d / sd)
    sig = (lambda a: float(1.0 / (1.0 + np.exp(-a))))  # noqa: E731
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, y.size, size=(samples, y.size))
    draws = np.asarray([sig(_lc_fit(y[i], x[i])) for i in idx])
    lo, hi = _interval(draws, confidence)
    return {"mean": sig(_lc_fit(y, x)), "ci_low": lo, "ci_high": hi, "n": int(y.size), "confidence": confidence}
