"""A searched architecture as a zoo model: ``model: arch`` with ``params: {arch: {...}}``.

The architecture format and its math are documented in :mod:`rankcraft.models.arch.format`; the module is built by
:class:`rankcraft.models.arch.network.ArchNet` from the shared operator library.
"""

from __future__ import annotations

from rankcraft.data.features import FeatureSet
from rankcraft.models.arch.format import Arch
from rankcraft.models.arch.network import ArchNet
from rankcraft.models.registry import ModelParams, register_model


@register_model("arch")
class ArchModel(ArchNet):
    class Params(ModelParams):
        arch: Arch

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__(features, p.arch, p.embedding_dim, fused=p.fused_embedding, sparse=p.sparse_embedding)
