"""DIN (Zhou et al. 2018): target attention over the behaviour sequence.

``SequenceInputs(batch)`` gives the other features as fields ``e : [B, F, d]``, the events ``E : [B, L, d]``, their
mask and the target item ``q : [B, d]`` (see :class:`~rankcraft.nn.sequence.SequenceInputs`)::

    u     = Σ_l a_l E_l,   a_l = MLP_att([E_l, q, E_l − q, E_l ⊙ q])   (no softmax by default; padding has a_l = 0)
    logit = MLP([flatten(e), u, q])

The attention unit is :class:`~rankcraft.nn.sequence.TargetAttention`; with ``attention_softmax`` the weights are
normalised over the real events. An empty history gives ``u = 0``. The paper's Dice activation is not offered;
``attention_activation`` takes any activation name (ReLU by default).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import (
    Activation,
    SequenceTowerParams,
    Units,
    make_sequence_inputs,
)
from rankcraft.models.registry import register_model
from rankcraft.nn.mlp import MLP
from rankcraft.nn.sequence import TargetAttention


@register_model("din")
class DIN(nn.Module):

    class Params(SequenceTowerParams):
        attention_hidden_units: Units = Field(default_factory=lambda: [64, 32])
        attention_activation: Activation = "relu"
        attention_softmax: bool = False
        attention_dropout: float = Field(default=0.0, ge=0.0, lt=1.0)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        d = p.embedding_dim
        self.inputs = make_sequence_inputs(features, p)
        self.attention = TargetAttention(d, tuple(p.attention_hidden_units), act=p.attention_activation,
                                         softmax=p.attention_softmax, dropout=p.attention_dropout)
        self.mlp = MLP(self.inputs.num_fields * d + self.attention.out_dim + d, p.hidden_units, 1, act=p.activation,
                       dropout=p.dropout, batch_norm=p.batch_norm)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inp = self.inputs(batch)
        u = self.attention(inp["seq"], inp["mask"], inp["target"])
        z = torch.cat([inp["fields"].flatten(1), u, inp["target"]], dim=1)
        return self.mlp(z).squeeze(-1)
