"""Sequential and Ray executors of rankcraft.parallel (one local 2-CPU Ray instance for the whole module)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest
import torch

import rankcraft
from rankcraft.errors import ConfigError
from rankcraft.parallel import (
    Executor,
    Failure,
    RayExecutor,
    SequentialExecutor,
    is_failure,
    make_executor,
)


def train_tiny(item: dict) -> dict:
    """A deterministic 'candidate evaluation': 20 SGD steps of a linear model on data drawn from the item's seed."""
    if item.get("fail"):
        raise ValueError(f"candidate {item['seed']} is broken")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(item["seed"])
        x = torch.randn(64, 8)
        y = x @ torch.randn(8, 1) + 0.1 * torch.randn(64, 1)
        model = torch.nn.Linear(8, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        for _ in range(20):
            loss = torch.nn.functional.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            checksum = sum(p.double().sum().item() for p in model.parameters())
    return {"seed": item["seed"], "loss": loss.item(), "checksum": checksum}


def worker_info(item: dict) -> dict:
    import rankcraft as rc  # imported in the worker on purpose

    t0 = time.time()
    time.sleep(item.get("sleep", 0.0))
    return {"t0": t0, "t1": time.time(), "cache": os.environ.get("RANKCRAFT_CACHE"), "threads": torch.get_num_threads(), "pid": os.getpid(),
            "rankcraft": rc.__file__, "pythonpath": os.environ.get("PYTHONPATH"), "extra": os.environ.get("RC_X")}


ITEMS = [{"seed": s} for s in (11, 12, 13, 14)] + [{"seed": 15, "fail": True}] + [{"seed": 16}]


def check_batch(results: list) -> None:
    assert len(results) == len(ITEMS)
    for item, res in zip(ITEMS, results):
        if item.get("fail"):
            assert is_failure(res) and isinstance(res, Failure)
            assert res.error == "ValueError: candidate 15 is broken"
            assert "train_tiny" in res.traceback and "ValueError" in res.traceback
        else:
            assert not is_failure(res)
            assert res["seed"] == item["seed"]


# ---------------------------------------------------------------------------------------------- no Ray needed

def test_sequential_order_and_failure():
    with SequentialExecutor() as ex:
        assert ex.workers == 1
        results = ex.map(train_tiny, ITEMS)
    check_batch(results)
    # deterministic: a second run gives identical numbers
    assert SequentialExecutor().map(train_tiny, ITEMS[:2]) == results[:2]


def test_sequential_threads_are_set_and_restored(capsys):
    before = torch.get_num_threads()
    want = 1 if before != 1 else 2
    (info,) = SequentialExecutor(threads_per_task=want).map(worker_info, [{}], progress="probe")
    assert info["threads"] == want and info["pid"] == os.getpid()
    assert torch.get_num_threads() == before
    assert "probe" in capsys.readouterr().err  # the tqdm bar goes to stderr


def test_make_executor_sequential_and_validation():
    ex = make_executor(1, threads_per_task=2)
    assert type(ex) is SequentialExecutor and ex.threads_per_task == 2
    assert type(make_executor(0)) is SequentialExecutor
    with pytest.raises(ConfigError, match="threads_per_task"):
        SequentialExecutor(threads_per_task=0)


def test_import_is_lazy():
    code = "import sys, rankcraft.parallel; assert 'ray' not in sys.modules, 'ray imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ---------------------------------------------------------------------------------------------------- Ray

@pytest.mark.parametrize("address, match", [
    ("127.0.0.1:1", "cannot connect to the Ray cluster at '127.0.0.1:1'"),
    ("ray://127.0.0.1:1", "cannot connect to the Ray cluster at 'ray://127.0.0.1:1'"),
    ("not-an-address", "cannot connect to the Ray cluster at 'not-an-address'"),
    ("http://127.0.0.1:1", "only supported scheme is ray://"),
])
def test_bad_address_fails_fast(address, match):
    pytest.importorskip("ray")
    t0 = time.monotonic()
    with pytest.raises(ConfigError, match=match):
        make_executor(2, ray_address=address)
    assert time.monotonic() - t0 < 15


@pytest.fixture(scope="module")
def ray_ex():
    """One local 2-CPU Ray instance (session files in a private RAY_TMPDIR, removed afterwards)."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    old_tmp = os.environ.get("RAY_TMPDIR")
    tmp = tempfile.mkdtemp(prefix="rc-ray-", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 chars
    os.environ["RAY_TMPDIR"] = tmp
    # pytest imports this file as a top-level module the workers cannot import: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        ex = RayExecutor(2, threads_per_task=1)
        yield ex
        ex.close()
        assert not ray.is_initialized()
    finally:
        if ray.is_initialized():
            ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        for _ in range(3):  # Ray's helper processes may still write their last log lines
            shutil.rmtree(tmp, ignore_errors=True)
            if not os.path.exists(tmp):
                break
            time.sleep(0.5)


def test_ray_matches_sequential(ray_ex):
    assert ray_ex.workers == 2
    got = ray_ex.map(train_tiny, ITEMS, progress="ray")
    check_batch(got)
    want = SequentialExecutor(threads_per_task=1).map(train_tiny, ITEMS)
    ok = [i for i, it in enumerate(ITEMS) if not it.get("fail")]
    assert [got[i] for i in ok] == [want[i] for i in ok]  # exact float equality
    assert got[4].error == want[4].error
    assert ray_ex.map(train_tiny, []) == []


def test_ray_env_threads_and_parallelism(ray_ex):
    infos = ray_ex.map(worker_info, [{"sleep": 0.5}] * 2 + [{}] * 2)
    assert max(i["t0"] for i in infos[:2]) < min(i["t1"] for i in infos[:2])  # the first two ran concurrently
    assert {i["cache"] for i in infos} == {os.environ["RANKCRAFT_CACHE"]}
    assert {i["threads"] for i in infos} == {1}
    assert {i["rankcraft"] for i in infos} == {rankcraft.__file__}
    assert os.getpid() not in {i["pid"] for i in infos}


def test_ray_fn_not_importable_in_workers(ray_ex, tmp_path, monkeypatch):
    (tmp_path / "rc_driver_only.py").write_text("def f(item):\n    return item\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # importable here, not in the workers
    import rc_driver_only

    results = ray_ex.map(rc_driver_only.f, [{"a": 1}, {"a": 2}])
    assert all(is_failure(r) for r in results)
    assert results[0].error.startswith("ModuleNotFoundError: No module named 'rc_driver_only' (loading rc_driver_only.f")


def test_ray_reuses_running_instance_with_own_env(ray_ex):
    import ray

    # a second executor on the already running instance: 2 threads per task, extra env, PYTHONPATH cleared
    with RayExecutor(1, threads_per_task=2, env={"RC_X": "42", "PYTHONPATH": ""}) as ex:
        (info,) = ex.map(worker_info, [{}])
    assert ray.is_initialized()  # not owned by `ex`: left running
    assert info["threads"] == 2 and info["extra"] == "42" and info["pythonpath"] == ""
    assert info["rankcraft"] == rankcraft.__file__  # the editable install, found without PYTHONPATH
    assert info["cache"] == os.environ["RANKCRAFT_CACHE"]

    ex = make_executor(2)
    assert isinstance(ex, RayExecutor) and isinstance(ex, Executor) and ex.workers == 2
    ex.close()
    assert ray.is_initialized()
