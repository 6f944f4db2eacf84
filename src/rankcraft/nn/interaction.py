"""Explicit feature-interaction operators over field embeddings ``e : [B, F, d]``.

* :class:`FM` — second-order factorisation machine term.
* :class:`DotInteraction` — DLRM pairwise dot products.
* :class:`CIN` — xDeepFM compressed interaction network.
* :class:`EFC` — elementwise (per-embedding-coordinate) fully connected layer along the field axis.
* :class:`BilinearFusion` — FinalMLP multi-head bilinear fusion of two vector streams.

FLOPs quoted below are what :func:`rankcraft.training.profile.flops_per_example` counts (matrix products as
``2·m·n·k``; elementwise ops and reductions as 0).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankcraft.nn.mlp import activation


class FM(nn.Module):
    """Second-order factorisation machine over field embeddings.

    For ``e : [B, F, d]``::

        y = Σ_{i<j} <e_i, e_j> = ½ Σ_k [ (Σ_f e_{f,k})² − Σ_f e_{f,k}² ]      : [B, 1]

    (or the per-coordinate vector ``½[(Σ_f e_f)² − Σ_f e_f²] : [B, d]`` with ``reduce_sum=False``, as in NFM's
    bi-interaction pooling).

    The two field sums are computed together as one product of a ones row vector with ``[e, e⊙e] : [B, F, 2d]``
    (the dense form of summing the embeddings of a sparse input), so the profiler counts ``4·F·d`` FLOPs per
    example; the squaring and the final sum over ``d`` count 0.
    """

    def __init__(self, num_fields: int, *, reduce_sum: bool = True):
        super().__init__()
        self.num_fields = num_fields
        self.reduce_sum = reduce_sum
        self.register_buffer("ones", torch.ones(1, num_fields), persistent=False)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        d = e.shape[-1]
        sums = torch.matmul(self.ones, torch.cat([e, e * e], dim=-1)).squeeze(1)  # [B, 2d]
        s, q = sums[:, :d], sums[:, d:]
        out = 0.5 * (s * s - q)  # [B, d]
        return out.sum(-1, keepdim=True) if self.reduce_sum else out


class DotInteraction(nn.Module):
    """DLRM dot-product interaction.

    Given field vectors ``e : [B, F, d]`` and, if ``dense=True``, a dense vector ``z : [B, d]`` (or ``[1, d]``,
    broadcast over the batch) prepended as field 0 (so ``n = F + 1`` vectors, else ``n = F``), computes the Gram
    matrix ``G = X Xᵀ : [B, n, n]`` with one batched matmul and returns its strict upper triangle flattened row by
    row::

        out[b] = [G_{0,1}, G_{0,2}, …, G_{0,n-1}, G_{1,2}, …, G_{n-2,n-1}]      : [B, n(n-1)/2]

    With ``self_interaction=True`` the diagonal is included (``[B, n(n+1)/2]``, pairs ``i ≤ j``).
    FLOPs: ``2·n²·d`` per example.
    """

    def __init__(self, num_fields: int, *, dense: bool = False, self_interaction: bool = False):
        super().__init__()
        self.dense = dense
        self.n = num_fields + int(dense)
        rows, cols = torch.triu_indices(self.n, self.n, offset=0 if self_interaction else 1)
        self.register_buffer("flat_index", rows * self.n + cols, persistent=False)
        self.out_dim = int(self.flat_index.numel())

    def forward(self, e: torch.Tensor, dense: torch.Tensor | None = None) -> torch.Tensor:
        if self.dense:
            if dense is None:
                raise ValueError("DotInteraction(dense=True) needs the dense vector")
            e = torch.cat([dense.unsqueeze(1).expand(e.shape[0], -1, -1), e], dim=1)
        if e.shape[1] != self.n:
            raise ValueError(f"DotInteraction expects {self.n} vectors, got {e.shape[1]}")
        gram = torch.bmm(e, e.transpose(1, 2))  # [B, n, n]
        return gram.flatten(1).index_select(1, self.flat_index)


class CIN(nn.Module):
    """xDeepFM compressed interaction network.

    With ``X⁰ = e : [B, m, d]`` (``m`` fields) and layer sizes ``H_1..H_K``, layer ``k`` computes, for every
    embedding coordinate ``t``::

        X^k_{h,t} = σ( Σ_{i<H_{k-1}} Σ_{j<m} W^k_{h,i,j} · X^{k-1}_{i,t} · X⁰_{j,t} + b^k_h )     : [B, H_k, d]

    i.e. an outer product along the field axes ``[B, H_{k-1}·m, d]`` followed by a 1×1 convolution (implemented as
    a Linear over the ``H_{k-1}·m`` axis). Each layer is sum-pooled over ``d`` and the pooled vectors are
    concatenated. With ``split_half=True`` every layer except the last sends half of its ``H_k`` maps to the output
    and the other half to the next layer (so non-last sizes must be even). ``σ`` defaults to the identity, as in the
    paper.

    Output ``[B, out_dim]`` with ``out_dim = Σ_{k<K} H_k/2 + H_K`` (``split_half``) or ``Σ_k H_k``.
    FLOPs: ``Σ_k 2·d·H_k·(H'_{k-1}·m)`` per example, ``H'`` being the maps fed forward (``H'_0 = m``).
    """

    def __init__(self, num_fields: int, layer_sizes: Sequence[int], *, split_half: bool = True,
                 act: str = "identity"):
        super().__init__()
        if not layer_sizes:
            raise ValueError("CIN needs at least one layer")
        self.split_half = split_half
        self.layers = nn.ModuleList()
        prev, out_dim = num_fields, 0
        for k, h in enumerate(layer_sizes):
            last = k == len(layer_sizes) - 1
            if split_half and not last and h % 2:
                raise ValueError(f"CIN with split_half needs even sizes before the last layer, got {h}")
            self.layers.append(nn.Linear(prev * num_fields, h))
            if split_half and not last:
                prev, out_dim = h // 2, out_dim + h // 2
            else:
                prev, out_dim = h, out_dim + h
        self.act = activation(act)
        self.out_dim = out_dim

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        b, m, d = e.shape
        x0 = e.transpose(1, 2)  # [B, d, m] — keep coordinates first so every step is one Linear
        x, pooled = x0, []
        for k, layer in enumerate(self.layers):
            z = (x.unsqueeze(3) * x0.unsqueeze(2)).reshape(b, d, -1)  # [B, d, H_{k-1}·m]
            x = self.act(layer(z))  # [B, d, H_k]
            if self.split_half and k < len(self.layers) - 1:
                half = x.shape[-1] // 2
                pooled.append(x[..., half:].sum(1))
                x = x[..., :half]
            else:
                pooled.append(x.sum(1))
        return torch.cat(pooled, dim=1)


class EFC(nn.Module):
    """Elementwise fully connected layer along the field axis.

    ``out[b, j, k] = Σ_i W_{j,i} · e[b, i, k] + c_j`` for ``e : [B, F, d]``, ``W : [F', F]`` — the same field mixing
    for every embedding coordinate ``k``. Output ``[B, F', d]``. FLOPs: ``2·F·F'·d`` per example.
    """

    def __init__(self, in_fields: int, out_fields: int, *, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_fields, out_fields, bias=bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.linear(e.transpose(1, 2)).transpose(1, 2)


class BilinearFusion(nn.Module):
    """FinalMLP multi-head bilinear fusion of two streams ``x : [B, D1]`` and ``y : [B, D2]``.

    Both inputs are split into ``h`` equal chunks ``x_j : [B, D1/h]``, ``y_j : [B, D2/h]``; then::

        out = b + Σ_j ( w1_jᵀ x_j + w2_jᵀ y_j + x_jᵀ W3_j y_j )          : [B, 1]

    (the per-head linear terms add up to plain ``w1ᵀx + w2ᵀy``, which is how they are computed). With ``h = 1``
    this is a full bilinear form. ``W3`` is initialised ``N(0, h/(D1·D2))`` so that the bilinear term has O(1)
    variance for O(1) inputs (a Xavier-style init of a 400×400 form would start at logits of O(10)).
    FLOPs: ``2·D1 + 2·D2 + 2·D1·D2/h`` per example.
    """

    def __init__(self, dim1: int, dim2: int, num_heads: int = 1):
        super().__init__()
        if dim1 % num_heads or dim2 % num_heads:
            raise ValueError(f"BilinearFusion: dims {dim1}, {dim2} not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.lin1 = nn.Linear(dim1, 1)
        self.lin2 = nn.Linear(dim2, 1, bias=False)
        self.w3 = nn.Parameter(torch.empty(num_heads, dim1 // num_heads, dim2 // num_heads))
        nn.init.normal_(self.w3, std=(num_heads / (dim1 * dim2)) ** 0.5)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        h = self.num_heads
        xh = x.reshape(x.shape[0], h, -1).transpose(0, 1)  # [h, B, D1/h]
        yh = y.reshape(y.shape[0], h, -1).transpose(0, 1)  # [h, B, D2/h]
        bil = (torch.bmm(xh, self.w3) * yh).sum((0, 2))  # [B]
        return self.lin1(x) + self.lin2(y) + bil.unsqueeze(1)
