"""Attention over the field axis.

:class:`FieldSelfAttention` is AutoInt's interacting layer stack. For one layer with input ``X : [B, F, d_in]``,
``H`` heads of width ``d'`` and, per head ``h``, projections ``W_Q^h, W_K^h, W_V^h : d_in × d'``::

    A^h   = softmax_rows( (X W_Q^h)(X W_K^h)ᵀ / s )                 : [B, F, F]   (s = √d' if use_scale else 1)
    O     = concat_h( A^h X W_V^h )                                 : [B, F, H·d']
    out   = LN?( ReLU( O + X W_res ) )                              : [B, F, H·d']

``W_res : d_in × H·d'`` is the residual projection (dropped with ``use_residual=False``), ``LN`` an optional
LayerNorm over the last axis. Layers are stacked; every layer after the first has ``d_in = H·d'``.
The attention is written with explicit batched matmuls (not ``scaled_dot_product_attention``) so that the
profiler counts it: per layer and example ``2·F·d_in·3Hd'`` (QKV) + ``2·F·d_in·Hd'`` (residual) + ``4·H·F²·d'``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class _InteractingLayer(nn.Module):
    def __init__(self, in_dim: int, head_dim: int, num_heads: int, *, use_residual: bool, layer_norm: bool,
                 use_scale: bool, dropout: float):
        super().__init__()
        self.h, self.dh = num_heads, head_dim
        out = num_heads * head_dim
        self.qkv = nn.Linear(in_dim, 3 * out, bias=False)
        self.res = nn.Linear(in_dim, out, bias=False) if use_residual else None
        self.norm = nn.LayerNorm(out) if layer_norm else None
        self.scale = 1.0 / math.sqrt(head_dim) if use_scale else 1.0
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each [B, H, F, d']
        att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)  # [B, H, F, F]
        if self.drop is not None:
            att = self.drop(att)
        o = torch.matmul(att, v).transpose(1, 2).reshape(b, f, self.h * self.dh)
        if self.res is not None:
            o = o + self.res(x)
        o = torch.relu(o)
        return self.norm(o) if self.norm is not None else o


class FieldSelfAttention(nn.Module):
    """AutoInt multi-head self-attention over fields, ``[B, F, d_in] -> [B, F, num_heads·attention_dim]``.

    Args:
        in_dim: input width ``d_in`` (the embedding dimension).
        attention_dim: per-head width ``d'``.
        num_heads: heads ``H``.
        num_layers: stacked interacting layers.
        use_residual: add the projected input ``X W_res`` before the ReLU.
        layer_norm: LayerNorm after each layer.
        use_scale: divide the attention logits by ``√d'`` (the AutoInt paper does not).
        dropout: dropout on the attention weights.
    """

    def __init__(self, in_dim: int, attention_dim: int = 32, num_heads: int = 2, num_layers: int = 3, *,
                 use_residual: bool = True, layer_norm: bool = False, use_scale: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.out_dim = num_heads * attention_dim
        dims = [in_dim] + [self.out_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(
            _InteractingLayer(d, attention_dim, num_heads, use_residual=use_residual, layer_norm=layer_norm,
                              use_scale=use_scale, dropout=dropout) for d in dims)
        if num_layers == 0:
            self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x
