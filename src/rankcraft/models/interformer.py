"""InterFormer (Zeng et al. 2024, arXiv 2411.09852): interleaved non-sequence / sequence learning.

Inputs (:class:`~rankcraft.nn.sequence.SequenceInputs`): non-sequence tokens ``X⁽¹⁾ = LN([fields ‖ target]) :
[B, N, d]`` (every non-sequence feature as one token, plus the target item when ``target_token``) and event tokens
``E : [B, L, d]`` (item + side-sequence embeddings, plus a time-gap encoding and/or learned positions), padding
zeroed. Blocks are in :mod:`rankcraft.nn.interformer`. With ``n_cls`` CLS tokens, ``n_pma`` PMA seeds and ``K``
recent events, ``n_s = n_cls + n_pma + K``::

    X_sum⁽¹⁾ = Gate(LCE₁(X⁽¹⁾))                               [B, n_cls, d]
    S⁽¹⁾     = [X_sum⁽¹⁾ ‖ E]                                  [B, n_cls + L, d]     (CLS tokens prepended)
    for l = 1..num_layers:
        X_sum⁽ˡ⁾ = Gate(LCE_l(X⁽ˡ⁾))                           cross arch, non-sequence summary
        S_sum⁽ˡ⁾ = Gate([S_CLS ‖ PMA(S⁽ˡ⁾) ‖ S_recent])        cross arch, sequence summary [B, n_s, d]
        X⁽ˡ⁺¹⁾ = LN(X⁽ˡ⁾ + I_l([X⁽ˡ⁾ ‖ S_sum⁽ˡ⁾]))               interaction arch (sequence → non-sequence)
        S⁽ˡ⁺¹⁾ = MHA_l(PFFN_l(X_sum⁽ˡ⁾, S⁽ˡ⁾))                   sequence arch (non-sequence → sequence)
    logit = MLP(flatten([Gate(LCE(X⁽ᴸ⁺¹⁾)) ‖ S_sum(S⁽ᴸ⁺¹⁾)]))  final cross arch, [B, (2·n_cls + n_pma + K)·d]

Following the paper [P]: the three arches and their order (cross arch first, interaction and sequence arches in
parallel on the layer's inputs); X_sum via a token-axis linear compression (LCE) + gating; X_sum⁽¹⁾ prepended as
CLS tokens (so ``n_sum = n_cls``); S_sum = gated [CLS ‖ PMA ‖ K most recent]; defaults n_cls = 4, n_pma = 2, K = 2;
interaction backbones DOT / DCNv2 / DHEN (DOT + DCN ensemble with shortcut and norm); PFFN
``W_b = X_sumᵀ W_p`` (a per-example d×d projection of rank ≤ n_sum); self-attention over all CLS + event tokens
with RoPE and no early aggregation; the output MLP over [X_sum ‖ S_sum].

Our choices ([R]: the paper is silent or ambiguous; each is an option where it matters):

* ``gating``: ``self`` = ``X ⊙ σ(W·flatten(X))`` (default; the converted paper text reads ``σ(X ⊙ MLP(X))``,
  available as ``literal``; ``none`` drops the gates). The gate MLP is one Linear over the flattened block.
* Residuals and pre-LayerNorms in the sequence arch (``S + GELU(PFFN(LN S))``, then ``+ MHA(LN ·)``), a GELU on
  the PFFN output, padded tokens reset to 0 after every layer; ``seq_ffn_mult > 0`` adds a standard FFN
  sub-layer (the paper has none).
* The interaction arch's "MLP back to N tokens": for DCNv2 a token-axis Linear ``N + n_s → N`` after the cross
  network on the flattened tokens; for DOT a Linear from the pairwise products (scaled by ``1/√d``) to ``N·d``;
  ``num_cross_layers`` cross layers per interaction arch; the shortcut is ``X`` itself and the norm a LayerNorm.
* The final summaries come from one more cross arch applied to the last layer's outputs (the notes' reading of
  Alg. 1); every layer has its own cross arch.
* PMA keys include the CLS tokens (so empty histories are well defined); ``S_recent`` zeroes padding.
* RoPE positions count events back from the most recent one (1, 2, …) and put the CLS tokens at 0, so outputs do
  not depend on how much left padding a batch has; ``position="learned"`` adds learned per-position vectors to
  the events instead, ``none`` uses no positions.
* Several sequences are merged by :class:`SequenceInputs` (sum of the item and side-sequence embeddings per
  event), not by the paper's MaskNet merge.
* ``time_encoding`` (ours; the paper has none): ``Linear(sinusoid(log1p(Δt)))`` added to the event tokens, with
  ``Δt`` the gap to the previous event (``gap``), the age relative to the most recent event (``recency``) or both.
  Ignored when the sequence has no timestamps.
* ``target_token``: the target item embedding (item + side targets, as the events are built) is appended to the
  non-sequence tokens, so the interaction arch can match it against the sequence summary directly.
* ``information_flow`` (the paper's ablation): ``bidirectional`` (InterFormer); ``seq_to_nonseq`` (learned
  constant CLS tokens, a plain Linear instead of the PFFN); ``nonseq_to_seq`` (the interaction arch sees only
  ``X``); ``none`` (both cut; the modes meet only in the output MLP).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.common import SequenceTowerParams, make_sequence_inputs
from rankcraft.models.registry import register_model
from rankcraft.nn.interformer import (
    CrossArch,
    InteractionArch,
    SequenceArchLayer,
    TimeEncoding,
    TimeGapEncoding,
)
from rankcraft.nn.mlp import MLP


@register_model("interformer")
class InterFormer(nn.Module):

    class Params(SequenceTowerParams):
        num_layers: int = Field(default=2, ge=1, le=16)
        num_heads: int = Field(default=2, ge=1)
        num_cls: int = Field(default=4, ge=1)
        num_pma: int = Field(default=2, ge=0)
        num_recent: int = Field(default=2, ge=0)
        interaction: Literal["dhen", "dcnv2", "dot"] = "dhen"
        num_cross_layers: int = Field(default=1, ge=1, le=8)
        gating: Literal["self", "literal", "none"] = "self"
        personalized_ffn: bool = True
        seq_ffn_mult: int = Field(default=0, ge=0, le=16)
        position: Literal["rope", "learned", "none"] = "rope"
        time_encoding: TimeEncoding = "gap"
        target_token: bool = True
        information_flow: Literal["bidirectional", "seq_to_nonseq", "nonseq_to_seq", "none"] = "bidirectional"
        attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        if d % p.num_heads:
            raise ConfigError(f"model 'interformer': embedding_dim {d} is not divisible by num_heads {p.num_heads}")
        if p.position == "rope" and (d // p.num_heads) % 2:
            raise ConfigError(f"model 'interformer': RoPE needs an even head width, got embedding_dim/num_heads = "
                              f"{d // p.num_heads}")
        self.inputs = make_sequence_inputs(features, p)
        self.s2n = p.information_flow in ("bidirectional", "seq_to_nonseq")
        self.n2s = p.information_flow in ("bidirectional", "nonseq_to_seq")
        self.target_token = p.target_token
        self.num_cls = p.num_cls
        self.position = p.position
        n_tok = self.inputs.num_fields + int(p.target_token)
        self.x_norm = nn.LayerNorm(d)
        self.time = None
        if p.time_encoding != "none" and self.inputs.has_ts:
            self.time = TimeGapEncoding(d, p.time_encoding)
        if p.position == "learned":
            self.pos = nn.Parameter(torch.randn(self.inputs.max_len, d) * 0.02)
        if not self.n2s:
            self.cls = nn.Parameter(torch.randn(p.num_cls, d) * 0.02)

        personalized = p.personalized_ffn and self.n2s

        def cross(x: bool, s: bool) -> CrossArch:
            return CrossArch(n_tok, d, num_cls=p.num_cls, num_pma=p.num_pma, num_recent=p.num_recent,
                             num_heads=p.num_heads, gating=p.gating, dropout=p.attention_dropout, summarise_x=x,
                             summarise_s=s)

        # layer l needs X_sum for the CLS tokens (l = 0) and the PFFN, S_sum for the interaction arch; the last
        # cross arch feeds the output MLP
        self.cross = nn.ModuleList(cross(self.n2s and (l == 0 or personalized), self.s2n)
                                   for l in range(p.num_layers))
        self.cross.append(cross(True, True))
        n_s = self.cross[-1].num_summary
        self.interaction = nn.ModuleList(
            InteractionArch(n_tok, n_s if self.s2n else 0, d, kind=p.interaction, num_cross_layers=p.num_cross_layers)
            for _ in range(p.num_layers))
        self.sequence = nn.ModuleList(
            SequenceArchLayer(d, p.num_cls, p.num_heads, personalized=personalized,
                              ffn_mult=p.seq_ffn_mult, dropout=p.attention_dropout)
            for _ in range(p.num_layers))
        self.mlp = MLP((p.num_cls + n_s) * d, p.hidden_units, 1, act=p.activation, dropout=p.dropout,
                       batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inp = self.inputs(batch)
        x = inp["fields"]
        if self.target_token:
            x = torch.cat([x, inp["target"].unsqueeze(1)], dim=1)
        x = self.x_norm(x)  # [B, N, d]
        ev, mask = inp["seq"], inp["mask"]  # [B, L, d], [B, L]
        b, length = mask.shape
        if self.time is not None and inp["ts"] is not None:
            ev = ev + self.time(inp["ts"], mask)
        pos = None
        if self.position == "learned":
            ev = ev + self.pos[-length:]
        elif self.position == "rope":
            pos = torch.cat([torch.zeros(self.num_cls, device=ev.device),
                             torch.arange(length, 0, -1, device=ev.device, dtype=torch.float32)])
        ev = ev * mask.unsqueeze(-1).to(ev.dtype)
        keep = torch.cat([torch.ones(b, self.num_cls, dtype=torch.bool, device=mask.device), mask], dim=1)

        x_sum = self.cross[0].x_summary(x) if self.n2s else None
        cls = x_sum if self.n2s else self.cls.unsqueeze(0).expand(b, -1, -1)
        s = torch.cat([cls, ev], dim=1)  # [B, n_cls + L, d]
        for l, (inter, seq) in enumerate(zip(self.interaction, self.sequence)):
            if l > 0 and seq.personalized:
                x_sum = self.cross[l].x_summary(x)
            s_sum = self.cross[l].s_summary(s, keep) if self.s2n else None
            x_next = inter(x, s_sum)
            s = seq(s, keep, x_sum, pos)
            x = x_next
        final = self.cross[-1]
        z = torch.cat([final.x_summary(x), final.s_summary(s, keep)], dim=1)
        return self.mlp(z.flatten(1)).squeeze(-1)
