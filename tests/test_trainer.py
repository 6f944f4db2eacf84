"""Trainer: learning, checkpoints, kill -9 + resume, early stopping, options."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rankcraft.data.dataset import encode_splits
from rankcraft.data.synthetic import synthetic_raw
from rankcraft.errors import CheckpointError
from rankcraft.models import build_model
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint
from rankcraft.training.evaluation import evaluate
from rankcraft.training.trainer import StopTraining, TrainConfig, Trainer


@pytest.fixture(scope="module")
def small():
    raw, schema = synthetic_raw(3000, seed=3)
    enc, splits, _ = encode_splits(raw, schema)
    return enc.feature_set(), splits


def _cfg(**kw):
    base = dict(epochs=2, batch_size=128, quiet=True, seed=7, threads=1, checkpoint_seconds=0,
                early_stopping_patience=5, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


def _model(features, seed=0):
    torch.manual_seed(seed)
    return build_model("dnn", features, {"hidden_units": [32, 16], "dropout": 0.1, "batch_norm": True})


def _params(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_training_learns_planted_signal(small):
    features, splits = small
    model = _model(features)
    before = evaluate(model, splits["valid"])["auc"]
    res = Trainer(model, _cfg(epochs=3)).fit(splits["train"], splits["valid"])
    assert res.best_metrics["auc"] > 0.65 > before + 0.05
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"]
    assert res.steps == 3 * splits["train"].num_batches(128)


def test_seeded_runs_are_identical(small):
    features, splits = small
    a, b = _model(features), _model(features)
    Trainer(a, _cfg()).fit(splits["train"], splits["valid"])
    Trainer(b, _cfg()).fit(splits["train"], splits["valid"])
    for k, v in _params(a).items():
        assert torch.equal(v, _params(b)[k]), k


def test_interrupted_run_resumes_to_the_same_weights(small, tmp_path):
    features, splits = small
    ref = _model(features)
    Trainer(ref, _cfg(checkpoint_every=5), tmp_path / "ref").fit(splits["train"], splits["valid"])

    def stop_at(step):
        if step == 23:  # mid-epoch 2 (19 steps per epoch), last checkpoint at step 20
            raise StopTraining

    run = tmp_path / "run"
    with pytest.raises(StopTraining):
        Trainer(_model(features), _cfg(checkpoint_every=5), run, on_step=stop_at).fit(splits["train"], splits["valid"])
    st = load_checkpoint(run / "last.pt")
    assert st["format"] == 2
    assert (st["state"]["cursor"], st["state"]["steps"]) == ({"epoch": 1, "step": 1}, 20)
    resumed = _model(features, seed=99)  # different init: everything must come from the checkpoint
    res = Trainer(resumed, _cfg(checkpoint_every=5), run).fit(splits["train"], splits["valid"], resume=True)
    assert res.steps == 38
    for k, v in _params(ref).items():
        assert torch.allclose(v.float(), _params(resumed)[k].float(), atol=1e-6), k
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, torch
    from rankcraft.data.dataset import encode_splits
    from rankcraft.data.synthetic import synthetic_raw
    from rankcraft.models import build_model
    from rankcraft.training.trainer import Trainer, TrainConfig
    raw, schema = synthetic_raw(3000, seed=3)
    enc, splits, _ = encode_splits(raw, schema)
    torch.manual_seed(0)
    model = build_model("dnn", enc.feature_set(), {"hidden_units": [32, 16], "dropout": 0.1, "batch_norm": True})
    cfg = TrainConfig(epochs=2, batch_size=128, quiet=True, seed=7, threads=1, checkpoint_seconds=0,
                      early_stopping_patience=5, lr=3e-3, checkpoint_every=4)
    def kill(step):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    Trainer(model, cfg, sys.argv[1], on_step=kill).fit(splits["train"], splits["valid"])
""")


def test_kill_minus_nine_mid_epoch_then_resume(small, tmp_path):
    features, splits = small
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(run), "10"], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    st = load_checkpoint(run / "last.pt")
    assert st["state"]["cursor"] == {"epoch": 0, "step": 8}  # killed in the middle of the first epoch
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no half-written temp files left
    resumed = _model(features, seed=5)
    cfg = _cfg(checkpoint_every=4)
    res = Trainer(resumed, cfg, run).fit(splits["train"], splits["valid"], resume=True)
    ref = _model(features)
    Trainer(ref, cfg).fit(splits["train"], splits["valid"])
    assert res.steps == 38
    for k, v in _params(ref).items():
        assert torch.allclose(v.float(), _params(resumed)[k].float(), atol=1e-5), k


def test_resume_without_checkpoint_is_a_clear_error(small, tmp_path):
    features, splits = small
    with pytest.raises(CheckpointError, match="nothing to resume"):
        Trainer(_model(features), _cfg(), tmp_path).fit(splits["train"], splits["valid"], resume=True)


def test_checkpoints_load_weights_only_and_corruption_is_reported(tmp_path):
    save_checkpoint(tmp_path / "x.pt", {"model": {"w": torch.ones(2)}, "epoch": 3, "best": {"auc": 0.5}})
    st = torch.load(tmp_path / "x.pt", weights_only=True)
    assert st["epoch"] == 3 and torch.equal(st["model"]["w"], torch.ones(2))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_early_stopping_and_best_weights_restored(small, tmp_path):
    features, splits = small
    model = _model(features)
    # a huge learning rate makes validation AUC stop improving quickly
    res = Trainer(model, _cfg(epochs=30, lr=0.05, early_stopping_patience=1, lr_schedule="constant"),
                  tmp_path).fit(splits["train"], splits["valid"])
    assert res.stopped_early and len(res.history) < 30
    best_auc = max(h["auc"] for h in res.history)
    assert res.best_metrics["auc"] == best_auc
    assert evaluate(model, splits["valid"])["auc"] == pytest.approx(best_auc, abs=1e-6)


def test_plateau_schedule_decays_lr(small):
    features, splits = small
    res = Trainer(_model(features), _cfg(epochs=6, lr=0.05, lr_schedule="plateau", early_stopping_patience=6)).fit(
        splits["train"], splits["valid"])
    lrs = [h["lr"] for h in res.history]
    assert lrs[0] == pytest.approx(0.05) and min(lrs) < 0.05


@pytest.mark.parametrize("optimizer", ["adam", "adagrad"])
def test_sparse_embeddings_train(small, optimizer):
    features, splits = small
    torch.manual_seed(0)
    model = build_model("dnn", features, {"hidden_units": [32], "sparse_embedding": True})
    w0 = model.embedding.table.weight.detach().clone()
    res = Trainer(model, _cfg(optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05, embedding_l2=0.0)).fit(
        splits["train"], splits["valid"])
    assert not torch.equal(w0, model.embedding.table.weight)
    assert res.best_metrics["auc"] > 0.6


def test_bf16_autocast_trains(small):
    features, splits = small
    res = Trainer(_model(features), _cfg(bf16=True)).fit(splits["train"], splits["valid"])
    assert res.best_metrics["auc"] > 0.6


def test_embedding_l2_shrinks_tables(small):
    features, splits = small
    norms = []
    for l2 in (0.0, 1.0):
        torch.manual_seed(0)
        m = build_model("dnn", features, {"hidden_units": [16], "embedding_dim": 8})
        with torch.no_grad():
            m.embedding.table.weight.normal_(0, 0.1)
        Trainer(m, _cfg(epochs=1, embedding_l2=l2)).fit(splits["train"], splits["valid"])
        norms.append(float(m.embedding.table.weight.norm()))
    assert norms[1] < 0.7 * norms[0]


def test_nan_loss_is_reported(small):
    features, splits = small
    model = _model(features)
    with torch.no_grad():
        model.mlp.net[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan"):
        Trainer(model, _cfg()).fit(splits["train"], splits["valid"])


def test_max_steps(small):
    features, splits = small
    res = Trainer(_model(features), _cfg(epochs=5, max_steps=7)).fit(splits["train"], splits["valid"])
    assert res.steps == 7 and len(res.history) == 1
    assert np.isfinite(res.best_metrics["logloss"])


def test_step_loop_separate_optimizer_and_stop_when(small, tmp_path):
    """The supernet path: a fixed number of steps across epochs, a parameter set with its own optimiser that only
    moves from its start step on, and a stop condition that ends the phase (marked done, so resume moves on)."""
    from rankcraft.training.loops import StepLoop
    from rankcraft.training.trainer import SeparateOptimizer

    features, splits = small
    model = _model(features)
    extra = torch.nn.Parameter(torch.zeros(3))
    model.register_parameter("extra", extra)
    orig_forward = model.forward
    model.forward = lambda batch: orig_forward(batch) + extra.sum()  # gives `extra` a gradient
    seen: list[float] = []
    trainer = Trainer(model, _cfg(max_steps=25), tmp_path / "run", separate=[SeparateOptimizer([extra], 0.1, 5)],
                      before_step=lambda done: seen.append(float(extra.abs().sum())))
    res = trainer.run(StepLoop(splits["train"], 25))
    n = splits["train"].num_batches(128)
    assert res.steps == 25 > n  # crosses an epoch boundary
    assert seen[:6] == [0.0] * 6 and seen[6] > 0  # stepped from step index 5 on, not before
    assert all(p is not extra for p in trainer._dense_params)
    st = load_checkpoint(tmp_path / "run" / "last.pt")["state"]
    assert st["cursor"]["done"] and st["steps"] == 25
    calls = {"n": 0}

    def stop_after_7():
        calls["n"] += 1
        return calls["n"] > 7

    model2 = _model(features)
    res = Trainer(model2, _cfg(max_steps=25), tmp_path / "run2", stop_when=stop_after_7).run(
        StepLoop(splits["train"], 25))
    assert res.steps == 7 and res.stopped_early
    again = Trainer(model2, _cfg(max_steps=25), tmp_path / "run2").run(StepLoop(splits["train"], 25), resume=True)
    assert again.steps == 7  # the phase was marked finished: a resume does not train again


def test_device_option(small, tmp_path):
    from rankcraft.errors import ConfigError
    from rankcraft.training.trainer import resolve_device

    features, splits = small
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="train.device 'cuda': no CUDA device is available"):
            Trainer(_model(features), _cfg(device="cuda"))
    with pytest.raises(Exception, match="device"):
        _cfg(device="tpu")
    model = _model(features)
    Trainer(model, _cfg(device="auto", epochs=1)).fit(splits["train"], splits["valid"])
    assert next(model.parameters()).device.type == "cpu"  # the trained model comes back on the CPU
