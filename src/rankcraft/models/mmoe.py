"""MMoE — Multi-gate Mixture-of-Experts (Ma et al., KDD 2018).

``x = flatten(FeatureEmbedding(batch)) : [B, D]`` with ``D = F·d``;
experts ``E_k(x) = MLP_k(x) : [B, H]`` for ``k = 1..K`` (``K = num_experts``, ``H`` = last of ``expert_units``),
shared by all tasks; one gate per task ``g_t(x) = softmax(G_t(x)) : [B, K]`` (``G_t`` a Linear ``D → K``, or an
MLP with ``gate_units``); ``h_t = Σ_k g_{t,k}(x) E_k(x) : [B, H]``; ``logit_t = MLP_t(h_t) : [B]``.

Returns ``ModelOutput(logits={t: logit_t})``; heads are ``tasks`` (default: the schema's labels).
:meth:`MMoE.gate_weights` returns every task's gate ``[B, K]`` (rows sum to 1) for inspection.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Units, make_embedding
from rankcraft.models.multitask_common import MultiTaskParams, TaskTowers, resolve_tasks
from rankcraft.models.output import ModelOutput
from rankcraft.models.registry import register_model
from rankcraft.nn.experts import MixtureOfExperts


@register_model("mmoe")
class MMoE(nn.Module):
    multitask = True

    class Params(MultiTaskParams):
        num_experts: int = Field(default=4, ge=1, le=256)
        expert_units: Units = Field(default_factory=lambda: [128, 64], min_length=1)
        gate_units: Units = Field(default_factory=list)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.heads = resolve_tasks(features, p, "mmoe")
        self.embedding = make_embedding(features, p)
        self.moe = MixtureOfExperts(self.embedding.num_fields * p.embedding_dim, p.num_experts, len(self.heads),
                                    p.expert_units, gate_units=p.gate_units, act=p.activation, dropout=p.dropout,
                                    batch_norm=p.batch_norm)
        self.towers = TaskTowers(self.moe.out_dim, self.heads, p)

    def forward(self, batch) -> ModelOutput:
        h, _ = self.moe(self.embedding(batch).flatten(1))    # [B, T, H]
        return ModelOutput(self.towers(h))

    @torch.no_grad()
    def gate_weights(self, batch) -> dict[str, torch.Tensor]:
        """``{task: gate [B, K]}``: how much each task's input draws on each expert."""
        _, g = self.moe(self.embedding(batch).flatten(1))
        return {t: g[:, i] for i, t in enumerate(self.heads)}
