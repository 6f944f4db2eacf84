"""The Optuna-backed trial store: round trips, persistence, crash recovery (kill -9) and error reporting."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rankcraft.errors import ConfigError, RankcraftError
from rankcraft.search.store import TrialRecord, TrialStore, redact, storage_url

pytest.importorskip("optuna")  # the `search` extra (the store imports it when a store is opened)

SRC = Path(__file__).resolve().parents[1] / "src"

ARCH = {"dense": [{"op": "mlp", "dim": 64, "inputs": [0, 1]}, {"op": "cross", "layers": 2, "inputs": [[0], [1, 2]]}],
        "sparse": [], "head": {"w": 16}}


@pytest.fixture
def store(tmp_path):
    s = TrialStore(tmp_path / "trials.db")
    yield s
    s.close()


def test_round_trip_of_every_field(store):
    n0 = store.start("random-000000", arch=ARCH, hparams={"lr": 1e-3, "batch_size": 4096},
                     fidelity={"epochs": 1, "max_steps": 300}, strategy="random", extra={"parent": None, "gen": 0})
    assert n0 == 0
    rec = store.trials("running")[0]
    assert (rec.number, rec.key, rec.status, rec.arch, rec.flops, rec.objective) == (0, "random-000000", "running",
                                                                                      ARCH, None, None)
    store.complete(n0, objective=0.4512, flops=12345.0, metrics={"auc": 0.78, "logloss": 0.4512, "ne": 0.93},
                   params=1_234_567, timings={"train_seconds": 3.5}, extra={"best_epoch": 0})
    [rec] = store.trials()
    assert rec == TrialRecord(number=0, key="random-000000", status="complete", strategy="random", arch=ARCH,
                              hparams={"lr": 1e-3, "batch_size": 4096}, fidelity={"epochs": 1, "max_steps": 300},
                              metrics={"auc": 0.78, "logloss": 0.4512, "ne": 0.93}, flops=12345.0, params=1_234_567,
                              timings={"train_seconds": 3.5}, error=None,
                              extra={"parent": None, "gen": 0, "best_epoch": 0}, objective=0.4512,
                              values=[0.4512, 12345.0])
    # numpy values and tuples become plain JSON; returned records are copies, not the store's cache
    n1 = store.record("random-000001", arch={"w": np.int64(3), "t": (1, 2)}, objective=np.float32(0.5),
                      flops=np.float64(7.0), metrics={"logloss": np.float32(0.5)}, params=np.int64(10))
    rec = store.get("random-000001")
    assert rec.number == n1 == 1 and rec.arch == {"w": 3, "t": [1, 2]} and rec.params == 10
    assert type(rec.arch["w"]) is int and rec.objective == 0.5 and rec.flops == 7.0
    rec.arch["w"] = 99
    assert store.get("random-000001").arch["w"] == 3
    with pytest.raises(ConfigError, match="'arch' is not JSON-serialisable"):
        store.start("bad", arch={"x": object()})


def test_statuses_ordering_get_and_keys(store):
    a = store.record("a", arch={"i": 0}, objective=0.5, flops=10.0, metrics={"logloss": 0.5})
    b = store.start("b", arch={"i": 1})
    c = store.start("c", arch={"i": 2})
    store.fail(b, "Traceback ...\nRuntimeError: out of memory")
    d = store.record("a", arch={"i": 3}, objective=0.4, flops=11.0, metrics={"logloss": 0.4})  # same key again
    assert [a, b, c, d] == [0, 1, 2, 3]
    assert [t.number for t in store.trials(None)] == [0, 1, 2, 3]
    assert [t.status for t in store.trials(None)] == ["complete", "failed", "running", "complete"]
    assert [t.number for t in store.trials()] == [0, 3]
    assert [t.number for t in store.trials("failed")] == [1]
    assert store.trials("failed")[0].error.endswith("out of memory")
    assert [t.key for t in store.trials("running")] == ["c"]
    assert store.get("a").number == 3 and store.get("a").arch == {"i": 3}  # the latest completed one
    assert store.get("b") is None and store.get("c") is None and store.get("zzz") is None
    assert store.completed_keys() == {"a"}
    assert len(store) == 2
    with pytest.raises(ValueError, match="status"):
        store.trials("done")
    with pytest.raises(RankcraftError, match="already failed"):
        store.complete(b, objective=0.1, flops=1.0, metrics={})
    with pytest.raises(RankcraftError, match="no trial 42"):
        store.fail(42, "x")


def test_non_finite_objective_fails_the_trial(store):
    n = store.start("diverged", arch={})
    store.complete(n, objective=math.nan, flops=100.0, metrics={"logloss": math.nan, "auc": 0.5})
    n2 = store.record("inf", arch={}, objective=math.inf, flops=1.0, metrics={})
    n3 = store.record("noflops", arch={}, objective=0.3, flops=math.nan, metrics={})
    assert len(store) == 0 and store.get("diverged") is None
    failed = {t.key: t for t in store.trials("failed")}
    assert [failed[k].number for k in ("diverged", "inf", "noflops")] == [n, n2, n3]
    assert "non-finite objective" in failed["diverged"].error and "non-finite objective" in failed["inf"].error
    assert "non-finite FLOPs" in failed["noflops"].error
    assert math.isnan(failed["diverged"].metrics["logloss"]) and failed["diverged"].flops == 100.0


def test_meta(store):
    assert store.get_meta("config") is None and store.get_meta("elapsed_seconds", 0.0) == 0.0
    cfg = {"space": "small", "budget": {"trials": 20}, "zoo": ["dnn", "deepfm"], "lambdas": (0.0, 0.5)}
    store.set_meta("config", cfg)
    store.set_meta("elapsed_seconds", 12.5)
    store.set_meta("elapsed_seconds", 20.0)
    assert store.get_meta("config") == {**cfg, "lambdas": [0.0, 0.5]}
    assert store.get_meta("elapsed_seconds") == 20.0


def test_path_and_url_share_the_file_and_persist(tmp_path):
    db = tmp_path / "deep" / "dir" / "trials.db"  # parent directories are created
    with TrialStore(db) as s1:
        assert s1.url == f"sqlite:///{db.resolve()}" == storage_url(str(db))
        s1.record("k0", arch=ARCH, objective=0.5, flops=10.0, metrics={"logloss": 0.5}, strategy="evolution")
        s1.start("k1", arch={"x": 1})
        s1.set_meta("config", {"seed": 3})
        with TrialStore(f"sqlite:///{db}") as s2:  # a second store on the same file sees the trials
            assert [t.key for t in s2.trials(None)] == ["k0", "k1"]
            s2.record("k2", arch={}, objective=0.4, flops=20.0, metrics={})
        assert s1.completed_keys() == {"k0", "k2"}  # and the first one sees the second one's writes
    with TrialStore(str(db)) as s3:
        assert s3.get("k0").arch == ARCH and s3.get("k0").strategy == "evolution"
        assert s3.get_meta("config") == {"seed": 3} and len(s3) == 2
    with TrialStore(db, study="other") as s4:  # studies are independent
        assert len(s4) == 0 and s4.trials(None) == []


def test_kill_9_then_resume(tmp_path):
    _kill_9_then_resume(tmp_path / "trials.db")


def test_kill_9_then_resume_on_postgresql(postgres_url):
    """The same crash and resume on a PostgreSQL server (skipped unless RANKCRAFT_TEST_POSTGRES_URL is set)."""
    _kill_9_then_resume(postgres_url)


def _kill_9_then_resume(db):
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(SRC)!r})
        from rankcraft.search.store import TrialStore
        s = TrialStore({str(db)!r})
        for i in range(5):
            n = s.start(f"random-{{i:06d}}", arch={{"layers": [i, [i, i + 1]]}}, hparams={{"lr": 0.001}},
                        fidelity={{"epochs": 1, "max_steps": 300}}, strategy="random")
            s.complete(n, objective=0.5 - 0.01 * i, flops=1000.0 * (i + 1), metrics={{"logloss": 0.5 - 0.01 * i}},
                       params=100 + i, timings={{"train_seconds": 0.1 * i}})
        s.start("random-000005", arch={{"layers": [5]}}, strategy="random")
        print("started", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        print("still alive", flush=True)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split() == ["started"]

    with TrialStore(db) as s:
        done = s.trials()
        assert [t.key for t in done] == [f"random-{i:06d}" for i in range(5)]
        for i, t in enumerate(done):
            assert (t.arch, t.objective, t.flops, t.params) == ({"layers": [i, [i, i + 1]]}, 0.5 - 0.01 * i,
                                                                 1000.0 * (i + 1), 100 + i)
            assert t.metrics == {"logloss": 0.5 - 0.01 * i} and t.timings == {"train_seconds": 0.1 * i}
            assert t.fidelity == {"epochs": 1, "max_steps": 300} and t.hparams == {"lr": 0.001}
        assert [t.key for t in s.trials("running")] == ["random-000005"]
        assert s.recover() == 1
        assert s.recover() == 0
        [lost] = s.trials("failed")
        assert (lost.number, lost.key, lost.error) == (5, "random-000005", "interrupted")
        assert s.trials("running") == [] and s.completed_keys() == {f"random-{i:06d}" for i in range(5)}
        # the resumed search re-runs the interrupted candidate under a new trial number
        n = s.record("random-000005", arch={"layers": [5]}, objective=0.4, flops=6000.0, metrics={})
        assert n == 6 and s.get("random-000005").number == 6


def test_bad_storage_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nosuchdialect://x"):
        TrialStore("nosuchdialect://x")
    with pytest.raises(ConfigError, match="could not parse|cannot open"):
        TrialStore("::not a url://")
    with pytest.raises(ConfigError, match=r"notadb\.db.*not a database"):
        (tmp_path / "notadb.db").write_text("a,b\n1,2\n" * 200)
        TrialStore(tmp_path / "notadb.db")
    with pytest.raises(ConfigError, match="unable to open database file"):  # URLs are used as is: no mkdir
        TrialStore(f"sqlite:///{tmp_path}/missing/dir/x.db")
    with pytest.raises(ConfigError, match=r"no such file .*missing\.db"):
        TrialStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
    with TrialStore(tmp_path / "t.db"):
        pass
    with pytest.raises(ConfigError, match="no study 'other'.*studies: search"):
        TrialStore(tmp_path / "t.db", study="other", create=False)
    # a study made by someone else with other directions
    import optuna

    optuna.create_study(storage=f"sqlite:///{tmp_path / 't.db'}", study_name="single", direction="maximize")
    with pytest.raises(ConfigError, match="directions"):
        TrialStore(tmp_path / "t.db", study="single")


def test_password_is_not_printed():
    assert redact("postgresql://bob:s3cret@db.example:5432/search") == "postgresql://bob:***@db.example:5432/search"
    assert redact("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    try:
        TrialStore("nosuchdialect://bob:s3cret@localhost/db")
    except ConfigError as exc:
        assert "s3cret" not in str(exc) and "bob:***@localhost" in str(exc)
    else:  # pragma: no cover
        pytest.fail("expected a ConfigError")


def test_records_are_json_plain(store):
    store.record("k", arch=ARCH, objective=0.5, flops=1.0, metrics={"auc": 0.7})
    rec = store.get("k")
    assert json.loads(json.dumps(rec.__dict__)) == rec.__dict__
