"""Objectives, label kinds and named heads: losses, metrics per head, monitors, and the errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from rankcraft.data.dataset import ColumnData, DataSource, prepare
from rankcraft.data.features import FeatureInfo, FeatureSet
from rankcraft.data.schema import Schema
from rankcraft.errors import ConfigError, DataError
from rankcraft.models.output import ModelOutput
from rankcraft.training.evaluation import evaluate, predict_heads
from rankcraft.training.objectives import build_objective, default_objective
from rankcraft.training.run import RunConfig, train
from rankcraft.training.trainer import TrainConfig, Trainer

FS2 = FeatureSet((FeatureInfo("x", "categorical", vocab_size=12),), labels=("a", "b", "w", "r"),
                 label_kinds={"a": "binary", "b": "binary", "w": "weight", "r": "regression"})


def two_label_csv(tmp_path, n=1200, seed=0, name="train.csv", blank=None):
    """x ∈ {0..9}; label a = 1 for x < 5, label b = 1 for even x (both noisy), r = x / 10, weight w ∈ {0, 1}."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 10, n)
    a = ((x < 5) ^ (rng.random(n) < 0.1)).astype(int)
    b = ((x % 2 == 0) ^ (rng.random(n) < 0.1)).astype(int)
    w = (rng.random(n) < 0.7).astype(int)
    lines = ["x,a,b,w,r"] + [f"v{xi},{ai},{bi},{wi},{xi / 10}" for xi, ai, bi, wi in zip(x, a, b, w)]
    if blank:
        lines = [lines[0]] + [",".join("" if c == blank else v for c, v in zip(lines[0].split(","), ln.split(",")))
                              for ln in lines[1:]]
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p


SCHEMA = {"labels": ["a", "b", {"name": "w", "kind": "weight"}, {"name": "r", "kind": "regression"}],
          "features": [{"name": "x", "type": "categorical"}]}


class TwoHeads(nn.Module):
    """A shared embedding and one linear head per task (a test double for the multi-task zoo)."""

    def __init__(self, heads=("a", "b"), vocab=12):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.heads = nn.ModuleDict({h: nn.Linear(8, 1) for h in heads})

    def forward(self, batch):
        e = self.emb(batch["cat"][:, 0])
        return ModelOutput({h: lin(e).squeeze(-1) for h, lin in self.heads.items()})


def prepared(tmp_path, schema=SCHEMA):
    tr = two_label_csv(tmp_path)
    va = two_label_csv(tmp_path, n=400, seed=1, name="valid.csv")
    src = DataSource("two", Schema.from_dict(schema), files={"train": str(tr), "valid": str(va)})
    return prepare(src, use_cache=False)


MULTI = {"type": "multitask", "tasks": [{"name": "a"}, {"name": "b", "weight": 0.5}]}


# ------------------------------------------------------------------------------------------------ losses & metrics
def test_multitask_trains_every_head_and_reports_metrics_per_task(tmp_path):
    data = prepared(tmp_path)
    obj = build_objective(MULTI, data.features)
    torch.manual_seed(0)
    model = TwoHeads()
    cfg = TrainConfig(epochs=4, batch_size=128, lr=0.05, quiet=True, monitor="b/auc", lr_schedule="constant",
                      early_stopping_patience=4)
    fit = Trainer(model, cfg, objective=obj).fit(data.splits["train"], data.splits["valid"])
    m = fit.best_metrics
    assert m["a/auc"] > 0.85 and m["b/auc"] > 0.85
    assert m["mean/auc"] == pytest.approx((m["a/auc"] + m["b/auc"]) / 2)
    assert {"a/logloss", "b/logloss", "a/ne", "b/calibration", "mean/logloss"} <= set(m)
    assert "auc" not in m  # no un-prefixed metric for a multi-task objective


def test_loss_is_the_weighted_sum_of_task_losses_and_weights_mask_rows():
    obj = build_objective({"type": "multitask", "tasks": [{"name": "a", "weight": 2.0},
                                                          {"name": "b", "weight_column": "w"}]}, FS2)
    za, zb = torch.tensor([0.3, -1.0, 2.0]), torch.tensor([1.0, 0.5, -0.5])
    batch = {"label/a": torch.tensor([1.0, 0.0, 1.0]), "label/b": torch.tensor([0.0, 1.0, 1.0]),
             "label/w": torch.tensor([1.0, 0.0, 1.0])}
    total, parts = obj.loss(ModelOutput({"a": za, "b": zb}), batch)
    bce = nn.functional.binary_cross_entropy_with_logits
    la = bce(za, batch["label/a"])
    lb = bce(zb[[0, 2]], batch["label/b"][[0, 2]])  # the row with weight 0 does not count
    assert parts["a"] == pytest.approx(float(la)) and parts["b"] == pytest.approx(float(lb))
    assert float(total) == pytest.approx(float(2 * la + lb), rel=1e-6)


def test_aux_loss_is_added_and_regression_tasks_use_squared_error():
    obj = build_objective({"type": "multitask", "tasks": [{"name": "r", "kind": "regression"}]}, FS2)
    z = torch.tensor([0.1, 0.9])
    batch = {"label/r": torch.tensor([0.0, 1.0])}
    total, _ = obj.loss(ModelOutput({"r": z}, aux_loss=torch.tensor(0.25)), batch)
    assert float(total) == pytest.approx(((0.1 ** 2 + 0.1 ** 2) / 2) + 0.25)
    m = obj.metrics({"r": z.numpy()}, {"label/r": batch["label/r"]})
    assert m["r/mse"] == pytest.approx(0.01) and m["r/mae"] == pytest.approx(0.1)
    assert obj.default_monitor == "r/mse"


def test_uncertainty_weighting_learns_one_log_variance_per_task_and_checkpoints_it(tmp_path):
    data = prepared(tmp_path)
    obj = build_objective({**MULTI, "uncertainty_weighting": True}, data.features)
    assert obj.log_vars is not None and obj.log_vars.shape == (2,)
    trainer = Trainer(TwoHeads(), TrainConfig(epochs=2, batch_size=128, lr=0.05, quiet=True), tmp_path / "run",
                      objective=obj)
    trainer.fit(data.splits["train"], data.splits["valid"])
    assert not torch.equal(obj.log_vars.detach(), torch.zeros(2))  # learned
    from rankcraft.training.checkpoint import load_checkpoint

    assert torch.equal(load_checkpoint(tmp_path / "run" / "last.pt")["objective"]["log_vars"], obj.log_vars.detach())


def test_soft_labels_train_towards_teacher_probabilities_and_score_against_the_hard_label():
    fs = FeatureSet((FeatureInfo("x", "categorical", vocab_size=12),), labels=("y", "t"),
                    label_kinds={"y": "binary", "t": "soft"})
    obj = build_objective({"type": "soft_bce", "label": "t", "hard_label": "y"}, fs)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(2, 12, (2000,), generator=g)
    teacher = torch.sigmoid((x.float() - 7) / 2)
    y = (torch.rand(2000, generator=g) < teacher).float()
    data = ColumnData({"cat": x[:, None], "label/t": teacher, "label/y": y, "label": y})

    class One(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(12, 1)

        def forward(self, batch):
            return self.emb(batch["cat"][:, 0]).squeeze(-1)

    torch.manual_seed(0)
    model = One()
    Trainer(model, TrainConfig(epochs=30, batch_size=500, lr=0.1, quiet=True, lr_schedule="constant",
                               early_stopping_patience=30), objective=obj).fit(data, data)
    p = predict_heads(model, data, obj)["score"]
    assert np.abs(p - teacher.numpy()).max() < 0.05  # the student matches the teacher's probabilities
    m = evaluate(model, data, obj)
    assert 0.5 < m["auc"] < 1.0 and m["rows"] == 2000


def test_single_head_metrics_are_unchanged_and_undefined_ones_are_null():
    obj = default_objective()
    y = torch.ones(4)
    m = obj.metrics({"score": np.array([0.2, 0.4, 0.6, 0.8], dtype=np.float32)}, {"label": y})
    assert m["auc"] is None and m["logloss"] > 0 and m["rows"] == 4
    assert set(obj.metric_names()) >= {"auc", "logloss", "ne", "calibration"}


# ------------------------------------------------------------------------------------------------ monitors
def test_monitor_accepts_task_metrics_and_rejects_unknown_names_with_the_valid_list():
    obj = build_objective(MULTI, FS2)
    assert obj.check_monitor(None) == "mean/auc"
    assert obj.check_monitor("b/logloss") == "b/logloss"
    with pytest.raises(ConfigError, match=r"'c/auc' is not a metric.*a/auc.*mean/auc"):
        obj.check_monitor("c/auc")
    with pytest.raises(ConfigError, match="is not a metric"):
        Trainer(TwoHeads(), TrainConfig(monitor="accuracy"), objective=obj)


def test_an_undefined_monitor_falls_back_to_logloss_with_a_warning():
    obj = default_objective()
    msgs = []
    cols = {"label": torch.zeros(10)}
    assert obj.usable_monitor("auc", cols, warn=msgs.append) == "logloss"
    assert "one class only" in msgs[0]
    assert obj.usable_monitor("auc", {"label": torch.tensor([0.0, 1.0])}) == "auc"


# ------------------------------------------------------------------------------------------------ bad configs
def test_several_labels_without_an_objective_is_an_error_that_says_how_to_declare_tasks():
    with pytest.raises(ConfigError, match=r"(?s)several labels \(a, b, r\).*type: multitask.*\{name: r, kind: regression\}.*type: binary, label: a"):
        build_objective(None, FS2)


def test_a_task_naming_a_missing_label_or_a_wrong_kind_is_a_named_error():
    with pytest.raises(ConfigError, match=r"objective.tasks\[1\]\(c\).label: no label named 'c'.*labels: a, b, w, r"):
        build_objective({"type": "multitask", "tasks": [{"name": "a"}, {"name": "c"}]}, FS2)
    with pytest.raises(ConfigError, match="weight_column 'r' is a regression label"):
        build_objective({"type": "multitask", "tasks": [{"name": "b", "weight_column": "r"}]}, FS2)
    masked = build_objective({"type": "multitask", "tasks": [{"name": "b", "weight_column": "a"}]}, FS2)
    assert masked.tasks[0].weight_column == "label/a"  # a binary label masks rows
    with pytest.raises(ConfigError, match="'r' is a regression label"):
        build_objective({"type": "binary", "label": "r"}, FS2)
    with pytest.raises(ConfigError, match="duplicate task names"):
        build_objective({"type": "multitask", "tasks": [{"name": "a"}, {"name": "a"}]}, FS2)
    with pytest.raises(ConfigError, match="objective: invalid"):
        build_objective({"type": "multitask", "tasks": []}, FS2)


def test_a_model_without_the_objectives_heads_fails_before_training(tmp_path):
    data = prepared(tmp_path)
    cfg = RunConfig(data={"recipe": "synthetic"}, model="dnn", objective=MULTI, train={"epochs": 1, "quiet": True})
    with pytest.raises(ConfigError, match=r"model 'dnn': the model has heads \['score'\].*'a'"):
        train(cfg, data=data)


# ------------------------------------------------------------------------------------------------ label kinds
@pytest.mark.parametrize("label,cell,match", [
    ({"name": "a"}, "2", r"line 3.*column 'a'.*label must be 0 or 1, found '2'"),
    ({"name": "a", "kind": "soft"}, "1.5", r"line 3.*column 'a'.*soft label must be a probability in \[0, 1\], "
                                           r"found '1.5'"),
    ({"name": "a", "kind": "regression"}, "abc", r"line 3.*column 'a'.*label is not a number"),
    ({"name": "a", "kind": "weight"}, "-1", r"line 3.*column 'a'.*weight label must be a non-negative number"),
    ({"name": "a", "map": {"yes": 1, "no": 0}}, "maybe", r"line 3.*column 'a'.*'maybe' is not in the label's map"),
])
def test_a_label_value_that_does_not_fit_its_kind_names_file_line_column_and_value(tmp_path, label, cell, match):
    ok = {"a": "1", "a_soft": "0.5"}
    good = "yes" if "map" in label else ok["a"]
    p = tmp_path / "t.csv"
    p.write_text(f"x,a\nv1,{good}\nv2,{cell}\nv3,{good}\n")
    src = DataSource("t", Schema.from_dict({"labels": [label], "features": [{"name": "x", "type": "categorical"}]}),
                     files={"train": str(p), "valid": str(p)})
    with pytest.raises(DataError, match=match) as ei:
        prepare(src, use_cache=False)
    assert str(p) in str(ei.value)


def test_threshold_and_map_label_transforms(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("x,rating,ok\nv1,5,yes\nv2,3,no\nv3,4, yes\nv4,1,no\n")
    s = Schema.from_dict({"labels": [{"name": "liked", "column": "rating", "threshold": 4},
                                     {"name": "ok", "map": {"yes": 1, "no": 0}}],
                          "features": [{"name": "x", "type": "categorical"}]})
    data = prepare(DataSource("t", s, files={"train": str(p), "valid": str(p)}), use_cache=False)
    cols = data.splits["train"].columns
    assert cols["label/liked"].tolist() == [1, 0, 1, 0] and cols["label/ok"].tolist() == [1, 0, 1, 0]
    assert cols["label"].tolist() == [1, 0, 1, 0]
    assert data.features.label_kinds == {"liked": "binary", "ok": "binary"}


def test_a_one_class_training_label_is_an_error_and_a_one_class_valid_label_a_warning(tmp_path):
    tr, va = tmp_path / "tr.csv", tmp_path / "va.csv"
    tr.write_text("x,a\nv1,0\nv2,0\n")
    va.write_text("x,a\nv1,0\nv2,1\n")
    s = Schema.from_dict({"labels": ["a"], "features": [{"name": "x", "type": "categorical"}]})
    with pytest.raises(DataError, match="label 'a' has one class only .all 0. in the train split"):
        prepare(DataSource("t", s, files={"train": str(tr), "valid": str(va)}), use_cache=False)
    data = prepare(DataSource("t", s, files={"train": str(va), "valid": str(tr)}), use_cache=False)
    assert any("valid split" in w and "null" in w for w in data.warnings)


# ------------------------------------------------------------------------------------------------ trackers
def test_tensorboard_reporter_logs_every_numeric_metric_per_epoch(tmp_path, monkeypatch):
    import sys
    import types

    logged = []

    class FakeWriter:
        def __init__(self, log_dir):
            logged.append(("dir", log_dir))

        def add_scalar(self, k, v, step):
            logged.append((k, v, step))

        def flush(self):
            pass

        def close(self):
            logged.append(("closed",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    data = prepared(tmp_path)
    obj = build_objective(MULTI, data.features)
    Trainer(TwoHeads(), TrainConfig(epochs=2, batch_size=256, quiet=True, report_to=["jsonl", "tensorboard"],
                                    early_stopping_patience=2), tmp_path / "run", objective=obj) \
        .fit(data.splits["train"], data.splits["valid"])
    assert logged[0] == ("dir", str(tmp_path / "run" / "tensorboard")) and logged[-1] == ("closed",)
    steps = {(k, step) for k, _, step in [x for x in logged if len(x) == 3]}
    assert {("a/auc", 1), ("b/logloss", 2), ("train_loss", 1), ("mean/auc", 2)} <= steps


def test_a_missing_tracker_package_is_a_one_line_error_naming_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow -> ImportError
    from rankcraft.training.reporters import make_reporters

    with pytest.raises(ConfigError, match=r"mlflow needs the mlflow package: pip install 'rankcraft\[mlflow\]'"):
        make_reporters(["mlflow"], None)
    assert make_reporters(["jsonl"], None) == []
