"""Building blocks of InterFormer (Zeng et al., arXiv 2411.09852) and a time-gap encoding for event sequences.

Notation: ``B`` batch, ``N`` non-sequence tokens, ``T = n_cls + L`` sequence tokens (CLS tokens first, then the
``L`` events, left-padded, most recent last), ``d`` width. ``keep : [B, T]`` is True at CLS tokens and real events.
All attention is written with explicit (batched) matmuls rather than ``scaled_dot_product_attention`` so that
:func:`rankcraft.training.profile.flops_per_example` counts it.

* :class:`TimeGapEncoding` — ``ts : [B, L]`` (float64 seconds) → ``[B, L, d]``: ``Linear(sinusoid(log1p(Δt)))``
  with ``Δt`` the gap to the previous event (``gap``), the age relative to the most recent event (``recency``) or
  both; zero at padding and ``Δt = 0`` for the first event.
* :func:`rope` — rotary position embedding of ``[B, H, T, d_h]`` queries/keys at real-valued positions ``[T]``.
* :class:`MultiHeadAttention` — ``softmax(QKᵀ/√d_h) V`` with key masking and optional RoPE; ``[B, Tq, d]``,
  ``[B, Tk, d]`` → ``[B, Tq, d]``. FLOPs ``2·Tq·d·d (Q) + 4·Tk·d·d (K, V) + 4·Tq·Tk·d + 2·Tq·d·d (out)``.
* :class:`SummaryGate` — ``X ⊙ σ(W·flatten(X) + b)`` (``self``, the standard self-gate), the literal text of the
  converted paper ``σ(X ⊙ (W·flatten(X) + b))`` (``literal``) or the identity (``none``) over ``[B, n, d]``.
* :class:`PersonalizedFFN` — PFFN: a per-example ``d×d`` matrix ``W_b = X_sumᵀ W_p`` (``W_p : [n_sum, d]``, so
  ``rank(W_b) ≤ n_sum``) applied to every sequence token: ``S W_bᵀ + c : [B, T, d]``.
* :class:`CrossArch` — the bridging arch: ``X_sum = Gate(LCE(X)) : [B, n_cls, d]`` (LCE = a Linear along the token
  axis, ``N → n_cls``) and ``S_sum = Gate([S_CLS ‖ PMA(S) ‖ S_recent]) : [B, n_cls + n_pma + K, d]``.
* :class:`InteractionArch` — ``X' = LN(X + I([X ‖ S_sum]))`` with ``I`` a DCNv2 cross network on the flattened
  tokens followed by a token-axis Linear back to ``N`` tokens (``dcnv2``), a Linear of the pairwise dot products
  (``dot``), or their sum (``dhen``, a one-level DHEN ensemble of DOT + DCN with shortcut and norm).
* :class:`SequenceArchLayer` — ``U = S + GELU(PFFN(X_sum, LN(S)))``, ``S' = U + MHA(LN(U))`` (self-attention over
  all ``T`` tokens with RoPE, padded keys masked), optional standard FFN, padded tokens reset to 0.

See :mod:`rankcraft.models.interformer` for how they are wired together and which parts follow the paper.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from rankcraft.nn.cross import CrossNetV2
from rankcraft.nn.interaction import EFC, DotInteraction
from rankcraft.nn.mlp import MLP
from rankcraft.nn.sequence import sinusoid

TimeEncoding = Literal["none", "gap", "recency", "both"]


class TimeGapEncoding(nn.Module):
    """Event-time features of a left-padded sequence (see module docstring). ``(ts, mask) -> [B, L, d]``.

    ``gap``: ``Δt_l = t_l − t_{l−1}`` (0 for the first real event); ``recency``: ``t_last − t_l`` with ``t_last`` the
    most recent event's time. Differences are taken in float64, clamped at 0, passed through ``log1p`` and encoded
    by :func:`~rankcraft.nn.sequence.sinusoid`; a Linear maps the (concatenated) encodings to ``d``.
    """

    def __init__(self, dim: int, mode: TimeEncoding = "gap"):
        super().__init__()
        if mode == "none":
            raise ValueError("TimeGapEncoding needs a mode other than 'none'")
        self.mode = mode
        self.feat_dim = max(2, dim - dim % 2)
        n = 2 if mode == "both" else 1
        self.proj = nn.Linear(n * self.feat_dim, dim)

    def forward(self, ts: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ts = ts.to(torch.float64)
        parts = []
        if self.mode in ("gap", "both"):
            prev_real = F.pad(mask[:, :-1], (1, 0), value=False) & mask
            gap = F.pad(ts[:, 1:] - ts[:, :-1], (1, 0), value=0.0)
            gap = torch.where(prev_real, gap, torch.zeros_like(gap)).clamp_min(0.0)
            parts.append(sinusoid(torch.log1p(gap).float(), self.feat_dim))
        if self.mode in ("recency", "both"):
            age = torch.where(mask, ts[:, -1:] - ts, torch.zeros_like(ts)).clamp_min(0.0)
            parts.append(sinusoid(torch.log1p(age).float(), self.feat_dim))
        feats = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return self.proj(feats) * mask.unsqueeze(-1).to(feats.dtype)


def rope(x: torch.Tensor, pos: torch.Tensor, base: float = 10_000.0) -> torch.Tensor:
    """Rotary position embedding: rotates coordinate pairs ``(x_i, x_{i+h})`` of ``x : [..., T, d_h]`` (``d_h``
    even, ``h = d_h/2``) by angles ``pos_t · base^(−i/h)`` for ``pos : [T]`` (float). Dot products of rotated
    queries and keys depend only on position differences."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = pos.to(torch.float32).unsqueeze(-1) * freqs  # [T, half]
    cos, sin = torch.cos(ang).to(x.dtype), torch.sin(ang).to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class MultiHeadAttention(nn.Module):
    """Multi-head attention with key masking and optional RoPE (see module docstring).

    ``forward(x_q [B, Tq, d], x_kv [B, Tk, d], keep [B, Tk] bool, q_pos=None [Tq], k_pos=None [Tk])``; ``x_q`` may
    also be ``[Tq, d]`` (queries shared by the batch, e.g. PMA seeds). A query whose keys are all masked gets a zero
    output (callers avoid that by always keeping CLS tokens).
    """

    def __init__(self, dim: int, num_heads: int, *, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by num_heads {num_heads}")
        self.h, self.dh = num_heads, dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, keep: torch.Tensor, q_pos: torch.Tensor | None = None,
                k_pos: torch.Tensor | None = None) -> torch.Tensor:
        b, tk, d = x_kv.shape
        tq = x_q.shape[-2]
        q = self.q(x_q).view(-1, tq, self.h, self.dh).transpose(1, 2).expand(b, -1, -1, -1)  # [B, H, Tq, dh]
        k, v = self.kv(x_kv).view(b, tk, 2, self.h, self.dh).permute(2, 0, 3, 1, 4)  # each [B, H, Tk, dh]
        if q_pos is not None:
            q = rope(q, q_pos)
        if k_pos is not None:
            k = rope(k, k_pos)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.dh)  # [B, H, Tq, Tk]
        scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        att = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        if self.drop is not None:
            att = self.drop(att)
        o = torch.matmul(att, v).transpose(1, 2).reshape(b, tq, d)
        return self.out(o)


class SummaryGate(nn.Module):
    """Gating of a token block ``[B, n, d]`` (see module docstring); one Linear ``n·d → n·d`` unless ``none``."""

    def __init__(self, num_tokens: int, dim: int, mode: Literal["self", "literal", "none"] = "self"):
        super().__init__()
        self.mode = mode
        self.linear = None if mode == "none" else nn.Linear(num_tokens * dim, num_tokens * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.linear is None:
            return x
        g = self.linear(x.flatten(1)).view_as(x)
        return x * torch.sigmoid(g) if self.mode == "self" else torch.sigmoid(x * g)


class PersonalizedFFN(nn.Module):
    """PFFN (see module docstring): ``(x_sum [B, n_sum, d], s [B, T, d]) -> [B, T, d]``.

    ``W_p`` is drawn ``N(0, 1/(n_sum·d))`` so that ``W_b`` has entries of order ``1/√d`` for O(1) summaries.
    FLOPs ``2·n_sum·d² + 2·T·d²`` per example.
    """

    def __init__(self, num_sum: int, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(num_sum, dim) / math.sqrt(num_sum * dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x_sum: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        w = torch.matmul(x_sum.transpose(1, 2), self.weight)  # [B, d, d]:  W_b[i, j] = Σ_s X_sum[s, i] W_p[s, j]
        return torch.bmm(s, w.transpose(1, 2)) + self.bias


class CrossArch(nn.Module):
    """Summaries of both modes (see module docstring).

    ``x_summary(x [B, N, d]) -> [B, n_cls, d]``; ``s_summary(s [B, T, d], keep [B, T]) -> [B, n_cls+n_pma+K, d]``.
    ``S_CLS`` is the first ``n_cls`` tokens; ``PMA`` attends from ``n_pma`` learned seeds over all kept tokens (CLS
    tokens included, so an empty history is well defined); ``S_recent`` is the last ``K`` event tokens, zeroed where
    they are padding (shorter histories) and left-padded with zeros if ``L < K``. ``summarise_x`` /
    ``summarise_s`` = False leave out the parameters of a summary that the caller never asks for.
    """

    def __init__(self, num_tokens: int, dim: int, *, num_cls: int, num_pma: int, num_recent: int, num_heads: int,
                 gating: Literal["self", "literal", "none"] = "self", dropout: float = 0.0, summarise_x: bool = True,
                 summarise_s: bool = True):
        super().__init__()
        self.num_cls, self.num_pma, self.num_recent = num_cls, num_pma, num_recent
        if summarise_x:
            self.lce = EFC(num_tokens, num_cls)
            self.x_gate = SummaryGate(num_cls, dim, gating)
        if summarise_s:
            if num_pma:
                self.seeds = nn.Parameter(torch.randn(num_pma, dim) * 0.02)
                self.pma_norm = nn.LayerNorm(dim)
                self.pma = MultiHeadAttention(dim, num_heads, dropout=dropout)
            self.s_gate = SummaryGate(self.num_summary, dim, gating)

    @property
    def num_summary(self) -> int:
        return self.num_cls + self.num_pma + self.num_recent

    def x_summary(self, x: torch.Tensor) -> torch.Tensor:
        return self.x_gate(self.lce(x))

    def s_summary(self, s: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        parts = [s[:, :self.num_cls]]
        if self.num_pma:
            h = self.pma_norm(s)
            parts.append(self.pma(self.seeds, h, keep))  # seeds passed whole: [n_pma, d]
        if self.num_recent:
            k = self.num_recent
            ev, ev_keep = s[:, self.num_cls:], keep[:, self.num_cls:]
            rec = ev[:, -k:] * ev_keep[:, -k:].unsqueeze(-1).to(s.dtype)
            if rec.shape[1] < k:
                rec = F.pad(rec, (0, 0, k - rec.shape[1], 0))
            parts.append(rec)
        return self.s_gate(torch.cat(parts, dim=1))


class InteractionArch(nn.Module):
    """Behaviour-aware non-sequence interaction (see module docstring).

    ``forward(x [B, N, d], extra [B, n_extra, d] or None) -> [B, N, d]``. ``dot`` products are divided by ``√d``.
    """

    def __init__(self, num_tokens: int, num_extra: int, dim: int, *,
                 kind: Literal["dhen", "dcnv2", "dot"] = "dhen", num_cross_layers: int = 1, dropout: float = 0.0):
        super().__init__()
        n = num_tokens + num_extra
        self.n_out, self.dim, self.scale = num_tokens, dim, 1.0 / math.sqrt(dim)
        self.cross = self.cross_proj = self.dot = self.dot_proj = None
        if kind in ("dhen", "dcnv2"):
            self.cross = CrossNetV2(n * dim, num_cross_layers)
            self.cross_proj = EFC(n, num_tokens)
        if kind in ("dhen", "dot"):
            self.dot = DotInteraction(n)
            self.dot_proj = nn.Linear(self.dot.out_dim, num_tokens * dim)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        z = x if extra is None else torch.cat([x, extra], dim=1)
        b, n, d = z.shape
        out = torch.zeros_like(x)
        if self.cross is not None:
            out = out + self.cross_proj(self.cross(z.flatten(1)).view(b, n, d))
        if self.dot is not None:
            out = out + self.dot_proj(self.dot(z) * self.scale).view(b, self.n_out, d)
        return self.norm(x + self.drop(out))


class SequenceArchLayer(nn.Module):
    """One sequence-arch layer (see module docstring).

    ``forward(s [B, T, d], keep [B, T], x_sum [B, n_sum, d] or None, pos [T] or None) -> [B, T, d]``. With
    ``personalized=False`` the PFFN is a plain ``d×d`` Linear shared by all examples (``x_sum`` is ignored, no
    information flows from the non-sequence side). ``ffn_mult > 0`` adds a standard GELU FFN sub-layer of width
    ``ffn_mult·d``. ``pos=None`` disables RoPE.
    """

    def __init__(self, dim: int, num_sum: int, num_heads: int, *, personalized: bool = True, ffn_mult: int = 0,
                 dropout: float = 0.0):
        super().__init__()
        self.personalized = personalized
        self.norm1 = nn.LayerNorm(dim)
        self.pffn = PersonalizedFFN(num_sum, dim) if personalized else nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, num_heads, dropout=dropout)
        self.ffn = None
        if ffn_mult > 0:
            self.norm3 = nn.LayerNorm(dim)
            self.ffn = MLP(dim, [ffn_mult * dim], dim, act="gelu")

    def forward(self, s: torch.Tensor, keep: torch.Tensor, x_sum: torch.Tensor | None,
                pos: torch.Tensor | None) -> torch.Tensor:
        h = self.norm1(s)
        h = self.pffn(x_sum, h) if self.personalized else self.pffn(h)
        s = s + F.gelu(h)
        h = self.norm2(s)
        s = s + self.attn(h, h, keep, pos, pos)
        if self.ffn is not None:
            s = s + self.ffn(self.norm3(s))
        return s * keep.unsqueeze(-1).to(s.dtype)
