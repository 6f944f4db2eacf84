"""FinalMLP (Mao et al. 2023): two MLP streams over gated views of the embeddings, fused bilinearly.

``x = flatten(FeatureEmbedding(batch)) : [B, F·d]``;
``(x1, x2) = FeatureSelection(x, c1, c2)`` (``x_i = x ⊙ 2σ(MLP_i(c_i))``; ``c_i`` the flattened embeddings of the
``fs{i}_context`` features, or a learned vector when that list is empty; with ``use_fs=False``, ``x1 = x2 = x``);
``h_i = MLP_i(x_i)``; ``logit = BilinearFusion(h1, h2)`` with ``num_heads`` heads.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.common import Activation, Units, field_indices
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn import MLP, BilinearFusion, FeatureEmbedding, FeatureSelection


@register_model("finalmlp")
class FinalMLP(nn.Module):
    class Params(ModelParams):
        mlp1_hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
        mlp1_activation: Activation = "relu"
        mlp1_dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
        mlp1_batch_norm: bool = True
        mlp2_hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
        mlp2_activation: Activation = "relu"
        mlp2_dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
        mlp2_batch_norm: bool = True
        use_fs: bool = True
        fs_hidden_units: Units = Field(default_factory=lambda: [800])
        fs1_context: list[str] = Field(default_factory=list)
        fs2_context: list[str] = Field(default_factory=list)
        num_heads: int = Field(default=1, ge=1)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        self.embedding = FeatureEmbedding(features, d, fused=p.fused_embedding, sparse=p.sparse_embedding)
        dim = self.embedding.num_fields * d
        self.fs = None
        if p.use_fs:
            ctx = [field_indices(self.embedding, p.fs1_context, model="finalmlp", param="fs1_context"),
                   field_indices(self.embedding, p.fs2_context, model="finalmlp", param="fs2_context")]
            for i, idx in enumerate(ctx):
                self.register_buffer(f"ctx{i + 1}_index", torch.tensor(idx, dtype=torch.long), persistent=False)
            self.fs = FeatureSelection(dim, context_dims=(len(ctx[0]) * d, len(ctx[1]) * d), default_context_dim=d,
                                       hidden=p.fs_hidden_units)
        self.mlp1 = MLP(dim, p.mlp1_hidden_units, act=p.mlp1_activation, dropout=p.mlp1_dropout,
                        batch_norm=p.mlp1_batch_norm)
        self.mlp2 = MLP(dim, p.mlp2_hidden_units, act=p.mlp2_activation, dropout=p.mlp2_dropout,
                        batch_norm=p.mlp2_batch_norm)
        try:
            self.fusion = BilinearFusion(self.mlp1.out_dim, self.mlp2.out_dim, p.num_heads)
        except ValueError as exc:
            raise ConfigError(f"model 'finalmlp': {exc}") from None

    def _context(self, e: torch.Tensor, index: torch.Tensor) -> torch.Tensor | None:
        return e.index_select(1, index).flatten(1) if index.numel() else None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(batch)
        x = e.flatten(1)
        if self.fs is not None:
            x1, x2 = self.fs(x, self._context(e, self.ctx1_index), self._context(e, self.ctx2_index))
        else:
            x1 = x2 = x
        return self.fusion(self.mlp1(x1), self.mlp2(x2)).squeeze(-1)
