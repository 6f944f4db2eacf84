"""Wide & Deep (Cheng et al. 2016): ``logit = LR(batch) + MLP(flatten(e))``.

``e = FeatureEmbedding(batch) : [B, F, d]``; the wide part is :class:`~rankcraft.nn.LinearPart` (no hand-made
cross features).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Activation, Units
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import MLP, FeatureEmbedding, LinearPart


@register_model("widedeep")
class WideDeep(nn.Module):
    class Params(ModelParams):
        hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
        activation: Activation = "relu"
        dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
        batch_norm: bool = True

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = FeatureEmbedding(features, p.embedding_dim, fused=p.fused_embedding,
                                          sparse=p.sparse_embedding)
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)
        self.mlp = MLP(self.embedding.num_fields * p.embedding_dim, p.hidden_units, 1, act=p.activation,
                       dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.linear(batch) + self.mlp(self.embedding(batch).flatten(1))).squeeze(-1)
