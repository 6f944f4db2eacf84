"""Behaviour-sequence models (din, transformer, interformer): they learn a signal that lives only in the history,
round-trip through a state_dict, are profiled, handle empty histories, mask padding, and reject feature sets
without a usable sequence."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import adam_steps, shared

from rankcraft.data.features import FeatureInfo, FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models import build_model
from rankcraft.training.profile import flops_per_example

SEQ_MODELS = ["din", "transformer", "interformer"]
STEPS, BATCH, LR = 60, 256, 1e-2
ROWS = STEPS * BATCH  # one pass: every step sees new rows, so a falling loss is generalisation, not memorisation
N_ITEMS, N_THEMES, MAX_LEN = 60, 4, 8  # item ids 2..N_ITEMS+1; theme ids 2..N_THEMES+1

FS = FeatureSet((
    FeatureInfo("user", "categorical", source="user", vocab_size=400),
    FeatureInfo("item", "categorical", source="item", vocab_size=N_ITEMS + 2),
    FeatureInfo("theme", "categorical", source="item", vocab_size=N_THEMES + 2),
    FeatureInfo("hour", "categorical", source="context", vocab_size=26),
    FeatureInfo("price", "numeric", source="item"),
    FeatureInfo("hist_items", "sequence", source="user", vocab_size=N_ITEMS + 2, max_len=MAX_LEN,
                embedding_table="item", has_timestamps=True),
    FeatureInfo("hist_themes", "sequence", source="user", vocab_size=N_THEMES + 2, max_len=MAX_LEN,
                embedding_table="theme"),
), has_group=True)
NO_SEQUENCE = FeatureSet(tuple(f for f in FS.features if f.kind != "sequence"))

# (model, params) trained on the planted signal; structural variants of each model included.
TRAIN_CASES = [
    ("din", {}),
    ("din", {"attention_softmax": True}),
    ("transformer", {}),
    ("transformer", {"time_encoding": "both"}),
    ("interformer", {}),
    ("interformer", {"interaction": "dcnv2", "gating": "literal", "position": "learned", "seq_ffn_mult": 2,
                     "time_encoding": "none"}),
]
# Variants only checked for finite outputs, gradients, padding masking and state_dict round trips.
OTHER_CASES = [
    ("interformer", {"interaction": "dot", "num_pma": 0, "num_recent": 0, "position": "none"}),
    ("interformer", {"information_flow": "none", "target_token": False, "time_encoding": "recency"}),
    ("interformer", {"information_flow": "seq_to_nonseq", "gating": "none", "num_layers": 1}),
    ("interformer", {"information_flow": "nonseq_to_seq", "personalized_ffn": False, "num_recent": 12}),
    ("transformer", {"num_layers": 2, "num_heads": 4, "sequence": "hist_items"}),
    ("din", {"fused_embedding": False, "batch_norm": True, "dropout": 0.1}),
]
ALL_CASES = TRAIN_CASES + OTHER_CASES


def case_id(name: str, params: dict) -> str:
    return name + "".join(f"-{k}={v}" for k, v in params.items())


def make_data(n: int, seed: int = 0, lengths: tuple[int, int] = (0, MAX_LEN - 2)) -> dict[str, torch.Tensor]:
    """Rows whose label is 1 (w.p. 0.95; else 0.05) iff the target item's theme occurs in the history.

    Every item has one of ``N_THEMES`` themes; histories hold ``lengths[0]..lengths[1]`` random items (left-padded,
    most recent last) with increasing timestamps. No non-sequence feature carries the signal: a model must look at
    the history (its length alone already helps, as longer histories hit more often; matching the target's theme
    against the events is the rest).
    """
    g = torch.Generator().manual_seed(seed)
    item_theme = torch.zeros(N_ITEMS + 2, dtype=torch.long)
    item_theme[2:] = 2 + torch.arange(N_ITEMS) % N_THEMES
    item = torch.randint(2, N_ITEMS + 2, (n,), generator=g)
    length = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g)
    hist = torch.randint(2, N_ITEMS + 2, (n, MAX_LEN), generator=g)
    pos = torch.arange(MAX_LEN).expand(n, -1)
    real = pos >= MAX_LEN - length.unsqueeze(1)
    hist = hist * real
    themes = item_theme[hist] * real
    ts = 1.6e9 + torch.cumsum(torch.rand(n, MAX_LEN, generator=g, dtype=torch.float64) * 86_400.0, dim=1)
    ts = ts * real
    hit = (themes == item_theme[item].unsqueeze(1)).any(1)
    label = torch.bernoulli(torch.where(hit, 0.95, 0.05), generator=g)
    user = torch.randint(2, 400, (n,), generator=g)
    cat = torch.stack([user, item, item_theme[item], torch.randint(2, 26, (n,), generator=g)], dim=1)
    return {"cat": cat, "num": torch.randn(n, 1, generator=g), "hist_items": hist, "hist_items__ts": ts,
            "hist_themes": themes, "label": label, "group": user}


def train(model: torch.nn.Module, data: dict[str, torch.Tensor], steps: int = STEPS) -> list[float]:
    return adam_steps(model, data, steps=steps, lr=LR, batch=BATCH)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny and op-count bound: one intra-op thread is faster, and much faster on a busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def data() -> dict[str, torch.Tensor]:
    return make_data(ROWS)


@pytest.fixture(scope="module")
def probe() -> dict[str, torch.Tensor]:
    return make_data(64, seed=7)


def eval_logits(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(batch)


@pytest.fixture(scope="module")
def held_out() -> dict[str, torch.Tensor]:
    return make_data(2048, seed=3)


def bce(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    return F.binary_cross_entropy_with_logits(eval_logits(model, batch), batch["label"]).item()


@pytest.mark.parametrize(("name", "params"), TRAIN_CASES, ids=[case_id(*c) for c in TRAIN_CASES])
def test_learns_signal_in_history_roundtrips_and_profiles(name, params, data, held_out, probe, tmp_path):
    model = build_model(name, FS, params)
    losses = train(model, data)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10]) - 0.3, losses  # mean of 10 falls by > 0.03

    # one pass over fresh rows, so the fall is generalisation: on held-out rows the model clearly beats the best
    # constant predictor, which is also the best any model ignoring the history can do (≈ 0.69 here)
    p = held_out["label"].mean().item()
    base = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    held = bce(model, held_out)
    assert held < 0.88 * base, (held, base)
    # and it relies on the history: giving each row another row's history hurts clearly
    perm = torch.roll(torch.arange(2048), 1)
    shuffled = dict(held_out, **{k: held_out[k][perm] for k in ("hist_items", "hist_items__ts", "hist_themes")})
    assert bce(model, shuffled) > held + 0.15, (held, bce(model, shuffled))

    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    torch.manual_seed(1234)
    fresh = build_model(name, FS, params)
    assert not torch.equal(eval_logits(model, probe), eval_logits(fresh, probe))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(eval_logits(model, probe), eval_logits(fresh, probe))

    assert flops_per_example(model, probe) > 0


@pytest.mark.parametrize(("name", "params"), OTHER_CASES, ids=[case_id(*c) for c in OTHER_CASES])
def test_variants_run_backprop_and_roundtrip(name, params, probe, tmp_path):
    model = build_model(name, FS, params)
    model.train()
    logits = model(probe)
    assert logits.shape == (64,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, probe["label"]).backward()
    assert all(p.grad is not None for p in model.parameters()), "every parameter should receive a gradient"
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = build_model(name, FS, params)
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(eval_logits(model, probe), eval_logits(fresh, probe))


def _perturb_padding(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Garbage wherever the main sequence is padding: the padding rows of both tables, side-sequence ids and
    timestamps at padded positions."""
    emb = model.inputs.embedding
    with torch.no_grad():
        for table in ("item", "theme"):
            if emb.fused:
                emb.table.weight[emb.offset_of[table]] = torch.randn(emb.dim) * 5.0
            else:
                emb.tables[table].weight[0] = torch.randn(emb.dim) * 5.0
    pad = batch["hist_items"] == 0
    out = dict(batch)
    out["hist_themes"] = torch.where(pad, torch.randint(2, N_THEMES + 2, pad.shape), batch["hist_themes"])
    out["hist_items__ts"] = torch.where(pad, torch.rand(pad.shape, dtype=torch.float64) * 1e9,
                                        batch["hist_items__ts"])
    return out


@pytest.mark.parametrize(("name", "params"), ALL_CASES, ids=[case_id(*c) for c in ALL_CASES])
def test_padding_is_masked_and_empty_history_is_finite(name, params, probe):
    model = build_model(name, FS, params)
    model.eval()
    with torch.no_grad():
        # make the layers non-trivial so that leaks would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    base = eval_logits(model, probe)

    # stripping leading columns that are padding in every row changes nothing (positions count from the end)
    k = int((probe["hist_items"] != 0).sum(1).max())
    assert k < MAX_LEN
    narrow = {key: (v[:, -k:] if key.startswith("hist_") else v) for key, v in probe.items()}
    torch.testing.assert_close(eval_logits(model, narrow), base, rtol=1e-5, atol=1e-5)

    # anything at padded positions (padding rows of the tables, side ids, timestamps) is ignored
    perturbed = _perturb_padding(model, probe)
    torch.testing.assert_close(eval_logits(model, perturbed), base, rtol=1e-5, atol=1e-5)

    # ... while a real event does matter: change the most recent event of every row that has one
    changed = dict(probe)
    has = probe["hist_items"][:, -1] != 0
    changed["hist_items"] = probe["hist_items"].clone()
    changed["hist_items"][has, -1] = 2 + (probe["hist_items"][has, -1] - 1) % N_ITEMS
    moved = (eval_logits(model, changed) - eval_logits(model, perturbed)).abs()
    assert (moved[has] > 0).all() and moved[has].mean() > 1e-4 and moved[~has].max() < 1e-6

    # a row with no history at all, alone and mixed with others, gives finite logits
    empty = dict(probe)
    empty["hist_items"] = probe["hist_items"].clone()
    empty["hist_items"][:4] = 0
    empty["hist_themes"] = probe["hist_themes"] * (empty["hist_items"] != 0)
    empty["hist_items__ts"] = probe["hist_items__ts"] * (empty["hist_items"] != 0)
    out = eval_logits(model, empty)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[4:], eval_logits(model, perturbed)[4:], rtol=1e-5, atol=1e-5)
    alone = eval_logits(model, {key: v[:1] for key, v in empty.items()})
    assert torch.isfinite(alone).all()


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_needs_a_sequence_feature(name):
    with pytest.raises(ConfigError, match="sequence"):
        build_model(name, NO_SEQUENCE, {})
    with pytest.raises(ConfigError, match="no_such_sequence"):
        build_model(name, FS, {"sequence": "no_such_sequence"})
    with pytest.raises(ConfigError, match="not a sequence"):
        build_model(name, FS, {"sequence": "user"})
    # a sequence whose table no categorical feature uses has no target
    orphan = FeatureSet(NO_SEQUENCE.features + (FeatureInfo("clicks", "sequence", vocab_size=30, max_len=4),))
    with pytest.raises(ConfigError, match="target"):
        build_model(name, orphan, {})


@pytest.mark.parametrize(("name", "params"), [
    ("transformer", {"num_heads": 3}),
    ("interformer", {"num_heads": 3}),
    ("interformer", {"num_heads": 16}),  # head width 1: RoPE needs an even one
    ("interformer", {"interaction": "dhen2"}),
    ("interformer", {"information_flow": "both"}),
    ("din", {"attention_activation": "nope"}),
    ("din", {"attention_hidden_units": [0]}),
])
def test_invalid_hyperparameters_raise_config_error(name, params):
    with pytest.raises(ConfigError):
        build_model(name, FS, params)


def test_side_sequence_can_be_the_main_sequence():
    """``sequence`` picks the main sequence; the other one becomes its side sequence."""
    model = build_model("din", FS, {"sequence": "hist_themes"})
    assert model.inputs.main == "hist_themes" and model.inputs.target == "theme"
    assert torch.isfinite(eval_logits(model, make_data(16))).all()


@pytest.fixture(scope="module")
def ml100k_seq():
    from rankcraft.data.catalog import get_source
    from rankcraft.data.dataset import prepare

    return prepare(get_source("ml-100k-seq", str(shared("ml-100k"))))


@pytest.mark.parametrize("name", SEQ_MODELS)
def test_real_ml100k_seq_batch(name, ml100k_seq):
    batch = next(iter(ml100k_seq.splits["train"].batches(256)))
    model = build_model(name, ml100k_seq.features, {})
    model.train()
    logits = model(batch)
    assert logits.shape == (256,) and torch.isfinite(logits).all()
    F.binary_cross_entropy_with_logits(logits, batch["label"]).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
