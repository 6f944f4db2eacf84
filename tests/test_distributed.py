"""Data-parallel training with several processes (gloo): same updates as one process on the same global batch,
rank 0 alone writes, a dying worker is named and the run resumes."""

from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from rankcraft.data.dataset import ColumnData, encode_splits
from rankcraft.data.synthetic import synthetic_raw
from rankcraft.errors import WorkerError
from rankcraft.models.catalog import build_model
from rankcraft.training.checkpoint import load_checkpoint
from rankcraft.training.distributed import spawn_workers
from rankcraft.training.run import RunConfig, train
from rankcraft.training.trainer import TrainConfig, Trainer

CFG = dict(epochs=2, batch_size=200, quiet=True, seed=3, threads=1, lr=0.01, checkpoint_seconds=0,
           early_stopping_patience=5, lr_schedule="constant")


def _data(tmp_path):
    raw, schema = synthetic_raw(2400, seed=1)
    enc, splits, _ = encode_splits(raw, schema)
    splits["train"].save(tmp_path / "train")
    splits["valid"].save(tmp_path / "valid")
    return enc.feature_set()


def _fit(tmp_path, run: str, resume: bool = False, kill_rank: int | None = None, kill_step: int = 0,
         params: dict | None = None, **cfg):
    """Worker body (also run in one process): train a dnn without dropout on the saved splits."""
    from rankcraft.data.features import FeatureSet  # noqa: F401  (the child process imports what it needs)

    raw, schema = synthetic_raw(2400, seed=1)
    enc, _, _ = encode_splits(raw, schema)
    train_cd, valid = ColumnData.load(tmp_path / "train"), ColumnData.load(tmp_path / "valid")
    torch.manual_seed(0)
    model = build_model("dnn", enc.feature_set(), params or {"hidden_units": [32], "dropout": 0.0})
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    def on_step(step):
        if rank == kill_rank and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)

    Trainer(model, TrainConfig(**{**CFG, **cfg}), tmp_path / run, on_step=on_step).fit(train_cd, valid, resume=resume)


def _raise_on_rank_1():
    if torch.distributed.get_rank() == 1:
        raise ValueError("bad things on rank 1")


def test_two_processes_take_the_same_steps_as_one(tmp_path):
    _data(tmp_path)
    _fit(tmp_path, "one")
    spawn_workers(_fit, 2, tmp_path, "two", threads=1)
    one = load_checkpoint(tmp_path / "one" / "last.pt")
    two = load_checkpoint(tmp_path / "two" / "last.pt")
    per_epoch = ColumnData.load(tmp_path / "train").num_batches(200)
    assert one["state"]["steps"] == two["state"]["steps"] == 2 * per_epoch
    assert one["state"]["rows"] == two["state"]["rows"]
    for k, v in one["model"].items():  # the averaged gradient of two half batches is the full batch's
        assert torch.allclose(v, two["model"][k], atol=2e-5), k
    m1 = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [round(x["auc"], 4) for x in m1] == [round(x["auc"], 4) for x in m2]


def test_a_failing_or_killed_worker_is_named_and_the_run_resumes(tmp_path):
    with pytest.raises(WorkerError, match="worker rank 1 failed: ValueError: bad things on rank 1"):
        spawn_workers(_raise_on_rank_1, 2, threads=1)
    _data(tmp_path)
    with pytest.raises(WorkerError, match="worker rank 1 was killed by signal SIGKILL.*--resume") as info:
        spawn_workers(_fit, 2, tmp_path, "run", False, 1, 13, threads=1, checkpoint_every=4)
    assert info.value.rank == 1
    st = load_checkpoint(tmp_path / "run" / "last.pt")["state"]
    assert st["steps"] == 12  # rank 0 checkpointed every 4 steps; rank 1 died after step 13
    spawn_workers(_fit, 2, tmp_path, "run", True, threads=1, checkpoint_every=4)
    _fit(tmp_path, "one")
    done = load_checkpoint(tmp_path / "run" / "last.pt")
    ref = load_checkpoint(tmp_path / "one" / "last.pt")
    assert done["state"]["steps"] == ref["state"]["steps"] == 2 * ColumnData.load(tmp_path / "train").num_batches(200)
    for k, v in ref["model"].items():
        assert torch.allclose(v, done["model"][k], atol=2e-5), k


def test_train_with_workers_writes_one_run_directory(tmp_path):
    cfg = RunConfig.parse({"data": {"recipe": "synthetic", "rows": 3000}, "model": "lr",
                           "train": {**CFG, "epochs": 1}})
    res = train(cfg, out=tmp_path / "run", cache_dir=tmp_path / "cache", workers=2)
    assert res.report["workers"] == 2 and res.fit.steps == res.data.splits["train"].num_batches(200)
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == [
        "best.pt", "config.json", "curves.png", "encoders.json", "features.json", "last.pt", "metrics.jsonl",
        "report.json"]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1
    assert res.model(next(res.data.splits["valid"].batches(8))).shape == (8,)


def test_the_same_job_runs_through_ray_train(tmp_path):
    pytest.importorskip("ray.train.torch", reason="Ray Train is the extra rankcraft[distributed]")
    from rankcraft.training.ray_train import train_on_ray

    cfg = RunConfig.parse({"data": {"recipe": "synthetic", "rows": 3000}, "model": "lr",
                           "train": {**CFG, "epochs": 1}})
    res = train_on_ray(cfg, out=tmp_path / "run", address="local", workers=2, cache_dir=tmp_path / "cache")
    local = train(cfg, out=tmp_path / "local", cache_dir=tmp_path / "cache", workers=2)
    assert res.report["workers"] == 2 and res.fit.steps == local.fit.steps
    assert res.report["valid"]["auc"] == pytest.approx(local.report["valid"]["auc"], abs=1e-4)
