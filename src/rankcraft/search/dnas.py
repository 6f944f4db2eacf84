"""Differentiable architecture search (DNAS) with a differentiable expected-FLOPs penalty (DistDNAS / FBNet style).

The operator choices of every block are relaxed into a softmax mixture over candidates. For block ``i`` the
candidates are every (dense op, width) pair of the space — ``(mlp, 64)``, ``(dot, 256)``, ``(cross, 2 layers)``, … —
and every (sparse op, fields) pair. With architecture logits ``α_i`` and temperature ``τ``::

    p_i = softmax(α_i / τ)
    dense_i  = Σ_k p_{i,k} · pad(o_k(inputs_i))          (outputs zero-padded to the widest candidate)
    sparse_i = Σ_k q_{i,k} · pad_fields(s_k(inputs_i))
    L(w, α) = BCE(w, α) + λ · Σ_i (Σ_k p_{i,k} C_{i,k} + Σ_k q_{i,k} S_{i,k}) / C_ref

``C``/``S`` are analytic FLOPs per example of each candidate at the mixture's input widths
(:mod:`rankcraft.models.arch.cost`); ``C_ref`` is the cost of taking the most expensive candidate everywhere, so the
penalty is in ``[0, 1]``. All candidates of one op share one max-width weight from the :class:`Supernet`
(FBNetV2-style channel sharing): the projection is computed once and each width applies its own norm/activation
to the leading columns.

Reconstruction choices (DistDNAS details are not public, see ``../shared/papers/distdnas.md``): fixed macro — block
``i`` reads the previous block (dense ``[i-1]``, flattened sparse ``[i-1]``; block 1 the raw embeddings), ``cross``
reads the raw embeddings, ``dot``/``fm`` the previous sparse output; softmax (not sigmoid) mixing; single-level
(joint) optimisation of ``w`` and ``α`` on the same batches, with ``α`` frozen for the first ``warmup`` fraction of
steps; derivation by argmax per block.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.models.arch.cost import dense_node_flops, sparse_node_flops
from rankcraft.models.arch.format import Arch, DenseNode, SparseNode
from rankcraft.search.space import SearchSpace
from rankcraft.search.supernet import Supernet, activation_fn


class DnasSupernet(nn.Module):
    """``forward(batch) -> (logits [B], normalised expected FLOPs (scalar))``; :meth:`derive` gives the argmax
    architecture. ``arch_parameters()`` are the logits ``α``; ``weight_parameters()`` everything else."""

    def __init__(self, features: FeatureSet, space: SearchSpace, embedding_dim: int = 10, *, tau: float = 1.0):
        super().__init__()
        self.space = space
        self.tau = tau
        c = space.config
        self.net = Supernet(features, space, embedding_dim)
        d = embedding_dim
        self.d = d
        n_num, f0 = self.net.n_num, self.net.f0
        self.dense_cands: list[list[DenseNode]] = []
        self.sparse_cands: list[list[SparseNode]] = []
        dense_costs, sparse_costs = [], []
        widths, fields = {0: n_num}, {0: f0}
        for i in range(1, c.blocks + 1):
            prev = i - 1
            s_nodes = [SparseNode(op=op, fields=f, inputs=[prev]) for op in c.sparse_ops for f in c.sparse_fields]
            sparse_costs.append([sparse_node_flops(n, fields[prev], d) for n in s_nodes])
            fields[i] = c.max_fields
            d_nodes = []
            for op in c.dense_ops:
                if op == "cross":
                    d_nodes += [DenseNode(op="cross", layers=k, flat_inputs=[0]) for k in c.cross_layers]
                elif op in ("dot", "fm"):
                    extra = {"inputs": [prev]} if op == "dot" and prev > 0 else {}
                    d_nodes += [DenseNode(op=op, dim=w, sparse_inputs=[prev], **extra) for w in c.dense_dims]
                else:
                    src = {"inputs": [prev], "flat_inputs": [prev]} if prev > 0 else \
                        {"flat_inputs": [0], **({"inputs": [0]} if n_num else {})}
                    d_nodes += [DenseNode(op=op, dim=w, **src) for w in c.dense_dims]
            costs, out_w = [], []
            for n in d_nodes:
                ws = [widths[j] for j in n.inputs] + [fields[j] * d for j in n.flat_inputs]
                f, w = dense_node_flops(n, ws, sum(fields[j] for j in n.sparse_inputs), d)
                costs.append(f)
                out_w.append(w)
            widths[i] = max(out_w)
            self.dense_cands.append(d_nodes)
            self.sparse_cands.append(s_nodes)
            dense_costs.append(costs)
        head = 2.0 * (widths[c.blocks] + fields[c.blocks] * d)
        self.c_ref = sum(max(x) for x in dense_costs) + sum(max(x) for x in sparse_costs) + head
        for i in range(c.blocks):
            self.register_buffer(f"dense_cost_{i}", torch.tensor(dense_costs[i]), persistent=False)
            self.register_buffer(f"sparse_cost_{i}", torch.tensor(sparse_costs[i]), persistent=False)
        self.alpha_dense = nn.ParameterList(nn.Parameter(torch.zeros(len(x))) for x in self.dense_cands)
        self.alpha_sparse = nn.ParameterList(nn.Parameter(torch.zeros(len(x))) for x in self.sparse_cands)
        self.head_cost = head

    def arch_parameters(self) -> list[nn.Parameter]:
        return list(self.alpha_dense) + list(self.alpha_sparse)

    def weight_parameters(self) -> list[nn.Parameter]:
        return list(self.net.parameters())

    def probabilities(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        return ([torch.softmax(a / self.tau, 0) for a in self.alpha_dense],
                [torch.softmax(a / self.tau, 0) for a in self.alpha_sparse])

    def expected_cost(self) -> torch.Tensor:
        """``Σ_i (p_i·C_i + q_i·S_i) + head`` divided by ``C_ref`` (differentiable in ``α``)."""
        pd, ps = self.probabilities()
        total = self.head_cost + sum((p * getattr(self, f"dense_cost_{i}")).sum() for i, p in enumerate(pd))
        total = total + sum((q * getattr(self, f"sparse_cost_{i}")).sum() for i, q in enumerate(ps))
        return total / self.c_ref

    def expected_flops(self) -> float:
        return float(self.expected_cost().detach()) * self.c_ref

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        net, c = self.net, self.space.config
        act = activation_fn(c.activation)
        pd, ps = self.probabilities()
        e0 = net.embedding(batch)
        dev = e0.device
        dense = {0: batch["num"] if net.n_num else e0.new_zeros(e0.shape[0], 0)}
        sparse = {0: e0}
        for i, sb in enumerate(net.blocks, start=1):
            # sparse mixture: one EFC per op at max fields, per-fields norm/act (+ attention)
            prev = sparse[i - 1]
            pos = torch.tensor(sb.field_pos([(i - 1, prev.shape[1])]), device=dev) - 1
            mix, k = 0.0, 0
            for op in c.sparse_ops:
                m = sb.sparse[op]
                h_all = F.linear(prev.transpose(1, 2), m.weight.index_select(1, pos), m.bias).transpose(1, 2)
                for f in c.sparse_fields:
                    h = act(m.norm(h_all[:, :f]))
                    if op == "attention":
                        h = m.attention(h)
                    mix = mix + ps[i - 1][k] * F.pad(h, (0, 0, 0, c.max_fields - f))
                    k += 1
            sparse[i] = mix
            # dense mixture
            outs = []
            seen: dict[str, torch.Tensor] = {}
            for n in self.dense_cands[i - 1]:
                if n.op == "cross":
                    key = "cross"
                    if key not in seen:
                        m = sb.dense["cross"]
                        x0 = sparse[0].flatten(1)
                        x, per_layer = x0, []
                        for layer in range(c.cross_layers[-1]):
                            x = x0 * F.linear(x, m.weight[layer], m.bias[layer]) + x
                            per_layer.append(x)
                        seen[key] = per_layer
                    outs.append(seen[key][n.layers - 1])
                    continue
                if n.op not in seen:
                    full = n.model_copy(update={"dim": c.max_dim})
                    seen[n.op] = net._dense(full, sb, dense, sparse, act, 0.0, dev, post=False)
                m = sb.dense[n.op]
                outs.append(act(m.norm(seen[n.op][:, : n.dim])))
            width = max(o.shape[1] for o in outs)
            dense[i] = sum(p * F.pad(o, (0, width - o.shape[1])) for p, o in zip(pd[i - 1], outs))
        n = c.blocks
        logits = net.head([("dense", n, dense[n]), ("flat", n, sparse[n].flatten(1))])
        return logits, self.expected_cost()

    def derive(self) -> Arch:
        """The architecture taking the most probable candidate of every block."""
        c = self.space.config
        pd, ps = self.probabilities()
        blocks = []
        for i in range(c.blocks):
            dn = self.dense_cands[i][int(pd[i].argmax())]
            sn = self.sparse_cands[i][int(ps[i].argmax())]
            blocks.append({"dense": dn.model_dump(exclude_defaults=True), "sparse": sn.model_dump()})
        n = c.blocks
        return Arch.model_validate({"norm": c.norm, "activation": c.activation, "dropout": c.dropout,
                                    "blocks": blocks, "head": {"inputs": [n], "flat_inputs": [n]}})
