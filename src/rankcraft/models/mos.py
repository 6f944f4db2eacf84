"""MoS model: Mixture of Sequence (Lin et al., WWW 2026) over the main behaviour sequence, then an MLP tower.

``x = SequenceInputs(batch)`` (fields ``[B, F, d]``, history ``[B, L, d]``, mask, target ``[B, d]``, timestamps);
``u = MixtureOfSequence(x.seq, x.mask, x.target, x.ts) : [B, D_u]`` (see :mod:`rankcraft.nn.mos`: sessions →
theme routing → global / short-term / theme experts built from ``backbone`` → fusion);
``logit = MLP([flatten(x.fields), u]) : [B]``.

In training mode the forward pass returns a :class:`~rankcraft.models.output.ModelOutput` whose ``aux_loss`` is
the weighted load-balancing term (the objective adds it to the loss); in eval mode it returns the logits ``[B]``. :meth:`MoS.route` returns the theme of every history event ``[B, L]`` (−1 at
padding) for inspection.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import SequenceTowerParams, Units, make_sequence_inputs
from rankcraft.models.output import DEFAULT_HEAD, ModelOutput
from rankcraft.models.registry import register_model
from rankcraft.nn import MLP
from rankcraft.nn.mos import MixtureOfSequence


@register_model("mos")
class MoS(nn.Module):
    class Params(SequenceTowerParams):
        embedding_dim: int = Field(default=10, ge=1, le=4096)  # the benchmarked default (ml-100k-seq)
        # backbone of every expert (rankcraft.nn.sequence.build_sequence_encoder) and its options
        backbone: Literal["din", "transformer", "mean"] = "din"
        backbone_options: dict = Field(default_factory=dict)
        # sessions
        segmentation: Literal["auto", "time", "chunk"] = "auto"
        session_gap_seconds: float = Field(default=86_400.0, gt=0)
        chunk_size: int = Field(default=10, ge=1)
        max_sessions: int | None = Field(default=32, ge=1)
        session_overflow: Literal["merge", "drop"] = "merge"
        session_pooling: Literal["mean", "attention"] = "mean"
        # routing
        num_themes: int = Field(default=4, ge=1, le=64)
        routing_temperature: float = Field(default=1.0, gt=0)
        router_metric: Literal["dot", "cosine"] = "cosine"
        router_norm: bool = True
        top_k: int = Field(default=1, ge=1)
        routing_grad: Literal["straight_through", "gumbel", "gate_scale"] = "gate_scale"
        balance_weight: float = Field(default=0.05, ge=0)
        diversity_weight: float = Field(default=0.0, ge=0)
        theme_max_len: int | None = Field(default=None, ge=1)
        # experts and fusion
        short_term_window: int = Field(default=20, ge=1)
        short_term: Literal["window", "last_session"] = "window"
        expert_sharing: Literal["none", "themes", "all"] = "none"
        fusion: Literal["concat", "gate"] = "concat"
        # compute: theme experts on the routed events only ("packed") or on padded subsequences ("padded")
        packing: Literal["packed", "padded"] = "packed"
        pack_growth: float = Field(default=2.0, gt=1)
        # "dense": the dense MoE counterpart (every theme expert reads the whole sequence, target-gated)
        mixture: Literal["themes", "dense"] = "themes"
        # tower
        hidden_units: Units = Field(default_factory=lambda: [256, 128])

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        from rankcraft.errors import ConfigError

        if p.top_k > p.num_themes:
            raise ConfigError(f"model 'mos': top_k ({p.top_k}) must not exceed num_themes ({p.num_themes})")
        self.inputs = make_sequence_inputs(features, p)
        try:
            self.mos = MixtureOfSequence(
                p.embedding_dim, self.inputs.max_len, backbone=p.backbone, backbone_options=p.backbone_options,
                num_themes=p.num_themes, segmentation=p.segmentation, session_gap_seconds=p.session_gap_seconds,
                chunk_size=p.chunk_size, max_sessions=p.max_sessions, session_overflow=p.session_overflow,
                session_pooling=p.session_pooling, router_metric=p.router_metric, router_norm=p.router_norm,
                temperature=p.routing_temperature, top_k=p.top_k, routing_grad=p.routing_grad,
                balance_weight=p.balance_weight, diversity_weight=p.diversity_weight,
                short_term_window=p.short_term_window, short_term=p.short_term, expert_sharing=p.expert_sharing,
                fusion=p.fusion, theme_max_len=p.theme_max_len, packing=p.packing, pack_growth=p.pack_growth,
                mixture=p.mixture)
        except (TypeError, ValueError) as exc:  # e.g. unknown backbone option, heads not dividing the dim
            raise ConfigError(f"model 'mos': {exc}") from None
        if p.segmentation == "time" and not self.inputs.has_ts:
            raise ConfigError(f"model 'mos': segmentation 'time' needs timestamps on sequence '{self.inputs.main}'")
        self.mlp = MLP(self.inputs.num_fields * p.embedding_dim + self.mos.out_dim, p.hidden_units, 1,
                       act=p.activation, dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | ModelOutput:
        x = self.inputs(batch)
        u = self.mos(x["seq"], x["mask"], x["target"], x["ts"])
        logit = self.mlp(torch.cat([x["fields"].flatten(1), u], dim=-1)).squeeze(-1)
        if self.mos.aux_loss is None:
            return logit
        return ModelOutput({DEFAULT_HEAD: logit}, aux_loss=self.mos.aux_loss)

    @torch.no_grad()
    def route(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Theme id of every event of the main sequence ``[B, L]`` (−1 at padding / dropped sessions)."""
        x = self.inputs(batch)
        return self.mos.route(x["seq"], x["mask"], x["ts"])
