"""Model zoo. Use :func:`build_model` to construct a model by name (:mod:`rankcraft.models.catalog`)."""

from rankcraft.models.catalog import (
           available_models,
           build_model,
           model_class,
           requires_sequence,
           validate_params,
)
from rankcraft.models.registry import register_model

__all__ = ["available_models", "build_model", "model_class", "register_model", "requires_sequence",
           "validate_params"]
