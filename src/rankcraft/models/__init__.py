"""Model zoo. Importing this package registers every model; use :func:`build_model` to construct one by name."""

from rankcraft.models import (  # noqa: F401
    arch,
    autoint,
    dcn,
    dcnv2,
    deepfm,
    din,
    dlrm,
    dnn,
    finalmlp,
    fm,
    interformer,
    lr,
    masknet,
    transformer_seq,
    widedeep,
    xdeepfm,
)
from rankcraft.models import mos  # noqa: F401
from rankcraft.models.registry import available_models, build_model, model_class, register_model

__all__ = ["available_models", "build_model", "model_class", "register_model"]
