"""Ranking and calibration metrics, checked against scikit-learn and direct computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rankcraft.training import metrics as M

sklearn_metrics = pytest.importorskip("sklearn.metrics")
roc_auc_score, log_loss = sklearn_metrics.roc_auc_score, sklearn_metrics.log_loss


def random_case(seed: int, n: int = 400, levels: int | None = 7):
    """Labels and predictions with many ties (predictions rounded to a few levels)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = rng.random(n)
    if levels:
        p = np.round(p * levels) / levels * 0.98 + 0.01
    p = np.clip(p + 0.1 * y * (levels is None), 0.01, 0.99)
    return y, p


# ------------------------------------------------------------------------------------------------ AUC
@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("levels", [None, 3, 20])
def test_auc_matches_sklearn_with_ties(seed, levels):
    y, p = random_case(seed, levels=levels)
    assert M.auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_input_types():
    y, p = random_case(0)
    ref = roc_auc_score(y, p)
    assert M.auc(y.astype(bool), p) == pytest.approx(ref)
    assert M.auc(y.astype(np.float32), p.astype(np.float32)) == pytest.approx(ref, abs=1e-6)
    assert M.auc(list(y), list(p)) == pytest.approx(ref)


def test_auc_edge_values():
    y = np.array([0, 0, 1, 1])
    assert M.auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert M.auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert M.auc(y, np.full(4, 0.5)) == 0.5
    assert M.auc(np.array([0, 1, 0, 1]), np.array([0.2, 0.2, 0.1, 0.3])) == pytest.approx(0.875)
    assert math.isnan(M.auc(np.ones(5), np.linspace(0, 1, 5)))
    assert math.isnan(M.auc(np.zeros(5), np.linspace(0, 1, 5)))


def test_auc_invariant_to_monotone_transform():
    y, p = random_case(3, levels=None)
    assert M.auc(y, p) == pytest.approx(M.auc(y, np.log(p / (1 - p))))
    assert M.auc(y, p) == pytest.approx(1 - M.auc(y, -p))


# ------------------------------------------------------------------------------------------------ logloss / NE
@pytest.mark.parametrize("seed", range(4))
def test_logloss_matches_sklearn(seed):
    y, p = random_case(seed, levels=None)
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)
    y, p = random_case(seed, levels=5)
    assert M.logloss(y, p) == pytest.approx(log_loss(y, p), rel=1e-12)


def test_logloss_clips_extreme_predictions():
    y = np.array([1, 0])
    assert M.logloss(y, np.array([0.0, 1.0])) == pytest.approx(-math.log(M.EPS))
    assert math.isfinite(M.logloss(y, np.array([0.0, 1.0])))
    assert M.logloss(np.array([1, 0]), np.array([1.0, 0.0])) == pytest.approx(-math.log(1 - M.EPS))


def test_entropy():
    assert M.entropy(0.5) == pytest.approx(math.log(2))
    assert M.entropy(0.2) == pytest.approx(-(0.2 * math.log(0.2) + 0.8 * math.log(0.8)))
    assert M.entropy(0.0) > 0 and M.entropy(1.0) > 0  # clipped, never log(0)


@pytest.mark.parametrize("seed", range(3))
def test_ne_is_logloss_over_base_rate_entropy(seed):
    y, p = random_case(seed, levels=None)
    q = y.mean()
    h = -(q * math.log(q) + (1 - q) * math.log(1 - q))
    assert M.normalized_entropy(y, p) == pytest.approx(log_loss(y, p) / h, rel=1e-12)


@pytest.mark.parametrize("rate", [0.05, 0.3, 0.5, 0.9])
def test_ne_of_base_rate_prediction_is_one(rate):
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < rate).astype(int)
    p = np.full(len(y), y.mean())
    assert M.normalized_entropy(y, p) == pytest.approx(1.0, abs=1e-9)


def test_ne_below_one_for_informative_predictions():
    rng = np.random.default_rng(2)
    p_true = rng.uniform(0.05, 0.95, 5000)
    y = (rng.random(5000) < p_true).astype(int)
    assert M.normalized_entropy(y, p_true) < 0.9
    assert M.normalized_entropy(y, 1 - p_true) > 1.0


# ------------------------------------------------------------------------------------------------ GAUC
def direct_gauc(y, p, g):
    num = den = 0.0
    for u in np.unique(g):
        m = g == u
        if len(np.unique(y[m])) < 2:
            continue
        num += m.sum() * roc_auc_score(y[m], p[m])
        den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", range(4))
def test_gauc_matches_direct_weighted_computation(seed):
    rng = np.random.default_rng(seed + 1000)
    y, p = random_case(seed, n=600, levels=6)
    g = rng.integers(0, 40, len(y))
    assert M.gauc(y, p, g) == pytest.approx(direct_gauc(y, p, g), abs=1e-12)


def test_gauc_weights_by_impressions():
    # user 0: 4 impressions, AUC 1.0; user 1: 2 impressions, AUC 0.0 -> (4*1 + 2*0) / 6
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    g = np.array([0, 0, 0, 0, 1, 1])
    assert M.gauc(y, p, g) == pytest.approx(4 / 6)
    # interleaved rows and non-contiguous, negative or large ids give the same result
    order = np.array([4, 0, 5, 1, 2, 3])
    assert M.gauc(y[order], p[order], np.array([-7, 10**12, -7, 10**12, 10**12, 10**12])) == pytest.approx(4 / 6)


def test_gauc_skips_single_class_groups():
    y, p = random_case(7, n=300)
    g = np.random.default_rng(1007).integers(0, 10, len(y))
    base = M.gauc(y, p, g)
    # add users with only positives / only negatives and arbitrary scores: no effect
    y2 = np.concatenate([y, np.ones(50, int), np.zeros(30, int)])
    p2 = np.concatenate([p, np.linspace(0, 1, 50), np.linspace(1, 0, 30)])
    g2 = np.concatenate([g, np.full(50, 100), np.full(30, 101)])
    assert M.gauc(y2, p2, g2) == pytest.approx(base, abs=1e-12)
    assert M.gauc(y2, p2, g2) == pytest.approx(direct_gauc(y2, p2, g2), abs=1e-12)


def test_gauc_one_group_equals_auc_and_no_valid_group_is_nan():
    y, p = random_case(4)
    assert M.gauc(y, p, np.zeros(len(y), int)) == pytest.approx(M.auc(y, p))
    assert math.isnan(M.gauc(np.array([1, 0, 1]), np.array([0.5, 0.2, 0.1]), np.array([0, 1, 2])))


def test_gauc_differs_from_global_auc():
    # perfect ranking within each user, but users' score scales differ
    y = np.array([0, 1, 0, 1])
    p = np.array([0.8, 0.9, 0.1, 0.2])
    g = np.array([0, 0, 1, 1])
    assert M.gauc(y, p, g) == 1.0 and M.auc(y, p) == 0.75


def test_gauc_with_string_user_ids():
    y = np.array([0, 1, 0, 1, 0, 1])
    p = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3])
    g = np.array(["alice", "alice", "alice", "alice", "bob", "bob"])
    assert M.gauc(y, p, g) == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------------------------ calibration
def test_calibration():
    y = np.array([1, 0, 0, 1, 0])
    assert M.calibration(y, np.full(5, 0.4)) == pytest.approx(1.0)
    assert M.calibration(y, np.full(5, 0.8)) == pytest.approx(2.0)
    assert M.calibration(y, np.array([0.1, 0.2, 0.3, 0.4, 0.5])) == pytest.approx(0.3 / 0.4)
    assert math.isnan(M.calibration(np.zeros(3), np.array([0.1, 0.2, 0.3])))


# ------------------------------------------------------------------------------------------------ compute_metrics
def test_compute_metrics():
    y, p = random_case(0)
    g = np.random.default_rng(1000).integers(0, 20, len(y))
    out = M.compute_metrics(y, p)
    assert set(out) == {"auc", "logloss", "ne", "calibration", "rows"}
    assert out["rows"] == len(y) and isinstance(out["rows"], int)
    assert out["auc"] == pytest.approx(roc_auc_score(y, p))
    assert out["logloss"] == pytest.approx(log_loss(y, p))
    assert out["ne"] == pytest.approx(M.normalized_entropy(y, p))
    assert out["calibration"] == pytest.approx(p.mean() / y.mean())
    with_group = M.compute_metrics(y, p, g)
    assert with_group["gauc"] == pytest.approx(direct_gauc(y, p, g))
    assert all(isinstance(v, float) for k, v in with_group.items() if k != "rows")
    assert M.HIGHER_IS_BETTER == {"auc": True, "gauc": True, "logloss": False, "ne": False}
