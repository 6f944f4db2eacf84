"""Transformer over the behaviour sequence (BST, Chen et al. 2019; TransAct-style pre-norm encoder).

``SequenceInputs(batch)`` gives the other features as fields ``e : [B, F, d]``, the events ``E : [B, L, d]``, their
mask and the target item ``q : [B, d]``. :class:`~rankcraft.nn.sequence.TransformerSequenceEncoder` runs
``num_layers`` pre-norm layers over ``[E_1 … E_L, q] + P`` (learned positions counted from the most recent event,
padded keys masked) and returns ``[h_q ‖ masked-mean(h_1..h_L)] : [B, 2d]``::

    logit = MLP([flatten(e), encoder(E (+ T), q)])

``time_encoding`` (off by default) adds :class:`~rankcraft.nn.interformer.TimeGapEncoding` of the event
timestamps (``T``, gap to the previous event and/or age relative to the most recent one) to the events first; it is
ignored for a sequence without timestamps. ``attention_dropout`` is the encoder layers' dropout (attention weights,
FFN and residual branches).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.common import SequenceTowerParams, make_sequence_inputs
from rankcraft.models.registry import register_model
from rankcraft.nn.interformer import TimeEncoding, TimeGapEncoding
from rankcraft.nn.mlp import MLP
from rankcraft.nn.sequence import TransformerSequenceEncoder


@register_model("transformer")
class TransformerSeq(nn.Module):

    class Params(SequenceTowerParams):
        num_layers: int = Field(default=1, ge=1, le=16)
        num_heads: int = Field(default=2, ge=1)
        ffn_mult: int = Field(default=2, ge=1, le=16)
        attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        time_encoding: TimeEncoding = "none"

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        if d % p.num_heads:
            raise ConfigError(f"model 'transformer': embedding_dim {d} is not divisible by num_heads {p.num_heads}")
        self.inputs = make_sequence_inputs(features, p)
        self.time = None
        if p.time_encoding != "none" and self.inputs.has_ts:
            self.time = TimeGapEncoding(d, p.time_encoding)
        self.encoder = TransformerSequenceEncoder(d, self.inputs.max_len, num_layers=p.num_layers,
                                                  num_heads=p.num_heads, ffn_mult=p.ffn_mult,
                                                  dropout=p.attention_dropout)
        self.mlp = MLP(self.inputs.num_fields * d + self.encoder.out_dim, p.hidden_units, 1, act=p.activation,
                       dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inp = self.inputs(batch)
        seq = inp["seq"]
        if self.time is not None and inp["ts"] is not None:
            seq = seq + self.time(inp["ts"], inp["mask"])
        h = self.encoder(seq, inp["mask"], inp["target"])
        return self.mlp(torch.cat([inp["fields"].flatten(1), h], dim=1)).squeeze(-1)
