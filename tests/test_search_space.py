"""Architecture format, materialisation, zoo equivalence, analytic cost, supernet weight sharing and DNAS."""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import adam_steps
from test_zoo import FULL, NO_NUMERIC, make_data

from rankcraft.errors import ConfigError
from rankcraft.models import build_model
from rankcraft.models.arch.cost import arch_flops
from rankcraft.models.arch.format import Arch, load_arch, parse_arch
from rankcraft.models.arch.network import ArchNet
from rankcraft.models.arch.zoo import zoo_arch, zoo_params
from rankcraft.search.dnas import DnasSupernet
from rankcraft.search.space import PRESETS, get_space
from rankcraft.search.supernet import Supernet
from rankcraft.training.profile import count_parameters, flops_per_example

FULL_FIELDS = len(FULL.features)


def _arch(blocks, head=None, **kw) -> Arch:
    return parse_arch({"blocks": blocks, "head": head or {"inputs": [len(blocks)]}, **kw})


# --------------------------------------------------------------------------------------------- format
def test_json_round_trip_and_key():
    a = zoo_arch("dcnv2")
    again = parse_arch(json.loads(a.to_json()))
    assert again == a and again.key() == a.key()
    other = zoo_arch("dcnv2", {"num_cross_layers": 2})
    assert other.key() != a.key()


@pytest.mark.parametrize("obj, needle", [
    ({"blocks": [{"dense": {"op": "conv", "dim": 4, "flat_inputs": [0]}}], "head": {"inputs": [1]}},
     "blocks.0.dense.op"),
    ({"blocks": [{"dense": {"op": "mlp", "flat_inputs": [0]}}], "head": {"inputs": [1]}}, "needs 'dim'"),
    ({"blocks": [{"dense": {"op": "mlp", "dim": 4, "inputs": [1]}}], "head": {"inputs": [1]}},
     "block 1 dense node reads source 1"),
    ({"blocks": [{"sparse": {"op": "efc", "fields": 3, "inputs": [0]}},
                 {"dense": {"op": "mlp", "dim": 4, "inputs": [1]}}], "head": {"inputs": [2]}},
     "dense output of block 1, which has no dense node"),
    ({"blocks": [{"dense": {"op": "mlp", "dim": 4, "flat_inputs": [0]}}], "head": {"sum_inputs": [1]}},
     "width 1"),
    ({"blocks": [{"dense": {"op": "cross", "dim": 8, "flat_inputs": [0]}}], "head": {"inputs": [1]}},
     "keeps its input width"),
    ({"blocks": [{"dense": {"op": "mlp", "dim": 4, "flat_inputs": [0], "units": 3}}], "head": {"inputs": [1]}},
     "blocks.0.dense.units"),
    ({"blocks": [], "head": {"inputs": [0]}}, "blocks"),
])
def test_validation_errors_name_the_field(obj, needle):
    with pytest.raises(ConfigError) as exc:
        parse_arch(obj, "my.json")
    assert "my.json" in str(exc.value) and needle in str(exc.value)


def test_load_arch_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_arch(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"blocks": [\n  {"dense": }\n]}')
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON \(line 2"):
        load_arch(bad)
    wrapped = tmp_path / "best.json"
    wrapped.write_text(json.dumps({"arch": zoo_arch("dnn").to_dict(), "params": {"embedding_dim": 4}}))
    assert load_arch(wrapped) == zoo_arch("dnn")


def test_empty_raw_dense_input_is_a_clear_error():
    a = _arch([{"dense": {"op": "mlp", "dim": 4, "inputs": [0]}}])
    with pytest.raises(ConfigError, match="no numeric features"):
        ArchNet(NO_NUMERIC, a, 4)


def test_dead_nodes_are_not_built():
    a = _arch([{"dense": {"op": "mlp", "dim": 8, "flat_inputs": [0]}, "sparse": {"op": "efc", "fields": 3,
                                                                                "inputs": [0]}},
               {"dense": {"op": "mlp", "dim": 4, "inputs": [1]}}])
    net = ArchNet(FULL, a, 4)
    assert list(net.sparse_blocks) == [] and list(net.dense_blocks) == ["1", "2"]


# --------------------------------------------------------------------------------------------- zoo equivalence
@pytest.mark.parametrize("model, params", [
    ("dlrm", {}), ("dlrm", {"interaction_op": "cat", "bottom_mlp_units": [16, 8]}),
    ("dcnv2", {}), ("dcnv2", {"model_structure": "stacked", "num_cross_layers": 2}),
    ("dcnv2", {"model_structure": "crossnet_only"}),
    ("deepfm", {}), ("deepfm", {"hidden_units": [64, 32], "embedding_dim": 6}),
    ("dnn", {"hidden_units": [32]}),
])
def test_zoo_models_are_points_of_the_space_with_equal_flops(model, params):
    data = make_data(FULL, 32)
    torch.manual_seed(0)
    zoo = build_model(model, FULL, params)
    arch = build_model("arch", FULL, zoo_params(model, params))
    assert flops_per_example(arch, data) == flops_per_example(zoo, data) > 0
    assert count_parameters(arch) == count_parameters(zoo)
    assert arch_flops(zoo_arch(model, params), FULL, params.get("embedding_dim", 10)) == \
        flops_per_example(zoo, data)


def test_zoo_arch_computes_the_same_function_as_the_zoo_model():
    """DCNv2 as an architecture is not just FLOP-equal: with the zoo model's weights it gives the same logits."""
    data = make_data(FULL, 16)
    zoo = build_model("dcnv2", FULL, {"hidden_units": [16, 8], "dropout": 0.0}).eval()
    arch = build_model("arch", FULL, zoo_params("dcnv2", {"hidden_units": [16, 8], "dropout": 0.0})).eval()
    zs = zoo.state_dict()
    mapping = {"embedding.": "embedding.", "cross.": "dense_blocks.1.cross.", "fc.": "head."}
    state = {}
    for k, v in zs.items():
        if k.startswith("mlp.net."):
            idx, rest = k[len("mlp.net."):].split(".", 1)
            layer = int(idx) // 3  # Linear, BatchNorm, ReLU per hidden layer
            kind = "linear" if int(idx) % 3 == 0 else "post.norm"
            state[f"dense_blocks.{layer + 2}.{kind}.{rest}"] = v
        else:
            pre = next(p for p in mapping if k.startswith(p))
            state[mapping[pre] + k[len(pre):]] = v
    arch.load_state_dict(state)
    torch.testing.assert_close(arch(data), zoo(data))


FINALMLP = {"mlp1_hidden_units": [16], "mlp2_hidden_units": [8, 4], "mlp1_dropout": 0.3, "mlp2_batch_norm": False,
            "fs_hidden_units": [12], "fs1_context": ["c0", "m0"], "fs2_context": ["c1"], "num_heads": 2}


@pytest.mark.parametrize("params", [FINALMLP, {**FINALMLP, "fs_hidden_units": []}, {**FINALMLP, "use_fs": False}])
def test_finalmlp_is_an_architecture_with_equal_flops_and_parameters(params):
    data = make_data(FULL, 32)
    zoo = build_model("finalmlp", FULL, params)
    arch = build_model("arch", FULL, zoo_params("finalmlp", params))
    assert flops_per_example(arch, data) == flops_per_example(zoo, data) > 0
    assert count_parameters(arch) == count_parameters(zoo)
    assert arch_flops(zoo_arch("finalmlp", params), FULL, 10) == flops_per_example(zoo, data)


def test_finalmlp_with_a_learned_context_counts_its_gate_once_per_batch():
    """Without context features the gate does not depend on the input: the profiler sees it once per batch, the
    analytic count (per example, any batch size) leaves it out."""
    params = {**FINALMLP, "fs1_context": []}
    data = make_data(FULL, 32)
    zoo = build_model("finalmlp", FULL, params)
    gate = 2 * (10 * 12 + 12 * FULL_FIELDS * 10)  # [1, d] context -> 12 -> F·d, once per batch
    assert arch_flops(zoo_arch("finalmlp", params), FULL, 10) == flops_per_example(zoo, data) - gate / 32


def test_finalmlp_architecture_computes_the_same_function():
    data = make_data(FULL, 16)
    params = {**FINALMLP, "fs1_context": []}  # one learned-context gate and one with context
    zoo = build_model("finalmlp", FULL, params).eval()
    arch = build_model("arch", FULL, zoo_params("finalmlp", params)).eval()
    with torch.no_grad():  # move the gates off their neutral start so the test can see them
        for p in zoo.fs.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    mapping = {"embedding.": "embedding.", "fs.learned.0": "dense_blocks.1.ctx", "fs.gates.0.": "dense_blocks.1.gate.",
               "fs.gates.1.": "dense_blocks.2.gate.", "mlp1.net.0.": "dense_blocks.3.linear.",
               "mlp2.net.0.": "dense_blocks.4.linear.", "mlp2.net.3.": "dense_blocks.5.linear.",
               "fusion.": "dense_blocks.6.fusion."}
    state = {}
    for k, v in zoo.state_dict().items():
        if k.startswith("mlp1.net.1."):
            state["dense_blocks.3.post.norm." + k[len("mlp1.net.1."):]] = v
            continue
        pre = next(p for p in mapping if k.startswith(p))
        state[mapping[pre] + k[len(pre):]] = v
    arch.load_state_dict(state)
    torch.testing.assert_close(arch(data), zoo(data))


@pytest.mark.parametrize("node, msg", [
    ({"op": "bilinear", "inputs": [0]}, "exactly two dense 'inputs'"),
    ({"op": "mlp", "dim": 4, "flat_inputs": [0], "heads": 2}, "'heads' is for op 'bilinear'"),
    ({"op": "linear", "dim": 4, "flat_inputs": [0], "context": ["c0"]}, "'context' is for op 'fsgate'"),
])
def test_fsgate_and_bilinear_validation(node, msg):
    with pytest.raises(ConfigError, match=msg):
        parse_arch({"blocks": [{"dense": node}], "head": {"inputs": [1]}})


def test_fsgate_with_an_unknown_context_feature_names_it():
    a = parse_arch({"blocks": [{"dense": {"op": "fsgate", "context": ["nope"], "flat_inputs": [0]}}],
                    "head": {"inputs": [1]}})
    with pytest.raises(ConfigError, match=r"block 1 dense node: context names unknown feature\(s\) \['nope'\]"):
        ArchNet(FULL, a, 4)


def test_bilinear_heads_must_divide_both_widths():
    a = parse_arch({"blocks": [{"dense": {"op": "mlp", "dim": 6, "flat_inputs": [0]}},
                               {"dense": {"op": "mlp", "dim": 4, "flat_inputs": [0]}},
                               {"dense": {"op": "bilinear", "inputs": [1, 2], "heads": 4}}],
                    "head": {"sum_inputs": [3]}})
    with pytest.raises(ConfigError, match="not divisible"):
        ArchNet(FULL, a, 4)
    with pytest.raises(ConfigError, match="not divisible"):
        arch_flops(a, FULL, 4)


def test_unsupported_zoo_variants_raise():
    with pytest.raises(ConfigError, match="no architecture counterpart"):
        zoo_arch("autoint")
    with pytest.raises(ConfigError, match="low_rank"):
        zoo_arch("dcnv2", {"use_low_rank_mixture": True})


# --------------------------------------------------------------------------------------------- operators train
def _one_op_arch(dense=None, sparse=None) -> Arch:
    if sparse is not None:
        return _arch([{"sparse": sparse}, {"dense": {"op": "mlp", "dim": 8, "flat_inputs": [1]}}])
    return _arch([{"dense": dense}], head={"inputs": [1]})


OP_CASES = {
    "mlp": _one_op_arch({"op": "mlp", "dim": 16, "flat_inputs": [0]}),
    "linear": _one_op_arch({"op": "linear", "dim": 16, "flat_inputs": [0], "inputs": [0]}),
    "cross": _one_op_arch({"op": "cross", "layers": 2, "flat_inputs": [0]}),
    "gating": _one_op_arch({"op": "gating", "dim": 16, "flat_inputs": [0]}),
    "sum": _one_op_arch({"op": "sum", "dim": 16, "flat_inputs": [0], "inputs": [0]}),
    "dot": _one_op_arch({"op": "dot", "sparse_inputs": [0], "inputs": [0]}),
    "dot+dim": _one_op_arch({"op": "dot", "dim": 16, "sparse_inputs": [0], "flat_inputs": [0]}),
    "fm": _arch([{"dense": {"op": "fm", "sparse_inputs": [0]}}], head={"sum_inputs": [1], "wide": True}),
    "fm+dim": _one_op_arch({"op": "fm", "dim": 16, "sparse_inputs": [0]}),
    "efc": _one_op_arch(sparse={"op": "efc", "fields": 4, "inputs": [0]}),
    "attention": _one_op_arch(sparse={"op": "attention", "fields": 4, "inputs": [0]}),
}


@pytest.mark.parametrize("name", list(OP_CASES))
def test_every_operator_trains(name):
    torch.manual_seed(0)
    data = make_data(FULL, 1024)
    net = ArchNet(FULL, OP_CASES[name], 6)
    losses = adam_steps(net, data, steps=60, lr=0.01, batch=256)
    assert sum(losses[-8:]) / 8 < 0.9 * sum(losses[:8]) / 8, losses[::10]
    assert flops_per_example(net, data) == arch_flops(OP_CASES[name], FULL, 6)


def test_arch_model_save_load_round_trip(tmp_path):
    data = make_data(FULL, 32)
    params = {"embedding_dim": 6, "arch": OP_CASES["attention"].to_dict()}
    m = build_model("arch", FULL, params).eval()
    torch.save(m.state_dict(), tmp_path / "w.pt")
    m2 = build_model("arch", FULL, params).eval()
    m2.load_state_dict(torch.load(tmp_path / "w.pt", weights_only=True))
    torch.testing.assert_close(m2(data), m(data), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------- space
@pytest.mark.parametrize("preset", list(PRESETS))
def test_space_samples_and_mutations_are_members_and_seeded(preset):
    sp = get_space(preset, raw_dense=True)
    a1 = [sp.sample(random.Random(s)).key() for s in range(5)]
    a2 = [sp.sample(random.Random(s)).key() for s in range(5)]
    assert a1 == a2 and len(set(a1)) == 5
    rng = random.Random(0)
    a = sp.sample(rng)
    for _ in range(30):
        b = sp.mutate(a, rng)
        sp.check(b)
        assert b.key() != a.key()
        diff = sum(x != y for x, y in zip(a.blocks, b.blocks))
        assert diff == 1  # one decision of one block
        a = b
    sp.check(sp.largest(rng))


def test_space_check_rejects_foreign_architectures():
    sp = get_space("small")
    with pytest.raises(ConfigError, match="not in search space 'small'"):
        sp.check(zoo_arch("dcnv2"))
    with pytest.raises(ConfigError, match="unknown search space"):
        get_space("huge")
    with pytest.raises(ConfigError, match="dense_ops"):
        get_space({"dense_ops": ["conv"]})
    for op in ("fsgate", "bilinear"):  # architecture ops the samplers and supernets do not draw
        with pytest.raises(ConfigError, match=f"dense_ops: unknown or unsupported op '{op}' \\(an architecture op"):
            get_space({"dense_ops": ["mlp", op]})


@pytest.mark.parametrize("fs", [FULL, NO_NUMERIC], ids=["numeric", "no_numeric"])
@pytest.mark.parametrize("preset", ["tiny", "small", "full"])
def test_analytic_flops_match_the_profiler(fs, preset):
    data = make_data(fs, 16)
    sp = get_space(preset, raw_dense=bool(fs.numeric))
    rng = random.Random(3)
    for _ in range(4):
        a = sp.sample(rng)
        assert arch_flops(a, fs, 6) == flops_per_example(ArchNet(fs, a, 6), data)


# --------------------------------------------------------------------------------------------- supernet
@pytest.mark.parametrize("fs", [FULL, NO_NUMERIC], ids=["numeric", "no_numeric"])
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_supernet_subnet_equals_the_exported_standalone_model(fs, preset):
    data = make_data(fs, 64)
    sp = get_space(preset, raw_dense=bool(fs.numeric))
    torch.manual_seed(0)
    net = Supernet(fs, sp, 6)
    # make every weight non-trivial (some start at zero), then compare in eval mode
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    net.eval()
    rng = random.Random(7)
    for t in range(8):
        a = sp.largest(rng) if t == 0 else sp.sample(rng)
        standalone = net.export(a).eval()
        torch.testing.assert_close(net(data, a), standalone(data), rtol=1e-5, atol=1e-5)
        assert isinstance(standalone, ArchNet)


def test_supernet_training_moves_shared_weights_and_export_needs_a_member():
    data = make_data(FULL, 512)
    sp = get_space("tiny", raw_dense=True)
    torch.manual_seed(0)
    net = Supernet(FULL, sp, 6)
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    rng = random.Random(0)
    losses = []
    for step in range(40):
        b = {k: v[(step % 4) * 128:(step % 4 + 1) * 128] for k, v in data.items()}
        loss = F.binary_cross_entropy_with_logits(net(b, sp.sample(rng)), b["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) < sum(losses[:10])
    with pytest.raises(ConfigError):
        net.export(zoo_arch("dnn"))


# --------------------------------------------------------------------------------------------- DNAS
def _train_dnas(lam: float) -> DnasSupernet:
    torch.manual_seed(0)
    data = make_data(FULL, 1024)
    m = DnasSupernet(FULL, get_space("tiny", raw_dense=True), 6)
    ow = torch.optim.Adam(m.weight_parameters(), 1e-2)
    oa = torch.optim.Adam(m.arch_parameters(), 3e-2)
    for step in range(60):
        b = {k: v[(step % 4) * 256:(step % 4 + 1) * 256] for k, v in data.items()}
        logits, cost = m(b)
        loss = F.binary_cross_entropy_with_logits(logits, b["label"]) + lam * cost
        ow.zero_grad()
        oa.zero_grad()
        loss.backward()
        ow.step()
        if step >= 6:
            oa.step()
    return m


def test_dnas_large_lambda_derives_a_cheaper_architecture():
    free, cheap = _train_dnas(0.0), _train_dnas(5.0)
    a_free, a_cheap = free.derive(), cheap.derive()
    get_space("tiny", raw_dense=True).check(a_cheap)
    assert cheap.expected_flops() < 0.5 * free.expected_flops()
    assert arch_flops(a_cheap, FULL, 6) < arch_flops(a_free, FULL, 6)


def test_dnas_expected_cost_is_differentiable_and_normalised():
    m = DnasSupernet(FULL, get_space("tiny", raw_dense=True), 6)
    c = m.expected_cost()
    assert 0 < float(c.detach()) <= 1
    c.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.arch_parameters())


def test_batchnorm_supernet_exports_exactly_and_scores_with_batch_statistics():
    data = make_data(FULL, 64)
    sp = get_space({**PRESETS["tiny"], "norm": "batch"}, raw_dense=True)
    torch.manual_seed(0)
    net = Supernet(FULL, sp, 6)
    net.train()
    rng = random.Random(0)
    for _ in range(3):  # move the running statistics away from their initial values
        net(data, sp.sample(rng))
    net.eval()
    a = sp._arch([{"dense": {"op": "mlp", "dim": 16, "flat_inputs": [j]},
                   "sparse": {"op": "efc", "fields": 4, "inputs": [j]}} for j in range(3)])
    sp.check(a)
    torch.testing.assert_close(net(data, a), net.export(a).eval()(data), rtol=1e-5, atol=1e-5)
    net.use_batch_stats(True)
    with_batch = net(data, a)
    net.train()
    torch.testing.assert_close(with_batch, net(data, a))  # train-mode normalisation (no dropout in tiny)
    net.eval()
    net.use_batch_stats(False)
    assert not torch.allclose(net(data, a), with_batch)


def test_free_mutation_keeps_the_graph_of_a_human_design_and_builds():
    """Mutating FinalMLP (outside the space's block pattern) changes one width / dropout / head count at a time;
    every child validates, keeps bilinear widths divisible by its heads and materialises."""
    space = get_space("small")
    base = zoo_arch("finalmlp", {**FINALMLP, "mlp1_hidden_units": [40], "mlp2_hidden_units": [20], "num_heads": 5})
    rng = random.Random(0)
    seen = set()
    for _ in range(40):
        child = space.mutate(base, rng)
        assert child.key() != base.key()
        assert [b.dense.op for b in child.blocks] == [b.dense.op for b in base.blocks]
        assert [(b.dense.inputs, b.dense.flat_inputs) for b in child.blocks] == \
            [(b.dense.inputs, b.dense.flat_inputs) for b in base.blocks]
        diff = [i for i, (a, b) in enumerate(zip(child.to_dict()["blocks"], base.to_dict()["blocks"])) if a != b]
        assert len(diff) == 1
        ArchNet(FULL, child, 10)  # builds: widths stay divisible by the fusion's heads
        seen.add(next(k for k in ("dim", "dropout", "heads")
                      if child.to_dict()["blocks"][diff[0]]["dense"].get(k)
                      != base.to_dict()["blocks"][diff[0]]["dense"].get(k)))
    assert seen == {"dim", "dropout", "heads"}


def test_live_key_ignores_dead_nodes():
    a = _arch([{"dense": {"op": "mlp", "dim": 8, "flat_inputs": [0]}},
               {"dense": {"op": "mlp", "dim": 4, "flat_inputs": [0]}}])
    b = _arch([{"dense": {"op": "mlp", "dim": 16, "flat_inputs": [0]}},  # dead: the head reads block 2 only
               {"dense": {"op": "mlp", "dim": 4, "flat_inputs": [0]}}])
    c = _arch([{"dense": {"op": "mlp", "dim": 8, "flat_inputs": [0]}},
               {"dense": {"op": "mlp", "dim": 5, "flat_inputs": [0]}}])
    assert a.key() != b.key() and a.live_key() == b.live_key()
    assert a.live_key() != c.live_key()
