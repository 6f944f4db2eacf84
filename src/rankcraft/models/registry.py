"""Model registry: every zoo model registers itself here under a name, with typed, validated hyperparameters.
This is a leaf module (it imports no model); :mod:`rankcraft.models.catalog` imports the zoo and looks models up.

A model is a plain ``nn.Module`` whose ``forward(batch) -> logits [B]``; it is constructed as
``cls(features: FeatureSet, params: cls.Params)``. ``Params`` is a pydantic model (unknown keys are errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}


class ModelParams(BaseModel):
    """Hyperparameters shared by every model."""

    model_config = ConfigDict(extra="forbid")

    embedding_dim: int = Field(default=10, ge=1, le=4096)
    fused_embedding: bool = True
    sparse_embedding: bool = False
    #: ``torch``: each layer's own initialisation; ``xavier_normal``: every ``nn.Linear`` weight re-drawn from
    #: Xavier-normal and its bias zeroed after construction (FuxiCTR's convention).
    linear_init: Literal["torch", "xavier_normal"] = "torch"


def register_model(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator adding a model to the zoo under ``name`` (lower case). The class must define ``Params``."""

    def deco(cls: type[nn.Module]) -> type[nn.Module]:
        key = name.lower()
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"model name '{key}' registered twice")
        if not (isinstance(getattr(cls, "Params", None), type) and issubclass(cls.Params, ModelParams)):
            raise TypeError(f"{cls.__name__} needs a nested `Params(ModelParams)` class")
        cls.model_name = key
        _REGISTRY[key] = cls
        return cls

    return deco
