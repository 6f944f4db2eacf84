"""Logistic regression: ``logit = b + Σ_f w[id_f] + Σ_j v_j x_j`` (see :class:`~rankcraft.nn.LinearPart`).

``embedding_dim`` is unused (the weights are 1-dim embeddings).
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import LinearPart


@register_model("lr")
class LR(nn.Module):
    class Params(ModelParams):
        pass

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.linear = LinearPart(features, fused=p.fused_embedding, sparse=p.sparse_embedding)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.linear(batch).squeeze(-1)
