"""Multi-task zoo (SharedBottom, MMoE, PLE, ESMM): named heads and shapes, gradients to every expert and tower,
gates, ESMM's CTCVR = CTR × CVR, task validation, learning a planted two-task signal with a hand-written BCE loop,
state-dict round trips, and comparable parameter counts for the census benchmark configurations."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import ZOO_FEATURES
from sklearn.metrics import roc_auc_score

from rankcraft.cli.main import main as cli_main
from rankcraft.data.features import FeatureInfo, FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.catalog import (
    available_models,
    build_model,
    is_multitask,
    validate_params,
)
from rankcraft.models.multitask_common import parameter_count
from rankcraft.models.output import ModelOutput
from rankcraft.training.profile import flops_per_example

LABELS = ("a", "b")
FS = FeatureSet(ZOO_FEATURES, labels=LABELS)
CAT_ONLY = FeatureSet(tuple(f for f in FS.features if f.kind == "categorical"), labels=LABELS)
WITH_SEQUENCE = FeatureSet(FS.features + (FeatureInfo("s0", "sequence", vocab_size=30, max_len=6,
                                                      embedding_table="c0"),), labels=LABELS)

SMALL = {"embedding_dim": 8, "tower_units": [16]}
CASES = [
    ("sharedbottom", {**SMALL, "bottom_units": [64, 32]}),
    ("mmoe", {**SMALL, "num_experts": 3, "expert_units": [32]}),
    ("mmoe", {**SMALL, "num_experts": 2, "expert_units": [32, 16], "gate_units": [8], "batch_norm": True,
              "dropout": 0.1}),
    ("ple", {**SMALL, "expert_units": [32]}),
    ("ple", {**SMALL, "num_levels": 2, "specific_experts": 2, "shared_experts": 1, "expert_units": [32, 16]}),
    ("ple", {**SMALL, "num_levels": 3, "specific_experts": 0, "shared_experts": 2, "expert_units": [16]}),
    ("ple", {**SMALL, "num_levels": 2, "specific_experts": 1, "shared_experts": 0, "expert_units": [16]}),
]
IDS = [m + "".join(f"-{k}={v}" for k, v in p.items() if k not in SMALL) for m, p in CASES]
ESMM_SMALL = {"embedding_dim": 8, "ctr_hidden_units": [32, 16], "cvr_hidden_units": [32, 16]}


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeded, and one intra-op thread: these small models train much faster (and with less variance in time on a
    shared machine) without thread synchronisation."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(fs: FeatureSet, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    batch = {"cat": torch.stack([torch.randint(2, f.vocab_size, (n,), generator=g) for f in fs.categorical], 1)}
    if fs.numeric:
        batch["num"] = torch.randn(n, len(fs.numeric), generator=g)
    for f in fs.multi + fs.sequences:
        ids = torch.randint(2, f.vocab_size, (n, f.max_len), generator=g)
        ids[torch.rand(n, f.max_len, generator=g) < 0.3] = 0
        batch[f.name] = ids
    return batch


def planted_logit(fs: FeatureSet, batch: dict[str, torch.Tensor], g: torch.Generator, scale: float) -> torch.Tensor:
    """``Σ_f w_f[x_f]`` (+ numeric and multi-valued parts) with random weights drawn from ``g``."""
    n = batch["cat"].shape[0]
    z = torch.zeros(n)
    for j, f in enumerate(fs.categorical):
        z += scale * torch.randn(f.vocab_size, generator=g)[batch["cat"][:, j]]
    if fs.numeric:
        z += batch["num"] @ (scale * torch.randn(len(fs.numeric), generator=g))
    for f in fs.multi:
        w = torch.randn(f.vocab_size, generator=g)
        w[0] = 0
        ids = batch[f.name]
        z += scale * w[ids].sum(1) / (ids != 0).sum(1).clamp_min(1)
    return z


def planted_logits(fs: FeatureSet, batch: dict[str, torch.Tensor], world: int, k: int) -> list[torch.Tensor]:
    """``k`` planted components; the weights depend on ``world`` only, so every sample of a world shares them."""
    g = torch.Generator().manual_seed(10_000 + world)
    return [planted_logit(fs, batch, g, 0.8) for _ in range(k)]


def two_task_data(fs: FeatureSet, n: int, seed: int = 0, world: int = 0):
    """Labels of two tasks whose true logits share one planted component and each have their own:
    ``z_a = s + o_a``, ``z_b = s − o_b``. Returns the batch (``label``, ``labels [n, 2]``) and the true logits."""
    g = torch.Generator().manual_seed(seed)
    batch = make_inputs(fs, n, g)
    s, oa, ob = planted_logits(fs, batch, world, 3)
    z = torch.stack([s + oa, s - ob], 1)
    y = torch.bernoulli(torch.sigmoid(z), generator=g)
    batch["labels"], batch["label"] = y, y[:, 0]
    return batch, z


def funnel_data(fs: FeatureSet, n: int, seed: int = 0, world: int = 0):
    """click ~ σ(z_ctr), conversion ~ σ(z_cvr) observed after a click; labels ``[click, purchase]``."""
    g = torch.Generator().manual_seed(seed)
    batch = make_inputs(fs, n, g)
    s, oc, ov = planted_logits(fs, batch, world, 3)
    z = torch.stack([s + oc - 0.5, 0.5 * s + ov], 1)
    click = torch.bernoulli(torch.sigmoid(z[:, 0]), generator=g)
    conv = torch.bernoulli(torch.sigmoid(z[:, 1]), generator=g)
    batch["labels"] = torch.stack([click, click * conv], 1)
    batch["label"] = click
    return batch, z


def bce_loss(out: ModelOutput, batch: dict[str, torch.Tensor], heads: dict[str, int]) -> torch.Tensor:
    """Sum over ``heads`` (head → label column) of the mean BCE."""
    return sum(F.binary_cross_entropy_with_logits(out.logits[h], batch["labels"][:, j]) for h, j in heads.items())


def train(model, data, heads: dict[str, int], *, steps: int, lr: float = 3e-3, batch: int = 256) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = data["label"].shape[0]
    losses = []
    model.train()
    for step in range(steps):
        start = (step * batch) % (n - batch + 1)
        b = {k: v[start:start + batch] for k, v in data.items()}
        loss = bce_loss(model(b), b, heads)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def predict(model, data) -> dict[str, torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return model(data).logits


# ------------------------------------------------------------------------------------------ structure
def test_multitask_models_are_registered_and_listed(capsys):
    assert {"sharedbottom", "mmoe", "ple", "esmm"} <= {m for m in available_models() if is_multitask(m)}
    assert not is_multitask("dnn")
    assert cli_main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["mmoe"]["num_experts"] == 4 and listed["mmoe"]["tasks"] is None
    assert {"num_levels", "specific_experts", "shared_experts", "expert_units", "gate_units",
            "tower_units"} <= set(listed["ple"])
    assert "bottom_units" in listed["sharedbottom"]
    assert {"ctr_hidden_units", "cvr_hidden_units"} <= set(listed["esmm"]) and "tasks" not in listed["esmm"]


@pytest.mark.parametrize(("name", "params"), CASES, ids=IDS)
def test_heads_shapes_and_gradients(name, params):
    model = build_model(name, FS, params)
    data, _ = two_task_data(FS, 64)
    model.train()
    out = model(data)
    assert isinstance(out, ModelOutput) and out.aux_loss is None
    assert out.heads == list(LABELS) == model.heads
    for h in LABELS:
        assert out.logits[h].shape == (64,) and out.logits[h].dtype == torch.float32
        assert torch.isfinite(out.logits[h]).all()
    bce_loss(out, data, {"a": 0, "b": 1}).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} gets no gradient"
        if not pname.startswith("embedding"):  # embedding rows of ids absent from the batch stay 0
            assert p.grad.abs().sum() > 0, f"{pname} has a zero gradient"


def test_each_head_depends_on_its_own_tower_and_every_expert():
    """A loss on one head reaches every expert (softmax gates weight all of them) but not the other tower."""
    for name, params in [CASES[1], CASES[3]]:
        model = build_model(name, FS, params)
        data, _ = two_task_data(FS, 64)
        F.binary_cross_entropy_with_logits(model(data).logits["a"], data["labels"][:, 0]).backward()
        experts = [n for n, p in model.named_parameters() if "experts" in n and "specific.1" not in n]
        assert experts and all(model.get_parameter(n).grad.abs().sum() > 0 for n in experts), name
        other = [p.grad for n, p in model.named_parameters() if n.startswith("towers.towers.1")]
        assert other and all(g is None or g.abs().sum() == 0 for g in other), name


@pytest.mark.parametrize(("name", "params"), [c for c in CASES if c[0] != "sharedbottom"],
                         ids=[i for c, i in zip(CASES, IDS) if c[0] != "sharedbottom"])
def test_gates_are_distributions(name, params):
    model = build_model(name, FS, params)
    data, _ = two_task_data(FS, 32)
    gates = model.gate_weights(data)
    if name == "mmoe":
        assert set(gates) == set(LABELS)
        assert all(g.shape == (32, params["num_experts"]) for g in gates.values())
    else:
        p = validate_params(name, params)
        L, ms, ma = p.num_levels, p.specific_experts, p.shared_experts
        expect = {f"level{l}/{t}": ms + ma for l in range(1, L + 1) for t in LABELS}
        if ma:
            expect |= {f"level{l}/shared": 2 * ms + ma for l in range(1, L)}
        assert {k: g.shape for k, g in gates.items()} == {k: (32, k_) for k, k_ in expect.items()}
    for g in gates.values():
        assert (g > 0).all()
        torch.testing.assert_close(g.sum(-1), torch.ones(32), atol=1e-6, rtol=0)


def test_tasks_param_names_the_heads():
    model = build_model("mmoe", FS, {**CASES[1][1], "tasks": ["x", "y", "z"]})
    out = model(two_task_data(FS, 16)[0])
    assert out.heads == ["x", "y", "z"] == model.heads
    assert len(model.moe.gates) == 3 and len(model.towers.towers) == 3
    assert build_model("ple", FS, {"tasks": ["only"]}).heads == ["only"]


@pytest.mark.parametrize("name", ["sharedbottom", "mmoe", "ple"])
@pytest.mark.parametrize(("tasks", "match"), [
    ([], "tasks.*at least one"),
    (["a", "a"], "tasks.*unique.*'a'"),
    (["a", "b/c"], "tasks.*'b/c'"),
    (["a", ""], "tasks"),
])
def test_bad_tasks_are_named_errors(name, tasks, match):
    with pytest.raises(ConfigError, match=match):
        build_model(name, FS, {"tasks": tasks})


def test_other_invalid_hyperparameters():
    for name, params in [("mmoe", {"num_experts": 0}), ("mmoe", {"expert_units": []}),
                         ("ple", {"specific_experts": 0, "shared_experts": 0}), ("ple", {"num_levels": 0}),
                         ("sharedbottom", {"bottom_units": []}), ("esmm", {"tasks": ["a"]}),
                         ("esmm", {"activation": "nope"})]:
        with pytest.raises(ConfigError):
            build_model(name, FS, params)


def test_labels_unusable_as_head_names_are_a_named_error():
    fs = FeatureSet(FS.features, labels=("has space", "b"))
    with pytest.raises(ConfigError, match="schema labels.*'tasks'"):
        build_model("mmoe", fs, {})
    assert build_model("mmoe", fs, {"tasks": ["a", "b"]}).heads == ["a", "b"]


# ------------------------------------------------------------------------------------------ ESMM
def test_esmm_heads_and_ctcvr_is_the_product():
    model = build_model("esmm", FS, ESMM_SMALL)
    data, _ = funnel_data(FS, 128)
    out = model(data)
    assert out.heads == ["ctr", "cvr", "ctcvr"] == model.heads
    p = {h: torch.sigmoid(v.double()) for h, v in out.logits.items()}
    torch.testing.assert_close(p["ctcvr"], p["ctr"] * p["cvr"], atol=1e-6, rtol=0)
    # confident heads (large |logit|) too: the product is computed in log space
    with torch.no_grad():
        model.ctr_tower.net[-1].bias.fill_(9.0)
        model.cvr_tower.net[-1].bias.fill_(-12.0)
    out = model(data)
    assert all(torch.isfinite(v).all() for v in out.logits.values())
    p = {h: torch.sigmoid(v.double()) for h, v in out.logits.items()}
    torch.testing.assert_close(p["ctcvr"], p["ctr"] * p["cvr"], atol=1e-6, rtol=1e-4)


def test_esmm_cvr_is_trained_through_ctcvr_only():
    """With ESMM's supervision (ctr on click, ctcvr on purchase) the CVR tower gets gradient from ctcvr alone."""
    model = build_model("esmm", FS, ESMM_SMALL)
    data, _ = funnel_data(FS, 64)
    out = model(data)
    F.binary_cross_entropy_with_logits(out.logits["ctr"], data["labels"][:, 0]).backward(retain_graph=True)
    assert all(p.grad is None for p in model.cvr_tower.parameters())
    F.binary_cross_entropy_with_logits(out.logits["ctcvr"], data["labels"][:, 1]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.cvr_tower.parameters())


def test_esmm_learns_cvr_over_the_entire_space():
    data, z = funnel_data(FS, 12_288, seed=3)
    model = build_model("esmm", FS, ESMM_SMALL)
    losses = train(model, data, {"ctr": 0, "ctcvr": 1}, steps=400, lr=5e-3)
    assert sum(losses[-20:]) < 0.85 * sum(losses[:20])
    test, zt = funnel_data(FS, 4096, seed=4)
    out = predict(model, test)
    assert roc_auc_score(test["labels"][:, 0], out["ctr"]) > 0.75
    assert roc_auc_score(test["labels"][:, 1], out["ctcvr"]) > 0.75
    # the unsupervised cvr head ranks impressions by their *true* CVR (correlation with the planted logit)
    corr = torch.corrcoef(torch.stack([out["cvr"], out["ctr"], zt[:, 1]]))
    assert corr[0, 2] > 0.8, f"cvr head vs true CVR logit: corr {corr[0, 2]:.3f}"
    assert corr[0, 2] > corr[1, 2] + 0.3, "the cvr head should not merely follow the ctr head"


# ------------------------------------------------------------------------------------------ learning
@pytest.mark.parametrize(("name", "params"), [CASES[0], CASES[1], CASES[3], CASES[4]],
                         ids=[IDS[0], IDS[1], IDS[3], IDS[4]])
def test_learns_a_planted_two_task_signal(name, params):
    data, _ = two_task_data(FS, 8192, seed=1)
    model = build_model(name, FS, params)
    losses = train(model, data, {"a": 0, "b": 1}, steps=300)
    assert all(map(lambda x: x == x, losses))
    test, zt = two_task_data(FS, 4096, seed=2)
    out = predict(model, test)
    for j, h in enumerate(LABELS):
        auc = roc_auc_score(test["labels"][:, j], out[h])
        best = roc_auc_score(test["labels"][:, j], zt[:, j])  # the Bayes-optimal ranking
        assert auc > best - 0.03, f"{name} head {h}: AUC {auc:.3f} vs planted {best:.3f}"
    # the heads learned different functions (the tasks' logits share only part of their structure)
    assert torch.corrcoef(torch.stack([out["a"], out["b"]]))[0, 1] < 0.8


@pytest.mark.parametrize(("name", "params"), CASES[:2] + CASES[3:5] + [("esmm", ESMM_SMALL)],
                         ids=IDS[:2] + IDS[3:5] + ["esmm"])
def test_state_dict_roundtrip_and_flops(name, params, tmp_path):
    model = build_model(name, FS, params)
    data, _ = two_task_data(FS, 512)
    train(model, data, {model.heads[0]: 0, model.heads[1]: 1}, steps=5)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.manual_seed(1234)
    fresh = build_model(name, FS, params)
    a, b = predict(model, data), predict(fresh, data)
    assert not torch.equal(a[model.heads[0]], b[model.heads[0]])
    fresh.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    b = predict(fresh, data)
    assert all(torch.equal(a[h], b[h]) for h in model.heads)
    assert flops_per_example(model, {k: v[:32] for k, v in data.items()}) > 0


@pytest.mark.parametrize("fs", [CAT_ONLY, WITH_SEQUENCE], ids=["categorical_only", "sequence"])
@pytest.mark.parametrize("name", ["sharedbottom", "mmoe", "ple", "esmm"])
def test_runs_on_other_feature_sets(name, fs):
    model = build_model(name, fs, {"embedding_dim": 4, "fused_embedding": False})
    data = make_inputs(fs, 16, torch.Generator().manual_seed(0))
    out = model(data)
    assert all(v.shape == (16,) and torch.isfinite(v).all() for v in out.logits.values())
    sum(v.sum() for v in out.logits.values()).backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------------ parameter counts
#: The census-income benchmark configurations (docs/multitask.md): defaults of the multi-task models and two
#: single-task DNNs, all with embedding_dim 10.
CENSUS_CONFIGS = {
    "sharedbottom": {},
    "mmoe": {},
    "ple": {},
    "dnn": {"hidden_units": [256, 64]},  # one per task: counted twice
}


def census_like_features() -> FeatureSet:
    """The census recipe's layout: 32 categorical and 7 numeric features, labels income and marital (vocabulary
    sizes only change the embedding tables, identical for every model with the same embedding width)."""
    from rankcraft.data.census import census_schema

    schema = census_schema()
    return FeatureSet(tuple(FeatureInfo(f.name, f.type, vocab_size=20 if f.type == "categorical" else 0)
                            for f in schema.features), labels=tuple(schema.label_names))


def census_parameter_counts(fs: FeatureSet, *, embeddings: bool) -> dict[str, int]:
    counts = {}
    for name, params in CENSUS_CONFIGS.items():
        n = parameter_count(build_model(name, fs, params), embeddings=embeddings)
        counts["2 x dnn" if name == "dnn" else name] = 2 * n if name == "dnn" else n
    return counts


def test_census_benchmark_configs_have_comparable_parameter_counts():
    fs = census_like_features()
    assert len(fs.features) == 39 and len(fs.numeric) == 7
    counts = census_parameter_counts(fs, embeddings=False)
    assert max(counts.values()) <= 1.10 * min(counts.values()), counts
    # the numbers recorded in docs/multitask.md
    assert counts == {"sharedbottom": 237_250, "mmoe": 240_570, "ple": 239_788, "2 x dnn": 233_218}
