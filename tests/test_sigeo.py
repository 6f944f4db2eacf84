"""SiGeo and the training-light proxies: the supernet is left untouched by scoring, the proxies are finite and
follow their definitions, the combination rule, and the sigeo strategy end to end (with resume)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rankcraft.data.spec import prepare_spec
from rankcraft.search.registry import get_strategy
from rankcraft.search.runner import run_search
from rankcraft.search.sigeo import (
    SiGeoConfig,
    default_coefficients,
    fixed_batches,
    gradient_proxies,
    score_candidates,
    sigeo_scores,
    subnet_gradients,
    synflow,
)
from rankcraft.search.space import get_space
from rankcraft.search.store import TrialStore
from rankcraft.search.supernet import Supernet
from rankcraft.search.tabular import sample_pool

DATA = {"recipe": "synthetic", "rows": 3000, "seed": 4}


@pytest.fixture(scope="module")
def setup():
    data = prepare_spec(DATA)
    space = get_space("tiny", raw_dense=bool(data.features.numeric))
    torch.manual_seed(0)
    net = Supernet(data.features, space, 8)
    archs = sample_pool(space, 6, seed=3)
    batches = fixed_batches(data.splits["train"], 4, 128, seed=1)
    return data, space, net, archs, batches


def test_scoring_leaves_the_supernet_unchanged(setup):
    _, _, net, archs, batches = setup
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = subnet_gradients(net, archs[0], batches, lr=0.5)
    synflow(net, archs[0], batches[0])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert next(net.parameters()).dtype == torch.float32
    # gradients of every batch, and the weights had moved by the last batch (steps between batches)
    name = "head_weight"
    assert g["grads"][name].shape[0] == 4
    assert not torch.equal(g["theta"][name], before[name])
    frozen = subnet_gradients(net, archs[0], batches, step=False)
    assert torch.equal(frozen["theta"][name], before[name])


def test_proxies_follow_their_definitions(setup):
    _, _, net, archs, batches = setup
    g = subnet_gradients(net, archs[1], batches, scope="last")
    p = gradient_proxies(g)
    assert set(g["grads"]) == {"head_weight", "head_bias"}
    gs = {k: v.double() for k, v in g["grads"].items()}
    ratio = 0.0
    for v in gs.values():
        sd = v.std(0, unbiased=False)
        ratio += float((v.abs().mean(0)[sd > 0] / sd[sd > 0]).sum())
    assert p["zico"] == pytest.approx(math.log(ratio))  # one module ('' = the supernet itself holds the head)
    dot = sum(float((g["theta"][k].double() * v.sum(0)).sum()) for k, v in gs.items())
    assert p["fr"] == pytest.approx(math.log(dot ** 2 + 1e-10))
    assert math.isfinite(p["loss"]) and p["loss"] > 0
    full = gradient_proxies(subnet_gradients(net, archs[1], batches))
    assert all(math.isfinite(v) for v in full.values())


def test_sigeo_combination_and_defaults():
    raw = [{"zico": 1.0, "fr": 0.0, "loss": 0.5}, {"zico": 3.0, "fr": 0.0, "loss": 0.4},
           {"zico": 2.0, "fr": 1.0, "loss": 0.6}]
    assert default_coefficients(0.0) == (1.0, 1.0, 0.0) and default_coefficients(0.1) == (1.0, 50.0, 1.0)
    s = sigeo_scores(raw, (1.0, 0.0, 0.0))
    assert np.argmax(s) == 1 and s.mean() == pytest.approx(0.0)  # z-scored ZiCo alone
    s_raw = sigeo_scores(raw, (1.0, 2.0, 1.0), normalise="none")
    assert s_raw.tolist() == pytest.approx([1.0 - 0.5, 3.0 - 0.4, 2.0 + 2.0 - 0.6])


def test_score_candidates_gives_every_proxy(setup):
    _, _, net, archs, batches = setup
    raw = score_candidates(net, archs, batches, SiGeoConfig(warmup=0.0), with_synflow=True)
    assert len(raw) == len(archs)
    for r in raw:
        assert {"sigeo", "zico", "fr", "loss", "gradnorm", "synflow"} <= set(r)
    # the scores differ between architectures (they rank something)
    assert len({round(r["zico"], 6) for r in raw}) > 1


def test_sigeo_strategy_end_to_end_and_resume(tmp_path):
    assert get_strategy("sigeo").trains_supernet
    cfg = {"data": DATA, "space": "tiny", "strategy": "sigeo", "budget": {"trials": 2}, "zoo": [],
           "train": {"batch_size": 256, "epochs": 1, "max_steps": 5, "lr_schedule": "constant", "seed": 1},
           "pool_size": 30, "sigeo": {"warmup": 0.5, "candidates": 8, "top_k": 2, "warmup_batch_size": 128,
                                      "score_batch_size": 128}}
    rep = run_search(cfg, tmp_path / "s", progress=False)
    store = TrialStore(tmp_path / "s" / "trials.db", create=False)
    scored = store.get_meta("sigeo_scores")
    assert len(scored) == 8
    trials = [t for t in store.trials() if t.strategy == "sigeo"]
    assert sorted(t.extra["sigeo_rank"] for t in trials) == [1, 2]
    best_two = sorted(scored, key=lambda r: -r["sigeo"])[:2]
    assert {t.extra["sigeo"] for t in trials} == {r["sigeo"] for r in best_two}
    assert rep["best"] is not None and (tmp_path / "s" / "sigeo-supernet" / "last.pt").exists()
    rep2 = run_search({}, tmp_path / "s", resume=True, progress=False)  # scores are kept: nothing re-run
    assert rep2["best"] == rep["best"]
