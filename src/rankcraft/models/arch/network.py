"""Materialise an :class:`~rankcraft.models.arch.format.Arch` into a standalone ``nn.Module`` built from the operator
library (``rankcraft.nn``). The module returns logits ``[B]`` like every zoo model; it is registered in the zoo as
model ``arch`` (``params: {arch: {...}}``), so the trainer, checkpoints, ``rankcraft train --arch`` and
``load_run`` treat it like any other model.

Only the outputs the head depends on are built (``Arch.live``). Shapes per node are resolved at construction from
the :class:`~rankcraft.data.features.FeatureSet`: raw dense width ``n_num`` and raw field count ``F0``.
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import Arch, DenseNode, SparseNode
from rankcraft.nn import (
    EFC,
    FM,
    BilinearFusion,
    CrossNetV2,
    DotInteraction,
    FeatureEmbedding,
    FieldSelfAttention,
    LinearPart,
)
from rankcraft.nn.gating import SigmoidGating
from rankcraft.nn.mlp import activation


def raw_embedding_features(features: FeatureSet, numeric_fields: bool) -> FeatureSet:
    """Features that become fields of the raw sparse stream."""
    if numeric_fields:
        return features
    return FeatureSet(tuple(f for f in features.features if f.kind != "numeric"), labels=features.labels,
                      has_group=features.has_group, extra=features.extra)


class Post(nn.Module):
    """``dropout(act(norm(h)))`` for ``h : [B, w]``; norm is LayerNorm(w), BatchNorm1d(w) or none."""

    def __init__(self, width: int, norm: str, act: str, dropout: float):
        super().__init__()
        self.norm = (nn.LayerNorm(width) if norm == "layer" else nn.BatchNorm1d(width) if norm == "batch"
                     else nn.Identity())
        self.act = activation(act)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.drop(self.act(self.norm(h)))


class DenseBlock(nn.Module):
    """One dense node (see :mod:`rankcraft.models.arch.format` for each op's math). ``forward(xs, es) -> [B, out_dim]``
    where ``xs`` are the dense (and flattened sparse) inputs ``[B, w_j]`` in order, ``es`` the sparse inputs
    ``[B, F_j, d]`` and ``raw`` the raw field embeddings ``[B, F0, d]`` (read by ``fsgate`` for its context).
    ``raw_fields`` names the raw fields in order (to resolve an ``fsgate`` context)."""

    def __init__(self, node: DenseNode, in_widths: list[int], in_fields: int, d: int, arch: Arch, where: str,
                 raw_fields: list[str] | None = None):
        super().__init__()
        self.op = node.op
        w_in = sum(in_widths)
        norm = node.norm or arch.norm
        drop = arch.dropout if node.dropout is None else node.dropout
        if node.op not in ("dot", "fm") and w_in == 0:
            raise ConfigError(f"{where}: its inputs are empty for this data (the raw dense stream has no numeric "
                              "features); read 'flat_inputs' [0] instead")
        if node.op in ("dot", "fm") and in_fields == 0:
            raise ConfigError(f"{where}: its sparse inputs have no fields for this data")
        self.post = None
        if node.op in ("mlp", "linear"):
            self.linear = nn.Linear(w_in, node.dim)
            self.out_dim = node.dim
        elif node.op == "cross":
            self.cross = CrossNetV2(w_in, node.layers)
            self.out_dim = w_in
        elif node.op == "gating":
            self.value = nn.Linear(w_in, node.dim)
            self.gate = SigmoidGating(w_in, node.dim)
            self.out_dim = node.dim
        elif node.op == "fsgate":
            raw_fields = raw_fields or []
            unknown = [c for c in node.context if c not in raw_fields]
            if unknown:
                raise ConfigError(f"{where}: context names unknown feature(s) {unknown}; raw fields: "
                                  f"{', '.join(raw_fields) or '(none)'}")
            idx = [raw_fields.index(c) for c in node.context]
            self.register_buffer("ctx_index", torch.tensor(idx, dtype=torch.long), persistent=False)
            # no context: FinalMLP's learned context vector (zeros at init, as in FeatureSelection)
            self.ctx = nn.Parameter(torch.zeros(1, d)) if not idx else None
            self.gate = SigmoidGating(len(idx) * d if idx else d, w_in, hidden=[node.dim] if node.dim else (),
                                      act=arch.activation, scale=2.0)
            self.out_dim = w_in
        elif node.op == "bilinear":
            if min(in_widths) == 0:
                raise ConfigError(f"{where}: an input of 'bilinear' is empty for this data")
            try:
                self.fusion = BilinearFusion(in_widths[0], in_widths[1], node.heads)
            except ValueError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            self.out_dim = 1
        elif node.op == "sum":
            self.pad_to = max(in_widths)
            self.linear = nn.Linear(self.pad_to, node.dim)
            self.out_dim = node.dim
        elif node.op == "dot":
            self.has_dense = w_in > 0
            self.proj = nn.Linear(w_in, d) if self.has_dense and w_in != d else None
            self.dot = DotInteraction(in_fields, dense=self.has_dense)
            self.linear = nn.Linear(self.dot.out_dim, node.dim) if node.dim else None
            self.out_dim = node.dim or self.dot.out_dim
        else:  # fm
            self.fm = FM(in_fields, reduce_sum=node.dim is None)
            self.linear = nn.Linear(d, node.dim) if node.dim else None
            self.out_dim = node.dim or 1
        if node.op in ("mlp", "gating", "sum") or (node.op in ("dot", "fm") and node.dim):
            self.post = Post(self.out_dim, norm, arch.activation, drop)

    def forward(self, xs: list[torch.Tensor], es: list[torch.Tensor],
                raw: torch.Tensor | None = None) -> torch.Tensor:
        op = self.op
        if op == "bilinear":
            return self.fusion(xs[0], xs[1])
        if op == "fsgate":
            x = torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]
            ctx = self.ctx if self.ctx is not None else raw.index_select(1, self.ctx_index).flatten(1)
            return self.gate(x, ctx)
        if op == "sum":
            h = sum(nn.functional.pad(x, (0, self.pad_to - x.shape[1])) for x in xs)
            h = self.linear(h)
        elif op == "fm":
            e = torch.cat(es, dim=1) if len(es) > 1 else es[0]
            h = self.fm(e)
            if self.linear is not None:
                h = self.linear(h)
        else:
            x = (torch.cat(xs, dim=1) if len(xs) > 1 else xs[0]) if xs else None
            if op in ("mlp", "linear"):
                h = self.linear(x)
            elif op == "cross":
                h = self.cross(x)
            elif op == "gating":
                h = self.gate(self.value(x), x)
            else:  # dot
                e = torch.cat(es, dim=1) if len(es) > 1 else es[0]
                z = None
                if self.has_dense:
                    z = self.proj(x) if self.proj is not None else x
                h = self.dot(e, z)
                if self.linear is not None:
                    h = self.linear(h)
        return self.post(h) if self.post is not None else h


class SparseBlock(nn.Module):
    """One sparse node: ``[B, F_in, d] -> [B, fields, d]`` (EFC, optionally followed by field self-attention)."""

    def __init__(self, node: SparseNode, in_fields: int, d: int, arch: Arch, where: str):
        super().__init__()
        if in_fields == 0:
            raise ConfigError(f"{where}: its sparse inputs have no fields for this data")
        self.efc = EFC(in_fields, node.fields)
        self.attention = (FieldSelfAttention(d, attention_dim=d, num_heads=1, num_layers=1, use_residual=True,
                                             layer_norm=True, use_scale=True) if node.op == "attention" else None)
        self.norm = nn.LayerNorm(d) if arch.norm != "none" else nn.Identity()
        self.act = activation(arch.activation)
        self.out_fields = node.fields

    def forward(self, es: list[torch.Tensor]) -> torch.Tensor:
        e = torch.cat(es, dim=1) if len(es) > 1 else es[0]
        h = self.act(self.norm(self.efc(e)))
        return self.attention(h) if self.attention is not None else h


class ArchNet(nn.Module):
    """A standalone model for one architecture. ``forward(batch) -> logits [B]``."""

    def __init__(self, features: FeatureSet, arch: Arch, embedding_dim: int = 10, *, fused: bool = True,
                 sparse: bool = False):
        super().__init__()
        self.arch = arch
        self.d = d = embedding_dim
        self.n_num = len(features.numeric)
        raw = raw_embedding_features(features, arch.numeric_fields)
        self.embedding = FeatureEmbedding(raw, d, fused=fused, sparse=sparse) if raw.features else None
        f0 = self.embedding.num_fields if self.embedding is not None else 0
        e = self.embedding
        raw_names = list(e.cat_names + e.num_names + e.bag_names) if e is not None else []
        live = arch.live()
        self.live = live
        # widths of every built output: dense [B, w], sparse fields F (flattened width F·d)
        dense_w: dict[int, int] = {0: self.n_num}
        fields: dict[int, int] = {0: f0}
        self.dense_blocks = nn.ModuleDict()
        self.sparse_blocks = nn.ModuleDict()
        for i, blk in enumerate(arch.blocks, start=1):
            if blk.sparse is not None and (i, "sparse") in live:
                n = blk.sparse
                self.sparse_blocks[str(i)] = SparseBlock(n, sum(fields[j] for j in n.inputs), d, arch,
                                                         f"block {i} sparse node")
                fields[i] = n.fields
            if blk.dense is not None and (i, "dense") in live:
                n = blk.dense
                widths = [dense_w[j] for j in n.inputs] + [fields[j] * d for j in n.flat_inputs]
                blk_mod = DenseBlock(n, widths, sum(fields[j] for j in n.sparse_inputs), d, arch,
                                     f"block {i} dense node", raw_fields=raw_names)
                self.dense_blocks[str(i)] = blk_mod
                dense_w[i] = blk_mod.out_dim
        h = arch.head
        for j in h.sum_inputs:
            if dense_w[j] != 1:
                raise ConfigError(f"head.sum_inputs: block {j}'s dense output has width {dense_w[j]}, not 1")
        head_in = sum(dense_w[j] for j in h.inputs) + sum(fields[j] * d for j in h.flat_inputs)
        if (h.inputs or h.flat_inputs) and head_in == 0:
            raise ConfigError("head: its inputs are empty for this data")
        self.head = nn.Linear(head_in, 1) if head_in else None
        self.wide = LinearPart(features, fused=fused, sparse=sparse) if h.wide else None
        # without a head Linear (only sum_inputs) the logit still gets one bias: LR's, a bilinear fusion's, or this
        has_bias = self.wide is not None or any(arch.blocks[j - 1].dense.op == "bilinear" for j in h.sum_inputs)
        self.sum_bias = nn.Parameter(torch.zeros(1)) if self.head is None and not has_bias else None
        self.dense_widths, self.field_counts = dense_w, fields

    def streams(self, batch: dict[str, torch.Tensor]) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """All built outputs: ``dense[j] : [B, w_j]`` and ``sparse[j] : [B, F_j, d]`` (``j = 0`` the raw input)."""
        ref = batch["label"] if "label" in batch else next(iter(batch.values()))
        b = ref.shape[0]
        dense = {0: batch["num"] if self.n_num else ref.new_zeros(b, 0, dtype=torch.float32)}
        sparse = {0: self.embedding(batch) if self.embedding is not None
                  else ref.new_zeros(b, 0, self.d, dtype=torch.float32)}
        for i, blk in enumerate(self.arch.blocks, start=1):
            key = str(i)
            if key in self.sparse_blocks:
                sparse[i] = self.sparse_blocks[key]([sparse[j] for j in blk.sparse.inputs])
            if key in self.dense_blocks:
                n = blk.dense
                xs = [dense[j] for j in n.inputs] + [sparse[j].flatten(1) for j in n.flat_inputs]
                if n.op != "bilinear":  # bilinear keeps its two inputs in place (both non-empty by construction)
                    xs = [x for x in xs if x.shape[1] > 0]
                es = [sparse[j] for j in n.sparse_inputs if sparse[j].shape[1] > 0]
                dense[i] = self.dense_blocks[key](xs, es, sparse[0])
        return dense, sparse

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        dense, sparse = self.streams(batch)
        h = self.arch.head
        parts = [dense[j] for j in h.inputs] + [sparse[j].flatten(1) for j in h.flat_inputs]
        parts = [p for p in parts if p.shape[1] > 0]
        if self.head is not None:
            out = self.head(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        else:
            out = dense[h.sum_inputs[0]].new_zeros(dense[h.sum_inputs[0]].shape[0], 1)
            if self.sum_bias is not None:
                out = out + self.sum_bias
        for j in h.sum_inputs:
            out = out + dense[j]
        if self.wide is not None:
            out = out + self.wide(batch)
        return out.squeeze(-1)
