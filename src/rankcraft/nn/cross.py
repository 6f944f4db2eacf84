"""Cross networks (DCN, DCN-V2) over a flat input ``x0 : [B, D]`` (usually flattened field embeddings).

Each cross layer keeps the width ``D``; the output of ``L`` layers is ``x_L : [B, D]``. Layers are applied in a
Python loop over ``L`` (a handful); every layer is batched matmuls over the whole batch.

* :class:`CrossNetV1` (DCN):      ``x_{l+1} = x0 ⊙ (x_l · w_l) + b_l + x_l``, ``w_l, b_l ∈ R^D``.
  FLOPs ``2·D`` per layer and example.
* :class:`CrossNetV2` (DCN-V2):   ``x_{l+1} = x0 ⊙ (W_l x_l + b_l) + x_l``, ``W_l ∈ R^{D×D}``.
  FLOPs ``2·D²`` per layer and example.
* :class:`CrossNetMix` (DCN-V2 low-rank mixture of experts, "DCN-Mix")::

      E_i(x_l)  = x0 ⊙ ( U_i^l g( C_i^l g( V_i^lᵀ x_l ) ) + b_l )        U: D×r, C: r×r, V: D×r
      x_{l+1}   = Σ_i G_i(x_l) · E_i(x_l) + x_l,      G(x) = softmax_i( w_i^lᵀ x )

  with ``K`` experts of rank ``r`` and ``g`` a nonlinearity (tanh by default). FLOPs per layer and example:
  ``2·D·K·r`` (V) + ``2·K·r²`` (C) + ``2·K·r·D`` (U) + ``2·D·K`` (gate).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankcraft.nn.mlp import activation


class CrossNetV1(nn.Module):
    """DCN cross network: rank-one crosses (see module docstring). ``[B, D] -> [B, D]``."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.weight = nn.Parameter(torch.empty(num_layers, 1, dim))
        for w in self.weight:
            nn.init.xavier_normal_(w)
        self.bias = nn.Parameter(torch.zeros(num_layers, dim))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for l in range(self.num_layers):
            x = x0 * F.linear(x, self.weight[l]) + self.bias[l] + x  # (x·w_l) : [B, 1]
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 full-rank cross network (see module docstring). ``[B, D] -> [B, D]``."""

    def __init__(self, dim: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(num_layers))
        for layer in self.layers:
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class CrossNetMix(nn.Module):
    """DCN-V2 low-rank mixture-of-experts cross network (see module docstring). ``[B, D] -> [B, D]``.

    All ``K`` experts of a layer are evaluated together: one ``[B, D] × [D, K·r]`` matmul for ``V`` and two
    batched ``[K, B, r]`` matmuls for ``C`` and ``U``.
    """

    def __init__(self, dim: int, num_layers: int, *, num_experts: int = 4, low_rank: int = 32, act: str = "tanh"):
        super().__init__()
        self.num_layers, self.num_experts, self.low_rank = num_layers, num_experts, low_rank
        L, K, r, D = num_layers, num_experts, low_rank, dim
        self.V = nn.Parameter(torch.empty(L, K, D, r))
        self.C = nn.Parameter(torch.empty(L, K, r, r))
        self.U = nn.Parameter(torch.empty(L, K, r, D))
        self.gate = nn.Parameter(torch.empty(L, K, D))
        self.bias = nn.Parameter(torch.zeros(L, D))
        for p in (self.V, self.C, self.U):
            for mat in p.view(-1, *p.shape[-2:]):
                nn.init.xavier_normal_(mat)
        for g in self.gate:
            nn.init.xavier_normal_(g)
        self.act = activation(act)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        b, D = x0.shape
        K, r = self.num_experts, self.low_rank
        x = x0
        for l in range(self.num_layers):
            # V for all experts in one matmul: [B, D] @ [D, K·r] -> [B, K, r] -> [K, B, r]
            v_all = self.V[l].permute(1, 0, 2).reshape(D, K * r)
            v = self.act(x @ v_all).view(b, K, r).transpose(0, 1)
            c = self.act(torch.bmm(v, self.C[l]))  # [K, B, r]
            u = torch.bmm(c, self.U[l])  # [K, B, D]
            g = torch.softmax(F.linear(x, self.gate[l]), dim=-1)  # [B, K]
            mixed = (u * g.t().unsqueeze(-1)).sum(0)  # Σ_i G_i U_i(...) : [B, D]
            x = x0 * (mixed + self.bias[l]) + x  # Σ_i G_i = 1, so the bias term factors out
        return x
