"""Multiplicative gates.

* :class:`SigmoidGating` — ``out = x ⊙ s·σ(MLP(x_gate))`` (``s = 1``, or ``s = 2`` for FinalMLP-style gates whose
  neutral value is 1 at initialisation-scale logits).
* :class:`FeatureSelection` — FinalMLP's feature-selection layer: two context gates giving two views of the
  flattened embeddings.
* :class:`InstanceGuidedMask` and :class:`MaskBlock` — MaskNet's instance-guided mask and the block built on it.

All shapes are ``[B, ·]`` vectors unless stated; FLOPs are those of the Linear layers (``2·fan_in·fan_out``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankcraft.nn.mlp import MLP


class SigmoidGating(nn.Module):
    """``out = x ⊙ g``, ``g = scale · σ(MLP(x_gate))``.

    ``MLP`` maps ``x_gate : [B, gate_dim]`` through ``hidden`` layers (activation ``act``) and a final Linear to
    ``[B, out_dim]``; with ``hidden=()`` it is a single Linear, ``g = scale·σ(W x_gate + b)``. ``x`` is ``[B, out_dim]``
    or any ``[B, ...]`` with ``out_dim`` elements per example (e.g. ``[B, F, d]`` with ``out_dim = F·d``); ``g`` is
    reshaped to ``x``'s shape. ``x_gate`` defaults to ``x`` itself (flattened), a self-gate; a ``[1, gate_dim]``
    ``x_gate`` gives one gate broadcast over the batch.
    """

    def __init__(self, gate_dim: int, out_dim: int, *, hidden: Sequence[int] = (), act: str = "relu",
                 scale: float = 1.0):
        super().__init__()
        self.scale = scale
        self.mlp = MLP(gate_dim, hidden, out_dim, act=act)

    def gate(self, x_gate: torch.Tensor) -> torch.Tensor:
        """The gate values ``scale·σ(MLP(x_gate)) : [B, out_dim]``."""
        g = torch.sigmoid(self.mlp(x_gate))
        return g * self.scale if self.scale != 1.0 else g

    def forward(self, x: torch.Tensor, x_gate: torch.Tensor | None = None) -> torch.Tensor:
        g = self.gate(x.flatten(1) if x_gate is None else x_gate)
        return x * g.view(g.shape[0], *x.shape[1:])


class FeatureSelection(nn.Module):
    """FinalMLP feature selection: ``x : [B, D] -> (x ⊙ g1, x ⊙ g2)``, each ``[B, D]``.

    ``g_i = 2·σ(MLP_i(c_i))`` with ``MLP_i`` having ``hidden`` ReLU layers and an output Linear to ``D``. The
    context ``c_i`` is passed to :meth:`forward` (e.g. the flattened embeddings of chosen fields, width
    ``context_dims[i]``); where ``context_dims[i]`` is 0 the context is a learned vector of width
    ``default_context_dim`` shared by all examples, so that gate is a learned per-coordinate weighting (computed
    once per batch and broadcast).
    """

    def __init__(self, in_dim: int, *, context_dims: tuple[int, int] = (0, 0), default_context_dim: int = 10,
                 hidden: Sequence[int] = (800,), act: str = "relu"):
        super().__init__()
        self.learned = nn.ParameterList()
        self.gates = nn.ModuleList()
        self.uses_learned: list[bool] = []
        for cd in context_dims:
            learned = cd == 0
            self.uses_learned.append(learned)
            if learned:
                self.learned.append(nn.Parameter(torch.zeros(1, default_context_dim)))
            self.gates.append(SigmoidGating(default_context_dim if learned else cd, in_dim, hidden=hidden, act=act,
                                            scale=2.0))

    def forward(self, x: torch.Tensor, ctx1: torch.Tensor | None = None,
                ctx2: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        outs, li = [], 0
        for gate, learned, ctx in zip(self.gates, self.uses_learned, (ctx1, ctx2)):
            if learned:
                ctx = self.learned[li]  # [1, c]: the gate is computed once and broadcast over the batch
                li += 1
            elif ctx is None:
                raise ValueError("FeatureSelection: this gate needs a context tensor")
            outs.append(gate(x, ctx))
        return outs[0], outs[1]


class InstanceGuidedMask(nn.Module):
    """MaskNet instance-guided mask: ``V_mask = W_2 ReLU(W_1 v + b_1) + b_2``.

    ``v : [B, in_dim]`` (the flattened feature embeddings of the instance) ``-> [B, out_dim]``. The aggregation
    layer has width ``round(reduction_ratio · out_dim)`` (the paper's ratio of aggregation to projection width).
    """

    def __init__(self, in_dim: int, out_dim: int, *, reduction_ratio: float = 1.0):
        super().__init__()
        agg = max(1, int(round(reduction_ratio * out_dim)))
        self.net = MLP(in_dim, [agg], out_dim, act="relu")

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.net(v)


class MaskBlock(nn.Module):
    """MaskNet MaskBlock: ``out = Dropout(ReLU(LN(W (IGM(v_emb) ⊙ h))))``.

    ``v_emb : [B, emb_dim]`` guides the mask, ``h : [B, in_dim]`` is the masked input (the layer-normalised
    embeddings for the first block, the previous block's output in serial MaskNet); ``W : in_dim -> out_dim``.
    ``LN`` is a LayerNorm (omitted with ``layer_norm=False``, in which case ``W`` has a bias). Output
    ``[B, out_dim]``.
    """

    def __init__(self, emb_dim: int, in_dim: int, out_dim: int, *, reduction_ratio: float = 1.0,
                 layer_norm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.mask = InstanceGuidedMask(emb_dim, in_dim, reduction_ratio=reduction_ratio)
        self.linear = nn.Linear(in_dim, out_dim, bias=not layer_norm)
        self.norm = nn.LayerNorm(out_dim) if layer_norm else nn.Identity()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, v_emb: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.drop(torch.relu(self.norm(self.linear(self.mask(v_emb) * h))))
