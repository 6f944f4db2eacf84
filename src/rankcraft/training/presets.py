"""Per-dataset training presets: the hyperparameters ``bench`` (and ``train`` on a recipe) use for each zoo model.

``presets.yaml`` maps a dataset name to ``train`` defaults, an optional ``objective`` and, per model row, ``model``
(the zoo model when the row label differs), ``params``, and ``train`` and ``objective`` overrides. Dataset names are matched after :func:`dataset_key`
normalisation (case-insensitive, ``_`` and ``-`` alike), the same rule the recipe catalog uses, so ``frappe_x1``,
``frappe-x1`` and ``Frappe_X1`` name one dataset.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def load_presets(path: str | Path | None = None) -> dict:
    text = Path(path).read_text() if path else resources.files("rankcraft.training").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)


def dataset_key(name: str) -> str:
    """The normalised form of a dataset/recipe name: lower case, ``-`` for ``_``."""
    return str(name).strip().lower().replace("_", "-")


def dataset_presets(dataset: str | None, presets: dict | None = None) -> tuple[str, dict] | None:
    """``(name as spelt in the presets, its entry)`` for ``dataset``, or None when it has no presets."""
    if not dataset:
        return None
    presets = load_presets() if presets is None else presets
    key = dataset_key(dataset)
    for name, entry in (presets or {}).items():
        if dataset_key(name) == key:
            return name, entry or {}
    return None


def preset_for(dataset: str | None, model: str, presets: dict | None = None) -> dict | None:
    """The preset ``bench`` uses for row ``model`` on ``dataset``, or None when the dataset has no presets.

    Returns ``{"name": "frappe_x1/dnn", "model": zoo model, "params": {...}, "train": {...}, "objective": {...} or
    None, "row": bool}``: ``train`` is the dataset's training settings updated with the row's, ``objective`` the
    row's or else the dataset's, ``model`` the row's zoo model (a row label such as ``deepfm-xavier`` may name a
    variant of ``deepfm``), ``row`` whether the dataset has a row for ``model`` (without one, ``params`` is empty
    and ``train`` and ``objective`` are the dataset's, as in ``bench``)."""
    found = dataset_presets(dataset, presets)
    if found is None:
        return None
    ds_name, ds = found
    rows = ds.get("models") or {}
    row = rows.get(model)
    train = dict(ds.get("train") or {})
    train.update((row or {}).get("train") or {})
    objective = (row or {}).get("objective", ds.get("objective"))
    return {"name": f"{ds_name}/{model}", "model": (row or {}).get("model", model),
            "params": dict((row or {}).get("params") or {}), "train": train,
            "objective": dict(objective) if isinstance(objective, dict) else objective, "row": row is not None}
