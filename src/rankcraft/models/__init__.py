"""Model zoo. Importing this package registers every model; use :func:`build_model` to construct one by name."""

from rankcraft.models import (  # noqa: F401
    autoint,
    dcn,
    dcnv2,
    deepfm,
    dlrm,
    dnn,
    finalmlp,
    fm,
    lr,
    masknet,
    widedeep,
    xdeepfm,
)
from rankcraft.models.registry import available_models, build_model, model_class, register_model

__all__ = ["available_models", "build_model", "model_class", "register_model"]
