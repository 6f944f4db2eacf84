"""The model zoo by name: importing this module imports (and so registers) every zoo model."""

from __future__ import annotations

from pydantic import BaseModel, ValidationError
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models import (  # noqa: F401
    arch,
    autoint,
    dcn,
    dcnv2,
    deepfm,
    din,
    dlrm,
    dnn,
    esmm,
    finalmlp,
    fm,
    interformer,
    lr,
    masknet,
    mmoe,
    mos,
    ple,
    shared_bottom,
    transformer_seq,
    widedeep,
    xdeepfm,
)
from rankcraft.models.registry import _REGISTRY


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(_REGISTRY))}") from None


def requires_sequence(name: str) -> bool:
    """True for behaviour-sequence models (their ``Params`` name the ``sequence`` feature they encode)."""
    return "sequence" in model_class(name).Params.model_fields


def is_multitask(name: str) -> bool:
    """True for multi-task models (they return a :class:`~rankcraft.models.output.ModelOutput` with named heads,
    listed on the built model as ``model.heads``)."""
    return bool(getattr(model_class(name), "multitask", False))


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
