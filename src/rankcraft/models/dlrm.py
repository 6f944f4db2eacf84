"""DLRM (Naumov et al. 2019).

* dense vector ``z = BottomMLP(x_num) : [B, d]`` (every bottom layer, the last included, is followed by the
  activation, as in the reference DLRM). Without numeric features ``z`` is a learned vector shared by all examples,
  so the interaction still yields first-order terms ``<z, e_f>``.
* sparse fields ``e = FeatureEmbedding(categorical + multi-valued + sequence features) : [B, F_s, d]``.
* ``p = DotInteraction([z; e]) : [B, (F_s+1)F_s/2]`` (pairs ``i < j``, or ``i ≤ j`` with ``self_interaction``).
* ``logit = TopMLP([z, p])`` (``z`` is concatenated only when it comes from numeric features).

``interaction_op="cat"`` replaces ``p`` by the flattened field embeddings ``flatten(e) : [B, F_s·d]`` (FuxiCTR's
``interaction_op: cat``, used by the best BARS Frappe_x1 DLRM config); ``"dot"`` (default) is the paper's operator.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.common import Activation, Units
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import MLP, DotInteraction, FeatureEmbedding


@register_model("dlrm")
class DLRM(nn.Module):
    class Params(ModelParams):
        bottom_mlp_units: Units = Field(default_factory=lambda: [64])
        top_mlp_units: Units = Field(default_factory=lambda: [400, 400, 400])
        self_interaction: bool = False
        interaction_op: Literal["dot", "cat"] = "dot"
        activation: Activation = "relu"
        dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
        batch_norm: bool = True

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        sparse = FeatureSet(tuple(f for f in features.features if f.kind != "numeric"), labels=features.labels,
                            has_group=features.has_group, extra=features.extra)
        n_num = len(features.numeric)
        if not sparse.features and not n_num:
            raise ConfigError("dlrm: the feature set has no features")
        self.embedding = FeatureEmbedding(sparse, d, fused=p.fused_embedding,
                                          sparse=p.sparse_embedding) if sparse.features else None
        self.has_num = n_num > 0
        if self.has_num:
            self.bottom = MLP(n_num, [*p.bottom_mlp_units, d], act=p.activation)
        else:
            self.dense = nn.Parameter(torch.randn(1, d) / d ** 0.5)
        self.dim = d
        self.op = p.interaction_op
        self.interaction = DotInteraction(len(sparse.features), dense=True, self_interaction=p.self_interaction)
        inter_dim = self.interaction.out_dim if self.op == "dot" else len(sparse.features) * d
        top_in = inter_dim + (d if self.has_num else 0)
        self.top = MLP(top_in, p.top_mlp_units, 1, act=p.activation, dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.embedding is not None:
            e = self.embedding(batch)
        else:
            e = batch["num"].new_zeros(batch["num"].shape[0], 0, self.dim)
        # the learned dense vector is passed un-expanded ([1, d]); DotInteraction broadcasts it
        z = self.bottom(batch["num"]) if self.has_num else self.dense
        inter = self.interaction(e, z) if self.op == "dot" else e.flatten(1)
        top_in = torch.cat([z, inter], dim=1) if self.has_num else inter
        return self.top(top_in).squeeze(-1)
