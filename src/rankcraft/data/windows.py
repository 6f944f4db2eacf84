"""Conversion estimates for any attribution window from fixed-window heads (Personalized Interpolation).

A model with heads for fixed windows ``T_1 < … < T_m`` (days) predicts ``p_i = P(convert within T_i | x)``. For a
window ``T`` the :class:`WindowInterpolator` takes the two anchors ``T_s < T_l`` that bracket it (the nearest two at
either end: outside the anchors it extrapolates) and returns

    p(T) = p_s + α(T; β) · (p_l − p_s),   α(T; β) = (e^{−β T_s} − e^{−β T}) / (e^{−β T_s} − e^{−β T_l})
         = expm1(−β (T − T_s)) / expm1(−β (T_l − T_s)),

exact when the delay given a conversion is exponential with rate ``β`` (``P(conv ≤ T) = p_∞ (1 − e^{−βT})``); as
``β → 0`` it becomes linear interpolation. ``p_l`` is first raised to ``p_s`` where a model predicts ``p_l < p_s``
(monotonicity). The result is clipped to ``[0, 1]``.

Methods (the baselines of ``shared/papers/wave2-specs.md`` §4 share this interface):

* ``pi`` (default): one ``β`` per group (advertiser), estimated by ratio matching on matured data — with
  ``n_s, n_l`` the conversions within ``T_s`` and ``T_l`` among the group's rows whose ``T_l`` window has elapsed,
  ``β_a`` solves ``(1 − e^{−β T_s}) / (1 − e^{−β T_l}) = n_s / n_l`` (bisection; the left side rises from
  ``T_s / T_l`` at β → 0 to 1), then shrinks toward the pooled ``β`` with weight ``n_l / (n_l + k)`` (``k =
  shrinkage``, 50) and is clipped to ``[beta_min, beta_max]`` per day (1e-3, 10). Unseen groups get the pooled β.
* ``global``: the pooled ``β`` for every row. ``linear``: ``α = (T − T_s) / (T_l − T_s)``. ``nearest``: the
  anchor closest to ``T`` (the longer one on a tie).

With more than two anchors, ``β`` is estimated from the outermost pair (the exponential model has one rate).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from rankcraft.data.delays import parse_duration
from rankcraft.errors import ConfigError

Method = Literal["pi", "global", "linear", "nearest"]
METHODS = ("pi", "global", "linear", "nearest")


def exp_alpha(T: float, Ts: float, Tl: float, beta: np.ndarray | float) -> np.ndarray:
    """``α(T; β)`` of the module docstring (vectorised over ``beta``; linear where ``β·(T_l − T_s) < 1e-8``)."""
    b = np.asarray(beta, dtype=np.float64)
    lin = (T - Ts) / (Tl - Ts)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.expm1(-b * (T - Ts)) / np.expm1(-b * (Tl - Ts))
    return np.where(b * (Tl - Ts) < 1e-8, lin, a)


def window_ratio(beta: np.ndarray | float, Ts: float, Tl: float) -> np.ndarray:
    """``(1 − e^{−β T_s}) / (1 − e^{−β T_l})``, increasing in ``β`` from ``T_s / T_l`` to 1."""
    b = np.asarray(beta, dtype=np.float64)
    return np.where(b * Tl < 1e-8, Ts / Tl, np.expm1(-b * Ts) / np.expm1(-b * np.maximum(Tl, 1e-300)))


def solve_beta(ratio: np.ndarray | float, Ts: float, Tl: float, *, beta_min: float = 1e-3,
               beta_max: float = 10.0, iterations: int = 80) -> np.ndarray:
    """``β`` with ``window_ratio(β) = ratio`` by bisection on a log scale in ``[beta_min, beta_max]`` (ratios below
    or above the attainable range give the bounds)."""
    r = np.asarray(ratio, dtype=np.float64)
    lo = np.full(r.shape, math.log(beta_min))
    hi = np.full(r.shape, math.log(beta_max))
    for _ in range(iterations):
        mid = (lo + hi) / 2
        above = window_ratio(np.exp(mid), Ts, Tl) > r
        hi = np.where(above, mid, hi)
        lo = np.where(above, lo, mid)
    return np.exp((lo + hi) / 2)


@dataclass
class WindowInterpolator:
    """Serves any window from the anchor heads (module docstring). ``anchors``: the heads' windows in days, in the
    order the ``predict`` inputs come; ``betas``: group id → β (``pi``)."""

    anchors: list[float]
    method: Method = "pi"
    shrinkage: float = 50.0
    beta_min: float = 1e-3
    beta_max: float = 10.0
    global_beta: float = 1.0
    betas: dict[int, float] = field(default_factory=dict)
    counts: dict[int, int] = field(default_factory=dict)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"interpolation method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if len(self.anchors) < 2 or len(set(self.anchors)) != len(self.anchors) or min(self.anchors) <= 0:
            raise ValueError(f"need two or more distinct positive anchor windows, got {self.anchors}")

    # -------------------------------------------------------------------------------------------- fitting
    def fit(self, groups: np.ndarray, y_short: np.ndarray, y_long: np.ndarray, mature_long: np.ndarray
            ) -> "WindowInterpolator":
        """Estimate the pooled and per-group ``β`` from matured rows: ``y_short`` / ``y_long`` the labels of the
        shortest and longest anchor, ``mature_long`` 1 where the longest window has elapsed."""
        Ts, Tl = min(self.anchors), max(self.anchors)
        keep = np.asarray(mature_long) > 0.5
        g = np.asarray(groups)[keep].astype(np.int64)
        ys, yl = np.asarray(y_short)[keep], np.asarray(y_long)[keep]
        if yl.sum() <= 0:
            raise ValueError("no matured conversion within the longest window: cannot estimate a delay rate")
        self.global_beta = float(solve_beta(ys.sum() / yl.sum(), Ts, Tl, beta_min=self.beta_min,
                                            beta_max=self.beta_max))
        ids, inv = np.unique(g, return_inverse=True)
        ns = np.bincount(inv, weights=ys, minlength=len(ids))
        nl = np.bincount(inv, weights=yl, minlength=len(ids))
        with np.errstate(invalid="ignore", divide="ignore"):
            raw = solve_beta(np.where(nl > 0, ns / np.maximum(nl, 1e-12), 0.0), Ts, Tl, beta_min=self.beta_min,
                             beta_max=self.beta_max)
        w = nl / (nl + self.shrinkage)
        beta = np.where(nl > 0, w * raw + (1 - w) * self.global_beta, self.global_beta)
        beta = np.clip(beta, self.beta_min, self.beta_max)
        self.betas = {int(i): float(b) for i, b in zip(ids, beta)}
        self.counts = {int(i): int(n) for i, n in zip(ids, nl)}
        return self

    def beta_of(self, groups: np.ndarray) -> np.ndarray:
        """Per-row ``β`` of the method (the pooled β for groups not seen in fitting)."""
        g = np.asarray(groups).astype(np.int64)
        if self.method != "pi" or not self.betas:
            return np.full(g.shape, self.global_beta)
        ids = np.fromiter(self.betas, dtype=np.int64)
        vals = np.fromiter(self.betas.values(), dtype=np.float64)
        order = np.argsort(ids)
        ids, vals = ids[order], vals[order]
        pos = np.clip(np.searchsorted(ids, g), 0, len(ids) - 1)
        return np.where(ids[pos] == g, vals[pos], self.global_beta)

    # -------------------------------------------------------------------------------------------- serving
    def bracket(self, T: float) -> tuple[int, int]:
        """Indices (into ``anchors``) of the two anchors used for ``T``."""
        order = sorted(range(len(self.anchors)), key=lambda i: self.anchors[i])
        w = [self.anchors[i] for i in order]
        k = int(np.searchsorted(w, T))
        k = min(max(k, 1), len(w) - 1)
        return order[k - 1], order[k]

    def predict(self, probs: list[np.ndarray] | np.ndarray, T: float, groups: np.ndarray | None = None
                ) -> np.ndarray:
        """``p(T)`` per row from the anchor heads' probabilities ``probs[i] : [N]`` (in ``anchors`` order)."""
        if not T > 0:
            raise ValueError(f"window {T} must be longer than zero")
        P = [np.asarray(p, dtype=np.float64) for p in probs]
        if len(P) != len(self.anchors):
            raise ValueError(f"{len(P)} head predictions for {len(self.anchors)} anchor windows")
        for i, a in enumerate(self.anchors):
            if T == a:
                return np.clip(P[i], 0.0, 1.0)
        if self.method == "nearest":
            i = min(range(len(self.anchors)), key=lambda j: (abs(self.anchors[j] - T), -self.anchors[j]))
            return np.clip(P[i], 0.0, 1.0)
        s, l_ = self.bracket(T)
        Ts, Tl = self.anchors[s], self.anchors[l_]
        ps, pl = P[s], np.maximum(P[l_], P[s])
        if self.method == "linear":
            alpha = np.full(ps.shape, (T - Ts) / (Tl - Ts))
        else:
            if self.method == "pi" and groups is None:
                raise ValueError("method 'pi' needs each row's group (advertiser) id")
            beta = self.beta_of(groups) if groups is not None else np.full(ps.shape, self.global_beta)
            alpha = exp_alpha(T, Ts, Tl, beta)
        return np.clip(ps + alpha * (pl - ps), 0.0, 1.0)

    # -------------------------------------------------------------------------------------------- storage
    def to_dict(self) -> dict:
        return {"anchors": list(self.anchors), "method": self.method, "shrinkage": self.shrinkage,
                "beta_min": self.beta_min, "beta_max": self.beta_max, "global_beta": self.global_beta,
                "betas": {str(k): v for k, v in self.betas.items()},
                "counts": {str(k): v for k, v in self.counts.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "WindowInterpolator":
        return cls(anchors=[float(a) for a in d["anchors"]], method=d.get("method", "pi"),
                   shrinkage=float(d.get("shrinkage", 50.0)), beta_min=float(d.get("beta_min", 1e-3)),
                   beta_max=float(d.get("beta_max", 10.0)), global_beta=float(d["global_beta"]),
                   betas={int(k): float(v) for k, v in d.get("betas", {}).items()},
                   counts={int(k): int(v) for k, v in d.get("counts", {}).items()})


# ------------------------------------------------------------------------------------------------ a run's window file
WINDOWS_FILE = "windows.json"


def read_windows(directory: Path) -> tuple[WindowInterpolator, dict, list[str]]:
    """``(interpolator, the run's windows config as a dict, the anchor heads)`` from ``DIR/windows.json``."""
    path = Path(directory) / WINDOWS_FILE
    if not path.exists():
        raise ConfigError(f"{directory}: this model serves no conversion window (train it with fixed-window heads "
                          "and a 'windows:' section in its config)")
    d = json.loads(path.read_text())
    return WindowInterpolator.from_dict(d["interpolator"]), dict(d["config"]), list(d["heads"])


def window_days(text: str) -> float:
    """A window as written (``3d``, ``36h``) in days; a malformed one is a ConfigError."""
    try:
        return parse_duration(text) / 86400.0
    except ValueError as exc:
        raise ConfigError(f"window: {exc}") from None


def check_window(wi: WindowInterpolator, max_window_days: float | None, T_days: float, text: str) -> None:
    """A window the run cannot serve is a ConfigError naming the range it serves (default: up to twice the longest
    head's window)."""
    longest = max(wi.anchors)
    limit = max_window_days or 2 * longest
    if not 0 < T_days <= limit:
        raise ConfigError(f"window {text}: this model serves windows up to {limit:g} days ("
                          + ("windows.max_window_days" if max_window_days else
                             f"twice its longest head, {longest:g} days; set windows.max_window_days to change it")
                          + ")")


def group_column(categorical: list[str], cat: np.ndarray, group: str | None) -> np.ndarray | None:
    """Each row's encoded value of the categorical feature ``group`` from the encoded ``cat`` matrix ``[N, F]``
    (``categorical``: the categorical feature names in column order)."""
    if group is None:
        return None
    if group not in categorical:
        raise ConfigError(f"windows.group: '{group}' is not a categorical feature (categorical features: "
                          f"{', '.join(categorical) or 'none'})")
    return np.asarray(cat)[:, categorical.index(group)]


def serve_windows(wi: WindowInterpolator, heads: list[str], preds: dict[str, np.ndarray], windows: list[str],
                  groups: np.ndarray | None, max_window_days: float | None = None) -> np.ndarray:
    """``p(T_i)`` for row ``i`` with its own window ``windows[i]`` (each distinct window text parsed once, rows
    grouped by it)."""
    texts, inverse = np.unique(np.asarray(windows, dtype=object).astype(str), return_inverse=True)
    out = np.empty(len(windows), dtype=np.float64)
    for k, text in enumerate(texts):
        T = window_days(text)
        check_window(wi, max_window_days, T, text)
        rows = np.flatnonzero(inverse == k)
        out[rows] = wi.predict([preds[h][rows] for h in heads], T, groups[rows] if groups is not None else None)
    return out
