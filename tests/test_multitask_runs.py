"""Multi-task runs end to end: train → run directory → load_run → evaluate/predict per head, and bench per task."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

from rankcraft import api
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError, DataError

FUNNEL = {"recipe": "funnel", "options": {"rows": 6000, "seed": 3}}
ESMM = {"type": "multitask", "tasks": [{"name": "ctr", "label": "click"}, {"name": "ctcvr", "label": "purchase"}]}
TRAIN = {"epochs": 2, "batch_size": 512, "lr": 3e-3, "quiet": True, "checkpoint_seconds": 0}


@pytest.fixture(scope="module")
def esmm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("esmm") / "run"
    res = api.train(api.RunConfig(data=FUNNEL, model="esmm", params={"embedding_dim": 4}, objective=ESMM,
                                  train=TRAIN), out=out)
    return out, res


def _split_csv(tmp_path, split: str, drop: tuple[str, ...] = ()) -> str:
    raw = DataSpec.model_validate(FUNNEL).source().load_raw()[split].table
    raw = raw.drop_columns([c for c in raw.column_names if c.startswith("true_")] + list(drop))
    path = tmp_path / f"{split}.csv"
    pacsv.write_csv(raw, str(path))
    return str(path)


def test_a_multitask_run_reports_monitors_and_checkpoints_per_task(esmm_run):
    out, res = esmm_run
    rep = json.loads((out / "report.json").read_text())
    assert rep["heads"] == ["ctr", "ctcvr"] and rep["monitor"] == "mean/auc"
    for split in ("valid", "test"):
        assert {"ctr/auc", "ctr/logloss", "ctcvr/auc", "ctcvr/logloss", "mean/auc"} <= set(rep[split])
        assert 0.5 < rep[split]["ctr/auc"] < 1
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all("ctcvr/auc" in h for h in history)
    assert json.loads((out / "config.json").read_text())["objective"]["type"] == "multitask"


def test_load_run_restores_the_objective_and_evaluate_nests_metrics_by_task(esmm_run, tmp_path):
    out, res = esmm_run
    run = api.load_run(out)
    assert run.objective.heads == ["ctr", "ctcvr"]
    m = api.evaluate(out, _split_csv(tmp_path, "test"))
    assert set(m) >= {"ctr", "ctcvr", "mean"} and m["ctr"]["auc"] == pytest.approx(res.report["test"]["ctr/auc"])
    assert m["ctcvr"]["rows"] == 600


def test_predict_writes_one_column_per_head_and_needs_no_labels(esmm_run, tmp_path):
    out, _ = esmm_run
    f = _split_csv(tmp_path, "test", drop=("click", "purchase", "conversion"))
    p = api.predict(out, f, tmp_path / "scores.csv")
    assert set(p) == {"ctr", "cvr", "ctcvr"} and all(len(v) == 600 for v in p.values())
    np.testing.assert_allclose(p["ctcvr"], p["ctr"] * p["cvr"], rtol=1e-4, atol=1e-6)
    table = pacsv.read_csv(str(tmp_path / "scores.csv"))
    assert table.column_names == ["ctr", "cvr", "ctcvr"] and table.num_rows == 600


def test_evaluating_a_file_without_one_tasks_label_is_a_named_error(esmm_run, tmp_path):
    out, _ = esmm_run
    f = _split_csv(tmp_path, "test", drop=("purchase",))
    with pytest.raises(DataError, match="purchase") as ei:
        api.evaluate(out, f)
    assert f in str(ei.value)


def test_predict_accepts_a_blank_label_column(tmp_path):
    out = tmp_path / "run"
    api.train(api.RunConfig(data={"recipe": "synthetic", "rows": 2000}, model="lr", train=TRAIN), out=out)
    data = tmp_path / "score_me.csv"
    from rankcraft.data.synthetic import make_synthetic

    table = make_synthetic(20, seed=5)[0]
    table = table.set_column(table.column_names.index("label"), "label", pa.array([""] * 20))
    pacsv.write_csv(table, str(data))
    p = api.predict(out, data)
    assert p.shape == (20,) and np.isfinite(p).all()


def test_a_clicked_only_cvr_baseline_is_a_masked_binary_task():
    cfg = api.RunConfig(data=FUNNEL, model="dnn", params={"hidden_units": [16], "embedding_dim": 4},
                        objective={"type": "binary", "label": "conversion", "weight_column": "click"}, train=TRAIN)
    res = api.train(cfg)
    assert res.report["valid"]["rows"] < 0.5 * 600  # metrics over clicked rows only
    assert 0 < res.report["valid"]["auc"] < 1


def test_several_labels_without_objective_fail_before_training():
    with pytest.raises(ConfigError, match="several labels"):
        api.train(api.RunConfig(data=FUNNEL, model="dnn", train=TRAIN))


def test_bench_tabulates_per_task(tmp_path):
    from rankcraft.bench.zoo import run_benchmark

    presets = {"funnel": {"train": TRAIN, "objective": ESMM, "models": {
        "esmm": {"params": {"embedding_dim": 4}},
        "dnn-ctr": {"model": "dnn", "params": {"embedding_dim": 4, "hidden_units": [16]},
                    "objective": {"type": "binary", "label": "click"}}}}}
    torch.manual_seed(0)
    res = run_benchmark("funnel", ["esmm", "dnn-ctr"], tmp_path / "b", presets=presets, seeds=[1])
    md = (tmp_path / "b" / "results.md").read_text()
    assert "test click AUC" in md and "test ctr AUC" in md and "test ctcvr AUC" in md
    assert res["models"]["dnn-ctr"]["test_by_task"]["click/auc"]["mean"] > 0.5


def test_scoring_shows_a_progress_bar_on_a_terminal(capsys, monkeypatch):
    from rankcraft.data.dataset import ColumnData
    from rankcraft.models.catalog import build_model
    from rankcraft.training.evaluation import predict_heads

    data = ColumnData({"cat": torch.randint(0, 5, (100, 2)), "num": torch.zeros(100, 0), "label": torch.zeros(100)})
    from rankcraft.data.features import FeatureInfo, FeatureSet

    fs = FeatureSet((FeatureInfo("a", "categorical", vocab_size=5), FeatureInfo("b", "categorical", vocab_size=5)))
    model = build_model("lr", fs)
    quiet = predict_heads(model, data, batch_size=10)
    assert "scoring" not in capsys.readouterr().err
    monkeypatch.setattr(type(__import__("sys").stderr), "isatty", lambda self: True, raising=False)
    loud = predict_heads(model, data, batch_size=10, progress=True)
    assert "scoring" in capsys.readouterr().err
    np.testing.assert_array_equal(quiet["score"], loud["score"])
