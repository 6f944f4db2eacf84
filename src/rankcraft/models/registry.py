"""Model registry: every zoo model registers itself here under a name, with typed, validated hyperparameters.
This is a leaf module (it imports no model); :mod:`rankcraft.models.catalog` imports the zoo and looks models up.

A model is a plain ``nn.Module`` whose ``forward(batch) -> logits [B]``; it is constructed as
``cls(features: FeatureSet, params: cls.Params)``. ``Params`` is a pydantic model (unknown keys are errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from rankcraft.errors import ConfigError

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


def registered_class(name: str) -> type[nn.Module]:
    """The registered model class ``name`` (ConfigError listing the registered names)."""
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None


def validated_params(name: str, params: dict | None) -> BaseModel:
    cls = registered_class(name)
    try:
        return cls.Params.model_validate(params or {})
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"model '{name}': invalid hyperparameters: {msgs}") from None


def build_registered(name: str, features, params: dict | None = None) -> nn.Module:
    """Instantiate registered model ``name`` with validated ``params`` (and its ``linear_init``). Wrappers such as
    the ensemble build their members with this (the catalog imports the zoo, so they cannot import it)."""
    p = validated_params(name, params)
    model = registered_class(name)(features, p)
    if p.linear_init == "xavier_normal":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
