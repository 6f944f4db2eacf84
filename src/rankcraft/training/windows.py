"""Serving any conversion window from a run's fixed-window heads: the run config's ``windows`` section.

A run whose objective has tasks on the window labels of a ``delay`` label (``conv_1d``, ``conv_7d``, …; see
:mod:`rankcraft.data.delays`) and a ``windows:`` section fits a
:class:`~rankcraft.data.windows.WindowInterpolator` on its matured training rows after training and keeps it in
``RUN/windows.json``; ``rankcraft predict RUN FILE --window 3d`` then scores any window.

``windows`` keys: ``group`` (a categorical feature whose values get their own delay rate, e.g. ``advertiser``;
absent: one pooled rate), ``method`` (``pi`` / ``global`` / ``linear`` / ``nearest``), ``shrinkage`` (k, 50),
``beta_min`` / ``beta_max`` (per day), ``max_window_days`` (the longest window served; default twice the longest
head's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from rankcraft.data.delays import parse_duration, window_suffix
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.data.schema import Schema
from rankcraft.data.windows import (
    WINDOWS_FILE,
    WindowInterpolator,
    group_column,
    read_windows,
)
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_json


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
    return group_column([f.name for f in features.categorical], columns["cat"].numpy(), group)


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
    wi, cfg, heads = read_windows(run_dir)
    return wi, WindowsConfig(**cfg), heads
