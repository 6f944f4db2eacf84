"""A searched architecture as a zoo model: ``model: arch`` with ``params: {arch: {...}}``.

The architecture format and its math are documented in :mod:`rankcraft.search.arch`; the module is built by
:class:`rankcraft.search.network.ArchNet` from the shared operator library.
"""

from __future__ import annotations

from rankcraft.data.features import FeatureSet
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.search.arch import Arch
from rankcraft.search.network import ArchNet


@register_model("arch")
class ArchModel(ArchNet):
    class Params(ModelParams):
        arch: Arch

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__(features, p.arch, p.embedding_dim, fused=p.fused_embedding, sparse=p.sparse_embedding)
