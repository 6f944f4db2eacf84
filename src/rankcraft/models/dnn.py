"""Plain DNN: concatenated field embeddings → MLP → logit.

``e = FeatureEmbedding(batch) : [B, F, d]``; ``logit = MLP(flatten(e)) : [B]``.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model


@register_model("dnn")
class DNN(nn.Module):
    class Params(TowerParams):
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        batch_norm: bool = False

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        self.mlp = make_tower(self.embedding.num_fields * p.embedding_dim, p, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(self.embedding(batch).flatten(1)).squeeze(-1)
