"""Two-objective output of a search: the Pareto front, its hypervolume and a plot.

Points are rows ``(y, c)`` of an ``[n, 2]`` array, **both minimised**: column 0 is the quality objective
(e.g. validation logloss), column 1 the cost (FLOPs per example), the order of the trial store's values.

* ``q`` *dominates* ``p`` when ``q ≤ p`` in both coordinates and ``q < p`` in at least one. The Pareto front
  is the set of points dominated by no other point; of exact duplicates only the first occurrence is kept, and
  rows with a non-finite coordinate are ignored. Sorted by cost, the front's objective strictly decreases.
* The *hypervolume* with respect to a reference point ``r = (r0, r1)`` is the area of
  ``{z : z ≤ r and some point p ≤ z}``, the region dominated by the points and bounded by ``r``. With the front
  sorted by cost ``c_1 < … < c_m`` (hence ``y_1 > … > y_m``) and ``c_{m+1} = r1`` it is
  ``Σ_i (c_{i+1} − c_i)·(r0 − y_i)`` over the points strictly better than ``r`` in both coordinates
  (the others contribute nothing). It is computed in the units given: pass ``log10`` FLOPs for a
  scale-free cost axis.
* :func:`default_reference` is the nadir (worst value of each coordinate over the finite points) plus
  ``margin`` times the range of that coordinate, so that every point, the extreme ones included, contributes.

Both computations are a sort plus a linear sweep, ``O(n log n)``. They are written here rather than taken from
Optuna because Optuna's hypervolume and non-domination helpers (``optuna._hypervolume``,
``optuna.study._multi_objective``) are private API that changes between releases.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _as_points(points, k: int | None = 2) -> np.ndarray:
    a = np.asarray(points, dtype=float)
    if a.size == 0:
        return np.empty((0, k or 2))
    if a.ndim != 2 or (k is not None and a.shape[1] != k) or a.shape[1] < 1:
        want = f"[n, {k}]" if k is not None else "[n, k]"
        raise ValueError(f"points must be an {want} array of objective rows, got shape {a.shape}")
    return a


def pareto_front_nd(points) -> np.ndarray:
    """Indices of the non-dominated rows of ``points`` (``[n, k]``, every column minimised), in row order; of
    exact duplicates only the first is kept; non-finite rows are ignored. ``O(n²k)``; two columns use the
    ``O(n log n)`` sweep of :func:`pareto_front` (then sorted by column 1)."""
    a = _as_points(points, None)
    if a.shape[1] == 2:
        return pareto_front(a)
    idx = np.flatnonzero(np.isfinite(a).all(axis=1))
    keep = []
    for i in idx:
        p = a[i]
        le = (a[idx] <= p).all(axis=1)
        lt = (a[idx] < p).any(axis=1)
        dominated = (le & lt).any()
        duplicate_before = ((a[idx] == p).all(axis=1) & (idx < i)).any()
        if not dominated and not duplicate_before:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def hypervolume_nd(points, ref) -> float:
    """Volume dominated by ``points`` (``[n, k]``, all minimised) and bounded by ``ref`` (length ``k``), by
    slicing along the last column and recursing (exact; ``O(n^(k-1) log n)``, meant for fronts of tens to
    hundreds of points and a few objectives). Points not strictly better than ``ref`` in every column, and
    non-finite rows, contribute nothing."""
    a = _as_points(points, None)
    r = np.asarray(ref, dtype=float).reshape(-1)
    if a.shape[0] and r.size != a.shape[1]:
        raise ValueError(f"the reference point has {r.size} coordinates for {a.shape[1]} objectives")
    if not np.isfinite(r).all():
        raise ValueError(f"the hypervolume reference point must be finite, got {tuple(ref)}")
    a = a[np.isfinite(a).all(axis=1)]
    a = a[(a < r).all(axis=1)]
    return _hv(a, r)


def _hv(a: np.ndarray, r: np.ndarray) -> float:
    if a.shape[0] == 0:
        return 0.0
    if a.shape[1] == 1:
        return float(r[0] - a[:, 0].min())
    if a.shape[1] == 2:
        return hypervolume_2d(a, r)
    a = a[np.argsort(a[:, -1], kind="stable")]
    total = 0.0
    for i in range(a.shape[0]):
        top = a[i + 1, -1] if i + 1 < a.shape[0] else r[-1]
        depth = top - a[i, -1]
        if depth > 0:
            total += depth * _hv(a[: i + 1, :-1], r[:-1])
    return float(total)


def pareto_front(points) -> np.ndarray:
    """Indices of the non-dominated rows of ``points`` (``[n, 2]``, both minimised), sorted by column 1
    (cost) ascending. Of exact duplicates only the first is kept; non-finite rows are ignored."""
    a = _as_points(points)
    idx = np.flatnonzero(np.isfinite(a).all(axis=1))
    if idx.size == 0:
        return np.empty(0, dtype=np.int64)
    # Sort by cost, then objective, then index. A row is on the front iff its objective is strictly below that
    # of every row before it: an earlier row has a cost ≤ its cost, so an objective ≤ its objective means it is
    # dominated (or an earlier duplicate); a later row has a larger cost or (same cost) a larger objective or
    # is a later duplicate, and dominates nothing before it.
    order = idx[np.lexsort((idx, a[idx, 0], a[idx, 1]))]
    y = a[order, 0]
    best_before = np.concatenate(([np.inf], np.minimum.accumulate(y)[:-1]))
    return order[y < best_before].astype(np.int64)


def hypervolume_2d(points, ref) -> float:
    """Area dominated by ``points`` (``[n, 2]``, both minimised) and bounded by ``ref = (r0, r1)``. Points not
    strictly better than ``ref`` in both coordinates, and non-finite rows, contribute nothing."""
    a = _as_points(points)
    r0, r1 = (float(v) for v in ref)
    if not (np.isfinite(r0) and np.isfinite(r1)):
        raise ValueError(f"the hypervolume reference point must be finite, got {tuple(ref)}")
    keep = np.isfinite(a).all(axis=1)
    keep[keep] &= (a[keep, 0] < r0) & (a[keep, 1] < r1)
    a = a[keep]
    if a.shape[0] == 0:
        return 0.0
    f = a[pareto_front(a)]  # cost ascending, objective strictly descending
    widths = np.diff(np.append(f[:, 1], r1))
    return float(np.sum(widths * (r0 - f[:, 0])))


def default_reference(points, margin: float = 0.1) -> tuple[float, ...]:
    """``nadir + margin·range`` in each coordinate, over the finite rows of ``points``: ``nadir`` is the
    coordinate's maximum and ``range`` its maximum minus its minimum. Where the range is 0 (a single point, or
    all equal) ``margin·|nadir|`` is used instead, or ``margin`` when the nadir is 0, so that the reference is
    strictly worse than every point and each point has a positive contribution."""
    a = _as_points(points, None)
    a = a[np.isfinite(a).all(axis=1)]
    if a.shape[0] == 0:
        raise ValueError("default_reference needs at least one finite point")
    if not (np.isfinite(margin) and margin > 0):
        raise ValueError(f"margin must be a positive number, got {margin}")
    hi, lo = a.max(axis=0), a.min(axis=0)
    span = hi - lo
    span = np.where(span > 0, span, np.where(hi != 0, np.abs(hi), 1.0))
    r = hi + margin * span
    return tuple(float(v) for v in r)


def plot_front(points, *, path: str | Path, front: Sequence[int] | None = None,
               zoo: Sequence[tuple[str, float, float]] | None = None, labels: Sequence[str] | None = None,
               title: str = "", xlabel: str = "FLOPs / example", ylabel: str = "validation logloss",
               logx: bool = True) -> Path:
    """Plot the trials and their Pareto front to the PNG ``path``; returns ``path``.

    All finite ``points`` (rows ``(objective, cost)``) are drawn as grey dots at ``x = cost``, ``y = objective``;
    the front (``front`` indices, default :func:`pareto_front`) as a highlighted step line (its attainment
    curve) with markers, each annotated with ``labels[i]`` when ``labels`` (one per point) is given; ``zoo``
    references ``(name, objective, cost)`` as labelled stars. The x axis is logarithmic when ``logx`` and all
    costs are positive. Uses Matplotlib's Agg canvas (no display, no pyplot state); the file is written to a
    temporary name and atomically renamed, its directory created if needed.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    a = _as_points(points)
    finite = np.isfinite(a).all(axis=1)
    front_idx = pareto_front(a) if front is None else np.asarray(list(front), dtype=np.int64)
    if front_idx.size:
        front_idx = front_idx[finite[front_idx]]
        front_idx = front_idx[np.argsort(a[front_idx, 1], kind="stable")]
    refs = [(str(n), float(y), float(c)) for n, y, c in (zoo or []) if np.isfinite(y) and np.isfinite(c)]
    if labels is not None and len(labels) != a.shape[0]:
        raise ValueError(f"labels has {len(labels)} entries for {a.shape[0]} points")

    fig = Figure(figsize=(7.5, 5.0), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs = np.concatenate([a[finite, 1], [c for _, _, c in refs]])
    if logx and xs.size and np.all(xs > 0):
        ax.set_xscale("log")
        # minor-tick labels (2×10⁴, 3×10⁴, …) overlap on narrow ranges; keep the decade labels only
        from matplotlib.ticker import NullFormatter

        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.scatter(a[finite, 1], a[finite, 0], s=14, c="0.6", alpha=0.7, linewidths=0,
               label=f"trials ({int(finite.sum())})", zorder=1)
    if front_idx.size:
        fx, fy = a[front_idx, 1], a[front_idx, 0]
        ax.step(fx, fy, where="post", color="tab:red", linewidth=1.6, zorder=2)
        ax.scatter(fx, fy, s=36, c="tab:red", edgecolors="black", linewidths=0.5,
                   label=f"Pareto front ({front_idx.size})", zorder=3)
        if labels is not None:
            for i in front_idx:
                ax.annotate(str(labels[i]), (a[i, 1], a[i, 0]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7, color="tab:red")
    if refs:
        ax.scatter([c for _, _, c in refs], [y for _, y, _ in refs], marker="*", s=160, c="tab:blue",
                   edgecolors="black", linewidths=0.5, label="zoo", zorder=4)
        for name, y, c in refs:
            ax.annotate(name, (c, y), textcoords="offset points", xytext=(6, -10), fontsize=8, color="tab:blue")
    if not finite.any() and not refs:
        ax.text(0.5, 0.5, "no completed trials", transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="both", alpha=0.25)
    if finite.any() or refs:
        ax.legend(loc="best", fontsize=8)
    fig.tight_layout()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


__all__ = ["default_reference", "hypervolume_2d", "hypervolume_nd", "pareto_front", "pareto_front_nd", "plot_front"]
