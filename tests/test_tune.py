"""`rankcraft tune`: typed ranges and their errors, a tune end to end (best.json retrains), several objectives and
their Pareto front, median pruning, kill -9 then resume, the CLI, and the N-objective trial store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from rankcraft.cli.main import main
from rankcraft.errors import ConfigError
from rankcraft.search.evaluate import _pruner
from rankcraft.search.pareto import hypervolume_2d, hypervolume_nd, pareto_front_nd
from rankcraft.search.store import TrialStore
from rankcraft.search.tune import Range, TuneConfig, parse_range, run_tune
from rankcraft.training.run import RunConfig

DATA = {"recipe": "synthetic", "rows": 3000, "seed": 2}
TRAIN = {"epochs": 2, "batch_size": 256, "lr_schedule": "constant", "seed": 1}


def _cfg(**kw) -> dict:
    base = {"data": DATA, "model": "dcnv2", "train": TRAIN, "budget": {"trials": 4},
            "param_ranges": {"num_cross_layers": {"type": "int", "low": 1, "high": 3},
                             "hidden_units": {"type": "choice", "choices": [[16], [32, 16]]}},
            "train_ranges": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    base.update(kw)
    return base


# --------------------------------------------------------------------------------------------- ranges
def test_range_syntax_and_named_errors():
    assert parse_range("lr", "float:1e-4:1e-2:log") == Range(type="float", low=1e-4, high=1e-2, log=True)
    assert parse_range("n", "int:64:512:64") == Range(type="int", low=64, high=512, step=64)
    assert parse_range("h", "choice:[400,400]|[256]").choices == [[400, 400], [256]]
    r = parse_range("h", "choice:[400,400]|[256]")
    assert [r.value(c) for c in r.distribution().choices] == [[400, 400], [256]]  # lists survive the database
    for text, msg in [("float:0.5:0.1", "empty range"), ("float:0:1:log", "log range needs low > 0"),
                      ("int:1.5:3", "whole numbers"), ("choice:", "at least one value"),
                      ("uniform:0:1", "expected float:LOW:HIGH"), ("float:a:b", "could not convert"),
                      ("float:1:2:3:4", "LOW:HIGH")]:
        with pytest.raises(ConfigError, match=msg) as e:
            parse_range("x", text)
        assert "x=" in str(e.value)  # the error names the range


def test_config_errors_are_named():
    for kw, msg in [({"param_ranges": {}, "train_ranges": {}}, "nothing to tune"),
                    ({"objectives": ["auc"], "sampler": "nsga2"}, "nsga2 is multi-objective"),
                    ({"objectives": ["flops", "auc"]}, "first objective must be a quality metric"),
                    ({"train_ranges": {"lrr": {"type": "float", "low": 0.1, "high": 1}}}, "lrr is not a training"),
                    ({"params": {"num_cross_layers": 2}}, "both fixed and tuned"),
                    ({"model": "nosuch"}, "unknown model 'nosuch'")]:
        with pytest.raises(ConfigError, match=msg):
            TuneConfig.parse(_cfg(**kw))


# --------------------------------------------------------------------------------------------- tuning
def test_tune_end_to_end_best_json_retrains(tmp_path):
    out = tmp_path / "t"
    rep = run_tune(_cfg(), out, progress=False)
    assert rep["trials"] == 4 and rep["best"] is not None
    store = TrialStore(out / "trials.db", study="tune", create=False, objectives=1)
    trials = store.trials()
    assert len(trials) == 4
    best = min(trials, key=lambda t: t.values[0])
    assert rep["best"]["number"] == best.number
    assert rep["best"]["values"]["1-auc"] == pytest.approx(1 - best.metrics["auc"])
    for t in trials:  # every sampled value is inside its range and reached the trained config
        assert 1 <= t.arch["params"]["num_cross_layers"] <= 3
        assert t.arch["params"]["hidden_units"] in ([16], [32, 16])
        assert 1e-3 <= t.hparams["lr"] <= 1e-2
    cfg = RunConfig.parse(json.loads((out / "best.json").read_text()))
    assert cfg.model == "dcnv2" and cfg.params["num_cross_layers"] == best.arch["params"]["num_cross_layers"]
    assert "Retrain" in (out / "report.md").read_text()
    with pytest.raises(ConfigError, match="holds a tune already"):
        run_tune(_cfg(), out, progress=False)
    # resume with a larger budget adds trials and keeps the old ones
    rep2 = run_tune({}, out, resume=True, progress=False, changes={"budget": {"trials": 6}})
    assert rep2["trials"] == 6
    assert {t.number: t.values for t in trials}.items() <= {t.number: t.values for t in store.trials()}.items()
    with pytest.raises(ConfigError, match="cannot change model"):
        run_tune({}, out, resume=True, progress=False, changes={"model": "dnn"})


def test_two_objectives_give_a_front(tmp_path):
    rep = run_tune(_cfg(objectives=["auc", "flops"], sampler="nsga2", budget={"trials": 5}), tmp_path / "mo",
                   progress=False)
    assert rep["objectives"] == ["1-auc", "flops"]
    store = TrialStore(tmp_path / "mo" / "trials.db", study="tune", create=False, objectives=2)
    pts = np.array([t.values for t in store.trials()])
    assert sorted(r["number"] for r in rep["front"]) == sorted(store.trials()[i].number
                                                                 for i in pareto_front_nd(pts))
    assert rep["hypervolume"] > 0


def test_median_pruning_stops_bad_trials(tmp_path):
    hook = _pruner({"metric": "auc", "thresholds": {"2": 0.7}})
    assert hook(1, {"auc": 0.5}) is False and hook(2, {"auc": 0.69}) is True and hook(2, {"auc": 0.71}) is False
    assert _pruner({"metric": "logloss", "thresholds": {"1": 0.5}})(1, {"logloss": 0.6}) is True
    # after one complete trial, a trial worse than it at epoch 2 stops there (the others run 4 epochs)
    rep = run_tune(_cfg(train={**TRAIN, "epochs": 4}, budget={"trials": 6}, prune_startup=1, prune_warmup_epochs=2),
                   tmp_path / "p", progress=False)
    store = TrialStore(tmp_path / "p" / "trials.db", study="tune", create=False, objectives=1)
    pruned = [t for t in store.trials() if t.extra.get("pruned_at")]
    assert rep["pruned"] == len(pruned) >= 1
    for t in pruned:
        assert t.extra["pruned_at"] == len(t.extra["history"]) < 4
    assert not rep["best"]["pruned_at"]


_CRASH = """
import sys, json
from rankcraft.search.tune import run_tune
run_tune(json.loads(sys.argv[1]), sys.argv[2], resume=len(sys.argv) > 3, progress=False)
"""


def _complete(db) -> dict:
    if not db.exists():
        return {}
    try:
        with sqlite3.connect(db, timeout=1) as con:
            rows = con.execute("select t.number, v.value from trials t join trial_values v on v.trial_id = "
                               "t.trial_id where t.state = 'COMPLETE'").fetchall()
    except sqlite3.Error:
        return {}
    return dict(rows)


def test_kill_9_then_resume_keeps_completed_trials(tmp_path):
    cfg = _cfg(budget={"trials": 6}, train={**TRAIN, "epochs": 3}, pruner="none")
    out = tmp_path / "k"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CRASH, json.dumps(cfg), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(_complete(out / "trials.db")) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the tune finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survived = _complete(out / "trials.db")
    assert 2 <= len(survived) < 6
    subprocess.run([sys.executable, "-c", _CRASH, "{}", str(out), "resume"], env=env, check=True,
                   capture_output=True)
    final = _complete(out / "trials.db")
    assert len(final) == 6
    assert all(final[n] == v for n, v in survived.items())  # nothing completed was lost or changed


def test_cli_tune_and_its_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["tune", "--dataset", "synthetic", "--rows", "3000", "--model", "deepfm", "--param",
            "dropout=float:0:0.5", "--opt", "lr=float:1e-3:1e-2:log", "--set", "train.epochs=1", "--budget", "2",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert "best: trial" in capsys.readouterr().out
    assert main(["tune", "--resume", "--budget", "3", "--out", str(out), "--quiet"]) == 0
    assert "3 trial(s)" in capsys.readouterr().out
    assert main(["tune", "--resume", "--model", "dnn", "--out", str(out)]) == 2
    assert "takes --budget only" in capsys.readouterr().err
    assert main(["tune", "--dataset", "synthetic", "--model", "deepfm", "--param", "dropout=float:0.5:0.1",
                 "--out", str(tmp_path / "e")]) == 2
    assert "empty range" in capsys.readouterr().err
    assert main(["tune", "--dataset", "synthetic", "--model", "deepfm", "--param", "dropoutz=float:0.1:0.5",
                 "--out", str(tmp_path / "e2")]) == 2
    assert "dropoutz" in capsys.readouterr().err
    assert main(["tune", "--dataset", "synthetic", "--param", "dropout=float:0.1:0.5", "--out",
                 str(tmp_path / "e3")]) == 2
    assert "give --model" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- store and front
def test_store_with_any_number_of_objectives(tmp_path):
    db = tmp_path / "s.db"
    with TrialStore(db, study="three", objectives=3) as s:
        n = s.start("a", arch={"zoo": "dnn"})
        s.complete(n, values=[0.2, 1e5, 3.0], metrics={"auc": 0.8})
        s.record("b", arch={}, values=[0.1, 2e5, 1.0], metrics={})
        with pytest.raises(ConfigError, match="3 objective value"):
            s.record("c", arch={}, objective=0.1, flops=1.0, metrics={})
        n = s.start("d", arch={})
        s.complete(n, values=[0.1, float("nan"), 1.0], metrics={})
        assert [t.values for t in s.trials()] == [[0.2, 1e5, 3.0], [0.1, 2e5, 1.0]]
        assert "non-finite objective value 1" in s.trials(status="failed")[0].error
    with pytest.raises(ConfigError, match="with 2 objective"):
        TrialStore(db, study="three", objectives=2)


def test_front_and_hypervolume_in_any_dimension():
    rng = np.random.default_rng(1)
    p2 = rng.random((25, 2))
    assert hypervolume_nd(p2, (1.2, 1.2)) == pytest.approx(hypervolume_2d(p2, (1.2, 1.2)))
    # a unit cube corner point: hv of (0.5,0.5,0.5) w.r.t. (1,1,1) is 0.125; two overlapping boxes by inclusion-exclusion
    assert hypervolume_nd([[0.5, 0.5, 0.5]], (1, 1, 1)) == pytest.approx(0.125)
    assert hypervolume_nd([[0.5, 0.5, 0.5], [0.0, 0.5, 0.75]], (1, 1, 1)) == pytest.approx(0.125 + 0.125 - 0.0625)
    p3 = np.array([[1, 2, 3], [2, 1, 3], [1, 2, 3], [2, 2, 4], [0, 3, 3]], dtype=float)
    assert sorted(pareto_front_nd(p3).tolist()) == [0, 1, 4]  # the duplicate (2) and the dominated (3) are out


# --------------------------------------------------------------------------------- selecting on a train slice
def test_valid_from_train_selects_on_a_slice_and_drops_the_reported_splits():
    from rankcraft.data.spec import prepare_spec

    full = prepare_spec(DATA)
    a = prepare_spec({**DATA, "valid_from_train": 0.25})
    b = prepare_spec({**DATA, "valid_from_train": 0.25})
    n = len(full.splits["train"])
    assert set(a.splits) == {"train", "valid"}  # the given valid and test splits are never seen
    assert len(a.splits["valid"]) == round(0.25 * n) and len(a.splits["train"]) + len(a.splits["valid"]) == n
    # the two parts partition the training rows: every column's total is the training split's
    for name, col in full.splits["train"].columns.items():
        if col.is_floating_point() or col.dtype in (torch.int64, torch.int32):
            whole = col.double().sum().item()
            parts = a.splits["train"].columns[name].double().sum().item() + \
                a.splits["valid"].columns[name].double().sum().item()
            assert parts == pytest.approx(whole), name
    assert torch.equal(a.splits["valid"].columns["label"], b.splits["valid"].columns["label"])  # seeded
    c = prepare_spec({**DATA, "seed": 3, "valid_from_train": 0.25})
    assert not torch.equal(c.splits["valid"].columns["label"], a.splits["valid"].columns["label"])
    # with a subsample, the subsample is drawn from what is left for training
    s = prepare_spec({**DATA, "valid_from_train": 0.25, "train_rows": 100})
    assert len(s.splits["train"]) == 100 and len(s.splits["valid"]) == round(0.25 * n)
    with pytest.raises(ConfigError, match="valid_from_train"):
        prepare_spec({**DATA, "valid_from_train": 0.25, "out_of_core": {}})
    with pytest.raises(ValueError):
        prepare_spec({**DATA, "valid_from_train": 1.0})


def test_cli_valid_from_train_reaches_the_tune_and_needs_cli_data(tmp_path, capsys):
    out = tmp_path / "t"
    assert main(["tune", "--dataset", "synthetic", "--rows", "2000", "--valid-from-train", "0.2", "--model", "lr",
                 "--opt", "lr=float:1e-3:1e-2:log", "--budget", "1", "--out", str(out), "--quiet"]) == 0
    best = json.loads((out / "best.json").read_text())
    assert best["data"]["valid_from_train"] == 0.2
    cfg = tmp_path / "tune.yaml"
    cfg.write_text("data: {recipe: synthetic, rows: 2000}\nmodel: lr\n")
    rc = main(["tune", "--config", str(cfg), "--valid-from-train", "0.2", "--out",
               str(tmp_path / "u")])
    assert rc != 0
    assert "--valid-from-train needs the data" in capsys.readouterr().err


def test_a_preset_row_label_is_a_tunable_model(tmp_path):
    """``--model mos-din`` on a dataset whose presets have that row: the zoo model is mos, with the row's params."""
    from rankcraft.parallel import SequentialExecutor
    from rankcraft.search.tune import Tuner

    cfg = TuneConfig.parse({"data": {"recipe": "ml-100k-seq"}, "model": "moe-din",
                            "param_ranges": {"num_themes": {"type": "choice", "choices": [2, 4]}}})
    tuner = Tuner(cfg, tmp_path, TrialStore(tmp_path / "t.db", objectives=1), SequentialExecutor(), progress=False)
    assert tuner.model == "mos"
    assert tuner.base_params["backbone"] == "din" and tuner.base_params["mixture"] == "dense"
    params, _ = tuner.candidate({"params.num_themes": tuner.dists["params.num_themes"].choices[1]})
    assert params["num_themes"] == 4 and params["mixture"] == "dense"
    with pytest.raises(ConfigError, match="mos-foo"):
        TuneConfig.parse({"data": {"recipe": "ml-100k-seq"}, "model": "mos-foo",
                          "param_ranges": {"dropout": {"type": "float", "low": 0, "high": 0.5}}})
