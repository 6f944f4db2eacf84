"""Factorisation machine (Rendle 2010): ``logit = LR(batch) + Σ_{i<j} <e_i, e_j>``.

``e = FeatureEmbedding(batch) : [B, F, d]``; uses :class:`~rankcraft.nn.LinearPart` and :class:`~rankcraft.nn.FM`.
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import FM as FMOp
from rankcraft.nn import FeatureEmbedding, LinearPart


@register_model("fm")
class FM(nn.Module):
    class Params(ModelParams):
        pass

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.embedding = FeatureEmbedding(features, p.embedding_dim, fused=p.fused_embedding,
                                          sparse=p.sparse_embedding)
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)
        self.fm = FMOp(self.embedding.num_fields)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return (self.linear(batch) + self.fm(self.embedding(batch))).squeeze(-1)
