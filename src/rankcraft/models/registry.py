"""Model registry: every zoo model is selectable by name with typed, validated hyperparameters.

A model is a plain ``nn.Module`` whose ``forward(batch) -> logits [B]``; it is constructed as
``cls(features: FeatureSet, params: cls.Params)``. ``Params`` is a pydantic model (unknown keys are errors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from rankcraft.data.features import FeatureSet
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


def _load_zoo() -> None:
    import rankcraft.models  # noqa: F401  (importing the package registers every model)


def available_models() -> list[str]:
    _load_zoo()
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    _load_zoo()
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None


def requires_sequence(name: str) -> bool:
    """True for behaviour-sequence models (their ``Params`` name the ``sequence`` feature they encode)."""
    return "sequence" in model_class(name).Params.model_fields


def validate_params(name: str, params: dict | None) -> BaseModel:
    cls = model_class(name)
    try:
        return cls.Params.model_validate(params or {})
    except ValidationError as exc:
        msgs = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"model '{name}': invalid hyperparameters: {msgs}") from None


def build_model(name: str, features: FeatureSet, params: dict | None = None) -> nn.Module:
    """Instantiate zoo model ``name`` for ``features`` with validated ``params``."""
    p = validate_params(name, params)
    model = model_class(name)(features, p)
    if p.linear_init == "xavier_normal":
        for m in model.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
    return model
