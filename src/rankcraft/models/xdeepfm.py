"""xDeepFM (Lian et al. 2018): ``logit = LR(batch) + w·CIN(e) + MLP(flatten(e))``.

``e = FeatureEmbedding(batch) : [B, F, d]``; :class:`~rankcraft.nn.CIN` with ``cin_layer_units`` feature maps per
layer (sum-pooled, split in half between output and next layer with ``split_half``). ``hidden_units=[]`` drops the
DNN.
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import (
    Activation,
    TowerParams,
    Units,
    make_embedding,
    make_tower,
)
from rankcraft.models.registry import register_model
from rankcraft.nn import CIN, LinearPart


@register_model("xdeepfm")
class XDeepFM(nn.Module):
    class Params(TowerParams):
        cin_layer_units: Units = Field(default_factory=lambda: [100, 100, 100], min_length=1)
        cin_split_half: bool = True
        cin_activation: Activation = "identity"

        @model_validator(mode="after")
        def _even_sizes(self):
            if self.cin_split_half and any(h % 2 for h in self.cin_layer_units[:-1]):
                raise ValueError("with cin_split_half every CIN layer but the last needs an even size")
            return self

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        nf = self.embedding.num_fields
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)
        self.cin = CIN(nf, p.cin_layer_units, split_half=p.cin_split_half, act=p.cin_activation)
        self.cin_fc = nn.Linear(self.cin.out_dim, 1)
        self.mlp = make_tower(nf * p.embedding_dim, p, 1) if p.hidden_units else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)
        y = self.linear(batch) + self.cin_fc(self.cin(e))
        if self.mlp is not None:
            y = y + self.mlp(e.flatten(1))
        return y.squeeze(-1)
