"""Tabular benchmarks and the pool-based strategies: building a table (resumable), the table executor, every
standalone strategy run against a table, predictor + RL pieces, TPE, and the strategy registry's errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kendalltau

from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import Arch
from rankcraft.parallel import SequentialExecutor
from rankcraft.search.config import SearchConfig
from rankcraft.search.encoding import DEAD, FeatureEncoder, decisions, hamming
from rankcraft.search.evaluate import evaluate_task
from rankcraft.search.predictor_rl import (
    RankingPredictor,
    curve_label,
    reinforce_on_pool,
)
from rankcraft.search.registry import get_strategy, strategy_names
from rankcraft.search.runner import run_search
from rankcraft.search.space import PRESETS, SearchSpace, SpaceConfig
from rankcraft.search.store import TrialStore
from rankcraft.search.tabular import (
    Table,
    TableExecutor,
    TableMissError,
    build_table,
    sample_pool,
)

DATA = {"recipe": "synthetic", "rows": 3000, "seed": 5}
LOW = {"data": {**DATA, "train_rows": 1000}, "train": {"batch_size": 256, "lr": 3e-3, "epochs": 2,
                                                       "lr_schedule": "constant", "seed": 1, "monitor": "logloss"}}
FULL = {"data": DATA, "train": {"batch_size": 256, "lr": 3e-3, "epochs": 2, "lr_schedule": "constant", "seed": 1}}
TINY = SpaceConfig(**PRESETS["tiny"])


@pytest.fixture(scope="module")
def table_path(tmp_path_factory):
    out = tmp_path_factory.mktemp("table")
    with SequentialExecutor(threads_per_task=1) as ex:
        return build_table(out, space=TINY, fidelities={"low": LOW, "full": FULL}, n=24, n_full=6, executor=ex,
                           seed=0, progress=False)


def test_table_rows_fidelities_and_resume(table_path):
    t = Table.load(table_path)
    assert len(t) == 24
    assert len(t.with_fidelity("low")) == 24 and t.with_fidelity("full") == list(range(6))
    assert len({a.live_key() for a in t.archs}) == 24  # distinct models
    row = t.rows[0]
    assert row["low"]["logloss"] > 0 and row["low"]["steps"] == 2 * 4  # 1000 rows / 256 = 4 batches per epoch
    assert len(row["low"]["history"]) == 2 and 1 <= len(row["low"]["history"][0]["loss_curve"]) <= 8
    # a prefix of a larger pool is the smaller pool, so building again (resume) retrains nothing
    with SequentialExecutor(threads_per_task=1) as ex:
        calls = []

        class Counting(SequentialExecutor):
            def map(self, fn, items, *, progress=None):
                calls.extend(items)
                return ex.map(fn, items)

        build_table(table_path.parent, space=TINY, fidelities={"low": LOW, "full": FULL}, n=24, n_full=6,
                    executor=Counting(), seed=0, progress=False)
    assert calls == []
    with pytest.raises(ConfigError, match="another space, seed or fidelity"):
        build_table(table_path.parent, space=TINY, fidelities={"low": LOW}, n=24, n_full=0,
                    executor=SequentialExecutor(), seed=1, progress=False)


def test_train_rows_subsample_is_fixed_and_checked():
    from rankcraft.data.spec import prepare_spec

    a = prepare_spec({**DATA, "train_rows": 500})
    b = prepare_spec({**DATA, "train_rows": 500})
    full = prepare_spec(DATA)
    assert len(a.splits["train"]) == 500
    assert np.array_equal(a.splits["train"].columns["label"].numpy(), b.splits["train"].columns["label"].numpy())
    assert len(full.splits["valid"]) == len(a.splits["valid"])
    with pytest.raises(ConfigError, match="more than the"):
        prepare_spec({**DATA, "train_rows": 10**7})


def test_table_executor_answers_lookups_and_names_misses(table_path):
    t = Table.load(table_path)
    ex = TableExecutor(t, "full")
    assert len(ex.pool) == 6
    task = {"model": "arch", "params": {"arch": t.archs[0].to_dict()}}
    [res] = ex.map(evaluate_task, [task])
    assert res["metrics"]["logloss"] == t.rows[0]["full"]["logloss"]
    outside = next(a for a in sample_pool(SearchSpace(TINY), 200, seed=99) if not t.contains(a))
    with pytest.raises(TableMissError, match="not in the table"):
        ex.map(evaluate_task, [{"model": "arch", "params": {"arch": outside.to_dict()}}])
    with pytest.raises(TableMissError, match="no 'full' result"):
        ex.map(evaluate_task, [{"model": "arch", "params": {"arch": t.archs[10].to_dict()}}])
    with pytest.raises(TableMissError, match="zoo model"):
        ex.map(evaluate_task, [{"model": "dnn", "params": {}}])
    with pytest.raises(ConfigError, match="no such file"):
        Table.load(table_path.parent / "nope.json.gz")


@pytest.mark.parametrize("strategy", ["random", "evolution", "predictor_rl", "tpe"])
def test_strategies_run_on_a_table_within_its_pool(table_path, tmp_path, strategy):
    t = Table.load(table_path)
    cfg = {"data": DATA, "space": "tiny", "strategy": strategy, "budget": {"trials": 12}, "zoo": ["dnn"],
           "table": {"path": str(table_path), "fidelity": "low"}, "batch": 3,
           "evolution": {"population": 4, "sample": 2},
           "predictor_rl": {"warmup": 4, "round_size": 3, "models": 3, "fit_epochs": 50, "rl_steps": 100},
           "tpe": {"startup": 4}}
    report = run_search(cfg, tmp_path / strategy, progress=False)
    assert report["trials"] == 12
    store = TrialStore(tmp_path / strategy / "trials.db", create=False)
    trials = [x for x in store.trials() if x.strategy == strategy]
    assert len(trials) == 12
    for x in trials:  # every trial is a table row with the tabulated result
        i = t.index(x.arch)
        assert x.metrics["logloss"] == t.rows[i]["low"]["logloss"]
    assert any("zoo references are not trained" in n for n in report["notes"])


def test_supernet_strategies_and_unknown_names_are_refused(table_path, tmp_path):
    with pytest.raises(ConfigError, match="trains weight-sharing supernets"):
        run_search({"data": DATA, "space": "tiny", "strategy": "oneshot", "budget": {"trials": 2},
                    "table": {"path": str(table_path)}}, tmp_path / "o", progress=False)
    with pytest.raises(ConfigError, match="unknown search strategy 'nosuch'.*predictor_rl"):
        SearchConfig.parse({"strategy": "nosuch"})
    with pytest.raises(ConfigError, match="unknown search strategy"):
        get_strategy("nosuch")
    with pytest.raises(ConfigError, match=r"predictor_rl\.rl_stepz"):
        SearchConfig.parse({"strategy": "predictor_rl", "predictor_rl": {"rl_stepz": 3}})
    with pytest.raises(ConfigError, match="unknown key 'evolutoin'"):
        SearchConfig.parse({"strategy": "evolution", "evolutoin": {}})
    assert {"random", "evolution", "oneshot", "dnas", "predictor_rl", "tpe", "sigeo"} <= set(strategy_names())


def test_a_table_search_resumes_to_the_same_trials(table_path, tmp_path):
    cfg = {"data": DATA, "space": "tiny", "strategy": "predictor_rl", "budget": {"trials": 7}, "zoo": [],
           "table": {"path": str(table_path)}, "batch": 2,
           "predictor_rl": {"warmup": 3, "round_size": 2, "models": 2, "fit_epochs": 30, "rl_steps": 50}}
    a = run_search(cfg, tmp_path / "a", progress=False)
    run_search({**cfg, "budget": {"trials": 4}}, tmp_path / "b", progress=False)
    b = run_search({}, tmp_path / "b", resume=True, progress=False, changes={"budget": {"trials": 7}})
    keys = [sorted(x.key for x in TrialStore(tmp_path / d / "trials.db", create=False).trials()) for d in "ab"]
    assert keys[0] == keys[1] and a["best"] == b["best"]


# --------------------------------------------------------------------------------------------- pieces
def test_decisions_blank_dead_nodes_and_encode():
    sp = SearchSpace(TINY)
    archs = sample_pool(sp, 30, seed=1)
    dec = [decisions(a) for a in archs]
    for a, d in zip(archs, dec):
        live = a.live()
        for i in range(1, 4):
            assert (d[f"d{i}.op"] == DEAD) == ((i, "dense") not in live)
            assert (d[f"s{i}.op"] == DEAD) == ((i, "sparse") not in live)
    assert hamming(dec[0], dec[0]) == 0 and hamming(dec[0], dec[1]) > 0
    enc = FeatureEncoder().fit(dec)
    x = enc.transform(dec)
    assert x.shape == (30, enc.width) and set(np.unique(x[:, :len(enc.columns)])) <= {0.0, 1.0}
    assert (x[:, :len(enc.columns)].sum(1) == len(dec[0])).all()  # one value per decision
    # two architectures that differ only in a dead node have equal decisions (and the same live key)
    with_dead = next(a for a in archs if (1, "sparse") not in a.live())
    d = with_dead.to_dict()
    d["blocks"][0]["sparse"]["fields"] = 6 if d["blocks"][0]["sparse"]["fields"] == 4 else 4
    other = Arch.model_validate(d)
    assert other.key() != with_dead.key()
    assert decisions(other) == decisions(with_dead) and other.live_key() == with_dead.live_key()
    d["blocks"][2]["dense"] = {"op": "mlp", "dim": 999, "inputs": [], "flat_inputs": [0]}
    assert decisions(Arch.model_validate(d)) != decisions(with_dead)


def test_ranking_predictor_learns_an_order_and_the_policy_finds_the_best():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(80, 12)).astype(np.float32)
    w = rng.normal(size=12)
    y = x @ w + 0.05 * rng.normal(size=80)
    p = RankingPredictor(models=3, epochs=200, seed=0).fit(x[:50], y[:50])
    tau = kendalltau(p.predict(x[50:]), y[50:]).statistic
    assert tau > 0.6
    mse = RankingPredictor(models=1, loss="mse", epochs=200, seed=0).fit(x[:50], y[:50])
    assert kendalltau(mse.predict(x[50:]), y[50:]).statistic > 0.5
    reward = -(x @ w)  # the policy should put its mass on the rows with the highest reward
    logits = reinforce_on_pool(x, reward, steps=300, samples=32, lr=0.05, baseline_decay=0.9, entropy=1e-3,
                               seed=0)
    top = np.argsort(-logits)[:5]
    assert reward[top].mean() > np.quantile(reward, 0.85)


def test_curve_label_extrapolates_the_tail_slope():
    # loss falling by 0.01 per step over 2 epochs of 8 steps: slope -0.01; 16 more steps -> value - 0.16
    hist = [{"steps": 8, "loss_curve": [1.0 - 0.01 * (s + 0.5) for s in range(8)]},
            {"steps": 16, "loss_curve": [1.0 - 0.01 * (s + 8.5) for s in range(8)]}]
    assert curve_label(0.5, hist) == pytest.approx(0.5 - 0.16)
    assert curve_label(0.5, hist, horizon=100) == pytest.approx(0.5 - 1.0)
    assert curve_label(0.5, []) == 0.5


_BUILD = """
import sys, json
from rankcraft.parallel import SequentialExecutor
from rankcraft.search.space import PRESETS, SpaceConfig
from rankcraft.search.tabular import build_table
fids = json.loads(sys.argv[1])
build_table(sys.argv[2], space=SpaceConfig(**PRESETS["tiny"]), fidelities=fids, n=10, n_full=2,
            executor=SequentialExecutor(threads_per_task=1), seed=0, chunk=2, progress=False)
"""


def test_kill_9_during_a_table_build_then_resume_keeps_finished_rows(tmp_path):
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    fids = {"low": {**LOW, "train": {**LOW["train"], "epochs": 3}}, "full": FULL}
    out = tmp_path / "t"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _BUILD, json.dumps(fids), str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def done() -> dict:
        if not (out / "trials.db").exists():
            return {}
        try:
            with TrialStore(out / "trials.db", study="table", create=False) as st:
                return {t.key: t.metrics for t in st.trials()}
        except Exception:  # noqa: BLE001 - the database may not be created yet
            return {}

    deadline = time.monotonic() + 120
    while len(done()) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the build finished before it could be killed: " + proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    survived = done()
    assert 3 <= len(survived) < 12 and not (out / "table.json.gz").exists()
    subprocess.run([sys.executable, "-c", _BUILD, json.dumps(fids), str(out)], env=env, check=True,
                   capture_output=True)
    final = done()
    assert len(final) == 12  # 10 low + 2 full
    assert all(final[k] == v for k, v in survived.items())
    assert len(Table.load(out / "table.json.gz")) == 10
