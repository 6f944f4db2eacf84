"""Weight-sharing supernet over a :class:`~rankcraft.search.space.SearchSpace` (NASRec-style one-shot search).

Every operator of every block is held once at its **maximum size**; a subnet (any architecture of the space)
uses slices of those weights:

* **Elastic widths** (dense ``dim``, sparse ``fields``, cross depth) take the leading rows / layers.
* **Elastic inputs**: a node's input Linear holds one column block per possible source ``j < i`` ("slot"), each
  as wide as that source can ever be; a subnet concatenating sources ``j1, j2, …`` of actual widths ``w1, w2, …``
  uses the columns ``off(j1)+[0,w1) ∪ off(j2)+[0,w2) ∪ …`` in that order, which is exactly the weight of a
  standalone ``Linear(w1+w2+…, dim)`` on the concatenation. Every stream output is prefix-aligned (a narrower
  output is the leading part of the widest), so slots line up across subnets.
* DLRM pairs ``(a, b)`` of the concatenated fields map to pairs ``(P_a, P_b)`` of the maximal field layout.

Because the subnet computes with exactly the weights a standalone :class:`~rankcraft.models.arch.network.ArchNet`
would hold, :meth:`Supernet.export` copies them across and the two give the same outputs (tested).

Path sampling (:meth:`Supernet.train_steps`): the first ``warmup`` fraction of steps samples the largest path
(every node at maximum width/depth/inputs, NASRec's full-path warm-up adapted to single-path blocks) with a
probability decaying linearly from 1 to 0; then uniform sampling from the space.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.arch.format import Arch
from rankcraft.models.arch.network import ArchNet, raw_embedding_features
from rankcraft.nn import DotInteraction, FeatureEmbedding, FieldSelfAttention
from rankcraft.search.space import SearchSpace

#: activations the functional supernet (and the DNAS mixture built on it) supports
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


def activation_fn(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"the supernet supports activations {', '.join(ACTIVATIONS)}, not '{name}'")
    return ACTIVATIONS[name]


def _param(*shape: int, fan_in: int | None = None, zeros: bool = False) -> nn.Parameter:
    """A parameter initialised like ``nn.Linear`` (uniform ±1/√fan_in) or zeros."""
    t = torch.empty(*shape)
    if zeros:
        nn.init.zeros_(t)
    else:
        bound = 1.0 / math.sqrt(max(fan_in or shape[-1], 1))
        nn.init.uniform_(t, -bound, bound)
    return nn.Parameter(t)


class _Norm(nn.Module):
    """Elastic LayerNorm / BatchNorm over the leading ``w`` of ``width`` channels."""

    def __init__(self, width: int, kind: str):
        super().__init__()
        self.kind = kind
        #: BatchNorm only: normalise with the current batch's statistics even in eval mode (no running-stat
        #: update). Running statistics are shared by every subnet and so describe none of them; scoring a subnet
        #: with its own batch statistics is the usual fix (set through :meth:`Supernet.use_batch_stats`).
        self.batch_stats = False
        if kind in ("layer", "batch"):
            self.weight = nn.Parameter(torch.ones(width))
            self.bias = nn.Parameter(torch.zeros(width))
        if kind == "batch":
            self.register_buffer("running_mean", torch.zeros(width))
            self.register_buffer("running_var", torch.ones(width))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        w = h.shape[-1]
        if self.kind == "layer":
            return F.layer_norm(h, (w,), self.weight[:w], self.bias[:w])
        if self.kind == "batch":
            if self.batch_stats and not self.training:
                return F.batch_norm(h, None, None, self.weight[:w], self.bias[:w], True, 0.0, 1e-5)
            return F.batch_norm(h, self.running_mean[:w], self.running_var[:w], self.weight[:w], self.bias[:w],
                                self.training, 0.1, 1e-5)
        return h

    def export(self, prefix: str, w: int, out: dict) -> None:
        if self.kind in ("layer", "batch"):
            out[prefix + "weight"] = self.weight[:w]
            out[prefix + "bias"] = self.bias[:w]
        if self.kind == "batch":
            out[prefix + "running_mean"] = self.running_mean[:w]
            out[prefix + "running_var"] = self.running_var[:w]
            out[prefix + "num_batches_tracked"] = torch.tensor(0)


class _SuperBlock(nn.Module):
    """All operators of block ``i`` at maximum size. ``dense_slots``: (stream, source, max width) per possible
    dense input column block; ``field_slots``: (source, max fields) per possible sparse input."""

    def __init__(self, space: SearchSpace, dense_slots: list, field_slots: list, d: int, f0: int):
        super().__init__()
        c = space.config
        D, Fm = c.max_dim, c.max_fields
        self.d = d
        self.dense_off = {}
        off = 0
        for stream, j, w in dense_slots:
            self.dense_off[(stream, j)] = off
            off += w
        m_in = off
        self.field_off = {}
        off = 1  # slot 0 is the dot op's dense field
        for j, nf in field_slots:
            self.field_off[j] = off
            off += nf
        n_max = off
        self.ops = c.dense_ops
        self.dense = nn.ModuleDict()
        for op in c.dense_ops:
            m = nn.Module()
            if op in ("mlp", "sum"):
                width = m_in if op == "mlp" else max(w for _, _, w in dense_slots)
                m.weight, m.bias = _param(D, width), _param(D, fan_in=width)
            elif op == "gating":
                m.weight, m.bias = _param(D, m_in), _param(D, fan_in=m_in)
                m.gate_weight, m.gate_bias = _param(D, m_in), _param(D, fan_in=m_in)
            elif op == "cross":
                D0 = f0 * d
                m.weight = _param(c.cross_layers[-1], D0, D0)
                m.bias = _param(c.cross_layers[-1], D0, zeros=True)
            elif op == "dot":
                m.proj_weight, m.proj_bias = _param(d, m_in), _param(d, fan_in=m_in)
                pairs = n_max * (n_max - 1) // 2
                m.weight, m.bias = _param(D, pairs), _param(D, fan_in=pairs)
                self.n_max = n_max
            elif op == "fm":
                m.weight, m.bias = _param(D, d), _param(D, fan_in=d)
            if op != "cross":
                m.norm = _Norm(D, c.norm)
            self.dense[op] = m
        g_in = sum(nf for _, nf in field_slots)
        self.sparse = nn.ModuleDict()
        for op in c.sparse_ops:
            m = nn.Module()
            m.weight, m.bias = _param(Fm, g_in), _param(Fm, fan_in=g_in)
            m.norm = nn.LayerNorm(d) if c.norm != "none" else nn.Identity()
            if op == "attention":
                m.attention = FieldSelfAttention(d, attention_dim=d, num_heads=1, num_layers=1, use_residual=True,
                                                 layer_norm=True, use_scale=True)
            self.sparse[op] = m
        self.act_name = c.activation

    # -- column / row selections ----------------------------------------------------------------------------------
    def dense_cols(self, srcs: list[tuple[str, int, int]], device) -> torch.Tensor:
        """Columns of the input Linear for sources ``(stream, j, actual width)`` in concatenation order."""
        idx = [torch.arange(w, device=device) + self.dense_off[(s, j)] for s, j, w in srcs if w > 0]
        return torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long, device=device)

    def field_pos(self, srcs: list[tuple[int, int]]) -> list[int]:
        return [self.field_off[j] + k for j, nf in srcs for k in range(nf)]

    def pair_cols(self, pos: list[int], device) -> torch.Tensor:
        """Columns of the dot op's pair Linear for fields at max-layout positions ``pos`` (compact order)."""
        n, nm = len(pos), self.n_max
        cols = []
        for a, b in itertools.combinations(range(n), 2):
            p, q = sorted((pos[a], pos[b]))
            cols.append(p * nm - p * (p + 1) // 2 + (q - p - 1))
        return torch.tensor(cols, dtype=torch.long, device=device)


class Supernet(nn.Module):
    """One-shot supernet: ``forward(batch, arch) -> logits [B]`` for any architecture of ``space``."""

    def __init__(self, features: FeatureSet, space: SearchSpace, embedding_dim: int = 10, *, fused: bool = True):
        super().__init__()
        c = space.config
        self.space, self.features, self.d = space, features, embedding_dim
        self.fused = fused
        d = embedding_dim
        self.n_num = len(features.numeric)
        raw = raw_embedding_features(features, True)
        self.embedding = FeatureEmbedding(raw, d, fused=fused)
        self.f0 = f0 = self.embedding.num_fields
        dense_max = max(c.max_dim, f0 * d if "cross" in c.dense_ops else 0)
        self.dense_max = {0: self.n_num, **{i: dense_max for i in range(1, c.blocks + 1)}}
        self.fields_max = {0: f0, **{i: c.max_fields for i in range(1, c.blocks + 1)}}
        self.blocks = nn.ModuleList()
        for i in range(1, c.blocks + 1):
            slots = [("dense", j, self.dense_max[j]) for j in range(i)] + \
                    [("flat", j, self.fields_max[j] * d) for j in range(i)]
            fslots = [(j, self.fields_max[j]) for j in range(i)]
            self.blocks.append(_SuperBlock(space, slots, fslots, d, f0))
        n = c.blocks
        self.head_off, off = {}, 0
        for j in range(n + 1):
            self.head_off[("dense", j)] = off
            off += self.dense_max[j]
        for j in range(n + 1):
            self.head_off[("flat", j)] = off
            off += self.fields_max[j] * d
        self.head_weight, self.head_bias = _param(1, off), _param(1, fan_in=off)

    def use_batch_stats(self, flag: bool = True) -> None:
        """Score subnets with per-batch BatchNorm statistics in eval mode (see :class:`_Norm`)."""
        for m in self.modules():
            if isinstance(m, _Norm):
                m.batch_stats = flag

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], arch: Arch) -> torch.Tensor:
        act = activation_fn(self.space.config.activation)
        drop = self.space.config.dropout
        e0 = self.embedding(batch)
        dense: dict[int, torch.Tensor] = {0: batch["num"] if self.n_num else e0.new_zeros(e0.shape[0], 0)}
        sparse: dict[int, torch.Tensor] = {0: e0}
        live = arch.live()
        dev = e0.device
        for i, (blk, sb) in enumerate(zip(arch.blocks, self.blocks), start=1):
            if blk.sparse is not None and (i, "sparse") in live:
                n = blk.sparse
                m = sb.sparse[n.op]
                e = torch.cat([sparse[j] for j in n.inputs], dim=1)
                pos = sb.field_pos([(j, sparse[j].shape[1]) for j in n.inputs])
                w = m.weight[: n.fields].index_select(1, torch.tensor(pos, device=dev) - 1)
                h = F.linear(e.transpose(1, 2), w, m.bias[: n.fields]).transpose(1, 2)
                h = act(m.norm(h))
                if n.op == "attention":
                    h = m.attention(h)
                sparse[i] = h
            if blk.dense is not None and (i, "dense") in live:
                dense[i] = self._dense(blk.dense, sb, dense, sparse, act, drop, dev)
        h = arch.head
        return self.head([("dense", j, dense[j]) for j in h.inputs]
                         + [("flat", j, sparse[j].flatten(1)) for j in h.flat_inputs])

    def head(self, srcs: list[tuple[str, int, torch.Tensor]]) -> torch.Tensor:
        """``logits [B]`` of the head Linear over sources ``(stream, j, x [B, w])`` in concatenation order."""
        srcs = [(s, j, x) for s, j, x in srcs if x.shape[1] > 0]
        dev = srcs[0][2].device
        cols = torch.cat([torch.arange(x.shape[1], device=dev) + self.head_off[(s, j)] for s, j, x in srcs])
        x = torch.cat([x for _, _, x in srcs], dim=1)
        return F.linear(x, self.head_weight.index_select(1, cols), self.head_bias).squeeze(-1)

    def _dense(self, n, sb: _SuperBlock, dense, sparse, act, drop, dev, post: bool = True) -> torch.Tensor:
        """A dense node's output; with ``post=False`` the pre-norm projection (the DNAS mixture applies the
        per-width post itself). Cross ignores ``post``."""
        m = sb.dense[n.op]
        srcs = [("dense", j, dense[j]) for j in n.inputs] + [("flat", j, sparse[j].flatten(1)) for j in n.flat_inputs]
        srcs = [(s, j, x) for s, j, x in srcs if x.shape[1] > 0]
        xs = [x for _, _, x in srcs]
        if n.op == "cross":
            x0 = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
            x = x0
            for layer in range(n.layers):
                x = x0 * F.linear(x, m.weight[layer], m.bias[layer]) + x
            return x
        if n.op == "sum":
            width = max(x.shape[1] for x in xs)
            h = sum(F.pad(x, (0, width - x.shape[1])) for x in xs)
            h = F.linear(h, m.weight[: n.dim, :width], m.bias[: n.dim])
        elif n.op == "fm":
            e = torch.cat([sparse[j] for j in n.sparse_inputs], dim=1)
            ones = e.new_ones(1, e.shape[1])
            sums = torch.matmul(ones, torch.cat([e, e * e], dim=-1)).squeeze(1)
            s, q = sums[:, : self.d], sums[:, self.d:]
            h = F.linear(0.5 * (s * s - q), m.weight[: n.dim], m.bias[: n.dim])
        elif n.op == "dot":
            e = torch.cat([sparse[j] for j in n.sparse_inputs], dim=1)
            pos = sb.field_pos([(j, sparse[j].shape[1]) for j in n.sparse_inputs])
            z = None
            if xs:
                cols = sb.dense_cols([(s, j, x.shape[1]) for s, j, x in srcs], dev)
                x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
                z = x if x.shape[1] == self.d else F.linear(x, m.proj_weight.index_select(1, cols), m.proj_bias)
                pos = [0] + pos
            pairs = DotInteraction(e.shape[1], dense=z is not None).to(dev)(e, z)
            w = m.weight[: n.dim].index_select(1, sb.pair_cols(pos, dev))
            h = F.linear(pairs, w, m.bias[: n.dim])
        else:  # mlp, gating
            cols = sb.dense_cols([(s, j, x.shape[1]) for s, j, x in srcs], dev)
            x = xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
            h = F.linear(x, m.weight[: n.dim].index_select(1, cols), m.bias[: n.dim])
            if n.op == "gating":
                g = F.linear(x, m.gate_weight[: n.dim].index_select(1, cols), m.gate_bias[: n.dim])
                h = h * torch.sigmoid(g)
        if post:
            h = act(m.norm(h))
            if drop > 0:
                h = F.dropout(h, drop, self.training)
        return h

    # -- export ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def export(self, arch: Arch) -> ArchNet:
        """A standalone :class:`ArchNet` for ``arch`` holding this supernet's (sliced) weights."""
        self.space.check(arch)
        net = ArchNet(self.features, arch, self.d, fused=self.fused)
        state = {}
        for k, v in self.embedding.state_dict().items():
            state[f"embedding.{k}"] = v
        d = self.d
        widths = {0: self.n_num}
        fields = {0: self.f0}
        for i, (blk, sb) in enumerate(zip(arch.blocks, self.blocks), start=1):
            key = str(i)
            if key in net.sparse_blocks:
                n, m = blk.sparse, sb.sparse[blk.sparse.op]
                pos = torch.tensor(sb.field_pos([(j, fields[j]) for j in n.inputs])) - 1
                p = f"sparse_blocks.{key}."
                state[p + "efc.linear.weight"] = m.weight[: n.fields].index_select(1, pos)
                state[p + "efc.linear.bias"] = m.bias[: n.fields]
                for k, v in m.norm.state_dict().items():
                    state[p + "norm." + k] = v
                if n.op == "attention":
                    for k, v in m.attention.state_dict().items():
                        state[p + "attention." + k] = v
                fields[i] = n.fields
            if key in net.dense_blocks:
                n, m = blk.dense, sb.dense[blk.dense.op]
                p = f"dense_blocks.{key}."
                srcs = [("dense", j, widths[j]) for j in n.inputs] + [("flat", j, fields[j] * d)
                                                                       for j in n.flat_inputs]
                cols = sb.dense_cols(srcs, "cpu")
                out = net.dense_blocks[key].out_dim
                if n.op == "cross":
                    for layer in range(n.layers):
                        state[p + f"cross.layers.{layer}.weight"] = m.weight[layer]
                        state[p + f"cross.layers.{layer}.bias"] = m.bias[layer]
                else:
                    if n.op == "mlp":
                        state[p + "linear.weight"] = m.weight[: n.dim].index_select(1, cols)
                        state[p + "linear.bias"] = m.bias[: n.dim]
                    elif n.op == "gating":
                        state[p + "value.weight"] = m.weight[: n.dim].index_select(1, cols)
                        state[p + "value.bias"] = m.bias[: n.dim]
                        state[p + "gate.mlp.net.0.weight"] = m.gate_weight[: n.dim].index_select(1, cols)
                        state[p + "gate.mlp.net.0.bias"] = m.gate_bias[: n.dim]
                    elif n.op == "sum":
                        width = max(w for _, _, w in srcs if w > 0)
                        state[p + "linear.weight"] = m.weight[: n.dim, :width]
                        state[p + "linear.bias"] = m.bias[: n.dim]
                    elif n.op == "fm":
                        state[p + "linear.weight"] = m.weight[: n.dim]
                        state[p + "linear.bias"] = m.bias[: n.dim]
                    else:  # dot
                        pos = sb.field_pos([(j, fields[j]) for j in n.sparse_inputs])
                        if sum(w for _, _, w in srcs):
                            pos = [0] + pos
                            if net.dense_blocks[key].proj is not None:
                                state[p + "proj.weight"] = m.proj_weight.index_select(1, cols)
                                state[p + "proj.bias"] = m.proj_bias
                        state[p + "linear.weight"] = m.weight[: n.dim].index_select(1, sb.pair_cols(pos, "cpu"))
                        state[p + "linear.bias"] = m.bias[: n.dim]
                    m.norm.export(p + "post.norm.", out, state)
                widths[i] = out
        h = arch.head
        srcs = [("dense", j, widths[j]) for j in h.inputs] + [("flat", j, fields[j] * d) for j in h.flat_inputs]
        cols = torch.cat([torch.arange(w) + self.head_off[(s, j)] for s, j, w in srcs if w > 0])
        state["head.weight"] = self.head_weight.index_select(1, cols)
        state["head.bias"] = self.head_bias
        missing, unexpected = net.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise RuntimeError(f"supernet export mismatch: missing {missing}, unexpected {unexpected}")
        return net
