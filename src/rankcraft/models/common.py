"""Small helpers shared by the zoo models' hyperparameter classes and constructors."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field

from rankcraft.errors import ConfigError
from rankcraft.nn.embedding import FeatureEmbedding
from rankcraft.nn.mlp import activation


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
