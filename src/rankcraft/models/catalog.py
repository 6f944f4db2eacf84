"""The model zoo by name: importing this module imports (and so registers) every zoo model."""

from __future__ import annotations

from pydantic import BaseModel
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models import (  # noqa: F401
    arch,
    autoint,
    dcn,
    dcnv2,
    deepfm,
    din,
    dlrm,
    dnn,
    ensemble,
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
from rankcraft.models.registry import (
    _REGISTRY,
    build_registered,
    registered_class,
    validated_params,
)


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def model_class(name: str) -> type[nn.Module]:
    return registered_class(name)


def requires_sequence(name: str) -> bool:
    """True for behaviour-sequence models (their ``Params`` name the ``sequence`` feature they encode)."""
    return "sequence" in model_class(name).Params.model_fields


def is_multitask(name: str) -> bool:
    """True for multi-task models (they return a :class:`~rankcraft.models.output.ModelOutput` with named heads,
    listed on the built model as ``model.heads``)."""
    return bool(getattr(model_class(name), "multitask", False))


def validate_params(name: str, params: dict | None) -> BaseModel:
    return validated_params(name, params)


def build_model(name: str, features: FeatureSet, params: dict | None = None) -> nn.Module:
    """Instantiate zoo model ``name`` for ``features`` with validated ``params``."""
    return build_registered(name, features, params)
