"""Serving any conversion window from a run's fixed-window heads: the run config's ``windows`` section.

A run whose objective has tasks on the window labels of a ``delay`` label (``conv_1d``, ``conv_7d``, …; see
:mod:`rankcraft.data.delays`) and a ``windows:`` section fits a
:class:`~rankcraft.models.windows.WindowInterpolator` on its matured training rows after training and keeps it in
``RUN/windows.json``; ``rankcraft predict RUN FILE --window 3d`` then scores any window.

``windows`` keys: ``group`` (a categorical feature whose values get their own delay rate, e.g. ``advertiser``;
absent: one pooled rate), ``method`` (``pi`` / ``global`` / ``linear`` / ``nearest``), ``shrinkage`` (k, 50),
``beta_min`` / ``beta_max`` (per day), ``max_window_days`` (the longest window served; default twice the longest
head's).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rankcraft.data.delays import parse_duration, window_suffix
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.data.schema import Schema
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_json
from rankcraft.models.windows import WindowInterpolator

WINDOWS_FILE = "windows.json"


class WindowsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str | None = None
    method: Literal["pi", "global", "linear", "nearest"] = "pi"
    shrinkage: float = Field(default=50.0, ge=0)
    beta_min: float = Field(default=1e-3, gt=0)
    beta_max: float = Field(default=10.0, gt=0)
    #: the longest window served (days); absent: twice the longest head's window (beyond the heads, every window
    #: is an extrapolation of the delay model)
    max_window_days: float | None = Field(default=None, gt=0)


def window_tasks(schema: Schema, objective) -> list[tuple[str, str, float, str]]:
    """The objective's tasks on window labels: ``(task name, label, window in days, maturity column)`` sorted by
    window."""
    windows = {}
    for spec in schema.labels:
        if spec.kind == "delay":
            for w in spec.windows:
                name = f"{spec.name}_{window_suffix(w)}"
                windows[label_key(name)] = (parse_duration(w) / 86400.0, label_key(f"{name}_mature"))
    found = [(t.name, t.label, *windows[t.label]) for t in objective.tasks if t.label in windows]
    return sorted(found, key=lambda x: x[2])


def group_ids(features: FeatureSet, columns: dict, group: str | None) -> np.ndarray | None:
    """Each row's encoded value of the categorical feature ``group`` (None without a group)."""
    if group is None:
        return None
    names = [f.name for f in features.categorical]
    if group not in names:
        raise ConfigError(f"windows.group: '{group}' is not a categorical feature (categorical features: "
                          f"{', '.join(names) or 'none'})")
    return columns["cat"][:, names.index(group)].numpy()


def fit_windows(cfg: WindowsConfig, schema: Schema, objective, features: FeatureSet, train) -> WindowInterpolator:
    """Fit the interpolator on the matured rows of the training split (see the module docstring)."""
    tasks = window_tasks(schema, objective)
    if len(tasks) < 2:
        raise ConfigError("windows: the objective needs tasks on two or more window labels of a 'delay' label "
                          f"(e.g. conv_1d and conv_7d); it has {len(tasks)}")
    c = train.columns
    short, long_ = tasks[0], tasks[-1]
    groups = group_ids(features, c, cfg.group)
    wi = WindowInterpolator([t[2] for t in tasks], method=cfg.method, shrinkage=cfg.shrinkage,
                            beta_min=cfg.beta_min, beta_max=cfg.beta_max)
    wi.fit(groups if groups is not None else np.zeros(len(train), dtype=np.int64), c[short[1]].numpy(),
           c[long_[1]].numpy(), c[long_[3]].numpy())
    if groups is None:
        wi.betas = {}
    return wi


def save_windows(run_dir: Path, wi: WindowInterpolator, cfg: WindowsConfig, tasks) -> None:
    atomic_write_json(run_dir / WINDOWS_FILE, {"config": cfg.model_dump(), "heads": [t[0] for t in tasks],
                                               "interpolator": wi.to_dict()})


def load_windows(run_dir: Path) -> tuple[WindowInterpolator, WindowsConfig, list[str]]:
    path = Path(run_dir) / WINDOWS_FILE
    if not path.exists():
        raise ConfigError(f"{run_dir}: this run serves no window (train it with fixed-window heads and a 'windows:' "
                          "section in its config)")
    d = json.loads(path.read_text())
    return WindowInterpolator.from_dict(d["interpolator"]), WindowsConfig(**d["config"]), list(d["heads"])


def check_window(wi: WindowInterpolator, cfg: WindowsConfig, T_days: float, text: str) -> None:
    """A window the run cannot serve is a ConfigError naming the range it serves."""
    longest = max(wi.anchors)
    limit = cfg.max_window_days or 2 * longest
    if not 0 < T_days <= limit:
        raise ConfigError(f"window {text}: this run serves windows up to {limit:g} days ("
                          + ("windows.max_window_days" if cfg.max_window_days else
                             f"twice its longest head, {longest:g} days; set windows.max_window_days to change it")
                          + ")")


def predict_window(wi: WindowInterpolator, heads: list[str], preds: dict[str, np.ndarray], T_days: float,
                   groups: np.ndarray | None) -> np.ndarray:
    """``p(T)`` per row from the run's head predictions."""
    return wi.predict([preds[h] for h in heads], T_days, groups)
