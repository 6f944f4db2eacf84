"""MaskNet (Wang et al. 2021): instance-guided masks multiplied into MLP layers.

``e = FeatureEmbedding(batch) : [B, F, d]``, ``v = flatten(e)`` guides every mask; ``v_ln = flatten(LN_d(e))``
(per-field LayerNorm, ``emb_layernorm``) is the first masked input. With ``MaskBlock(v, h)`` =
``ReLU(LN(W (IGM(v) ⊙ h)))``:

* ``parallel``: ``z = [MaskBlock_1(v, v_ln), …, MaskBlock_k(v, v_ln)] : [B, k·block_dim]`` (``k =
  parallel_num_blocks`` blocks of width ``parallel_block_dim``);
* ``serial``:   ``h_0 = v_ln``, ``h_i = MaskBlock_i(v, h_{i-1})`` with widths ``serial_block_units``; ``z = h_last``.

``logit = MLP(z)`` with ``hidden_units`` (``[]`` = a single output layer, as in the paper's serial model).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Activation, Units
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import MLP, FeatureEmbedding, MaskBlock


@register_model("masknet")
class MaskNet(nn.Module):
    class Params(ModelParams):
        model_type: Literal["parallel", "serial"] = "parallel"
        parallel_num_blocks: int = Field(default=2, ge=1)
        parallel_block_dim: int = Field(default=64, ge=1)
        serial_block_units: Units = Field(default_factory=lambda: [64, 64, 64], min_length=1)
        reduction_ratio: float = Field(default=1.0, gt=0.0)
        emb_layernorm: bool = True
        net_layernorm: bool = True
        hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
        activation: Activation = "relu"
        dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
        batch_norm: bool = False

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        self.embedding = FeatureEmbedding(features, d, fused=p.fused_embedding, sparse=p.sparse_embedding)
        dim = self.embedding.num_fields * d
        self.emb_norm = nn.LayerNorm(d) if p.emb_layernorm else nn.Identity()
        self.serial = p.model_type == "serial"
        kw = dict(reduction_ratio=p.reduction_ratio, layer_norm=p.net_layernorm, dropout=p.dropout)
        if self.serial:
            widths = [dim, *p.serial_block_units]
            self.blocks = nn.ModuleList(MaskBlock(dim, a, b, **kw) for a, b in zip(widths[:-1], widths[1:]))
            out = widths[-1]
        else:
            self.blocks = nn.ModuleList(MaskBlock(dim, dim, p.parallel_block_dim, **kw)
                                        for _ in range(p.parallel_num_blocks))
            out = p.parallel_num_blocks * p.parallel_block_dim
        self.head = MLP(out, p.hidden_units, 1, act=p.activation, dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)
        v = e.flatten(1)
        h = self.emb_norm(e).flatten(1)
        if self.serial:
            for block in self.blocks:
                h = block(v, h)
            z = h
        else:
            z = torch.cat([block(v, h) for block in self.blocks], dim=1)
        return self.head(z).squeeze(-1)
