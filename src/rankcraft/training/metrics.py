"""Ranking / calibration metrics on numpy arrays of labels ``y ∈ {0,1}`` and predicted probabilities ``p``.

* AUC: Mann–Whitney statistic with average ranks for ties,
  ``(Σ_{i: y_i=1} rank_i − n₁(n₁+1)/2) / (n₁ n₀)``.
* logloss: ``−mean(y log p + (1−y) log(1−p))`` with ``p`` clipped to ``[ε, 1−ε]``, ``ε = 1e-7``.
* NE (normalized entropy): ``logloss / H(ȳ)`` with ``H(q) = −q log q − (1−q) log(1−q)`` — the logloss relative
  to always predicting the base rate; lower is better, 1.0 means no information.
* GAUC: ``Σ_u n_u AUC_u / Σ_u n_u`` over users ``u`` whose impressions contain both classes (``n_u`` = their
  impression count); users with one class only are left out.
* calibration: ``mean(p) / mean(y)`` (1.0 is perfectly calibrated on average).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

EPS = 1e-7


def auc(y: np.ndarray, p: np.ndarray) -> float:
    y = np.asarray(y, dtype=np.float64)
    n1 = float(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(p)
    return float((ranks[y == 1].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logloss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def entropy(q: float) -> float:
    q = min(max(q, EPS), 1 - EPS)
    return float(-q * np.log(q) - (1 - q) * np.log(1 - q))


def normalized_entropy(y: np.ndarray, p: np.ndarray) -> float:
    return logloss(y, p) / entropy(float(np.mean(y)))


def gauc(y: np.ndarray, p: np.ndarray, group: np.ndarray) -> float:
    """Impression-weighted mean of per-group AUC (groups with a single class are skipped)."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    group = np.asarray(group)
    order = np.argsort(group, kind="stable")
    g, y, p = group[order], y[order], p[order]
    bounds = np.flatnonzero(g[1:] != g[:-1]) + 1  # works for numeric and string ids
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(g)]])
    num = den = 0.0
    for s, e in zip(starts, ends):
        ys = y[s:e]
        pos = ys.sum()
        if pos == 0 or pos == e - s:
            continue
        num += (e - s) * auc(ys, p[s:e])
        den += e - s
    return float(num / den) if den else float("nan")


def calibration(y: np.ndarray, p: np.ndarray) -> float:
    rate = float(np.mean(y))
    return float(np.mean(p) / rate) if rate > 0 else float("nan")


HIGHER_IS_BETTER = {"auc": True, "gauc": True, "logloss": False, "ne": False}


def compute_metrics(y: np.ndarray, p: np.ndarray, group: np.ndarray | None = None) -> dict[str, float]:
    """All metrics at once; ``gauc`` only when ``group`` is given."""
    out = {
        "auc": auc(y, p),
        "logloss": logloss(y, p),
        "ne": normalized_entropy(y, p),
        "calibration": calibration(y, p),
        "rows": int(len(y)),
    }
    if group is not None:
        out["gauc"] = gauc(y, p, group)
    return out
