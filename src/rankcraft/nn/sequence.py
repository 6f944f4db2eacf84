"""Behaviour-sequence encoders: the backbone interface shared by DIN, the transformer encoder and MoS.

Every encoder maps a sequence to one vector, conditioned on the target item::

    encoder(seq: [B, L, d_in], mask: [B, L] bool, target: [B, d_in]) -> [B, out_dim]

``mask`` is True at real events (sequences are left-padded, most recent event last). A row with no events at all
must produce a finite output (zeros for pooling encoders). Encoders are built by name through
:func:`build_sequence_encoder` so wrappers such as MoS can instantiate any backbone of the zoo.

Packed input (:meth:`SequenceEncoder.forward_packed`): many variable-length segments as one flat event list,
``values : [N, d_in]``, ``segment : [N]`` long (non-decreasing; within a segment, events in time order),
``target : [S, d_in]`` → ``[S, out_dim]``; an empty segment gives zeros. Pooling encoders compute on the ``N`` real
events only; the others run their padded ``forward`` on length buckets (each bucket padded to its longest segment,
so padding is bounded by the bucket growth factor instead of the longest segment of the batch).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rankcraft.nn.mlp import MLP


class SequenceEncoder(nn.Module):
    """Base class: subclasses set ``out_dim`` and implement ``forward(seq, mask, target)``."""

    out_dim: int

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # noqa: D102
        raise NotImplementedError

    def forward_packed(self, values: torch.Tensor, segment: torch.Tensor, target: torch.Tensor, *,
                       growth: float = 2.0) -> torch.Tensor:
        """``[S, out_dim]`` for the packed segments (see the module docstring): segments with ``n > 0`` events go
        into buckets of padded length ``min(⌈growth^i⌉ ≥ n, longest)`` and each bucket runs :meth:`forward`
        left-padded, so the output equals the padded computation wherever that does not depend on the pad length
        (true for every encoder here: positions count from the most recent event)."""
        if growth <= 1:
            raise ValueError(f"packing growth factor must be > 1, got {growth}")
        S, N = target.shape[0], values.shape[0]
        counts = torch.bincount(segment, minlength=S)                       # [S]
        out = values.new_zeros(S, self.out_dim)
        if N == 0:
            return out
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.arange(N, device=values.device) - starts[segment]      # 0 = oldest event of its segment
        longest = int(counts.max())
        sizes, x = {longest}, 1.0
        while x < longest:
            sizes.add(math.ceil(x))
            x *= growth
        sizes = sorted(sizes)
        size_t = torch.tensor(sizes, device=values.device)
        bucket = torch.bucketize(counts, size_t)                            # index of the first size ≥ count
        d = values.shape[1]
        for b, Lb in enumerate(sizes):
            rows = torch.nonzero((bucket == b) & (counts > 0)).squeeze(1)   # segments in this bucket
            if rows.numel() == 0:
                continue
            where = torch.full((S,), -1, dtype=torch.long, device=values.device)
            where[rows] = torch.arange(rows.numel(), device=values.device)
            r = where[segment]
            ev = torch.nonzero(r >= 0).squeeze(1)
            slot = Lb - counts[segment[ev]] + pos[ev]                          # left padding
            flat = r[ev] * Lb + slot
            padded = values.new_zeros(rows.numel() * Lb, d).index_copy(0, flat, values[ev]).view(-1, Lb, d)
            mask = torch.zeros(rows.numel() * Lb, dtype=torch.bool, device=values.device)
            mask[flat] = True
            out = out.index_copy(0, rows, self.forward(padded, mask.view(-1, Lb), target[rows]))
        return out


class MeanPooling(SequenceEncoder):
    """``Σ_l m_l e_l / max(Σ_l m_l, 1) : [B, d]`` (ignores the target)."""

    def __init__(self, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, seq, mask, target):
        m = mask.unsqueeze(-1).to(seq.dtype)
        return (seq * m).sum(1) / m.sum(1).clamp_min(1.0)

    def forward_packed(self, values, segment, target, *, growth: float = 2.0):
        """Exact packing: ``scatter_add`` of the ``N`` events, divided by each segment's count."""
        S, d = target.shape[0], values.shape[1]
        total = values.new_zeros(S, d).index_add(0, segment, values)
        n = torch.bincount(segment, minlength=S).to(values.dtype).clamp_min(1.0)
        return total / n.unsqueeze(-1)


class TargetAttention(SequenceEncoder):
    """DIN activation unit (Zhou et al. 2018).

    ``a_l = MLP([e_l, q, e_l − q, e_l ⊙ q]) : [B, L]`` (no softmax, as in DIN, unless ``softmax=True``; padded
    positions get weight 0), output ``Σ_l a_l e_l : [B, d]``.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 32), *, act: str = "relu", softmax: bool = False,
                 dropout: float = 0.0):
        super().__init__()
        self.att = MLP(4 * dim, hidden, 1, act=act, dropout=dropout)
        self.softmax = softmax
        self.out_dim = dim

    def forward(self, seq, mask, target):
        q = target.unsqueeze(1).expand_as(seq)
        scores = self.att(torch.cat([seq, q, seq - q, seq * q], dim=-1)).squeeze(-1)  # [B, L]
        if self.softmax:
            scores = scores.masked_fill(~mask, float("-inf"))
            w = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        else:
            w = scores * mask.to(scores.dtype)
        return torch.bmm(w.unsqueeze(1), seq).squeeze(1)

    def forward_packed(self, values, segment, target, *, growth: float = 2.0):
        """Exact packing: the activation unit runs on the ``N`` real events (``q = target[segment]``) and the
        weighted sum is a ``scatter_add`` per segment (the softmax variant normalises per segment)."""
        S, d = target.shape[0], values.shape[1]
        q = target.index_select(0, segment)
        scores = self.att(torch.cat([values, q, values - q, values * q], dim=-1)).squeeze(-1)   # [N]
        if self.softmax:
            top = scores.new_full((S,), float("-inf")).scatter_reduce(0, segment, scores.detach(), "amax")
            e = torch.exp(scores - top.index_select(0, segment))
            w = e / e.new_zeros(S).index_add(0, segment, e).index_select(0, segment)
        else:
            w = scores
        return values.new_zeros(S, d).index_add(0, segment, values * w.unsqueeze(-1))


class TransformerSequenceEncoder(SequenceEncoder):
    """BST / TransAct-style encoder.

    Tokens ``[e_1 … e_L, q] + P`` (learned positions, the target appended as the last token) pass through
    ``num_layers`` pre-norm transformer layers (``num_heads`` heads, FFN ``ffn_mult·d``) with key padding masked;
    the output concatenates the target token's output and the masked mean of the sequence outputs:
    ``[B, 2·d]``.
    """

    def __init__(self, dim: int, max_len: int, *, num_layers: int = 1, num_heads: int = 2, ffn_mult: int = 2,
                 dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.pos = nn.Parameter(torch.zeros(max_len + 1, dim))
        nn.init.normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, num_heads, ffn_mult * dim, dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.out_dim = 2 * dim

    def forward(self, seq, mask, target):
        B, L, _ = seq.shape
        tokens = torch.cat([seq, target.unsqueeze(1)], dim=1) + self.pos[-(L + 1):]
        keep = torch.cat([mask, torch.ones(B, 1, dtype=torch.bool, device=mask.device)], dim=1)
        h = self.norm(self.encoder(tokens, src_key_padding_mask=~keep))
        m = mask.unsqueeze(-1).to(h.dtype)
        pooled = (h[:, :L] * m).sum(1) / m.sum(1).clamp_min(1.0)
        return torch.cat([h[:, -1], pooled], dim=-1)


def build_sequence_encoder(name: str, dim: int, max_len: int, **options) -> SequenceEncoder:
    """A backbone by name: ``mean``, ``din`` (target attention) or ``transformer``."""
    name = name.lower()
    if name == "mean":
        return MeanPooling(dim)
    if name == "din":
        return TargetAttention(dim, **options)
    if name == "transformer":
        return TransformerSequenceEncoder(dim, max_len, **options)
    raise ValueError(f"unknown sequence encoder '{name}'; choose mean, din or transformer")


def sinusoid(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of a real tensor ``x: [...]`` → ``[..., dim]`` (for time gaps, log-scaled by callers)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=x.device, dtype=torch.float32) / max(half, 1))
    ang = x.unsqueeze(-1).float() * freqs
    return torch.cat([torch.sin(ang), torch.cos(ang)], dim=-1)


class SequenceInputs(nn.Module):
    """Embeds a batch for behaviour-sequence models.

    Chooses the *main* sequence (``sequence``, default: the first sequence feature with timestamps, else the first
    sequence feature), its *target* (the categorical feature that shares the sequence's embedding table, e.g.
    ``hist_items`` → ``item``) and *side* sequences (the other sequence features of the same ``max_len``, e.g. the
    genres of the history items, each paired with the categorical feature sharing its table, e.g. ``genre1``).

    ``forward(batch)`` returns a dict:

    * ``fields``: ``[B, F, d]`` — every other feature as a field (the non-main sequences are not pooled here);
    * ``seq``: ``[B, L, d]`` — ``E[id_l] + Σ_side E_side[s_l]`` per event;
    * ``mask``: ``[B, L]`` bool — real events;
    * ``target``: ``[B, d]`` — ``E[item] + Σ_side E_side[target side]`` (the side term is 0 if no categorical feature
      shares that side sequence's table);
    * ``ts``: ``[B, L]`` float timestamps of the events, or None.
    """

    def __init__(self, features, dim: int, *, sequence: str | None = None, fused: bool = True,
                 sparse: bool = False):
        super().__init__()
        from rankcraft.errors import ConfigError
        from rankcraft.nn.embedding import FeatureEmbedding

        seqs = features.sequences
        if not seqs:
            raise ConfigError("this model needs a sequence feature (type: sequence) in the dataset schema")
        if sequence is None:
            timed = [f for f in seqs if f.has_timestamps]
            main = (timed or seqs)[0]
        else:
            try:
                main = features[sequence]
            except KeyError:
                raise ConfigError(f"sequence feature '{sequence}' not in the dataset; sequences: "
                                  f"{[f.name for f in seqs]}") from None
            if main.kind != "sequence":
                raise ConfigError(f"feature '{sequence}' is not a sequence feature")
        self.main = main.name
        self.max_len = main.max_len
        self.has_ts = main.has_timestamps
        cats = {f.embedding_table: f.name for f in features.categorical}
        self.target = cats.get(main.embedding_table)
        if self.target is None:
            raise ConfigError(f"sequence '{main.name}' needs a categorical target feature sharing its vocabulary "
                              f"(share_vocab_with: <target feature>); none uses table '{main.embedding_table}'")
        self.sides = [f.name for f in seqs if f.name != main.name and f.max_len == main.max_len]
        self.side_targets = [cats.get(features[s].embedding_table) for s in self.sides]
        self.embedding = FeatureEmbedding(features, dim, fused=fused, sparse=sparse,
                                          pool_exclude={self.main, *self.sides})
        self.cat_index = {n: i for i, n in enumerate(self.embedding.cat_names)}
        self.dim = dim

    @property
    def num_fields(self) -> int:
        return self.embedding.num_fields

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
        fields = self.embedding(batch)
        seq, mask = self.embedding.sequence(batch, self.main)
        target = fields[:, self.cat_index[self.target]]
        for side, side_target in zip(self.sides, self.side_targets):
            s_emb, _ = self.embedding.sequence(batch, side)
            seq = seq + s_emb * mask.unsqueeze(-1).to(s_emb.dtype)
            if side_target is not None:
                target = target + fields[:, self.cat_index[side_target]]
        ts = batch.get(self.main + "__ts") if self.has_ts else None
        return {"fields": fields, "seq": seq, "mask": mask, "target": target, "ts": ts}
