"""External distillation (ExFM): gradient scaling, the distill objective's modes, label scaling, the student
adapter, training end to end from a logged teacher column, and the named errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rankcraft.errors import ConfigError
from rankcraft.models.catalog import build_model
from rankcraft.models.output import ModelOutput
from rankcraft.nn.gradients import scale_gradient
from rankcraft.training.objectives import build_objective


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A CSV with a true label and a foundation model's logged probability (noisy, biased) per row."""
    from rankcraft.data.spec import prepare_spec

    d = tmp_path_factory.mktemp("fm")
    rng = np.random.default_rng(0)
    n = 3000
    a, b = rng.integers(0, 30, n), rng.integers(0, 20, n)
    z = np.sin(a) + np.cos(b) - 2.0
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    fm = 1 / (1 + np.exp(-(z + 0.3 * rng.standard_normal(n) + 0.5)))
    lines = ["a,b,y,fm"] + [f"a{i},b{j},{t},{p:.6f}" for i, j, t, p in zip(a, b, y, fm)]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    schema = {"labels": ["y", {"name": "fm", "kind": "soft"}],
              "features": [{"name": "a", "type": "categorical"}, {"name": "b", "type": "categorical"}]}
    spec = {"schema": schema, "train": str(d / "train.csv")}
    return spec, prepare_spec(spec)


def test_scale_gradient():
    x = torch.randn(5, requires_grad=True)
    y = scale_gradient(x, 3.0)
    assert torch.equal(y, x)
    (y * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, 3.0 * torch.arange(5.0))


def test_tower_grad_scale_scales_only_that_towers_gradient(data):
    _, d = data
    batch = next(d.splits["train"].batches(256))
    grads = {}
    for beta in (1.0, 0.0, 4.0):
        torch.manual_seed(0)
        m = build_model("sharedbottom", d.features, {"embedding_dim": 4, "bottom_units": [8], "tower_units": [4],
                                                     "tasks": ["score", "distill"],
                                                     "tower_grad_scale": {"distill": beta}})
        m.zero_grad()
        out = m(batch)
        out.logits["distill"].sum().backward()  # only the distillation head's loss
        grads[beta] = m.bottom.net[0].weight.grad.clone() if hasattr(m.bottom, "net") else \
            next(m.bottom.parameters()).grad.clone()
    assert torch.count_nonzero(grads[0.0]) == 0
    torch.testing.assert_close(grads[4.0], 4.0 * grads[1.0])
    with pytest.raises(ConfigError, match="tower_grad_scale: teacher is not a task"):
        build_model("sharedbottom", d.features, {"tasks": ["score"], "tower_grad_scale": {"teacher": 2.0}})


@pytest.mark.parametrize("mode", ["none", "single", "aux"])
def test_distill_losses(data, mode):
    _, d = data
    obj = build_objective({"type": "distill", "label": "y", "teacher": "fm", "mode": mode, "weight": 2.0,
                           "label_scale": 3.0}, d.features)
    z_s, z_d = torch.tensor([0.2, -1.0, 0.5]), torch.tensor([-0.3, 0.1, 2.0])
    batch = {"label/y": torch.tensor([1.0, 0.0, 0.0]), "label/fm": torch.tensor([0.1, 0.5, 0.2])}
    loss, _ = obj.loss(ModelOutput({"score": z_s, "distill": z_d}), batch)
    want = F.binary_cross_entropy_with_logits(z_s, batch["label/y"])
    target = torch.tensor([0.3, 1.0, 0.6])  # min(3 · p_F, 1)
    if mode == "single":
        want = want + 2.0 * F.binary_cross_entropy_with_logits(z_s, target)
    if mode == "aux":
        want = want + 2.0 * F.binary_cross_entropy_with_logits(z_d, target)
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert obj.heads == (["score", "distill"] if mode == "aux" else ["score"])
    # a row the FM has not scored (NaN) gets only the serving loss
    nan = {**batch, "label/fm": torch.tensor([0.1, float("nan"), 0.2])}
    loss2, _ = obj.loss(ModelOutput({"score": z_s, "distill": z_d}), nan)
    keep = torch.tensor([0, 2])
    want2 = F.binary_cross_entropy_with_logits(z_s, batch["label/y"])
    if mode != "none":
        zt = z_s if mode == "single" else z_d
        want2 = want2 + 2.0 * F.binary_cross_entropy_with_logits(zt[keep], target[keep])
    assert torch.isfinite(loss2) and loss2.item() == pytest.approx(want2.item(), rel=1e-6)


def test_student_adapter_learns_from_labels_and_teaches_through_a_stopped_target(data):
    _, d = data
    obj = build_objective({"type": "distill", "label": "y", "teacher": "fm", "adapter": True,
                           "adapter_weight": 0.5}, d.features)
    assert sum(p.numel() for p in obj.parameters()) == 1 * 8 + 8 + 8 * 1 + 1
    z_s = torch.zeros(4, requires_grad=True)
    z_d = torch.zeros(4, requires_grad=True)
    batch = {"label/y": torch.tensor([1.0, 0.0, 1.0, 0.0]), "label/fm": torch.tensor([0.9, 0.2, 0.4, 0.1])}
    loss, parts = obj.loss(ModelOutput({"score": z_s, "distill": z_d}), batch)
    loss.backward()
    with torch.no_grad():
        s = obj.adapter(batch["label/fm"].unsqueeze(-1)).squeeze(-1)
    # the distillation head's gradient: toward p_F and toward σ(SA), both constants
    want = (torch.sigmoid(z_d) - batch["label/fm"]) / 4 + 0.5 * (torch.sigmoid(z_d) - torch.sigmoid(s)) / 4
    torch.testing.assert_close(z_d.grad, want.detach())
    assert all(p.grad is not None and torch.count_nonzero(p.grad) for p in obj.adapter.parameters())
    assert parts["adapter"] > 0


def test_train_with_a_logged_teacher_and_reload(data, tmp_path):
    from rankcraft import api

    spec, _ = data
    cfg = {"data": spec, "model": "sharedbottom",
           "params": {"embedding_dim": 4, "bottom_units": [16], "tower_units": [8], "tasks": ["score", "distill"],
                      "tower_grad_scale": {"distill": 5.0}},
           "objective": {"type": "distill", "label": "y", "teacher": "fm", "label_scale": 2.0, "adapter": True},
           "train": {"epochs": 2, "batch_size": 256, "quiet": True}}
    res = api.train(cfg, out=tmp_path / "run")
    assert res.report["heads"] == ["score", "distill"] and res.report["valid"]["auc"] > 0.5
    run = api.load_run(tmp_path / "run")
    from rankcraft.training.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "run" / "best.pt")["objective"]
    assert {"adapter.0.weight", "adapter.2.bias"} <= set(saved)  # the adapter is checkpointed with the run
    for k, v in run.objective.state_dict().items():
        torch.testing.assert_close(v, saved[k])
    fresh = build_objective(cfg["objective"], run.features)
    assert not torch.equal(fresh.adapter[0].weight, run.objective.adapter[0].weight)


def test_named_errors(data):
    spec, d = data
    with pytest.raises(ConfigError, match="'fm' must be a binary label"):
        build_objective({"type": "distill", "label": "fm", "teacher": "y"}, d.features)
    with pytest.raises(ConfigError, match="Student Adapter feeds a distillation head"):
        build_objective({"type": "distill", "label": "y", "teacher": "fm", "mode": "none", "adapter": True},
                        d.features)
    with pytest.raises(ConfigError, match="not a label|no label"):
        build_objective({"type": "distill", "label": "y", "teacher": "fm_missing"}, d.features)
    from rankcraft import api

    with pytest.raises(ConfigError, match="needs the head\\(s\\) distill"):
        api.train({"data": spec, "model": "dnn", "objective": {"type": "distill", "label": "y", "teacher": "fm"},
                   "train": {"epochs": 1, "quiet": True}})


# ------------------------------------------------------------------------------------------------ DAS on a stream
def test_snapshots_das_and_a_vertical_model_on_the_stream(tmp_path):
    from rankcraft.data.spec import prepare_spec
    from rankcraft.training.das import (
        AnnotatedPartition,
        MemoryPartition,
        annotate,
        train_snapshots,
        with_teacher_label,
    )
    from rankcraft.training.evaluation import predict_heads
    from rankcraft.training.loops import StreamLoop
    from rankcraft.training.trainer import TrainConfig, Trainer

    d = prepare_spec({"recipe": "synthetic", "rows": 4000, "seed": 1})
    train = d.splits["train"]
    n = len(train) // 4
    parts = [MemoryPartition(f"p{i}", train.subset(torch.arange(i * n, (i + 1) * n))) for i in range(4)]

    def fm():
        torch.manual_seed(0)
        return build_model("dnn", d.features, {"embedding_dim": 4, "hidden_units": [16]})

    cfg = TrainConfig(batch_size=256, quiet=True)
    paths = train_snapshots(fm(), parts, cfg, tmp_path / "fm")
    assert [p.name for p in paths] == [f"snapshot-{i:03d}.pt" for i in range(4)] and all(p.exists() for p in paths)
    stamp = paths[0].stat().st_mtime_ns
    train_snapshots(fm(), parts, cfg, tmp_path / "fm")  # all there: nothing retrained
    assert paths[0].stat().st_mtime_ns == stamp
    teach = annotate(fm, paths, parts, 2, tmp_path / "fm")
    assert np.isnan(teach[0]).all() and np.isnan(teach[1]).all()
    from rankcraft.training.checkpoint import load_checkpoint

    m = fm()
    m.load_state_dict(load_checkpoint(paths[1])["model"])  # partition 3 at staleness 2: the FM after partition 1
    np.testing.assert_allclose(teach[3], predict_heads(m, parts[3].data())["score"], rtol=1e-6)
    np.save(tmp_path / "fm" / "das-delta2" / "p3.npy", np.zeros(n, np.float32))
    assert annotate(fm, paths, parts, 2, tmp_path / "fm")[3].sum() == 0  # stored: each example scored once
    with pytest.raises(ConfigError, match="staleness"):
        annotate(fm, paths, parts, 0, tmp_path / "fm")
    teach = annotate(fm, paths, parts, 1, tmp_path / "fm")
    rows = np.arange(0, n, 2)
    vm_parts = [AnnotatedPartition(p.key, p, t, rows) for p, t in zip(parts[1:], teach[1:])]
    cols = vm_parts[0].data().columns
    assert len(cols["label"]) == len(rows)
    np.testing.assert_allclose(cols["label/fm"].numpy(), teach[1][rows], rtol=1e-6)
    feats = with_teacher_label(d.features)
    assert feats.features == d.features.features and feats.label_kinds["fm"] == "soft"
    vm = build_model("sharedbottom", feats, {"embedding_dim": 4, "bottom_units": [8], "tower_units": [4],
                                             "tasks": ["score", "distill"]})
    obj = build_objective({"type": "distill", "label": "label", "teacher": "fm", "adapter": True}, feats)
    fit = Trainer(vm, cfg, objective=obj).run(StreamLoop(vm_parts))
    assert fit.best_metrics["evaluated_partitions"] == 2 and fit.best_metrics["auc"] > 0.5


def test_drifting_stream_recipe():
    from rankcraft.data.drift import make_drifting_stream
    from rankcraft.data.spec import prepare_stream_spec

    t = make_drifting_stream(5, 4000, seed=2, base_rate=0.03, drift=0.3)
    y = np.array(t.column("label").to_pylist(), dtype=int)
    z = np.array(t.column("true_logit").to_pylist(), dtype=float)
    assert abs(y.mean() - 0.03) < 0.01 and abs((1 / (1 + np.exp(-z))).mean() - 0.03) < 1e-3
    chunk = np.array(t.column("chunk").to_pylist())
    assert sorted(set(chunk)) == [0, 1, 2, 3, 4]
    s = prepare_stream_spec({"recipe": "drifting-stream", "options": {"chunks": 3, "rows_per_chunk": 500, "seed": 2},
                             "partitions": {"unit": "day", "fit_on": 1}}, cache_dir=None)
    assert [p.rows for p in s.partitions] == [500, 500, 500]
    assert "label/true_logit" in s.partitions[0].data().columns
    with pytest.raises(ValueError, match="flipped"):
        make_drifting_stream(2, 10, fields=2, flipped=3)
