"""The recipe registry: a leaf module that recipe modules register into (no imports back from here).

:mod:`rankcraft.data.catalog` imports every recipe module and is the place to look recipes up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from rankcraft.data.dataset import DataSource
from rankcraft.errors import DataError

RECIPES: dict[str, tuple[Callable[..., DataSource], str]] = {}


def recipe(name: str, help: str):
    def deco(fn):
        RECIPES[name] = (fn, help)
        return fn
    return deco


def find_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    """The directory of recipe ``name``: ``data_dir`` if given, else the first default location that exists."""
    if data_dir is not None:
        p = Path(data_dir)
        if not p.exists():
            raise DataError(f"dataset '{name}': not found", path=str(p))
        return p
    candidates = []
    if os.environ.get("RANKCRAFT_DATA_DIR"):
        candidates.append(Path(os.environ["RANKCRAFT_DATA_DIR"]) / name)
    candidates += [Path("../shared/data") / name, Path("data") / name]
    for c in candidates:
        if c.exists():
            return c
    raise DataError(f"dataset '{name}': no data directory given and none of "
                    f"{[str(c) for c in candidates]} exists; pass --data-dir")
