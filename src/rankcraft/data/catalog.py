"""Every built-in dataset recipe, by name. Importing this module registers them all (each recipe module registers
itself into :mod:`rankcraft.data.registry` on import)."""

from __future__ import annotations

from rankcraft.data import census as _census  # noqa: F401
from rankcraft.data import delayed as _delayed  # noqa: F401
from rankcraft.data import drift as _drift  # noqa: F401
from rankcraft.data import events as _events  # noqa: F401
from rankcraft.data import funnel as _funnel  # noqa: F401
from rankcraft.data import movielens1m as _movielens1m  # noqa: F401
from rankcraft.data import recipes as _recipes  # noqa: F401  (registers the built-in recipes)
from rankcraft.data import session_hopping as _session_hopping  # noqa: F401
from rankcraft.data import taobao as _taobao  # noqa: F401
from rankcraft.data.dataset import DataSource
from rankcraft.data.recipes import schema_source
from rankcraft.data.registry import RECIPES, find_data_dir
from rankcraft.errors import DataError

__all__ = ["RECIPES", "find_data_dir", "get_source", "schema_source"]


def get_source(name: str, data_dir: str | None = None, **options) -> DataSource:
    """The :class:`DataSource` of recipe ``name`` (``options`` are recipe-specific, e.g. ``rows`` for synthetic)."""
    key = name.lower().replace("_", "-")
    for rname, (fn, _) in RECIPES.items():
        if rname.replace("_", "-") == key:
            return fn(data_dir, **options)
    raise DataError(f"unknown dataset recipe '{name}'; available: {', '.join(sorted(RECIPES))}")
