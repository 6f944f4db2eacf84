"""Per-dataset training presets: the hyperparameters ``bench`` (and ``train`` on a recipe) use for each zoo model.

``presets.yaml`` maps a dataset name (recipe names with ``-`` for ``_``) to ``train`` defaults and, per model row,
``model`` (the zoo model when the row label differs), ``params`` and ``train`` overrides.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml


def load_presets(path: str | Path | None = None) -> dict:
    text = Path(path).read_text() if path else resources.files("rankcraft.training").joinpath("presets.yaml").read_text()
    return yaml.safe_load(text)
