"""Experts and softmax gates: the blocks of multi-gate mixture-of-experts models (MMoE, PLE).

Notation: batch ``B``, input width ``D``, ``K`` experts, expert output width ``H`` (the last of ``expert_units``),
``T`` tasks.

* :class:`ExpertBank` — ``K`` independent MLP experts over the same input:
  ``E(x) = stack_k MLP_k(x) : [B, K, H]`` for ``x : [B, D]``.
* :class:`SoftmaxGate` — ``g(x) = softmax(MLP(x)) : [B, K]`` (a single Linear ``D → K`` by default, as in the
  MMoE paper); every row sums to 1 and every weight is positive, so every expert receives gradient.
* :func:`mix` — ``y = Σ_k g_k · E_k : [B, H]`` (a batched matmul).
* :class:`MixtureOfExperts` — the MMoE layer (Ma et al., KDD 2018): one bank of ``K`` shared experts and one gate
  per task, ``y_t = Σ_k g_{t,k}(x) E_k(x)``; output ``[B, T, H]``.
* :class:`CGCLayer` — one Customized Gate Control level of PLE (Tang et al., RecSys 2020): each task ``t`` has
  ``m_t`` specific experts over its own input ``x_t`` and all tasks share ``m_s`` experts over the shared input
  ``x_s``; task ``t``'s gate mixes its own and the shared experts (``m_t + m_s`` weights, gated on ``x_t``), and in
  every level but the last a shared gate mixes *all* ``T·m_t + m_s`` experts (gated on ``x_s``) into the next
  level's shared input. Input and output ``[B, T(+1), ·]`` (the extra slot is the shared path).

FLOPs per example (matmuls): ``K · flops(expert MLP)`` for a bank, ``2·D·K`` for a linear gate, ``2·K·H`` for a
mix. Experts run in a Python loop over ``K`` (a handful); each is a batched MLP over the whole batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rankcraft.nn.mlp import MLP


class ExpertBank(nn.Module):
    """``K`` MLP experts ``D → expert_units`` (activation, dropout, batch norm as :class:`MLP`):
    ``[B, D] -> [B, K, H]``."""

    def __init__(self, in_dim: int, num_experts: int, expert_units: Sequence[int], *, act: str = "relu",
                 dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if num_experts < 1:
            raise ValueError("an expert bank needs at least one expert")
        if not expert_units:
            raise ValueError("expert_units must list at least one layer width")
        self.experts = nn.ModuleList(MLP(in_dim, expert_units, act=act, dropout=dropout, batch_norm=batch_norm)
                                     for _ in range(num_experts))
        self.num_experts = num_experts
        self.out_dim = self.experts[0].out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([e(x) for e in self.experts], dim=1)


class SoftmaxGate(nn.Module):
    """``g(x) = softmax(MLP(x))``: ``[B, D] -> [B, K]``, each row a probability vector over ``K`` experts.

    ``hidden`` adds hidden layers (activation ``act``) before the output Linear ``→ K``; the default is one Linear.
    With ``K = 1`` the gate is the constant 1 and has no parameters.
    """

    def __init__(self, in_dim: int, num_experts: int, *, hidden: Sequence[int] = (), act: str = "relu"):
        super().__init__()
        if num_experts < 1:
            raise ValueError("a gate needs at least one expert")
        self.net = MLP(in_dim, hidden, num_experts, act=act) if num_experts > 1 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net is None:
            return x.new_ones(x.shape[0], 1)
        return torch.softmax(self.net(x), dim=-1)


def mix(experts: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``Σ_k gate[:, k] · experts[:, k, :]``: ``experts [B, K, H]``, ``gate [B, K]`` → ``[B, H]``."""
    return torch.bmm(gate.unsqueeze(1), experts).squeeze(1)


class MixtureOfExperts(nn.Module):
    """Multi-gate mixture of experts (MMoE layer): ``x : [B, D] -> y : [B, T, H]``,
    ``y_t = Σ_k softmax(G_t x)_k · E_k(x)`` with ``K`` shared experts and ``T`` gates.

    :meth:`forward` returns ``(y, gates)`` with ``gates : [B, T, K]`` (each ``[b, t, :]`` sums to 1).
    """

    def __init__(self, in_dim: int, num_experts: int, num_gates: int, expert_units: Sequence[int], *,
                 gate_units: Sequence[int] = (), act: str = "relu", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if num_gates < 1:
            raise ValueError("a mixture of experts needs at least one gate")
        self.experts = ExpertBank(in_dim, num_experts, expert_units, act=act, dropout=dropout,
                                  batch_norm=batch_norm)
        self.gates = nn.ModuleList(SoftmaxGate(in_dim, num_experts, hidden=gate_units, act=act)
                                   for _ in range(num_gates))
        self.out_dim = self.experts.out_dim

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.experts(x)                                             # [B, K, H]
        g = torch.stack([gate(x) for gate in self.gates], dim=1)        # [B, T, K]
        return torch.bmm(g, e), g                                       # [B, T, H]


class CGCLayer(nn.Module):
    """One PLE level (Customized Gate Control).

    Inputs ``xs : [B, T+1, D]``: ``xs[:, t]`` is task ``t``'s input and ``xs[:, T]`` the shared path's (at the first
    level all ``T+1`` slots hold the same ``x``). With ``S_t = ExpertBank_t(x_t) : [B, m_t, H]`` (task-specific) and
    ``S_s = ExpertBank_s(x_s) : [B, m_s, H]`` (shared):

    * task output ``y_t = mix([S_t; S_s], softmax(G_t x_t)) : [B, H]`` (gate over ``m_t + m_s`` experts);
    * with ``shared_gate=True`` (every level but the last) also the shared output
      ``y_s = mix([S_1; …; S_T; S_s], softmax(G_s x_s)) : [B, H]`` (gate over ``T·m_t + m_s`` experts).

    :meth:`forward` returns ``(ys, gates)``: ``ys : [B, T(+1), H]`` and a list of the ``T`` (``+1``) gate tensors
    ``[B, m_t + m_s]`` (``[B, T·m_t + m_s]`` for the shared gate). Without shared experts and shared gate the
    shared slot of ``xs`` is never read (``xs`` may then be ``[B, T, D]``).
    """

    def __init__(self, in_dim: int, num_tasks: int, specific_experts: int, shared_experts: int,
                 expert_units: Sequence[int], *, shared_gate: bool, gate_units: Sequence[int] = (),
                 act: str = "relu", dropout: float = 0.0, batch_norm: bool = False):
        super().__init__()
        if num_tasks < 1:
            raise ValueError("a CGC layer needs at least one task")
        if specific_experts < 0 or shared_experts < 0 or specific_experts + shared_experts < 1:
            raise ValueError("a CGC layer needs at least one expert per task (specific + shared >= 1)")

        def bank(k: int) -> ExpertBank | None:
            return ExpertBank(in_dim, k, expert_units, act=act, dropout=dropout, batch_norm=batch_norm) if k else None

        self.num_tasks = num_tasks
        self.specific = nn.ModuleList(bank(specific_experts) for _ in range(num_tasks)) if specific_experts else None
        self.shared = bank(shared_experts)
        self.task_gates = nn.ModuleList(SoftmaxGate(in_dim, specific_experts + shared_experts, hidden=gate_units,
                                                    act=act) for _ in range(num_tasks))
        self.shared_gate = (SoftmaxGate(in_dim, num_tasks * specific_experts + shared_experts, hidden=gate_units,
                                        act=act) if shared_gate else None)
        self.out_dim = (self.shared if self.shared is not None else self.specific[0]).out_dim

    def forward(self, xs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        T = self.num_tasks
        spec = [bank(xs[:, t]) for t, bank in enumerate(self.specific)] if self.specific is not None else []
        shared = [self.shared(xs[:, T])] if self.shared is not None else []  # xs[:, T] is read only if needed
        outs, gates = [], []
        for t, gate in enumerate(self.task_gates):
            g = gate(xs[:, t])
            outs.append(mix(torch.cat(spec[t:t + 1] + shared, dim=1), g))
            gates.append(g)
        if self.shared_gate is not None:
            g = self.shared_gate(xs[:, T])
            outs.append(mix(torch.cat(spec + shared, dim=1), g))
            gates.append(g)
        return torch.stack(outs, dim=1), gates
