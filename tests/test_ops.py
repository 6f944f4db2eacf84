"""Operator library: output shapes, math against naive computations, and profiler FLOPs against hand counts."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rankcraft.data.features import FeatureInfo, FeatureSet
from rankcraft.nn import (
    CIN,
    EFC,
    FM,
    MLP,
    BilinearFusion,
    CrossNetMix,
    CrossNetV1,
    CrossNetV2,
    DotInteraction,
    FeatureSelection,
    FieldSelfAttention,
    InstanceGuidedMask,
    LinearPart,
    MaskBlock,
    SigmoidGating,
)
from rankcraft.training.profile import flops_per_example

B, NF, D = 6, 5, 4  # batch, fields, embedding width used throughout


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


class OnX(nn.Module):
    """Adapts an operator to the model calling convention (``forward(batch)``) for :func:`flops_per_example`."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.op = op

    def forward(self, batch):
        return self.op(batch["x"])


def flops(op: nn.Module, x: torch.Tensor) -> float:
    return flops_per_example(OnX(op), {"x": x})


def emb(b=B, f=NF, d=D) -> torch.Tensor:
    return torch.randn(b, f, d, dtype=torch.float64)


def randomize(module: nn.Module) -> nn.Module:
    """Give every parameter O(1) random values (default inits are ~0 for embeddings / biases)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module


# --------------------------------------------------------------------------- LinearPart
FS = FeatureSet((
    FeatureInfo("c0", "categorical", vocab_size=5),
    FeatureInfo("c1", "categorical", vocab_size=7),
    FeatureInfo("n0", "numeric"),
    FeatureInfo("n1", "numeric"),
    FeatureInfo("m0", "multi_categorical", vocab_size=6, max_len=3),
))


def fs_batch() -> dict[str, torch.Tensor]:
    return {
        "cat": torch.tensor([[2, 3], [4, 6], [0, 1], [3, 3]]),
        "num": torch.tensor([[0.5, -1.0], [2.0, 0.0], [0.0, 0.0], [-1.5, 3.0]]),
        "m0": torch.tensor([[2, 5, 0], [3, 0, 0], [0, 0, 0], [1, 4, 5]]),
        "label": torch.zeros(4),
    }


@pytest.mark.parametrize("fused", [True, False])
def test_linear_part_matches_logistic_regression(fused):
    lp = randomize(LinearPart(FS, fused=fused))
    batch = fs_batch()
    out = lp(batch)
    assert out.shape == (4, 1)
    w = lp.weights
    with torch.no_grad():
        for b in range(4):
            y = lp.bias[0].clone()
            for f, name in enumerate(["c0", "c1"]):
                y += w.lookup(name, batch["cat"][b, f])[0]
            y += (batch["num"][b] * w.num_weight[:, 0]).sum()
            ids = [int(i) for i in batch["m0"][b] if i != 0]
            if ids:  # an all-padding bag contributes 0
                y += sum(w.lookup("m0", torch.tensor(i))[0] for i in ids) / len(ids)
            torch.testing.assert_close(out[b, 0], y)


def test_linear_part_flops_count_one_multiply_add_per_field():
    lp = LinearPart(FS)
    assert flops_per_example(lp, fs_batch()) == 2 * FS.num_fields


# --------------------------------------------------------------------------- FM
def test_fm_equals_explicit_pairwise_sum():
    e = emb()
    out = FM(NF).double()(e)
    assert out.shape == (B, 1)
    expected = sum((e[:, i] * e[:, j]).sum(-1) for i, j in itertools.combinations(range(NF), 2))
    close(out[:, 0], expected)
    vec = FM(NF, reduce_sum=False).double()(e)
    assert vec.shape == (B, D)
    close(vec, sum(e[:, i] * e[:, j] for i, j in itertools.combinations(range(NF), 2)))


def test_fm_flops():
    # FM writes its two field sums (Σ e_f and Σ e_f²) as one ones-vector matmul over [B, F, 2d]:
    # 2 · F · (2d) = 4·F·d counted FLOPs; the squares and the sum over d are elementwise (0).
    assert flops(FM(NF), torch.randn(B, NF, D)) == 4 * NF * D


# --------------------------------------------------------------------------- DotInteraction
@pytest.mark.parametrize("dense", [False, True])
@pytest.mark.parametrize("self_interaction", [False, True])
def test_dot_interaction_equals_loops(dense, self_interaction):
    e = emb()
    z = torch.randn(B, D, dtype=torch.float64)
    op = DotInteraction(NF, dense=dense, self_interaction=self_interaction)
    out = op(e, z if dense else None)
    vecs = [z] + [e[:, f] for f in range(NF)] if dense else [e[:, f] for f in range(NF)]
    n = len(vecs)
    pairs = [(i, j) for i in range(n) for j in range(n) if (i <= j if self_interaction else i < j)]
    assert out.shape == (B, len(pairs)) and op.out_dim == len(pairs)
    assert len(pairs) == (n * (n + 1) // 2 if self_interaction else n * (n - 1) // 2)
    close(out, torch.stack([(vecs[i] * vecs[j]).sum(-1) for i, j in pairs], dim=1))


def test_dot_interaction_rejects_wrong_field_count():
    with pytest.raises(ValueError):
        DotInteraction(NF)(emb(f=NF + 1))
    with pytest.raises(ValueError):
        DotInteraction(NF, dense=True)(emb())


def test_dot_interaction_flops():
    assert flops(DotInteraction(NF), torch.randn(B, NF, D)) == 2 * NF * NF * D


# --------------------------------------------------------------------------- cross networks
def test_crossnet_v1_equals_formula():
    dim, x0 = 7, torch.randn(B, 7, dtype=torch.float64)
    op = randomize(CrossNetV1(dim, 2).double())
    w, b = op.weight[:, 0], op.bias
    x1 = x0 * (x0 @ w[0]).unsqueeze(1) + b[0] + x0
    x2 = x0 * (x1 @ w[1]).unsqueeze(1) + b[1] + x1
    close(op(x0), x2)
    assert flops(CrossNetV1(dim, 3), torch.randn(B, dim)) == 3 * 2 * dim


def test_crossnet_v2_equals_formula():
    dim, x0 = 7, torch.randn(B, 7, dtype=torch.float64)
    op = randomize(CrossNetV2(dim, 2).double())
    (w0, b0), (w1, b1) = [(layer.weight, layer.bias) for layer in op.layers]
    x1 = x0 * (x0 @ w0.T + b0) + x0
    one = CrossNetV2(dim, 1).double()
    one.load_state_dict({"layers.0.weight": w0, "layers.0.bias": b0})
    close(one(x0), x1)
    close(op(x0), x0 * (x1 @ w1.T + b1) + x1)


def test_crossnet_v2_flops():
    dim, layers = 12, 3
    # each layer is one D×D Linear: 2·D² per example; the Hadamard product and residual add count 0
    assert flops(CrossNetV2(dim, layers), torch.randn(B, dim)) == layers * 2 * dim * dim


def test_crossnet_mix_equals_per_expert_loop():
    dim, L, K, r = 6, 2, 3, 2
    op = CrossNetMix(dim, L, num_experts=K, low_rank=r).double()
    with torch.no_grad():
        op.bias.normal_()
    x0 = torch.randn(B, dim, dtype=torch.float64)
    x = x0
    for l in range(L):
        gates = torch.softmax(x @ op.gate[l].T, dim=-1)  # [B, K]
        experts = [x0 * (torch.tanh(torch.tanh(x @ op.V[l, i]) @ op.C[l, i]) @ op.U[l, i] + op.bias[l])
                   for i in range(K)]
        x = sum(gates[:, i:i + 1] * experts[i] for i in range(K)) + x
    close(op(x0), x)
    assert op(x0).shape == (B, dim)
    per_layer = 2 * dim * K * r + 2 * K * r * r + 2 * K * r * dim + 2 * dim * K
    assert flops(CrossNetMix(dim, L, num_experts=K, low_rank=r), torch.randn(B, dim)) == L * per_layer


# --------------------------------------------------------------------------- CIN
def test_cin_shapes():
    e = torch.randn(B, NF, D)
    assert CIN(NF, [8, 6, 4]).forward(e).shape == (B, 4 + 3 + 4)
    assert CIN(NF, [8, 6, 4], split_half=False).forward(e).shape == (B, 8 + 6 + 4)
    assert CIN(NF, [8, 6, 4]).out_dim == 11
    with pytest.raises(ValueError):
        CIN(NF, [7, 4])  # odd non-last size with split_half
    CIN(NF, [8, 7])  # the last layer may be odd


def test_cin_equals_formula():
    e = emb()
    op = CIN(NF, [4, 3]).double()
    l0, l1 = op.layers
    w0 = l0.weight.view(4, NF, NF)  # [H1, i (prev map), j (field)]
    x1 = torch.einsum("hij,bit,bjt->bht", w0, e, e) + l0.bias[None, :, None]  # [B, 4, d]
    nxt, out1 = x1[:, :2], x1[:, 2:]  # first half feeds layer 2, second half is pooled out
    w1 = l1.weight.view(3, 2, NF)
    x2 = torch.einsum("hij,bit,bjt->bht", w1, nxt, e) + l1.bias[None, :, None]
    close(op(e), torch.cat([out1.sum(-1), x2.sum(-1)], dim=1))
    # FLOPs: layer k is a Linear over (maps fed forward × m) → H_k at each of the d coordinates
    assert flops(CIN(NF, [4, 3]), torch.randn(B, NF, D)) == 2 * D * (4 * NF * NF + 3 * 2 * NF)


# --------------------------------------------------------------------------- attention
def test_field_self_attention_single_layer_equals_naive():
    din, dh, H = D, 3, 2
    e = emb()
    for use_scale in (False, True):
        op = FieldSelfAttention(din, dh, H, 1, use_scale=use_scale).double()
        layer = op.layers[0]
        wq, wk, wv = layer.qkv.weight.split(H * dh, dim=0)
        heads = []
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            q, k, v = e @ wq[sl].T, e @ wk[sl].T, e @ wv[sl].T  # [B, F, d']
            s = q @ k.transpose(1, 2) / (dh ** 0.5 if use_scale else 1.0)
            heads.append(torch.softmax(s, dim=-1) @ v)
        expected = torch.relu(torch.cat(heads, dim=-1) + e @ layer.res.weight.T)
        close(op(e), expected)


def test_field_self_attention_shapes_and_equivariance():
    e = torch.randn(B, NF, D)
    op = FieldSelfAttention(D, 8, 3, 2, layer_norm=True).eval()
    out = op(e)
    assert out.shape == (B, NF, 24) and op.out_dim == 24
    perm = torch.randperm(NF)
    torch.testing.assert_close(op(e[:, perm]), out[:, perm])  # attention over fields is permutation-equivariant
    assert FieldSelfAttention(D, 8, 3, 2, use_residual=False)(e).shape == (B, NF, 24)


def test_field_self_attention_flops():
    din, dh, H = D, 3, 2
    out = H * dh
    expected = 2 * NF * din * 3 * out + 2 * NF * din * out + 2 * 2 * H * NF * NF * dh
    assert flops(FieldSelfAttention(din, dh, H, 1), torch.randn(B, NF, din)) == expected


# --------------------------------------------------------------------------- EFC
def test_efc_equals_loop():
    e = emb()
    op = EFC(NF, 3).double()
    out = op(e)
    assert out.shape == (B, 3, D)
    w, b = op.linear.weight, op.linear.bias
    expected = torch.stack([sum(w[j, i] * e[:, i] for i in range(NF)) + b[j] for j in range(3)], dim=1)
    close(out, expected)
    assert flops(EFC(NF, 3), torch.randn(B, NF, D)) == 2 * NF * 3 * D


# --------------------------------------------------------------------------- gates
def test_sigmoid_gating():
    x, g = torch.randn(B, 5, dtype=torch.float64), torch.randn(B, 3, dtype=torch.float64)
    op = SigmoidGating(3, 5).double()
    lin = op.mlp.net[0]
    close(op(x, g), x * torch.sigmoid(g @ lin.weight.T + lin.bias))
    op2 = SigmoidGating(3, 5, scale=2.0).double()
    lin2 = op2.mlp.net[0]
    close(op2(x, g), x * 2 * torch.sigmoid(g @ lin2.weight.T + lin2.bias))
    # self-gate on a [B, F, d] tensor: the gate is computed from the flattened input and reshaped
    e = emb()
    op3 = SigmoidGating(NF * D, NF * D, hidden=(7,)).double()
    close(op3(e), e * torch.sigmoid(op3.mlp(e.flatten(1))).view_as(e))


def test_feature_selection():
    dim = NF * D
    x = torch.randn(B, dim, dtype=torch.float64)
    op = FeatureSelection(dim, default_context_dim=D, hidden=(16,)).double()
    with torch.no_grad():
        for p in op.learned:
            p.normal_()
    x1, x2 = op(x)
    assert x1.shape == x2.shape == (B, dim)
    for out, gate, ctx in zip((x1, x2), op.gates, op.learned):
        close(out, x * 2 * torch.sigmoid(gate.mlp(ctx)))  # learned context: the same gate for every row
    assert not torch.allclose(x1, x2)

    op = FeatureSelection(dim, context_dims=(3, 0), default_context_dim=D, hidden=(16,)).double()
    c1 = torch.randn(B, 3, dtype=torch.float64)
    x1, x2 = op(x, c1)
    close(x1, x * 2 * torch.sigmoid(op.gates[0].mlp(c1)))
    with pytest.raises(ValueError):
        op(x)  # gate 1 needs its context


def test_bilinear_fusion_equals_per_head_forms():
    d1, d2, h = 6, 4, 2
    x, y = torch.randn(B, d1, dtype=torch.float64), torch.randn(B, d2, dtype=torch.float64)
    op = randomize(BilinearFusion(d1, d2, h).double())
    expected = op.lin1.bias + x @ op.lin1.weight[0] + y @ op.lin2.weight[0]
    for j in range(h):
        xj, yj = x[:, j * 3:(j + 1) * 3], y[:, j * 2:(j + 1) * 2]
        expected = expected + ((xj @ op.w3[j]) * yj).sum(-1)
    out = op(x, y)
    assert out.shape == (B, 1)
    close(out[:, 0], expected)
    with pytest.raises(ValueError):
        BilinearFusion(5, 4, 2)

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.op = BilinearFusion(d1, d2, h)

        def forward(self, batch):
            return self.op(batch["x"], batch["y"])

    counted = flops_per_example(Two(), {"x": torch.randn(B, d1), "y": torch.randn(B, d2)})
    assert counted == 2 * d1 + 2 * d2 + 2 * d1 * d2 // h


def test_instance_guided_mask_and_mask_block():
    v, hdn = torch.randn(B, 8, dtype=torch.float64), torch.randn(B, 5, dtype=torch.float64)
    igm = InstanceGuidedMask(8, 5, reduction_ratio=2.0).double()
    l1, l2 = igm.net.net[0], igm.net.net[2]
    assert l1.out_features == 10  # aggregation width = ratio × projection width
    close(igm(v), torch.relu(v @ l1.weight.T + l1.bias) @ l2.weight.T + l2.bias)

    blk = MaskBlock(8, 5, 3).double()
    out = blk(v, hdn)
    assert out.shape == (B, 3)
    close(out, torch.relu(blk.norm(blk.mask(v) * hdn @ blk.linear.weight.T)))
    blk = MaskBlock(8, 5, 3, layer_norm=False).double()
    close(blk(v, hdn), torch.relu((blk.mask(v) * hdn) @ blk.linear.weight.T + blk.linear.bias))


# --------------------------------------------------------------------------- MLP FLOPs
def test_mlp_flops():
    hidden, din = [16, 8], 7
    op = MLP(din, hidden, 1, batch_norm=True, dropout=0.5)
    # 2·fan_in·fan_out per Linear; bias adds, batch norm, activations and dropout count 0
    assert flops(op, torch.randn(B, din)) == 2 * (din * 16 + 16 * 8 + 8 * 1)
