"""SharedBottom (Caruana 1997): one MLP shared by all tasks, then one tower per task.

``e = FeatureEmbedding(batch) : [B, F, d]``, ``x = flatten(e) : [B, F·d]``;
``h = MLP_bottom(x) : [B, H]`` (``H`` = last of ``bottom_units``);
``logit_t = MLP_t(h) : [B]`` for every task ``t`` (``tower_units`` then a Linear to 1).

Returns ``ModelOutput(logits={t: logit_t})``; heads are ``tasks`` (default: the schema's labels).
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.common import Units, make_embedding
from rankcraft.models.multitask_common import MultiTaskParams, TaskTowers, resolve_tasks
from rankcraft.models.output import ModelOutput
from rankcraft.models.registry import register_model
from rankcraft.nn.mlp import MLP


@register_model("sharedbottom")
class SharedBottom(nn.Module):
    multitask = True

    class Params(MultiTaskParams):
        bottom_units: Units = Field(default_factory=lambda: [512, 64], min_length=1)

    def __init__(self, features: FeatureSet, p: Params):
        super().__init__()
        self.heads = resolve_tasks(features, p, "sharedbottom")
        self.embedding = make_embedding(features, p)
        self.bottom = MLP(self.embedding.num_fields * p.embedding_dim, p.bottom_units, act=p.activation,
                          dropout=p.dropout, batch_norm=p.batch_norm)
        self.towers = TaskTowers(self.bottom.out_dim, self.heads, p)

    def forward(self, batch) -> ModelOutput:
        return ModelOutput(self.towers(self.bottom(self.embedding(batch).flatten(1))))
