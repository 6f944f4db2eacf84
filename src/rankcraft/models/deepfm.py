"""DeepFM (Guo et al. 2017): ``logit = LR(batch) + FM(e) + MLP(flatten(e))`` with one shared embedding.

``e = FeatureEmbedding(batch) : [B, F, d]``; uses :class:`~rankcraft.nn.LinearPart`, :class:`~rankcraft.nn.FM` and
:class:`~rankcraft.nn.MLP`.
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model
from rankcraft.nn import FM, LinearPart


@register_model("deepfm")
class DeepFM(nn.Module):
    class Params(TowerParams):
        """Only the shared embedding and deep-tower hyperparameters."""

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)
        self.fm = FM(self.embedding.num_fields)
        self.mlp = make_tower(self.embedding.num_fields * p.embedding_dim, p, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)
        return (self.linear(batch) + self.fm(e) + self.mlp(e.flatten(1))).squeeze(-1)
