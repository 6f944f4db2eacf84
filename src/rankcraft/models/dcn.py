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
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model
from rankcraft.nn import CrossNetV1


@register_model("dcn")
class DCN(nn.Module):
    class Params(TowerParams):
        num_cross_layers: int = Field(default=3, ge=1, le=16)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        dim = self.embedding.num_fields * p.embedding_dim
        self.cross = CrossNetV1(dim, p.num_cross_layers)
        self.mlp = make_tower(dim, p) if p.hidden_units else None
        self.fc = nn.Linear(dim + (self.mlp.out_dim if self.mlp is not None else 0), 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)
        z = self.cross(x0)
        if self.mlp is not None:
            z = torch.cat([z, self.mlp(x0)], dim=1)
        return self.fc(z).squeeze(-1)
