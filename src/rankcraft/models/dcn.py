"""Deep & Cross Network (Wang et al. 2017).

``x0 = flatten(FeatureEmbedding(batch)) : [B, F·d]``; cross tower ``c = CrossNetV1(x0) : [B, F·d]``; deep tower
``h = MLP(x0) : [B, h_last]``; ``logit = w·[c, h] + b``. With ``hidden_units=[]`` the deep tower is dropped
(cross network only).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Activation, Units
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import MLP, CrossNetV1, FeatureEmbedding


@register_model("dcn")
class DCN(nn.Module):
    class Params(ModelParams):
        num_cross_layers: int = Field(default=3, ge=1, le=16)
        hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
        activation: Activation = "relu"
        dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
        batch_norm: bool = True

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = FeatureEmbedding(features, p.embedding_dim, fused=p.fused_embedding,
                                          sparse=p.sparse_embedding)
        dim = self.embedding.num_fields * p.embedding_dim
        self.cross = CrossNetV1(dim, p.num_cross_layers)
        self.mlp = MLP(dim, p.hidden_units, act=p.activation, dropout=p.dropout,
                       batch_norm=p.batch_norm) if p.hidden_units else None
        self.fc = nn.Linear(dim + (self.mlp.out_dim if self.mlp is not None else 0), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)
        z = self.cross(x0)
        if self.mlp is not None:
            z = torch.cat([z, self.mlp(x0)], dim=1)
        return self.fc(z).squeeze(-1)
