"""Small helpers shared by the zoo models' hyperparameter classes and constructors."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.registry import ModelParams
from rankcraft.nn.embedding import FeatureEmbedding
from rankcraft.nn.mlp import MLP, activation


def _check_activation(name: str) -> str:
    activation(name)  # raises ValueError (→ pydantic validation error → ConfigError) for unknown names
    return name


#: Layer widths of an MLP (each ≥ 1; an empty list means no hidden layer / no tower).
Units = list[Annotated[int, Field(ge=1)]]

#: An activation name accepted by :func:`rankcraft.nn.activation`, validated when the params are parsed.
Activation = Annotated[str, AfterValidator(_check_activation)]


def field_indices(embedding: FeatureEmbedding, names: list[str], *, model: str, param: str) -> list[int]:
    """Positions of features ``names`` on the field axis of ``embedding``'s output ``[B, F, d]``."""
    order = embedding.cat_names + embedding.num_names + embedding.bag_names
    out = []
    for n in names:
        if n not in order:
            raise ConfigError(f"model '{model}': {param} names unknown feature '{n}'; features: {', '.join(order)}")
        out.append(order.index(n))
    return out


class TowerParams(ModelParams):
    """Hyperparameters of the deep (MLP) tower that most zoo models share."""

    hidden_units: Units = Field(default_factory=lambda: [400, 400, 400])
    activation: Activation = "relu"
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    batch_norm: bool = True


def make_embedding(features: FeatureSet, p: ModelParams, **options) -> FeatureEmbedding:
    """The model's :class:`FeatureEmbedding` as its params configure it (width, fused/per-feature, sparse)."""
    return FeatureEmbedding(features, p.embedding_dim, fused=p.fused_embedding, sparse=p.sparse_embedding, **options)


def make_tower(in_dim: int, p: TowerParams, out_dim: int | None = None) -> MLP:
    """The deep tower ``MLP(in_dim, p.hidden_units, out_dim)`` with the params' activation, dropout and batch norm."""
    return MLP(in_dim, p.hidden_units, out_dim, act=p.activation, dropout=p.dropout, batch_norm=p.batch_norm)


class SequenceTowerParams(TowerParams):
    """Shared hyperparameters of the behaviour-sequence models: a wider embedding, a smaller tower, and the name of
    the sequence feature to encode (``None``: the first sequence with timestamps)."""

    embedding_dim: int = Field(default=16, ge=1, le=4096)
    hidden_units: Units = Field(default_factory=lambda: [200, 80])
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False
    sequence: str | None = None


def make_sequence_inputs(features: FeatureSet, p: SequenceTowerParams):
    """The model's :class:`~rankcraft.nn.sequence.SequenceInputs` as its params configure it."""
    from rankcraft.nn.sequence import SequenceInputs

    return SequenceInputs(features, p.embedding_dim, sequence=p.sequence, fused=p.fused_embedding,
                          sparse=p.sparse_embedding)
