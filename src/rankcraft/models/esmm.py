"""ESMM — Entire Space Multi-task Model (Ma et al., SIGIR 2018).

``x = flatten(FeatureEmbedding(batch)) : [B, D]`` (one embedding shared by both towers);
``ctr = MLP_ctr(x) : [B]``, ``cvr = MLP_cvr(x) : [B]`` (logits) and
``ctcvr = logit(σ(ctr) · σ(cvr)) : [B]`` (computed in log space by
:func:`~rankcraft.models.output.stable_logit_of_product`), i.e. ``p(click ∧ convert | x) = pCTR(x) · pCVR(x)``.

Heads (fixed): ``ctr``, ``cvr``, ``ctcvr``. **Supervision** (the paper's loss, over *all* impressions):
``L = BCE(σ(ctr), click) + BCE(σ(ctcvr), click ∧ conversion)``. The ``cvr`` head is *not* supervised directly:
it learns only through the ``ctcvr`` product, so it is trained over the entire impression space rather than on
clicked impressions only. The objective that does this::

    objective: {type: multitask, tasks: [{name: ctr, label: click}, {name: ctcvr, label: purchase}]}

(``purchase`` = click AND conversion, e.g. the ``funnel`` recipe's label). ``σ(cvr)`` is the CVR estimate to
evaluate; ``σ(ctcvr)`` is the post-view conversion rate.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Activation, Units, make_embedding
from rankcraft.models.output import ModelOutput, stable_logit_of_product
from rankcraft.models.registry import ModelParams, register_model
from rankcraft.nn.mlp import MLP

ESMM_HEADS = ("ctr", "cvr", "ctcvr")


@register_model("esmm")
class ESMM(nn.Module):
    multitask = True

    class Params(ModelParams):
        ctr_hidden_units: Units = Field(default_factory=lambda: [256, 128])
        cvr_hidden_units: Units = Field(default_factory=lambda: [256, 128])
        activation: Activation = "relu"
        dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
        batch_norm: bool = False

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.heads = list(ESMM_HEADS)
        self.embedding = make_embedding(features, p)
        dim = self.embedding.num_fields * p.embedding_dim
        self.ctr_tower = MLP(dim, p.ctr_hidden_units, 1, act=p.activation, dropout=p.dropout,
                             batch_norm=p.batch_norm)
        self.cvr_tower = MLP(dim, p.cvr_hidden_units, 1, act=p.activation, dropout=p.dropout,
                             batch_norm=p.batch_norm)

    def forward(self, batch) -> ModelOutput:
        x = self.embedding(batch).flatten(1)
        ctr = self.ctr_tower(x).squeeze(-1)
        cvr = self.cvr_tower(x).squeeze(-1)
        return ModelOutput({"ctr": ctr, "cvr": cvr, "ctcvr": stable_logit_of_product(ctr, cvr)})
