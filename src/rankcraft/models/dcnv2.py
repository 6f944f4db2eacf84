"""DCN-V2 (Wang et al. 2021).

``x0 = flatten(FeatureEmbedding(batch)) : [B, D = F·d]``; ``C`` is :class:`~rankcraft.nn.CrossNetV2` (full-rank) or,
with ``use_low_rank_mixture``, :class:`~rankcraft.nn.CrossNetMix` (``num_experts`` experts of rank ``low_rank``).

* ``parallel``:      ``logit = w·[C(x0), MLP(x0)] + b``
* ``stacked``:       ``logit = w·MLP(C(x0)) + b``
* ``crossnet_only``: ``logit = w·C(x0) + b``

With ``hidden_units=[]`` the first two reduce to ``crossnet_only``.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model
from rankcraft.nn import CrossNetMix, CrossNetV2


@register_model("dcnv2")
class DCNv2(nn.Module):
    class Params(TowerParams):
        model_structure: Literal["parallel", "stacked", "crossnet_only"] = "parallel"
        num_cross_layers: int = Field(default=4, ge=1, le=16)
        use_low_rank_mixture: bool = False
        low_rank: int = Field(default=32, ge=1)
        num_experts: int = Field(default=4, ge=1)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.structure = p.model_structure
        self.embedding = make_embedding(features, p)
        dim = self.embedding.num_fields * p.embedding_dim
        if p.use_low_rank_mixture:
            self.cross = CrossNetMix(dim, p.num_cross_layers, num_experts=p.num_experts, low_rank=p.low_rank)
        else:
            self.cross = CrossNetV2(dim, p.num_cross_layers)
        self.mlp = None
        if self.structure != "crossnet_only" and p.hidden_units:
            self.mlp = make_tower(dim, p)
        if self.mlp is None:
            out = dim
        else:
            out = self.mlp.out_dim + (dim if self.structure == "parallel" else 0)
        self.fc = nn.Linear(out, 1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.embedding(batch).flatten(1)
        c = self.cross(x0)
        if self.mlp is None:
            z = c
        elif self.structure == "stacked":
            z = self.mlp(c)
        else:
            z = torch.cat([c, self.mlp(x0)], dim=1)
        return self.fc(z).squeeze(-1)
