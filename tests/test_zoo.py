"""Model zoo: every registered model learns a planted signal, round-trips through a state_dict, is profiled, and
validates its hyperparameters; models also run on feature sets without numeric / multi-valued features."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from conftest import ZOO_FEATURES, adam_steps

from rankcraft.data.features import FeatureInfo, FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models import available_models, build_model
from rankcraft.models.catalog import is_multitask, requires_sequence
from rankcraft.search.space import get_space
from rankcraft.training.profile import flops_per_example

STEPS, BATCH, LR = 40, 256, 1e-2

FULL = FeatureSet(ZOO_FEATURES)
CAT_ONLY = FeatureSet(tuple(FeatureInfo(f"c{i}", "categorical", vocab_size=v)
                            for i, v in enumerate([30, 40, 20, 50, 25])))  # frappe-like
NO_MULTI = FeatureSet(tuple(f for f in FULL.features if f.kind != "multi_categorical"))
NO_NUMERIC = FeatureSet(tuple(f for f in FULL.features if f.kind != "numeric"))
WITH_SEQUENCE = FeatureSet(FULL.features + (FeatureInfo("s0", "sequence", vocab_size=30, max_len=6,
                                                        embedding_table="c0"),))

# Variants that exercise structural switches (trained like the defaults).
VARIANTS = [
    ("dcn", {"hidden_units": []}),
    ("dcnv2", {"model_structure": "stacked"}),
    ("dcnv2", {"model_structure": "crossnet_only"}),
    ("dcnv2", {"use_low_rank_mixture": True, "low_rank": 8, "num_experts": 3}),
    ("dcnv2", {"model_structure": "stacked", "use_low_rank_mixture": True}),
    ("dlrm", {"self_interaction": True, "bottom_mlp_units": []}),
    ("dlrm", {"interaction_op": "cat"}),
    ("dnn", {"linear_init": "xavier_normal"}),
    ("autoint", {"hidden_units": []}),
    ("autoint", {"use_wide": True, "layer_norm": True, "use_scale": True, "attention_layers": 1}),
    ("xdeepfm", {"cin_split_half": False, "cin_layer_units": [16, 15], "hidden_units": []}),
    ("finalmlp", {"use_fs": False}),
    ("finalmlp", {"fs1_context": ["c0"], "fs2_context": ["m0", "n1"], "num_heads": 4}),
    ("masknet", {"model_type": "serial"}),
    ("masknet", {"model_type": "serial", "hidden_units": [], "emb_layernorm": False, "net_layernorm": False}),
]
# models with required hyperparameters: `arch` (a searched architecture) gets a member of the tiny search space
# (it has its own tests in test_search_space)
#: models that wrap other models and return several heads for one task (tested in their own files)
WRAPPERS = ("ensemble",)
REQUIRED = {"arch": {"arch": get_space("tiny").sample(random.Random(0)).to_dict()}}
# behaviour-sequence models need a sequence feature; they have their own tests (test_sequence_models, test_mos);
# multi-task models return named heads and have theirs (test_multitask_models)
CASES = [(m, dict(REQUIRED.get(m, {}))) for m in available_models()
         if not requires_sequence(m) and not is_multitask(m) and m not in WRAPPERS] + VARIANTS
CASE_IDS = [m + "".join(f"-{k}={v}" for k, v in p.items() if k != "arch") for m, p in CASES]


def make_data(fs: FeatureSet, n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ids/values with labels drawn from a planted logistic model over them."""
    g = torch.Generator().manual_seed(seed)
    batch: dict[str, torch.Tensor] = {}
    logit = torch.zeros(n)
    if fs.categorical:
        cols = []
        for f in fs.categorical:
            ids = torch.randint(2, f.vocab_size, (n,), generator=g)
            logit += 1.5 * torch.randn(f.vocab_size, generator=g)[ids]
            cols.append(ids)
        batch["cat"] = torch.stack(cols, dim=1)
    if fs.numeric:
        num = torch.randn(n, len(fs.numeric), generator=g)
        logit += num @ torch.linspace(-1.0, 1.0, len(fs.numeric))
        batch["num"] = num
    for f in fs.multi + fs.sequences:
        ids = torch.randint(2, f.vocab_size, (n, f.max_len), generator=g)
        ids[torch.rand(n, f.max_len, generator=g) < 0.3] = 0  # padding
        w = torch.randn(f.vocab_size, generator=g)
        w[0] = 0
        logit += 2.0 * w[ids].sum(1) / (ids != 0).sum(1).clamp_min(1)
        batch[f.name] = ids
    batch["label"] = torch.bernoulli(torch.sigmoid(2.0 * logit), generator=g)
    return batch


def train(model: torch.nn.Module, data: dict[str, torch.Tensor], steps: int = STEPS) -> list[float]:
    return adam_steps(model, data, steps=steps, lr=LR, batch=BATCH)


def assert_learns(losses: list[float]) -> None:
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert last < 0.9 * first, f"loss did not fall clearly: first5={first:.4f} last5={last:.4f}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def full_data() -> dict[str, torch.Tensor]:
    return make_data(FULL, 2048)


def test_zoo_contains_the_expected_models():
    assert {"lr", "fm", "widedeep", "deepfm", "dcn", "dcnv2", "dlrm", "autoint", "xdeepfm", "finalmlp",
            "masknet"} <= set(available_models())


@pytest.mark.parametrize(("name", "params"), CASES, ids=CASE_IDS)
def test_model_trains_roundtrips_and_profiles(name, params, full_data, tmp_path):
    model = build_model(name, FULL, params)
    assert_learns(train(model, full_data))

    probe = {k: v[:64] for k, v in full_data.items()}
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1234)  # a fresh model with different initial weights
    fresh = build_model(name, FULL, params)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert not torch.equal(model(probe), fresh(probe))
        fresh.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(model(probe), fresh(probe))

    assert flops_per_example(model, probe) > 0


NON_SEQUENCE = [m for m in available_models() if not requires_sequence(m) and not is_multitask(m)
                and m not in WRAPPERS]


@pytest.mark.parametrize("name", NON_SEQUENCE)
def test_model_learns_on_categorical_only_features(name):
    """frappe-like input: no numeric and no multi-valued features."""
    model = build_model(name, CAT_ONLY, REQUIRED.get(name, {}))
    assert_learns(train(model, make_data(CAT_ONLY, 2048, seed=1)))


@pytest.mark.parametrize("fs", [NO_MULTI, NO_NUMERIC, WITH_SEQUENCE], ids=["no_multi", "no_numeric", "sequence"])
@pytest.mark.parametrize("name", NON_SEQUENCE)
def test_model_runs_on_other_feature_sets(name, fs):
    model = build_model(name, fs, {**REQUIRED.get(name, {}), "fused_embedding": False})
    data = make_data(fs, 32, seed=2)
    logits = model(data)
    assert logits.shape == (32,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, data["label"]).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads), "every parameter should receive a gradient"


@pytest.mark.parametrize("name", available_models())
def test_unknown_or_invalid_hyperparameters_raise_config_error(name):
    with pytest.raises(ConfigError, match="no_such_param"):
        build_model(name, FULL, {**REQUIRED.get(name, {}), "no_such_param": 1})
    with pytest.raises(ConfigError):
        build_model(name, FULL, {**REQUIRED.get(name, {}), "embedding_dim": 0})


@pytest.mark.parametrize("name", [m for m in available_models() if requires_sequence(m)])
def test_sequence_models_refuse_data_without_a_sequence(name):
    with pytest.raises(ConfigError, match="sequence"):
        build_model(name, FULL, {})


@pytest.mark.parametrize(("name", "params"), [
    ("dcnv2", {"model_structure": "diagonal"}),
    ("dcnv2", {"activation": "nope"}),
    ("xdeepfm", {"cin_layer_units": [15, 16]}),  # odd non-last size with split_half
    ("finalmlp", {"fs1_context": ["no_such_feature"]}),
    ("finalmlp", {"num_heads": 7}),  # 400 not divisible by 7
    ("masknet", {"model_type": "mixed"}),
    ("widedeep", {"hidden_units": [0]}),
])
def test_model_specific_validation(name, params):
    with pytest.raises(ConfigError):
        build_model(name, FULL, params)
