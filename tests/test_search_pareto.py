"""Pareto front, 2-D hypervolume and the front plot, against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest

from rankcraft.search.pareto import (
    default_reference,
    hypervolume_2d,
    pareto_front,
    plot_front,
)


def brute_front(points: np.ndarray) -> list[int]:
    """O(n²) definition: finite, not dominated, not a later duplicate; sorted by column 1."""
    n = len(points)
    keep = []
    for i in range(n):
        p = points[i]
        if not np.isfinite(p).all():
            continue
        beaten = False
        for j in range(n):
            q = points[j]
            if j == i or not np.isfinite(q).all():
                continue
            if (q <= p).all() and (q < p).any():
                beaten = True
            if (q == p).all() and j < i:
                beaten = True
        if not beaten:
            keep.append(i)
    return sorted(keep, key=lambda i: points[i, 1])


def random_points(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 8, size=(n, 2)).astype(float)  # a small grid: many ties and exact duplicates
    if seed % 2:
        pts[: n // 2] = rng.random((n // 2, 2))  # continuous values too
    pts[rng.choice(n, size=3, replace=False)] = [[np.nan, 1.0], [2.0, np.inf], [-np.inf, -np.inf]]
    return pts


@pytest.mark.parametrize("seed", range(8))
def test_front_matches_brute_force(seed):
    pts = random_points(seed, 60)
    got = pareto_front(pts)
    assert got.dtype == np.int64
    assert got.tolist() == brute_front(pts)
    f = pts[got]
    assert np.all(np.diff(f[:, 1]) > 0) and np.all(np.diff(f[:, 0]) < 0)


def test_front_small_cases():
    assert pareto_front([]).tolist() == []
    assert pareto_front(np.empty((0, 2))).tolist() == []
    assert pareto_front([[np.nan, 1.0]]).tolist() == []
    assert pareto_front([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0]]).tolist() == [0]
    # (0.5, 3) and (0.5, 5): same objective, the cheaper one dominates; (0.4, 3) dominates (0.5, 3)
    pts = [[0.5, 5.0], [0.5, 3.0], [0.4, 3.0], [0.3, 9.0], [0.6, 1.0], [0.6, 1.0]]
    assert pareto_front(pts).tolist() == [4, 2, 3]
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        pareto_front([1.0, 2.0, 3.0])


def test_hypervolume_hand_computed():
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1]], (4, 4)) == pytest.approx(6.0)
    assert hypervolume_2d([[1, 1]], (4, 4)) == pytest.approx(9.0)
    assert hypervolume_2d([[1, 3], [3, 1]], (4, 4)) == pytest.approx(5.0)  # 3 + 3 - overlap 1
    # dominated points, duplicates and non-finite rows change nothing
    base = hypervolume_2d([[1, 3], [2, 2], [3, 1]], (4, 4))
    assert hypervolume_2d([[1, 3], [2, 2], [3, 1], [3, 3], [2, 2], [np.nan, 0], [np.inf, 1]], (4, 4)) == base
    assert hypervolume_2d([], (1, 1)) == 0.0


def test_hypervolume_ignores_points_beyond_the_reference():
    ref = (4.0, 4.0)
    assert hypervolume_2d([[5, 1], [1, 5], [4, 1], [1, 4], [4, 4]], ref) == 0.0  # on the boundary: nothing
    # (0, 4.5) would dominate everything if it were not clipped by r1 = 4
    assert hypervolume_2d([[2, 2], [0, 4.5], [-1, 4.0]], ref) == pytest.approx(4.0)
    assert hypervolume_2d([[2, 2], [3.5, -1]], ref) == pytest.approx(2 * 2 + 0.5 * 3)
    with pytest.raises(ValueError, match="finite"):
        hypervolume_2d([[1, 1]], (np.inf, 2))


def grid_hypervolume(points: np.ndarray, ref) -> float:
    """Exact area by coordinate compression: a cell of the grid on all coordinates is dominated iff its lower
    corner is weakly dominated by some point."""
    p = points[np.isfinite(points).all(axis=1)]
    p = p[(p[:, 0] < ref[0]) & (p[:, 1] < ref[1])]
    if len(p) == 0:
        return 0.0
    xs = np.unique(np.append(p[:, 0], ref[0]))
    ys = np.unique(np.append(p[:, 1], ref[1]))
    lo_x, lo_y = np.meshgrid(xs[:-1], ys[:-1], indexing="ij")
    area = np.outer(np.diff(xs), np.diff(ys))
    covered = ((p[:, 0, None, None] <= lo_x) & (p[:, 1, None, None] <= lo_y)).any(axis=0)
    return float(area[covered].sum())


@pytest.mark.parametrize("seed", range(6))
def test_hypervolume_vs_grid(seed):
    pts = random_points(seed, 40)
    ref = default_reference(pts, margin=0.05) if seed % 3 else (5.0, 6.0)  # some points beyond (5, 6)
    assert hypervolume_2d(pts, ref) == pytest.approx(grid_hypervolume(pts, ref), rel=1e-12, abs=1e-12)


def test_hypervolume_vs_monte_carlo():
    rng = np.random.default_rng(123)
    x = rng.random(30)
    pts = np.stack([x, (1 - x) ** 2 + 0.2 * rng.random(30)], axis=1)  # a noisy trade-off curve
    ref = (1.1, 1.3)
    z = rng.random((200_000, 2)) * ref
    dominated = ((pts[:, None, 0] <= z[None, :, 0]) & (pts[:, None, 1] <= z[None, :, 1])).any(axis=0)
    mc = dominated.mean() * ref[0] * ref[1]
    assert hypervolume_2d(pts, ref) == pytest.approx(mc, abs=4 * np.sqrt(0.25 / z.shape[0]) * ref[0] * ref[1])


def test_default_reference():
    pts = [[0.45, 100.0], [0.40, 300.0], [0.50, 200.0], [np.nan, 1e9]]
    assert default_reference(pts) == pytest.approx((0.50 + 0.1 * 0.10, 300.0 + 0.1 * 200.0))
    assert default_reference(pts, margin=0.5) == pytest.approx((0.55, 400.0))
    assert default_reference([[0.5, 0.0]]) == pytest.approx((0.55, 0.1))  # zero range: margin·|nadir|, or margin
    r = default_reference(pts)
    for p in np.asarray(pts)[:3]:  # every point contributes
        assert hypervolume_2d([p], r) > 0
    with pytest.raises(ValueError, match="finite point"):
        default_reference([[np.nan, np.nan]])


def test_plot_front_writes_a_readable_png(tmp_path):
    from matplotlib.image import imread

    rng = np.random.default_rng(0)
    flops = 10 ** rng.uniform(3, 6, 40)
    pts = np.stack([0.45 + 0.02 / np.log10(flops) + 0.005 * rng.random(40), flops], axis=1)
    pts[3] = [np.nan, 1e4]
    zoo = [("dnn", 0.455, 2e4), ("deepfm", 0.452, 5e4), ("dcnv2", 0.451, 3e5)]
    labels = [f"t{i}" for i in range(len(pts))]
    out = plot_front(pts, path=tmp_path / "plots" / "front.png", zoo=zoo, labels=labels, title="search")
    assert out == tmp_path / "plots" / "front.png" and out.stat().st_size > 1000
    img = imread(out)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100 and img.std() > 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["front.png"]  # no temporary file left behind
    # the zoo stars are drawn: the same plot without them differs
    bare = plot_front(pts, path=tmp_path / "bare.png", labels=labels, title="search")
    assert imread(bare).shape == img.shape and not np.array_equal(imread(bare), img)
    # overwrite in place, linear axis for non-positive costs, explicit front, and an empty search
    plot_front(np.array([[0.5, 0.0], [0.4, 10.0]]), path=out, front=[0, 1], logx=True)
    assert imread(out).shape[2] == 4
    plot_front(np.empty((0, 2)), path=tmp_path / "empty.png", zoo=[])
    assert (tmp_path / "empty.png").stat().st_size > 0
    with pytest.raises(ValueError, match="labels"):
        plot_front(pts, path=tmp_path / "x.png", labels=["a"])
