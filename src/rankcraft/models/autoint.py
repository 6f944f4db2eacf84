"""AutoInt / AutoInt+ (Song et al. 2019).

``e = FeatureEmbedding(batch) : [B, F, d]``; ``a = FieldSelfAttention(e) : [B, F, H·d']``;
``logit = w·flatten(a) + b  [+ MLP(flatten(e))]  [+ LR(batch)]``.
The DNN (AutoInt+) is on by default; ``hidden_units=[]`` gives plain AutoInt. ``use_wide`` adds a linear part.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import TowerParams, make_embedding, make_tower
from rankcraft.models.registry import register_model
from rankcraft.nn import FieldSelfAttention, LinearPart


@register_model("autoint")
class AutoInt(nn.Module):
    class Params(TowerParams):
        attention_layers: int = Field(default=3, ge=1, le=16)
        num_heads: int = Field(default=2, ge=1)
        attention_dim: int = Field(default=32, ge=1, description="width of one attention head")
        use_residual: bool = True
        use_scale: bool = False
        layer_norm: bool = False
        attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        use_wide: bool = False

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = make_embedding(features, p)
        nf = self.embedding.num_fields
        self.attention = FieldSelfAttention(p.embedding_dim, p.attention_dim, p.num_heads, p.attention_layers,
                                            use_residual=p.use_residual, layer_norm=p.layer_norm,
                                            use_scale=p.use_scale, dropout=p.attention_dropout)
        self.att_fc = nn.Linear(nf * self.attention.out_dim, 1)
        self.mlp = make_tower(nf * p.embedding_dim, p, 1) if p.hidden_units else None
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding) if p.use_wide else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)
        y = self.att_fc(self.attention(e).flatten(1))
        if self.mlp is not None:
            y = y + self.mlp(e.flatten(1))
        if self.linear is not None:
            y = y + self.linear(batch)
        return y.squeeze(-1)
