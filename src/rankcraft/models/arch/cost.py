"""Analytic FLOPs of architectures and of single nodes, without building or running a model.

Conventions are those of :func:`rankcraft.training.profile.flops_per_example` (``torch.utils.flop_counter``):
matrix products count ``2·m·n·k``; elementwise ops, norms and embedding gathers count 0. Per example:

============ ======================================================================================
node         FLOPs
============ ======================================================================================
mlp, linear  ``2·w_in·dim``
gating       ``4·w_in·dim`` (value and gate Linears)
sum          ``2·max_j(w_j)·dim``
cross        ``2·layers·w_in²``
fsgate       ``2·c·dim + 2·dim·w_in`` (``2·c·w_in`` without ``dim``), ``c = |context|·d``; with an empty
             context the gate is input-independent (one ``[1, d]`` vector per batch): 0 per example
bilinear     ``2·w_1 + 2·w_2 + 2·w_1·w_2/heads``
dot          ``2·n²·d`` (Gram matrix of ``n`` fields) ``+ 2·w_in·d`` (dense projection, when
             ``w_in ∉ {0, d}``) ``+ 2·n(n-1)/2·dim`` (with ``dim``)
fm           ``4·F·d`` (field sums as a ones-vector product) ``+ 2·d·dim`` (with ``dim``)
efc          ``2·F_in·fields·d``
attention    efc ``+ 2·fields·d·3d`` (QKV) ``+ 2·fields·d·d`` (residual) ``+ 4·fields²·d`` (scores, mix)
head         ``2·w_head`` ``+ 2·F_all`` (wide part)
============ ======================================================================================

Tests check :func:`arch_flops` against the profiler on materialised models.
"""

from __future__ import annotations

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import Arch, DenseNode, SparseNode


def dense_node_flops(node: DenseNode, in_widths: list[int], in_fields: int, d: int) -> tuple[float, int]:
    """``(FLOPs, output width)`` of a dense node with input widths ``in_widths`` and ``in_fields`` sparse fields."""
    w_in = sum(in_widths)
    op = node.op
    if op in ("mlp", "linear"):
        return 2.0 * w_in * node.dim, node.dim
    if op == "gating":
        return 4.0 * w_in * node.dim, node.dim
    if op == "sum":
        return 2.0 * max(in_widths) * node.dim, node.dim
    if op == "cross":
        return 2.0 * node.layers * w_in * w_in, w_in
    if op == "fsgate":
        c = len(node.context) * d
        if not c:
            return 0.0, w_in
        return (2.0 * c * node.dim + 2.0 * node.dim * w_in if node.dim else 2.0 * c * w_in), w_in
    if op == "bilinear":
        w1, w2 = in_widths
        if w1 % node.heads or w2 % node.heads:
            raise ConfigError(f"bilinear: input widths {w1}, {w2} are not divisible by heads={node.heads}")
        return 2.0 * w1 + 2.0 * w2 + 2.0 * w1 * w2 / node.heads, 1
    if op == "dot":
        n = in_fields + (1 if w_in > 0 else 0)
        f = 2.0 * n * n * d + (2.0 * w_in * d if w_in not in (0, d) else 0.0)
        pairs = n * (n - 1) // 2
        if node.dim:
            return f + 2.0 * pairs * node.dim, node.dim
        return f, pairs
    # fm
    f = 4.0 * in_fields * d
    if node.dim:
        return f + 2.0 * d * node.dim, node.dim
    return f, 1


def sparse_node_flops(node: SparseNode, in_fields: int, d: int) -> float:
    f = 2.0 * in_fields * node.fields * d
    if node.op == "attention":
        k = node.fields
        f += 2.0 * k * d * 3 * d + 2.0 * k * d * d + 4.0 * k * k * d
    return f


def arch_flops(arch: Arch, features: FeatureSet, embedding_dim: int) -> float:
    """FLOPs per example of the materialised ``arch`` on ``features`` (only live nodes count)."""
    d = embedding_dim
    n_num = len(features.numeric)
    f0 = sum(1 for f in features.features if arch.numeric_fields or f.kind != "numeric")
    live = arch.live()
    widths, fields = {0: n_num}, {0: f0}
    total = 0.0
    for i, blk in enumerate(arch.blocks, start=1):
        if blk.sparse is not None and (i, "sparse") in live:
            total += sparse_node_flops(blk.sparse, sum(fields[j] for j in blk.sparse.inputs), d)
            fields[i] = blk.sparse.fields
        if blk.dense is not None and (i, "dense") in live:
            n = blk.dense
            ws = [widths[j] for j in n.inputs] + [fields[j] * d for j in n.flat_inputs]
            f, w = dense_node_flops(n, ws, sum(fields[j] for j in n.sparse_inputs), d)
            total += f
            widths[i] = w
    h = arch.head
    w_head = sum(widths[j] for j in h.inputs) + sum(fields[j] * d for j in h.flat_inputs)
    total += 2.0 * w_head
    if h.wide:
        total += 2.0 * len(features.features)
    return total
