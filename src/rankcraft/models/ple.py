"""PLE — Progressive Layered Extraction (Tang et al., RecSys 2020): stacked CGC levels, then per-task towers.

``x = flatten(FeatureEmbedding(batch)) : [B, D]``. Level ``l = 1..L`` (``L = num_levels``) takes ``T + 1``
inputs ``x_1^{l−1}, …, x_T^{l−1}, x_s^{l−1}`` (all equal to ``x`` at ``l = 1``) and has, per task, ``m_t``
specific experts ``S_t = [E_{t,i}(x_t^{l−1})]`` and ``m_s`` shared experts ``S_s = [E_{s,j}(x_s^{l−1})]``
(MLPs ``expert_units``, output width ``H``):

* ``x_t^l = Σ softmax(G_t^l x_t^{l−1}) · [S_t; S_s] : [B, H]`` (task gate over its own and the shared experts);
* for ``l < L`` also ``x_s^l = Σ softmax(G_s^l x_s^{l−1}) · [S_1; …; S_T; S_s] : [B, H]`` (shared gate over
  all ``T·m_t + m_s`` experts); the last level has no shared gate (nothing reads it), nor has any level when
  ``m_s = 0`` (then no shared expert reads ``x_s``).

``logit_t = MLP_t(x_t^L) : [B]``. With ``num_levels = 1`` this is the single-level CGC model of the paper.
``m_t = specific_experts``, ``m_s = shared_experts``.

Returns ``ModelOutput(logits={t: logit_t})``; heads are ``tasks`` (default: the schema's labels).
:meth:`PLE.gate_weights` returns every gate of every level (rows sum to 1).
"""

from __future__ import annotations

import torch
from pydantic import Field, model_validator
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Units, make_embedding
from rankcraft.models.multitask_common import MultiTaskParams, TaskTowers, resolve_tasks
from rankcraft.models.output import ModelOutput
from rankcraft.models.registry import register_model
from rankcraft.nn.experts import CGCLayer


@register_model("ple")
class PLE(nn.Module):
    multitask = True

    class Params(MultiTaskParams):
        num_levels: int = Field(default=1, ge=1, le=16)
        specific_experts: int = Field(default=1, ge=0, le=64)
        shared_experts: int = Field(default=2, ge=0, le=64)
        expert_units: Units = Field(default_factory=lambda: [128, 64], min_length=1)
        gate_units: Units = Field(default_factory=list)

        @model_validator(mode="after")
        def _some_experts(self):
            if self.specific_experts + self.shared_experts < 1:
                raise ValueError("specific_experts + shared_experts must be at least 1")
            return self

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.heads = resolve_tasks(features, p, "ple")
        self.embedding = make_embedding(features, p)
        dim = self.embedding.num_fields * p.embedding_dim
        self.levels = nn.ModuleList()
        for level in range(p.num_levels):
            cgc = CGCLayer(dim, len(self.heads), p.specific_experts, p.shared_experts, p.expert_units,
                           shared_gate=level < p.num_levels - 1 and p.shared_experts > 0, gate_units=p.gate_units, act=p.activation,
                           dropout=p.dropout, batch_norm=p.batch_norm)
            self.levels.append(cgc)
            dim = cgc.out_dim
        self.towers = TaskTowers(dim, self.heads, p)

    def _extract(self, batch) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        x = self.embedding(batch).flatten(1)
        xs = x.unsqueeze(1).expand(-1, len(self.heads) + 1, -1)       # [B, T+1, D]
        gates = []
        for cgc in self.levels:
            xs, g = cgc(xs)
            gates.append(g)
        return xs, gates                                              # xs: [B, T, H] after the last level

    def forward(self, batch) -> ModelOutput:
        return ModelOutput(self.towers(self._extract(batch)[0]))

    @torch.no_grad()
    def gate_weights(self, batch) -> dict[str, torch.Tensor]:
        """``{"level<l>/<task>": [B, m_t + m_s], "level<l>/shared": [B, T·m_t + m_s]}`` (``l`` from 1; a shared
        gate only where the level has one)."""
        out = {}
        for l, gs in enumerate(self._extract(batch)[1], 1):
            for name, g in zip(self.heads + ["shared"], gs):
                out[f"level{l}/{name}"] = g
        return out
