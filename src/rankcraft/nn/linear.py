"""Wide / logistic-regression part of a CTR model.

For an example with categorical ids ``c_f``, multi-valued id bags ``S_g`` and numeric values ``x_j``::

    y = b + Σ_f w[c_f] + Σ_g mean_{i ∈ S_g} w[i] + Σ_j v_j · x_j          : [B, 1]

i.e. a dot product of the (sparse, one-hot / bag-normalised) input vector with one weight per id plus a linear
term over the numeric features. It is built on ``FeatureEmbedding(features, 1)``: every feature becomes one scalar
field ``z_f`` (a 1-dim embedding for ids, ``v_j · x_j`` for numeric features), then ``y = z · 1 + b``.

FLOPs: the final field sum is written as a matrix product with a ones vector, so the profiler counts it as
``2·F`` per example (one multiply-add per nonzero of the sparse input — the cost of the sparse dot product).
The per-field lookups and the numeric products are elementwise and count 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.nn.embedding import FeatureEmbedding


class LinearPart(nn.Module):
    """``batch -> [B, 1]`` logistic-regression logit (see the module docstring).

    Args:
        features: fitted feature metadata (all features contribute one term).
        fused / sparse: passed to the underlying :class:`FeatureEmbedding` of width 1.
    """

    def __init__(self, features: FeatureSet, *, fused: bool = True, sparse: bool = False):
        super().__init__()
        self.weights = FeatureEmbedding(features, 1, fused=fused, sparse=sparse)
        self.bias = nn.Parameter(torch.zeros(1))
        self.register_buffer("ones", torch.ones(1, self.weights.num_fields), persistent=False)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        z = self.weights(batch).squeeze(-1)  # [B, F]
        return F.linear(z, self.ones, self.bias)  # [B, 1]
