"""Multi-layer perceptron block.

``MLP(in_dim, hidden=[h1..hk], out_dim=o)`` computes, for ``x: [B, in_dim]``,
``h_i = Dropout(act(BN(W_i h_{i-1} + b_i)))`` for each hidden layer (batch norm optional), then an optional linear
output ``W_o h_k + b_o : [B, o]``. Output width is ``out_dim`` if given, else ``hk`` (or ``in_dim`` with no layers).
FLOPs per example: ``2 · Σ_i fan_in_i · fan_out_i`` (matmuls only).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "prelu": nn.PReLU,
    "identity": nn.Identity,
}


def activation(name: str) -> nn.Module:
    """An activation module by name (``relu``, ``gelu``, ``silu``, ``tanh``, ``sigmoid``, ``leaky_relu``, ...)."""
    try:
        return _ACTIVATIONS[name.lower()]()
    except KeyError:
        raise ValueError(f"unknown activation '{name}'; choose from {sorted(_ACTIVATIONS)}") from None


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: Sequence[int] = (), out_dim: int | None = None, *,
                 act: str = "relu", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers.append(nn.Linear(d, h))
            if batch_norm:
                layers.append(nn.BatchNorm1d(h))
            layers.append(activation(act))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
