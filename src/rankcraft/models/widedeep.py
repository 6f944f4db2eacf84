"""Wide & Deep (Cheng et al. 2016): ``logit = LR(batch) + MLP(flatten(e))``.

``e = FeatureEmbedding(batch) : [B, F, d]``; the wide part is :class:`~rankcraft.nn.LinearPart` (no hand-made
cross features).
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model
from rankcraft.nn import LinearPart


@register_model("widedeep")
class WideDeep(nn.Module):
    class Params(TowerParams):
        """Only the shared embedding and deep-tower hyperparameters."""

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)
        self.mlp = make_tower(self.embedding.num_fields * p.embedding_dim, p, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.linear(batch) + self.mlp(self.embedding(batch).flatten(1))).squeeze(-1)
