"""Collaborative ensemble (CETNet; reconstruction in ``shared/papers/wave2-specs.md`` §1, notes in docs/ensemble.md).

``K ≥ 2`` members, each a registered model with its **own** embedding table and its own parameters (any zoo,
sequence or searched-architecture model). With member logits ``z_k : [B]`` and ``p_k = σ(z_k)``:

* confidence ``c_k = −H(p_k) = p_k ln p_k + (1 − p_k) ln(1 − p_k)`` (``p`` clamped to ``[ε, 1 − ε]``);
* weights ``w = softmax_k(c_k / τ) : [B, K]`` (``fusion="confidence"``; τ fixed or learned as ``τ = softplus(s)``)
  or ``w_k = 1/K`` (``"uniform"``); ``detach_weights`` stops the gradient through ``w``;
* fusion ``ŷ = Σ_k w_k p_k`` (``space="probability"``, head ``score = logit(ŷ)``) or ``score = Σ_k w_k z_k``
  (``"logit"``);
* heads: ``score`` and ``member_0 … member_{K−1}`` (the members' logits);
* collaborative term (training mode only, as the output's ``aux_loss``): ``λ Σ_k BCE(p_k, sg(t_k))`` averaged over
  the batch, with the teacher ``t_k`` the ensemble ``ŷ`` (``teacher="ensemble"``) or the confidence fusion of the
  other members (``"peers"``; ``λ = distill_weight``). BCE against a fixed soft target has the gradient of the KL
  divergence, so no separate KL option is needed. Members' own auxiliary losses (e.g. MoS's balance term) are
  added.

The labelled terms ``BCE(ŷ, y) + Σ_k BCE(p_k, y)`` come from the objective ``{type: ensemble, members: K}``
(training/objectives.py), which supervises ``score`` and every member head on the label.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn
from torch.nn import functional as F

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.output import DEFAULT_HEAD, ModelOutput, as_output
from rankcraft.models.registry import ModelParams, build_registered, register_model

EPS = 1e-6


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    params: dict = Field(default_factory=dict)


def negation_entropy(p: torch.Tensor) -> torch.Tensor:
    """``p ln p + (1 − p) ln(1 − p)`` elementwise (≤ 0; 0 for a certain prediction), ``p`` clamped to ``[ε, 1−ε]``."""
    p = p.clamp(EPS, 1 - EPS)
    return p * torch.log(p) + (1 - p) * torch.log1p(-p)


def member_heads(k: int) -> list[str]:
    return [f"member_{i}" for i in range(k)]


@register_model("ensemble")
class Ensemble(nn.Module):
    class Params(ModelParams):
        #: default: a DNN and a DCN with the zoo's default parameters
        members: list[Member] = Field(default_factory=lambda: [Member(model="dnn"), Member(model="dcn")],
                                      min_length=2)
        fusion: Literal["confidence", "uniform"] = "confidence"
        temperature: float = Field(default=1.0, gt=0)
        learn_temperature: bool = False
        space: Literal["probability", "logit"] = "probability"
        detach_weights: bool = False
        distill_weight: float = Field(default=0.5, ge=0)
        teacher: Literal["ensemble", "peers"] = "ensemble"

        @field_validator("members", mode="before")
        @classmethod
        def _names(cls, v):
            return [{"model": m} if isinstance(m, str) else m for m in v]

    multitask = False  # several heads, one task: the fused score and its members

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        if any(m.model.lower() == "ensemble" for m in p.members):
            raise ConfigError("model 'ensemble': a member cannot be an ensemble")
        self.members = nn.ModuleList(build_registered(m.model, features, m.params) for m in p.members)
        for i, m in enumerate(self.members):
            if getattr(m, "multitask", False):
                raise ConfigError(f"model 'ensemble': member {i} ('{p.members[i].model}') has several heads; members "
                                  "must be one-head models")
        self.heads = [DEFAULT_HEAD, *member_heads(len(self.members))]
        self.p = p
        t0 = p.temperature if p.temperature > 20 else math.log(math.expm1(p.temperature))  # softplus⁻¹(τ)
        self.temperature_raw = nn.Parameter(torch.tensor(t0), requires_grad=p.learn_temperature)

    @property
    def temperature(self) -> torch.Tensor:
        return F.softplus(self.temperature_raw)

    def weights(self, probs: torch.Tensor) -> torch.Tensor:
        """Fusion weights ``[B, K]`` of member probabilities ``probs : [B, K]``."""
        if self.p.fusion == "uniform":
            return torch.full_like(probs, 1.0 / probs.shape[1])
        w = torch.softmax(negation_entropy(probs) / self.temperature, dim=1)
        return w.detach() if self.p.detach_weights else w

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        outs = [as_output(m(batch)) for m in self.members]
        z = torch.stack([o.logits[DEFAULT_HEAD] for o in outs], dim=1).float()     # [B, K]
        probs = torch.sigmoid(z)
        w = self.weights(probs)
        if self.p.space == "probability":
            fused_p = (w * probs).sum(1)
            fused = torch.logit(fused_p.clamp(EPS, 1 - EPS))
        else:
            fused = (w * z).sum(1)
            fused_p = torch.sigmoid(fused)
        logits = {DEFAULT_HEAD: fused, **{h: z[:, i] for i, h in enumerate(member_heads(z.shape[1]))}}
        aux = [o.aux_loss for o in outs if o.aux_loss is not None]
        if self.training and self.p.distill_weight > 0:
            teacher = self._teachers(probs, fused_p).detach()                     # [B, K]
            distill = F.binary_cross_entropy_with_logits(z, teacher, reduction="none").sum(1).mean()
            aux.append(self.p.distill_weight * distill)
        return ModelOutput(logits, aux_loss=sum(aux) if aux else None, extras={"weights": w})

    def _teachers(self, probs: torch.Tensor, fused_p: torch.Tensor) -> torch.Tensor:
        K = probs.shape[1]
        if self.p.teacher == "ensemble":
            return fused_p.unsqueeze(1).expand(-1, K)
        out = []
        for k in range(K):
            others = torch.cat([probs[:, :k], probs[:, k + 1:]], dim=1)
            out.append((self.weights(others) * others).sum(1))
        return torch.stack(out, dim=1)
