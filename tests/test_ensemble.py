"""The collaborative ensemble (CETNet): private members, confidence fusion, the collaborative term, the ensemble
objective, training, reload and export, and its named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rankcraft.data.spec import prepare_spec
from rankcraft.errors import ConfigError
from rankcraft.models.catalog import build_model
from rankcraft.models.ensemble import negation_entropy
from rankcraft.training.objectives import build_objective

DATA = {"recipe": "synthetic", "rows": 4000, "seed": 5}
MEMBERS = [{"model": "dnn", "params": {"embedding_dim": 4, "hidden_units": [16]}},
           {"model": "dcn", "params": {"embedding_dim": 6, "hidden_units": [16]}}]


@pytest.fixture(scope="module")
def data():
    return prepare_spec(DATA)


def _model(data, **kw):
    torch.manual_seed(0)
    return build_model("ensemble", data.features, {"members": MEMBERS, **kw})


def test_members_are_private_and_heads_are_named(data):
    m = _model(data)
    assert m.heads == ["score", "member_0", "member_1"]
    a, b = (set(id(p) for p in mem.parameters()) for mem in m.members)
    assert not a & b  # no shared parameter: each member has its own embedding table
    singles = [build_model(x["model"], data.features, x["params"]) for x in MEMBERS]
    n = sum(p.numel() for p in m.parameters())
    assert n == sum(p.numel() for s in singles for p in s.parameters()) + 1  # + the temperature


def test_confidence_fusion(data):
    m = _model(data, temperature=0.5).eval()
    probs = torch.tensor([[0.5, 0.99], [0.02, 0.6]])
    w = m.weights(probs)
    c = negation_entropy(probs)
    torch.testing.assert_close(w, torch.softmax(c / 0.5, dim=1))
    assert w[0, 1] > w[0, 0] and w[1, 0] > w[1, 1]  # the more confident member weighs more
    hot = _model(data, temperature=1e4).eval()
    torch.testing.assert_close(hot.weights(probs), torch.full_like(probs, 0.5), atol=1e-4, rtol=0)
    batch = next(data.splits["valid"].batches(64))
    out = m(batch)
    z = torch.stack([out.logits["member_0"], out.logits["member_1"]], 1)
    want = (m.weights(torch.sigmoid(z)) * torch.sigmoid(z)).sum(1)
    torch.testing.assert_close(torch.sigmoid(out.logits["score"]), want, atol=1e-6, rtol=1e-5)
    assert out.aux_loss is None  # eval mode: no collaborative term
    lg = _model(data, space="logit").eval()(batch)
    zl = torch.stack([lg.logits["member_0"], lg.logits["member_1"]], 1)
    torch.testing.assert_close(lg.logits["score"], (_model(data).weights(torch.sigmoid(zl)) * zl).sum(1))


@pytest.mark.parametrize("teacher", ["ensemble", "peers"])
def test_collaborative_term_distils_toward_a_stopped_teacher(data, teacher):
    m = _model(data, distill_weight=0.7, teacher=teacher).train()
    batch = next(data.splits["train"].batches(128))
    out = m(batch)
    z = torch.stack([out.logits["member_0"], out.logits["member_1"]], 1)
    with torch.no_grad():
        p = torch.sigmoid(z)
        if teacher == "ensemble":
            t = torch.sigmoid(out.logits["score"]).unsqueeze(1).expand(-1, 2)
        else:
            t = torch.stack([p[:, 1], p[:, 0]], 1)  # with two members, the peer fusion is the other member
    want = 0.7 * F.binary_cross_entropy_with_logits(z, t, reduction="none").sum(1).mean()
    assert out.aux_loss.item() == pytest.approx(want.item(), rel=1e-5)
    # the teacher is a constant: member 0's gradient from the term is its own BCE toward t_0, nothing else
    m.zero_grad()
    out.aux_loss.backward()
    g_term = [q.grad.clone() for q in m.members[0].parameters()]
    m.zero_grad()
    out2 = m(batch)
    (0.7 * F.binary_cross_entropy_with_logits(out2.logits["member_0"], t[:, 0], reduction="none").mean()).backward()
    for a, b in zip(g_term, (q.grad for q in m.members[0].parameters())):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_ensemble_objective(data):
    obj = build_objective({"type": "ensemble", "members": 2, "member_weight": 0.5}, data.features)
    m = _model(data).train()
    batch = next(data.splits["train"].batches(128))
    out = m(batch)
    loss, parts = obj.loss(out, batch)
    y = batch["label"]
    bce = {h: F.binary_cross_entropy_with_logits(out.logits[h], y).item() for h in m.heads}
    assert parts == pytest.approx(bce, rel=1e-5)
    assert loss.item() == pytest.approx(bce["score"] + 0.5 * (bce["member_0"] + bce["member_1"])
                                        + out.aux_loss.item(), rel=1e-5)
    assert obj.default_monitor == "mean/auc"
    preds = {h: torch.sigmoid(out.logits[h]).detach().numpy() for h in m.heads}
    met = obj.metrics(preds, batch)
    assert met["mean/auc"] == pytest.approx(met["score/auc"]) and "member_1/auc" in met


def test_train_reload_and_export(tmp_path):
    from rankcraft import api

    cfg = {"data": DATA, "model": "ensemble", "params": {"members": MEMBERS},
           "objective": {"type": "ensemble", "members": 2},
           "train": {"epochs": 2, "batch_size": 256, "quiet": True}}
    res = api.train(cfg, out=tmp_path / "run")
    assert res.report["heads"] == ["score", "member_0", "member_1"]
    assert res.report["valid"]["score/auc"] > 0.55 and "member_1/auc" in res.report["valid"]
    run = api.load_run(tmp_path / "run")
    batch = next(res.data.splits["valid"].batches(64))
    with torch.no_grad():
        torch.testing.assert_close(run.model(batch).logits["score"], res.model.eval()(batch).logits["score"])
    pytest.importorskip("onnxruntime")
    from rankcraft.serving.artifact import Artifact
    from rankcraft.serving.export import export_run

    art = Artifact(export_run(tmp_path / "run", tmp_path / "art"))
    assert art.heads == ["score", "member_0", "member_1"]
    # the artifact scores like torch: its cost is the members' (checked at export, max |Δp| ≤ 1e-4)
    assert np.isfinite(art.manifest["check"]["max_abs_diff"])


@pytest.mark.parametrize("members,message", [
    ([{"model": "dnn"}], "at least 2"),
    ([{"model": "dnn"}, {"model": "nosuch"}], "unknown model 'nosuch'"),
    ([{"model": "dnn"}, {"model": "mmoe"}], "one-head models"),
    ([{"model": "dnn"}, {"model": "ensemble", "params": {"members": ["dnn", "dnn"]}}], "cannot be an ensemble"),
])
def test_member_errors(data, members, message):
    with pytest.raises(ConfigError, match=message):
        build_model("ensemble", data.features, {"members": members})
