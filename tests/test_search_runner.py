"""End-to-end searches on synthetic data: every strategy, the search directory, resume after kill -9, Ray
parallelism, the CLI (`rankcraft search`, `rankcraft train --arch`) and configuration errors."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rankcraft.cli.main import main
from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import load_arch
from rankcraft.search.config import SearchConfig, parse_budget
from rankcraft.search.runner import run_search
from rankcraft.search.store import TrialStore

DATA = {"recipe": "synthetic", "rows": 6000, "seed": 3}
TRAIN = {"batch_size": 512, "lr": 3e-3, "epochs": 1, "max_steps": 8, "lr_schedule": "constant", "seed": 1}


def _cfg(strategy: str, **kw) -> dict:
    base = {"data": DATA, "space": "tiny", "strategy": strategy, "budget": {"trials": 4}, "train": TRAIN,
            "zoo": [], "evolution": {"population": 2, "sample": 2},
            "oneshot": {"steps": 30, "candidates": 12, "population": 4, "sample": 2, "top_k": 2,
                        "checkpoint_every": 10, "batch_size": 256},
            "dnas": {"lambdas": [0.0, 1.0], "steps": 20, "batch_size": 256, "checkpoint_every": 10}}
    base.update(kw)
    return base


def _completed(out: Path) -> dict:
    store = TrialStore(out / "trials.db", create=False)
    return {t.key: (t.metrics, t.flops) for t in store.trials()}


@pytest.mark.parametrize("strategy", ["random", "evolution", "oneshot", "dnas"])
def test_every_strategy_writes_a_search_directory(strategy, tmp_path):
    out = tmp_path / strategy
    report = run_search(_cfg(strategy, zoo=["dnn"] if strategy == "random" else []), out, progress=False)
    for f in ("config.json", "trials.db", "best.json", "front.png", "report.md", "report.json"):
        assert (out / f).exists(), f
    assert report["best"] is not None and report["front"]
    assert report["hypervolume"] > 0
    best = json.loads((out / "best.json").read_text())
    arch = load_arch(out / "best.json")
    assert best["arch"] == arch.to_dict() and best["flops"] > 0
    store = TrialStore(out / "trials.db", create=False)
    standalone = [t for t in store.trials() if t.fidelity.get("tag") == "standalone" and t.strategy == strategy]
    assert min(t.objective for t in standalone) == pytest.approx(best["metrics"]["logloss"])
    if strategy in ("random", "evolution"):
        assert len(standalone) == 4
    if strategy == "random":
        assert [z["model"] for z in report["zoo"]] == ["dnn"]
    if strategy == "oneshot":
        scored = [t for t in store.trials() if t.fidelity.get("tag") == "supernet"]
        assert len(scored) >= 4 and len(standalone) == 2  # top-k retrained from scratch
        assert all(t.extra.get("supernet_rank") for t in standalone)
    if strategy == "dnas":
        assert sorted(t.extra["lambda"] for t in standalone) == [0.0, 1.0] or len(standalone) == 1
        assert (out / "dnas-0.0" / "last.pt").exists()


def test_existing_directory_needs_resume_and_resume_reuses_trials(tmp_path):
    out = tmp_path / "s"
    run_search(_cfg("random"), out, progress=False)
    before = _completed(out)
    with pytest.raises(ConfigError, match="--resume"):
        run_search(_cfg("random"), out, progress=False)
    run_search({}, out, resume=True, progress=False)  # nothing left to do: the same trials
    assert _completed(out) == before
    with pytest.raises(ConfigError, match="no search to resume"):
        run_search({}, tmp_path / "none", resume=True, progress=False)


_CRASH_SCRIPT = """
import sys, json
from rankcraft.search.runner import run_search
run_search(json.loads(sys.argv[1]), sys.argv[2], resume=len(sys.argv) > 3, progress=False)
"""


def _count_complete(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("select count(*) from trials where state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_mid_search_then_resume_keeps_every_completed_trial(tmp_path):
    cfg = _cfg("evolution", budget={"trials": 6},
               train={**TRAIN, "max_steps": 40, "batch_size": 256, "epochs": 3})
    reference = tmp_path / "reference"
    run_search(cfg, reference, progress=False)

    out = tmp_path / "crashed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, json.dumps(cfg), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _count_complete(out / "trials.db") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the search finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survived = _completed(out)
    assert 2 <= len(survived) < 6
    subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, json.dumps(cfg), str(out), "resume"], env=env,
                   check=True, capture_output=True)
    final = _completed(out)
    for key, value in survived.items():  # nothing completed was lost or changed
        assert final[key] == value
    # the resumed search replays the same seeded decisions: the same trials as an uninterrupted search
    assert set(final) == set(_completed(reference))
    for key, (metrics, flops) in _completed(reference).items():
        assert final[key][1] == flops
        assert final[key][0]["logloss"] == pytest.approx(metrics["logloss"], abs=1e-6)


@pytest.mark.slow
def test_ray_parallel_search_equals_sequential(tmp_path):
    pytest.importorskip("ray")
    cfg = _cfg("random", budget={"trials": 4}, batch=4, threads_per_task=1)
    seq = run_search(cfg, tmp_path / "seq", progress=False)
    par = run_search({**cfg, "workers": 2}, tmp_path / "par", progress=False)
    a, b = _completed(tmp_path / "seq"), _completed(tmp_path / "par")
    assert set(a) == set(b) and len(a) == 4
    for key in a:
        assert a[key][1] == b[key][1]
        assert a[key][0]["logloss"] == pytest.approx(b[key][0]["logloss"], abs=1e-6)
    assert seq["best"]["key"] == par["best"]["key"]


def test_cli_search_then_train_the_best_architecture(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["search", "--dataset", "synthetic", "--rows", "6000", "--space", "tiny", "--strategy", "random",
               "--budget", "2", "--fidelity-steps", "5", "--zoo", "", "--quiet", "--out", str(out),
               "--set", "train.batch_size=512"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "random search on space tiny: 2 standalone trial(s)" in text
    run = tmp_path / "run"
    rc = main(["train", "--arch", str(out / "best.json"), "--dataset", "synthetic", "--rows", "6000",
               "--epochs", "1", "--batch-size", "512", "--quiet", "--out", str(run)])
    assert rc == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "arch" and cfg["params"]["arch"] == json.loads((out / "best.json").read_text())["arch"]
    from rankcraft import api

    loaded = api.load_run(run)
    assert loaded.model.arch == load_arch(out / "best.json")


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "arch.json"
    bad.write_text('{"blocks": [{"dense": {"op": "mlp", "flat_inputs": [0]}}], "head": {"inputs": [1]}}')
    assert main(["train", "--arch", str(bad), "--dataset", "synthetic", "--rows", "100"]) == 2
    err = capsys.readouterr().err
    assert "arch.json: invalid architecture" in err and "needs 'dim'" in err
    assert main(["search", "--dataset", "synthetic", "--budget", "soon", "--out", str(tmp_path / "x")]) == 2
    assert "--budget 'soon'" in capsys.readouterr().err
    assert main(["search", "--dataset", "synthetic", "--budget", "2", "--zoo", "nosuch", "--out",
                 str(tmp_path / "y")]) == 2
    assert "unknown model 'nosuch'" in capsys.readouterr().err
    assert main(["search", "--dataset", "synthetic", "--budget", "2", "--set", "oneshot.stepz=3", "--out",
                 str(tmp_path / "z")]) == 2
    assert "oneshot.stepz" in capsys.readouterr().err


def test_budget_parsing():
    assert parse_budget("50").trials == 50
    assert parse_budget("30m").minutes == 30
    assert parse_budget("1.5h").minutes == 90
    assert parse_budget("90s").minutes == pytest.approx(1.5)
    with pytest.raises(ConfigError):
        parse_budget("2.5")
    with pytest.raises(ConfigError, match="budget"):
        SearchConfig.parse({"budget": {}})


@pytest.mark.slow
def test_kill_9_during_supernet_training_resumes_from_its_checkpoint(tmp_path):
    cfg = _cfg("oneshot", oneshot={"steps": 200, "candidates": 10, "population": 4, "sample": 2, "top_k": 1,
                                   "checkpoint_every": 20, "batch_size": 256})
    reference = tmp_path / "reference"
    run_search(cfg, reference, progress=False)
    out = tmp_path / "crashed"
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, json.dumps(cfg), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out / "supernet" / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    import torch

    step = torch.load(out / "supernet" / "last.pt", weights_only=True)["state"]["steps"]
    assert 0 < step < 200  # killed mid-training, after a checkpoint
    subprocess.run([sys.executable, "-c", _CRASH_SCRIPT, json.dumps(cfg), str(out), "resume"], check=True,
                   capture_output=True)
    final, ref = _completed(out), _completed(reference)
    # the resumed supernet continued from its checkpoint on the same batches and paths: same scores, same picks
    assert set(final) == set(ref)
    for key, (metrics, _) in ref.items():
        assert final[key][0]["logloss"] == pytest.approx(metrics["logloss"], abs=1e-5)


def test_cli_arch_tools(tmp_path, capsys):
    out = tmp_path / "dlrm.json"
    assert main(["arch", "zoo", "dcnv2", "--param", "num_cross_layers=2", "--out", str(out)]) == 0
    assert load_arch(out).blocks[0].dense.layers == 2
    capsys.readouterr()
    assert main(["arch", "show", str(out), "--dataset", "synthetic", "--rows", "500", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    from rankcraft.api import DataSpec
    from rankcraft.data.dataset import prepare
    from rankcraft.models import build_model
    from rankcraft.training.profile import count_parameters

    feats = prepare(DataSpec(recipe="synthetic", rows=500).source()).features
    zoo = build_model("dcnv2", feats, {"num_cross_layers": 2})
    assert info["params"] == count_parameters(zoo) and info["flops_per_example"] > 0
    assert main(["arch", "sample", "--space", "full", "--seed", "4", "--out", str(tmp_path / "s.json")]) == 0
    from rankcraft.search.space import get_space

    get_space("full").check(load_arch(tmp_path / "s.json"))
    assert main(["arch", "zoo", "autoint"]) == 2
    assert "no architecture counterpart" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- seeds, cap, AUC
def test_evolution_starts_from_human_designs_within_a_flops_cap(tmp_path):
    """Seeds enter the population as architectures; a seed over the cap is left out; no trained candidate is over
    the cap; the AUC objective is reported as 1-auc and picks the highest-AUC candidate."""
    from rankcraft.api import DataSpec
    from rankcraft.data.dataset import prepare
    from rankcraft.models.arch.cost import arch_flops
    from rankcraft.models.arch.zoo import zoo_arch

    features = prepare(DataSpec.model_validate(DATA).source()).features
    small = {"hidden_units": [16], "dropout": 0.1}
    cap = arch_flops(zoo_arch("dnn", small), features, 10) * 1.5
    seeds = [{"model": "dnn", "params": small}, {"model": "dnn", "params": {"hidden_units": [512, 512]},
                                                  "name": "big"}]
    out = tmp_path / "evo"
    report = run_search(_cfg("evolution", budget={"trials": 5}, objective="auc", max_flops=cap,
                             evolution={"population": 3, "sample": 2, "seeds": seeds}), out, progress=False)
    store = TrialStore(out / "trials.db", create=False)
    trials = sorted((t for t in store.trials() if t.strategy == "evolution"), key=lambda t: t.number)
    assert len(trials) == 5
    assert trials[0].arch == zoo_arch("dnn", small).to_dict()  # the seed is the first candidate
    assert all(t.flops <= cap for t in trials)
    assert report["objective"] == "1-auc"
    best = max(trials, key=lambda t: t.metrics["auc"])
    assert report["best"]["key"] == best.key and report["best"]["1-auc"] == pytest.approx(1 - best.metrics["auc"])
    assert "1-auc" in (out / "report.md").read_text()
    [note] = report["notes"]  # the big seed was left out, and the report says so (also without progress output)
    assert note.startswith("evolution seed big: ") and "over max_flops" in note
    assert f"- note: {note}" in (out / "report.md").read_text()


def test_an_impossible_flops_cap_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="max_flops 10: no architecture of space 'tiny'"):
        run_search(_cfg("random", max_flops=10), tmp_path / "s", progress=False)


def test_unsupported_seed_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="autoint.*no architecture counterpart"):
        run_search(_cfg("evolution", zoo=["dnn"], evolution={"population": 2, "sample": 2, "seeds": ["autoint"]}),
                   tmp_path / "s", progress=False)
    store = TrialStore(tmp_path / "s" / "trials.db", create=False)
    assert store.trials() == []  # the zoo reference was not trained either


def test_search_on_postgresql_resumes_from_the_shared_database(postgres_url, tmp_path):
    """--storage with a PostgreSQL URL: trials go to the server (no trials.db file), and a resumed search with a
    larger budget reuses them (skipped unless RANKCRAFT_TEST_POSTGRES_URL is set)."""
    out = tmp_path / "pg"
    run_search(_cfg("random", budget={"trials": 2}), out, storage=postgres_url, progress=False)
    assert not (out / "trials.db").exists()
    first = {t.key: t.metrics for t in TrialStore(postgres_url, create=False).trials()}
    assert len(first) == 2
    cfg = json.loads((out / "config.json").read_text())
    cfg["budget"] = {"trials": 4}
    (out / "config.json").write_text(json.dumps(cfg))
    report = run_search({}, out, resume=True, storage=postgres_url, progress=False)
    after = {t.key: t.metrics for t in TrialStore(postgres_url, create=False).trials()}
    assert report["trials"] == 4 and len(after) == 4
    assert {k: after[k] for k in first} == first


def test_confirmation_retrains_the_top_candidates_with_more_seeds_and_picks_the_best_mean(tmp_path):
    out = tmp_path / "conf"
    report = run_search(_cfg("random", budget={"trials": 4}, confirm={"top_k": 2, "seeds": [7, 8]}), out,
                        progress=False)
    store = TrialStore(out / "trials.db", create=False)
    extra = [t for t in store.trials() if str(t.fidelity.get("tag")).startswith("seed-")]
    assert sorted((t.extra["seed"], t.hparams["seed"]) for t in extra) == [(7, 7), (7, 7), (8, 8), (8, 8)]
    assert len(report["confirmed"]) == 2 and report["trials"] == 4  # confirmation trials are not search trials
    means = [r["mean"] for r in report["confirmed"]]
    assert means == sorted(means)
    for r in report["confirmed"]:
        assert list(r["per_seed"]) == [str(TRAIN["seed"]), "7", "8"]
        assert r["mean"] == pytest.approx(sum(r["per_seed"].values()) / 3)
    best = json.loads((out / "best.json").read_text())
    assert best["search"]["key"] == report["confirmed"][0]["key"] == report["best"]["key"]
    assert best["confirmed"]["mean"] == pytest.approx(means[0])
    assert "## Confirmation" in (out / "report.md").read_text()
    # a resumed search finds the confirmation runs in the store
    n = len(store.trials())
    run_search({}, out, resume=True, progress=False)
    assert len(TrialStore(out / "trials.db", create=False).trials()) == n


def test_resume_can_extend_the_budget_and_add_a_confirmation_only(tmp_path, capsys):
    out = tmp_path / "ext"
    args = ["search", "--dataset", "synthetic", "--rows", "6000", "--space", "tiny", "--strategy", "random",
            "--budget", "2", "--fidelity-steps", "5", "--zoo", "", "--out", str(out), "--quiet"]
    assert main(args) == 0
    first = {t.key: t.metrics for t in TrialStore(out / "trials.db", create=False).trials()}
    assert main(["search", "--out", str(out), "--resume", "--budget", "3", "--set", "confirm.top_k=1",
                 "--set", "confirm.seeds=[9]", "--quiet"]) == 0
    trials = TrialStore(out / "trials.db", create=False).trials()
    after = {t.key: t.metrics for t in trials}
    assert {k: after[k] for k in first} == first  # the first trials are reused, not re-run
    assert sum(t.fidelity.get("tag") == "standalone" for t in trials) == 3
    assert [t.hparams["seed"] for t in trials if t.fidelity.get("tag") == "seed-9"] == [9]
    saved = json.loads((out / "config.json").read_text())
    assert saved["budget"] == {"trials": 3, "minutes": None} and saved["confirm"] == {"top_k": 1, "seeds": [9]}
    capsys.readouterr()
    assert main(["search", "--out", str(out), "--resume", "--strategy", "evolution"]) == 2
    assert "takes --budget and --set budget.*/confirm.* only, not --strategy" in capsys.readouterr().err
    assert main(["search", "--out", str(out), "--resume", "--set", "objective=auc"]) == 2
    assert "a resumed search cannot change objective" in capsys.readouterr().err


def test_a_search_whose_every_candidate_fails_stops_with_the_error(tmp_path, monkeypatch):
    import rankcraft.search.context as context
    from rankcraft.errors import RankcraftError

    def broken(task):
        raise ValueError("broken training setup")

    monkeypatch.setattr(context, "evaluate_task", broken)
    with pytest.raises(RankcraftError, match="in a row failed.*broken training setup"):
        run_search(_cfg("random", budget={"trials": 3}), tmp_path / "s", progress=False)
