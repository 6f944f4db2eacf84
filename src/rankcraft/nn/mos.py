"""MoS — Mixture of Sequence (Lin et al., WWW 2026): theme-aware mixture of sequence experts.

The official code and the full text were not available; this module implements the reconstruction **[R]** of
``shared/papers/mos.md`` §3 and makes every unverified choice an option (the defaults are marked below).

Notation: batch ``B``, history length ``L``, embedding width ``d``, ``K`` themes, ``M`` sessions (after the cap),
backbone output width ``o`` (``d`` for ``din``/``mean``, ``2d`` for ``transformer``). Inputs are the
:class:`~rankcraft.nn.sequence.SequenceInputs` outputs: ``seq E : [B, L, d]`` (left-padded, most recent last),
``mask : [B, L]`` bool, ``target q : [B, d]``, ``ts : [B, L]`` float64 seconds or None.

1. **Sessions** (:func:`segment_sessions`). Time-gap rule: a new session starts at event ``j`` when
   ``t_j − t_{j−1} > Δ`` (``Δ = session_gap_seconds``, default 1 day, suited to ML-100K-like rating logs; the
   classical web-log value is 30 min). Without timestamps: fixed chunks of ``c`` events, aligned so the most recent
   chunk is full. Session ids ``s_j ∈ {0..M−1}`` count from the oldest session; ``−1`` at padding. At most
   ``max_sessions`` sessions: the oldest surplus sessions are merged into session 0 (``session_overflow="merge"``)
   or excluded from theme routing (``"drop"``; they still feed the global expert).
2. **Session representation** (:func:`pool_sessions`): ``h_m = mean_{j: s_j = m} E_j : [B, M, d]`` (default) or
   attention pooling ``h_m = Σ_{j∈m} softmax_j(⟨v, E_j⟩) E_j`` with a learned ``v``.
3. **Theme routing** (:class:`ThemeRouter`): prototypes ``P : [K, d]``, projection ``W_r : [d, d]``;
   ``a_{m,k} = cos(W_r h_m, P_k) / τ`` (``router_metric="cosine"``, default) or ``⟨W_r h_m, P_k⟩ / τ``
   (``"dot"``, the notes' form); ``h_m`` is LayerNorm-ed first (``router_norm``); gate
   ``g = softmax_k(a) : [B, M, K]``; hard assignment ``z_m = top-k_k(g)`` (top-1 default). Gradients reach the
   router by

   * ``"gate_scale"`` (default): Switch-style, theme expert ``k``'s output is scaled by the mean gate value
     ``ḡ_k = Σ_m A_{m,k} g_{m,k} / Σ_m A_{m,k}`` of the sessions routed to it;
   * ``"straight_through"``: the hard one-hot ``A`` is replaced by ``A + g − sg(g)``; every event of a session
     routed to ``k`` enters theme ``k``'s subsequence multiplied by ``A_{m,k}`` (= 1 in the forward pass);
   * ``"gumbel"``: as above with Gumbel noise added to ``a`` while training (straight-through Gumbel-softmax).

   Default choice (ours): with cosine + gate_scale + ``λ_bal = 0.05`` the router recovered the planted themes of
   the session-hopping generator (4 themes, K = 4, 4 epochs) with NMI ≥ 0.96 on 7 of 8 initialisation seeds
   (one: 0.58); the notes' dot + straight-through + ``λ_bal = 0.01`` got NMI 0.71, 0.81, 0.83, 0.996 on 4 seeds.
   Both gave the same ML-100K validation AUC (0.692, DIN backbone, 3 epochs).
4. **Theme subsequences**: the events of all sessions routed to ``k`` in their original time order (recurring
   interests in non-adjacent sessions are concatenated; ``theme_max_len``: only the most recent events kept).
   ``packing="packed"`` (default): the ``N ≤ B·L`` routed events are one flat list with a segment per (theme, row)
   and each theme expert runs :meth:`~rankcraft.nn.sequence.SequenceEncoder.forward_packed` on its own events only
   (exact for ``din``/``mean``; length buckets growing by ``pack_growth`` for ``transformer``), so a row's theme
   experts together cost about one pass over its real events — the paper's efficiency argument. ``"padded"``:
   :func:`theme_subsequences` gathers a left-padded ``[B, K, L_k]`` tensor with ``L_k = max_b |theme k of b|`` and
   every expert runs on all of it (K·L_k events per row). Both give the same outputs up to float rounding.
5. **Experts**: backbones from :func:`~rankcraft.nn.sequence.build_sequence_encoder`: a global expert
   ``u_g = f_g(E, mask, q)``; a short-term expert ``u_s = f_s(E_{L−w+1..L}, ·, q)`` over the last ``w`` events
   (``short_term="window"``) or over the last session (``"last_session"``); theme experts
   ``u_k = f_k(E^{(k)}, mask^{(k)}, q) : [B, K, o]``. ``expert_sharing``: ``"none"`` (separate weights for every
   expert, the notes' default), ``"themes"`` (one set for all theme experts) or ``"all"`` (one backbone for every
   expert). A theme with no events for a user is *absent*: its output is zeroed and it gets no fusion weight.
6. **Fusion**: the target is routed with the same router, ``π = softmax_k(a(q))`` over present themes. ``"concat"``
   (default): ``u_t = Σ_k π_k u_k`` and ``u = [u_g, u_s, u_t] : [B, 3o]``. ``"gate"``: a softmax over the
   ``K + 2`` experts, ``α_e ∝ exp(MLP([q, u_e]) + [e is theme k]·log π_k)``, ``u = Σ_e α_e u_e : [B, o]``.
   ``mixture="dense"``: the dense-MoE counterpart (the "other MoE" baseline): no sessions or routing, every theme
   expert reads the whole sequence and ``π = softmax_k(a(q))`` over all ``K`` (no auxiliary loss).
7. **Auxiliary loss** (training only, stored in :attr:`MixtureOfSequence.aux_loss`, already weighted):
   ``λ_bal · K Σ_k f_k P̄_k`` (``balance_weight``, default 0.05, the notes say 0.01; Switch load balancing over
   the real sessions of the batch: ``f_k`` the fraction of assignments to ``k``, ``P̄_k`` the mean gate)
   ``+ λ_div · ||P̂P̂ᵀ − I||²_F / K²`` (prototype orthogonality, ``P̂`` row-normalised; off by default).

Everything is vectorised over the batch; the only Python loops run over the ``K`` theme experts when they do not
share weights.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from rankcraft.nn.mlp import MLP
from rankcraft.nn.sequence import build_sequence_encoder

SEGMENTATIONS = ("auto", "time", "chunk")
OVERFLOWS = ("merge", "drop")
POOLINGS = ("mean", "attention")
METRICS = ("dot", "cosine")
GRADS = ("straight_through", "gumbel", "gate_scale")
SHARING = ("none", "themes", "all")
FUSIONS = ("concat", "gate")
SHORT_TERM = ("window", "last_session")
PACKINGS = ("packed", "padded")
MIXTURES = ("themes", "dense")


# ------------------------------------------------------------------------------------------- step 1: sessions
def segment_sessions(mask: torch.Tensor, ts: torch.Tensor | None = None, *, gap_seconds: float = 86_400.0,
                     chunk_size: int = 10, max_sessions: int | None = None, overflow: str = "merge",
                     mode: str = "auto") -> torch.Tensor:
    """Session index of every event: ``[B, L]`` long, ``0`` = oldest session, ``−1`` at padding (and at events of
    sessions excluded by ``overflow="drop"``).

    * ``mode="time"`` (or ``"auto"`` with ``ts``): event ``j`` opens a new session iff events ``j−1`` and ``j`` are
      both real and ``ts_j − ts_{j−1} > gap_seconds`` (differences are taken in ``ts``'s dtype, float64 for unix
      seconds).
    * ``mode="chunk"`` (or ``"auto"`` without ``ts``): chunks of ``chunk_size`` events counted back from the most
      recent event, so only the oldest chunk may be short.
    * ``max_sessions = M``: a row with ``n > M`` sessions merges its ``n − M + 1`` oldest sessions into session 0
      (``"merge"``) or drops its ``n − M`` oldest sessions (``"drop"``, ids ``−1``).
    """
    if mode not in SEGMENTATIONS:
        raise ValueError(f"segmentation must be one of {SEGMENTATIONS}, got {mode!r}")
    if overflow not in OVERFLOWS:
        raise ValueError(f"session_overflow must be one of {OVERFLOWS}, got {overflow!r}")
    mask = mask.bool()
    use_time = mode == "time" or (mode == "auto" and ts is not None)
    if use_time:
        if ts is None:
            raise ValueError("segmentation='time' needs timestamps")
        new = torch.zeros_like(mask)
        gap = ts[:, 1:] - ts[:, :-1]
        new[:, 1:] = mask[:, 1:] & mask[:, :-1] & (gap > gap_seconds)
        sid = torch.cumsum(new.long(), dim=1)
    else:
        if chunk_size < 1:
            raise ValueError("chunk_size must be >= 1")
        m = mask.long()
        n = m.sum(1, keepdim=True)                       # [B, 1] events per row
        rank = torch.cumsum(m, dim=1) - 1                # 0 = oldest real event
        from_recent = n - 1 - rank                       # 0 = most recent
        n_chunks = (n + chunk_size - 1) // chunk_size
        sid = n_chunks - 1 - torch.div(from_recent, chunk_size, rounding_mode="floor")
    sid = torch.where(mask, sid, torch.full_like(sid, -1))
    if max_sessions is not None:
        n_sess = sid.max(dim=1, keepdim=True).values + 1   # [B, 1]; 0 for empty rows
        surplus = (n_sess - max_sessions).clamp_min(0)
        shifted = sid - surplus
        if overflow == "merge":
            sid = torch.where(mask, shifted.clamp_min(0), sid)
        else:
            sid = torch.where(mask & (shifted >= 0), shifted, torch.full_like(sid, -1))
    return sid


# ------------------------------------------------------------------------------------------- step 2: pooling
def pool_sessions(seq: torch.Tensor, sid: torch.Tensor, num_sessions: int,
                  scores: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Session representations ``H : [B, M, d]`` and session mask ``[B, M]`` (True where the session has events).

    ``h_m = Σ_{j: s_j = m} w_j E_j / Σ_{j: s_j = m} w_j`` with ``w_j = 1`` (mean) or ``w_j = exp(scores_j − max)``
    (attention pooling; ``scores : [B, L]``). Events with ``s_j = −1`` are ignored (scattered into a dump slot).
    """
    B, L, d = seq.shape
    M = num_sessions
    idx = torch.where(sid >= 0, sid, torch.full_like(sid, M))          # [B, L], M = dump slot
    valid = (sid >= 0).to(seq.dtype)
    if scores is None:
        w = valid
    else:
        s = scores.masked_fill(sid < 0, float("-inf"))
        s = s - s.max(dim=1, keepdim=True).values.detach().clamp_min(-1e30)
        w = torch.exp(s).nan_to_num(0.0) * valid
    num = seq.new_zeros(B, M + 1, d).scatter_add(1, idx.unsqueeze(-1).expand(B, L, d), seq * w.unsqueeze(-1))
    den = seq.new_zeros(B, M + 1).scatter_add(1, idx, w)
    cnt = seq.new_zeros(B, M + 1).scatter_add(1, idx, valid)
    H = num[:, :M] / den[:, :M].clamp_min(1e-12).unsqueeze(-1)
    return H, cnt[:, :M] > 0


# ------------------------------------------------------------------------------------------- step 3: routing
class ThemeRouter(nn.Module):
    """``a_k(x) = cos(W_r x, P_k) / τ`` (``"cosine"``) or ``⟨W_r x, P_k⟩ / τ`` (``"dot"``) for
    ``x : [..., d]`` → logits ``[..., K]``.

    ``norm=True`` applies a LayerNorm (no affine) to ``x`` first, so routing does not depend on the overall scale of
    the (initially tiny) embeddings — an implementation choice of ours, not from the notes.
    """

    def __init__(self, dim: int, num_themes: int, *, metric: str = "cosine", temperature: float = 1.0,
                 norm: bool = True):
        super().__init__()
        if metric not in METRICS:
            raise ValueError(f"router_metric must be one of {METRICS}, got {metric!r}")
        if temperature <= 0:
            raise ValueError("routing temperature must be > 0")
        self.proj = nn.Linear(dim, dim, bias=False)
        self.prototypes = nn.Parameter(torch.randn(num_themes, dim) / math.sqrt(dim))
        self.norm = nn.LayerNorm(dim, elementwise_affine=False) if norm else nn.Identity()
        self.metric = metric
        self.temperature = temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.proj(self.norm(x))
        p = self.prototypes
        if self.metric == "cosine":
            z, p = F.normalize(z, dim=-1), F.normalize(p, dim=-1)
        return (z @ p.t()) / self.temperature


def topk_onehot(gates: torch.Tensor, k: int) -> torch.Tensor:
    """Multi-hot of the ``k`` largest entries on the last axis (ties: lowest index): same shape as ``gates``."""
    idx = gates.topk(k, dim=-1).indices
    return torch.zeros_like(gates).scatter_(-1, idx, 1.0)


def load_balancing_loss(gates: torch.Tensor, assign: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer load balancing ``K Σ_k f_k P̄_k`` (1 when perfectly balanced, up to ``K`` when collapsed).

    ``gates``: router probabilities ``[..., K]``; ``assign``: hard (multi-)hot assignments ``[..., K]``;
    ``valid``: ``[...]`` bool of the rows to count (e.g. real sessions). ``f_k = Σ assign_k / Σ assign`` (no
    gradient), ``P̄_k = mean gate_k``.
    """
    K = gates.shape[-1]
    g = gates.reshape(-1, K)
    a = assign.detach().reshape(-1, K)
    if valid is not None:
        v = valid.reshape(-1).to(g.dtype).unsqueeze(-1)
        g, a = g * v, a * v
        n = v.sum().clamp_min(1.0)
    else:
        n = torch.tensor(float(g.shape[0]), dtype=g.dtype, device=g.device).clamp_min(1.0)
    f = a.sum(0) / a.sum().clamp_min(1.0)
    p = g.sum(0) / n
    return K * (f * p).sum()


# ------------------------------------------------------------------------------------------- step 4: subsequences
def theme_subsequences(members: torch.Tensor, max_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded gather indices of theme subsequences.

    ``members : [B, K, L]`` bool (event ``j`` of row ``b`` belongs to theme ``k``) → ``index : [B, K, L_k]`` long
    (positions into the original ``L`` axis, in increasing = time order; 0 at padding slots) and
    ``mask : [B, K, L_k]`` bool. ``L_k = max(1, max_{b,k} |members_{b,k}|)``, capped at ``max_len`` (then only the
    most recent ``max_len`` members are kept). Slot of the member of rank ``r`` (0 = oldest) among ``n``:
    ``L_k − n + r`` (dropped when negative).
    """
    B, K, L = members.shape
    m = members.long()
    count = m.sum(-1)                                                   # [B, K]
    Lk = max(1, int(count.max().item()) if count.numel() else 1)
    if max_len is not None:
        Lk = min(Lk, max_len)
    rank = torch.cumsum(m, dim=-1) - 1                                  # [B, K, L]
    slot = Lk - count.unsqueeze(-1) + rank
    keep = members & (slot >= 0)
    slot = torch.where(keep, slot, torch.full_like(slot, Lk))           # Lk = dump slot
    pos = torch.arange(L, device=members.device).expand(B, K, L)
    index = torch.zeros(B, K, Lk + 1, dtype=torch.long, device=members.device).scatter_(-1, slot, pos)[..., :Lk]
    n_kept = count.clamp_max(Lk).unsqueeze(-1)
    mask = torch.arange(Lk, device=members.device) >= (Lk - n_kept)
    index = index * mask
    return index, mask


# ------------------------------------------------------------------------------------------- the module
class MixtureOfSequence(nn.Module):
    """MoS over one behaviour sequence: ``forward(seq [B,L,d], mask [B,L], target [B,d], ts [B,L] | None)`` →
    ``[B, out_dim]`` (``3o`` for ``fusion="concat"``, ``o`` for ``"gate"``). See the module docstring for the math.

    After a training-mode forward, :attr:`aux_loss` holds the weighted auxiliary loss (None in eval mode);
    :meth:`route` returns the theme of every event.
    """

    def __init__(self, dim: int, max_len: int, *, backbone: str = "din", backbone_options: dict | None = None,
                 num_themes: int = 4, segmentation: str = "auto", session_gap_seconds: float = 86_400.0,
                 chunk_size: int = 10, max_sessions: int | None = 32, session_overflow: str = "merge",
                 session_pooling: str = "mean", router_metric: str = "cosine", router_norm: bool = True,
                 temperature: float = 1.0, top_k: int = 1, routing_grad: str = "gate_scale",
                 balance_weight: float = 0.05, diversity_weight: float = 0.0, short_term_window: int = 20,
                 short_term: str = "window", expert_sharing: str = "none", fusion: str = "concat",
                 theme_max_len: int | None = None, gate_hidden: int = 64, packing: str = "packed",
                 pack_growth: float = 2.0, mixture: str = "themes"):
        super().__init__()
        for value, allowed, what in ((segmentation, SEGMENTATIONS, "segmentation"),
                                     (session_overflow, OVERFLOWS, "session_overflow"),
                                     (session_pooling, POOLINGS, "session_pooling"),
                                     (routing_grad, GRADS, "routing_grad"), (expert_sharing, SHARING, "expert_sharing"),
                                     (fusion, FUSIONS, "fusion"), (short_term, SHORT_TERM, "short_term"),
                                     (packing, PACKINGS, "packing"), (mixture, MIXTURES, "mixture")):
            if value not in allowed:
                raise ValueError(f"{what} must be one of {allowed}, got {value!r}")
        if not 1 <= top_k <= num_themes:
            raise ValueError(f"top_k must be in [1, num_themes={num_themes}]")
        if num_themes < 1 or short_term_window < 1:
            raise ValueError("num_themes and short_term_window must be >= 1")
        if pack_growth <= 1:
            raise ValueError(f"pack_growth must be > 1, got {pack_growth}")
        self.packing, self.pack_growth, self.mixture = packing, float(pack_growth), mixture
        self.dim, self.max_len, self.K = dim, max_len, num_themes
        self.segmentation, self.gap, self.chunk_size = segmentation, float(session_gap_seconds), chunk_size
        self.max_sessions, self.overflow = max_sessions, session_overflow
        self.top_k, self.routing_grad = top_k, routing_grad
        self.balance_weight, self.diversity_weight = balance_weight, diversity_weight
        self.window, self.short_term = min(short_term_window, max_len), short_term
        self.fusion, self.theme_max_len, self.sharing = fusion, theme_max_len, expert_sharing
        opts = dict(backbone_options or {})

        def make(length: int):
            return build_sequence_encoder(backbone, dim, length, **opts)

        self.pool_query = nn.Parameter(torch.zeros(dim)) if session_pooling == "attention" else None
        self.router = ThemeRouter(dim, num_themes, metric=router_metric, temperature=temperature, norm=router_norm)
        self.global_expert = make(max_len)
        if expert_sharing == "all":
            self.short_expert = None
            self.theme_experts = None
        else:
            self.short_expert = make(max_len if short_term == "last_session" else self.window)
            n_theme = 1 if expert_sharing == "themes" else num_themes
            self.theme_experts = nn.ModuleList(make(max_len) for _ in range(n_theme))
        o = self.global_expert.out_dim
        self.expert_dim = o
        if fusion == "gate":
            self.gate = MLP(dim + o, [gate_hidden], 1)
            self.out_dim = o
        else:
            self.gate = None
            self.out_dim = 3 * o
        self.aux_loss: torch.Tensor | None = None

    # -------------------------------------------------------------------------------------------- helpers
    def _expert(self, which: str, k: int = 0) -> nn.Module:
        if self.sharing == "all":
            return self.global_expert
        if which == "short":
            return self.short_expert
        return self.theme_experts[0 if self.sharing == "themes" else k]

    def sessions(self, mask: torch.Tensor, ts: torch.Tensor | None) -> torch.Tensor:
        """Session ids ``[B, L]`` (see :func:`segment_sessions`)."""
        return segment_sessions(mask, ts, gap_seconds=self.gap, chunk_size=self.chunk_size,
                                max_sessions=self.max_sessions, overflow=self.overflow, mode=self.segmentation)

    def _route_sessions(self, seq, mask, ts):
        sid = self.sessions(mask, ts)
        M = max(1, int(sid.max().item()) + 1) if sid.numel() else 1
        scores = seq @ self.pool_query if self.pool_query is not None else None
        H, smask = pool_sessions(seq, sid, M, scores)                    # [B, M, d], [B, M]
        logits = self.router(H)                                           # [B, M, K]
        return sid, smask, logits

    @torch.no_grad()
    def route(self, seq: torch.Tensor, mask: torch.Tensor, ts: torch.Tensor | None = None) -> torch.Tensor:
        """Top-1 theme of every event ``[B, L]`` long (−1 at padding and at dropped sessions); no noise."""
        sid, smask, logits = self._route_sessions(seq, mask, ts)
        z = logits.argmax(-1)                                             # [B, M]
        theme = z.gather(1, sid.clamp_min(0))
        return torch.where(sid >= 0, theme, torch.full_like(theme, -1))

    # -------------------------------------------------------------------------------------------- forward
    def _themes(self, seq, mask, target, ts):
        """Sessions → routing → theme experts: ``(sid, gates, hard, smask, present [B, K], u_k [B, K, o])``."""
        B, L, d = seq.shape
        K = self.K
        sid, smask, logits = self._route_sessions(seq, mask, ts)
        gates = torch.softmax(logits, dim=-1)                             # [B, M, K]
        if self.routing_grad == "gumbel" and self.training:
            u = torch.rand_like(logits).clamp(1e-9, 1 - 1e-9)
            soft = torch.softmax(logits - torch.log(-torch.log(u)), dim=-1)
        else:
            soft = gates
        hard = topk_onehot(soft.detach(), self.top_k)                     # [B, M, K]
        if self.routing_grad == "gate_scale":
            weight = hard
        else:
            weight = hard + soft - soft.detach()                          # straight-through: value = hard

        # ---- theme subsequences: event j belongs to theme k iff its session is routed to k
        valid = sid >= 0
        sidx = sid.clamp_min(0)
        w_ev = weight.gather(1, sidx.unsqueeze(-1).expand(B, L, K))       # [B, L, K]
        members = (hard.gather(1, sidx.unsqueeze(-1).expand(B, L, K)) > 0.5) & valid.unsqueeze(-1)
        members = members.transpose(1, 2)                                 # [B, K, L]
        if self.theme_max_len is not None:                                # keep each theme's most recent events
            from_end = members.long().flip(-1).cumsum(-1).flip(-1)       # 1 = most recent member
            members = members & (from_end <= self.theme_max_len)
        present = members.any(-1)                                         # [B, K]
        if self.packing == "packed":
            u_k = self._theme_experts_packed(seq, target, members, w_ev)
        else:
            u_k = self._theme_experts_padded(seq, target, members, w_ev)
        return sid, gates, hard, smask, present, u_k

    def _theme_experts_padded(self, seq, target, members, w_ev):
        """Theme experts on ``[B, K, L_k]`` left-padded subsequences (``L_k``: the longest theme of the batch)."""
        B, L, d = seq.shape
        K = self.K
        index, tmask = theme_subsequences(members)                        # [B, K, Lk]
        Lk = index.shape[-1]
        gather_idx = index.unsqueeze(-1)
        sub = seq.unsqueeze(1).expand(B, K, L, d).gather(2, gather_idx.expand(B, K, Lk, d))
        sub_w = w_ev.transpose(1, 2).gather(2, index)                     # [B, K, Lk]
        sub = sub * (sub_w * tmask).unsqueeze(-1)                         # ST factor (1 in value), 0 at padding
        if self.sharing in ("themes", "all"):
            f = self._expert("theme")
            return f(sub.reshape(B * K, Lk, d), tmask.reshape(B * K, Lk),
                     target.repeat_interleave(K, dim=0)).view(B, K, -1)
        return torch.stack([self._expert("theme", k)(sub[:, k], tmask[:, k], target) for k in range(K)], dim=1)

    def _theme_experts_packed(self, seq, target, members, w_ev):
        """Theme experts on the routed events only: the ``N ≤ B·L`` (row, theme, event) memberships in
        (theme, row, time) order, one segment per (theme, row); see
        :meth:`~rankcraft.nn.sequence.SequenceEncoder.forward_packed`."""
        B = seq.shape[0]
        K = self.K
        kk, bb, jj = torch.nonzero(members.transpose(0, 1), as_tuple=True)   # sorted by (k, b, j)
        vals = seq[bb, jj] * w_ev[bb, jj, kk].unsqueeze(-1)                   # [N, d]; ST factor (1 in value)
        if self.sharing in ("themes", "all"):
            f = self._expert("theme")
            u = f.forward_packed(vals, kk * B + bb, target.repeat(K, 1), growth=self.pack_growth)   # [K·B, o]
            return u.view(K, B, -1).transpose(0, 1)
        ends = torch.cumsum(torch.bincount(kk, minlength=K), 0).tolist()
        outs, start = [], 0
        for k in range(K):
            outs.append(self._expert("theme", k).forward_packed(vals[start:ends[k]], bb[start:ends[k]], target,
                                                                growth=self.pack_growth))
            start = ends[k]
        return torch.stack(outs, dim=1)                                    # [B, K, o]

    def _dense_experts(self, seq, mask, target):
        """The dense-MoE counterpart: every theme expert reads the whole sequence ``[B, K, o]``."""
        B, L, d = seq.shape
        K = self.K
        if self.sharing in ("themes", "all"):
            f = self._expert("theme")
            return f(seq.repeat_interleave(K, 0), mask.repeat_interleave(K, 0),
                     target.repeat_interleave(K, 0)).view(B, K, -1)
        return torch.stack([self._expert("theme", k)(seq, mask, target) for k in range(K)], dim=1)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor,
                ts: torch.Tensor | None = None) -> torch.Tensor:
        B, L, d = seq.shape
        K = self.K
        mask = mask.bool()
        if self.mixture == "dense":
            sid = None
            u_k = self._dense_experts(seq, mask, target)
            present = mask.any(1, keepdim=True).expand(B, K)
        else:
            sid, gates, hard, smask, present, u_k = self._themes(seq, mask, target, ts)

        # ---- global and short-term experts
        u_g = self.global_expert(seq, mask, target)                       # [B, o]
        if self.short_term == "window":
            s_seq, s_mask = seq[:, -self.window:], mask[:, -self.window:]
        else:
            if sid is None:
                sid = self.sessions(mask, ts)
            last = sid.max(dim=1, keepdim=True).values
            s_mask = mask & (sid == last)
            s_seq = seq * s_mask.unsqueeze(-1).to(seq.dtype)
        u_s = self._expert("short")(s_seq, s_mask, target)
        if self.mixture == "themes" and self.routing_grad == "gate_scale":
            gbar = (hard * gates).sum(1) / hard.sum(1).clamp_min(1.0)     # [B, K]
            u_k = u_k * gbar.unsqueeze(-1)
        u_k = u_k * present.unsqueeze(-1).to(u_k.dtype)                   # absent themes contribute nothing

        # ---- fusion
        t_logits = self.router(target).masked_fill(~present, -1e9)       # [B, K]; absent themes excluded
        if self.fusion == "concat":
            pi = torch.softmax(t_logits, dim=-1) * present.to(u_k.dtype)     # rows with no theme → 0
            u_t = (pi.unsqueeze(-1) * u_k).sum(1)
            out = torch.cat([u_g, u_s, u_t], dim=-1)
        else:
            experts = torch.cat([u_g.unsqueeze(1), u_s.unsqueeze(1), u_k], dim=1)      # [B, K+2, o]
            q = target.unsqueeze(1).expand(B, K + 2, d)
            score = self.gate(torch.cat([q, experts], dim=-1)).squeeze(-1)            # [B, K+2]
            log_pi = torch.log_softmax(t_logits, -1).masked_fill(~present, float("-inf"))
            prior = torch.cat([score.new_zeros(B, 2), log_pi], dim=1)
            alpha = torch.softmax(score + prior, dim=-1)
            out = (alpha.unsqueeze(-1) * experts).sum(1)

        # ---- auxiliary loss
        if self.training and (self.balance_weight > 0 or self.diversity_weight > 0):
            aux = seq.new_zeros(())
            if self.balance_weight > 0 and self.mixture == "themes":
                aux = aux + self.balance_weight * load_balancing_loss(gates, hard, smask)
            if self.diversity_weight > 0:
                p = F.normalize(self.router.prototypes, dim=-1)
                eye = torch.eye(K, device=p.device, dtype=p.dtype)
                aux = aux + self.diversity_weight * ((p @ p.t() - eye) ** 2).sum() / (K * K)
            self.aux_loss = aux
        else:
            self.aux_loss = None
        return out
