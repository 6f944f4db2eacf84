"""No silent failures: checkpoint integrity, strict JSON, a full disk, the run-directory lock, termination signals,
and deterministic exit statuses of the ``rankcraft`` program (issue #10)."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import rankcraft
from rankcraft.errors import CheckpointError, ConfigError, RankcraftError
from rankcraft.files import (
    DirectoryLock,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    dumps_json_line,
    json_safe,
    read_json,
)
from rankcraft.interrupts import (
    DeferredInterrupts,
    Terminated,
    interrupt_exit_code,
    terminate_as_interrupt,
)
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint

SRC = str(Path(rankcraft.__file__).resolve().parents[1])  # subprocesses import this checkout, not an installed copy


def _env(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=SRC, **extra)
    env.pop("RANKCRAFT_DEBUG", None)
    return env


def _strict_loads(text: str):
    """json.loads that refuses NaN/Infinity, as every non-Python JSON parser does."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


# --------------------------------------------------------------------------------------------- checkpoints
def _state() -> dict:
    torch.manual_seed(0)
    return {"format": 1, "model": {"w": torch.randn(64, 8), "b": torch.zeros(8)}, "epoch": 2,
            "metrics": {"auc": 0.75}}


def test_a_flipped_byte_anywhere_in_a_checkpoint_is_a_named_error(tmp_path):
    path = tmp_path / "best.pt"
    save_checkpoint(path, _state())
    good = path.read_bytes()
    assert torch.equal(load_checkpoint(path)["model"]["w"], _state()["model"]["w"])
    # one byte in the tensor data: torch alone loads this silently, with a wrong weight
    raw = torch.load(path, weights_only=True)  # still a plain torch file
    assert raw["epoch"] == 2
    positions = list(range(0, len(good), max(1, len(good) // 150))) + [len(good) // 2, len(good) - 1, len(good) - 70]
    for pos in positions:
        bad = bytearray(good)
        bad[pos] ^= 0x10
        path.write_bytes(bytes(bad))
        with pytest.raises(CheckpointError, match=r"best\.pt: (corrupt|not a checkpoint)") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    data_pos = good.index(_state()["model"]["w"].numpy().tobytes()[:16])  # inside the weights
    bad = bytearray(good)
    bad[data_pos + 5] ^= 0x01
    path.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match=r"best\.pt: corrupt: checksum mismatch"):
        load_checkpoint(path)
    path.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CheckpointError, match=r"best\.pt: corrupt"):
        load_checkpoint(path)


def test_garbage_or_unsafe_checkpoints_never_suggest_weights_only_false(tmp_path):
    import fractions

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    torch.save({"x": fractions.Fraction(1, 3)}, tmp_path / "pickled.pt")  # a zip whose pickle needs a class
    (tmp_path / "dir.pt").mkdir()
    for name in ("garbage.pt", "pickled.pt", "dir.pt"):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert name in msg and "weights_only" not in msg and "safe_globals" not in msg and "\n" not in msg, msg


def test_checkpoints_without_a_checksum_still_load(tmp_path):
    """Checkpoints written before checksums existed (a torch zip with no comment) load unverified."""
    torch.save(_state(), tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt")["epoch"] == 2


# --------------------------------------------------------------------------------------------- files
def test_json_files_and_lines_are_strict_json(tmp_path):
    obj = {"auc": float("nan"), "ne": float("inf"), "ll": -float("inf"), "ok": 0.5, "n": 3, "flag": True,
           "hist": [{"auc": float("nan")}, (1.0, float("nan"))], "t": torch.tensor(float("nan")),
           "np": __import__("numpy").float32("nan"), "arr": __import__("numpy").array([1.0, float("inf")]),
           "path": Path("a/b")}
    atomic_write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    back = _strict_loads(text)
    assert back["auc"] is None and back["ne"] is None and back["ll"] is None and back["ok"] == 0.5
    assert back["hist"] == [{"auc": None}, [1.0, None]] and back["t"] is None and back["np"] is None
    assert back["arr"] == [1.0, None] and back["path"] == "a/b" and back["flag"] is True and back["n"] == 3
    line = dumps_json_line({"epoch": 1, "auc": float("nan")})
    assert "\n" not in line and _strict_loads(line) == {"epoch": 1, "auc": None}
    assert json_safe({"a": [float("nan")]}) == {"a": [None]}


def test_read_json_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text('{"model": "dnn",\n  "train": {epochs: 3}}\n')
    with pytest.raises(ConfigError, match=r"config\.json: run config is not valid JSON \(line 2, column 13: Expecting property name"):
        read_json(bad, "run config")
    with pytest.raises(ConfigError, match="not found"):
        read_json(tmp_path / "missing.json")
    assert read_json(_write(tmp_path / "ok.json", '{"a": 1}')) == {"a": 1}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("failing", ["write", "fsync"])
def test_a_full_disk_is_named_and_leaves_the_old_file(tmp_path, monkeypatch, failing):
    target = tmp_path / "report.json"
    atomic_write_json(target, {"old": 1})
    real = getattr(os, failing)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, failing, full)
    with pytest.raises(RankcraftError, match=f"^No space left on device while writing {re.escape(str(target))}$"):
        atomic_write_json(target, {"new": 2})
    with pytest.raises(RankcraftError, match="No space left on device while writing .*x.bin"):
        atomic_write_bytes(tmp_path / "x.bin", b"abc")
    monkeypatch.setattr(os, failing, real)
    assert json.loads(target.read_text()) == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temporary file left behind
    atomic_write_text(target, "{}")  # other errors and normal writes are unchanged
    assert target.read_text() == "{}"


# --------------------------------------------------------------------------------------------- directory lock
_HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from rankcraft.files import DirectoryLock
    with DirectoryLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.readline()
""")


def test_a_directory_lock_excludes_a_second_process_at_once(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run)], env=_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        t0 = time.monotonic()
        with pytest.raises(RankcraftError) as info:
            DirectoryLock(run).acquire()
        assert time.monotonic() - t0 < 1.0  # non-blocking
        assert str(info.value) == f"{run} is in use by another rankcraft process (pid {holder.pid})"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=30) == 0
    finally:
        holder.kill()
        holder.wait()
    with DirectoryLock(run) as lock:  # released when the holder is done
        assert lock.locked and (run / ".lock").read_text().strip() == str(os.getpid())
        with pytest.raises(RankcraftError, match="in use by this process"):
            DirectoryLock(run).acquire()
    assert not lock.locked


def test_a_killed_holder_does_not_leave_the_directory_locked(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(run)], env=_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # kill -9: the kernel drops the lock with the process
    holder.wait()
    with DirectoryLock(run):
        pass


# --------------------------------------------------------------------------------------------- signals
def test_sigterm_raises_keyboard_interrupt_inside_the_block_only():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as info:
        with terminate_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs between bytecodes
                time.sleep(0.001)
    assert isinstance(info.value, Terminated) and info.value.signum == signal.SIGTERM
    assert interrupt_exit_code(info.value) == 143 and interrupt_exit_code(KeyboardInterrupt()) == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_deferred_interrupts_wait_for_a_safe_point():
    steps = []
    with pytest.raises(Terminated):
        with DeferredInterrupts() as stop:
            for i in range(5):
                if i == 1:
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(0.01)
                steps.append(i)  # the step during which the signal came still completes
                if stop.requested:
                    steps.append("saved")
                    stop.check()
    assert steps == [0, 1, "saved"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# --------------------------------------------------------------------------------------------- exit statuses
@pytest.fixture(scope="module")
def bad_body_csv(tmp_path_factory):
    """A schema and a CSV (~40 MB, several of Arrow's 16 MB blocks) with invalid UTF-8 in a cell of its first
    block: Arrow's reader fails at once while its read-ahead is still running on Arrow's threads."""
    import pyarrow.csv as pacsv

    from rankcraft.data.synthetic import make_synthetic

    d = tmp_path_factory.mktemp("badbody")
    table, schema = make_synthetic(3000, seed=3)
    pacsv.write_csv(table, d / "small.csv")
    schema.to_yaml(d / "schema.yaml")
    lines = (d / "small.csv").read_bytes().split(b"\n")
    header, body = lines[0], [ln for ln in lines[1:] if ln]
    row = body[3].split(b",")
    row[1] = b'"v0_\xff"'
    with open(d / "bad.csv", "wb") as fh:
        fh.write(header + b"\n" + b"\n".join(body[:3] + [b",".join(row)] + body[4:]) + b"\n")
        chunk = b"\n".join(body) + b"\n"
        for _ in range(40_000_000 // len(chunk)):
            fh.write(chunk)
    return d


def test_error_exits_are_deterministic_under_omp_num_threads_1(bad_body_csv, tmp_path):
    """A named error exits with status 2 every time — never "terminate called without an active exception" and
    status 134 (Arrow's threads dropping a Python callback while the interpreter was finalising)."""
    cmd = [sys.executable, "-m", "rankcraft.cli.main", "train", "--schema", "schema.yaml", "--train", "bad.csv",
           "--quiet", "--out", str(tmp_path / "run")]
    results = []
    for _ in range(8):
        p = subprocess.run(cmd, cwd=bad_body_csv, env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                           timeout=120)
        results.append((p.returncode, p.stderr))
    for code, err in results:
        assert code == 2, f"exit {code}: {err}"
        assert err.count("\n") == 1 and err.startswith("error: bad.csv") and "UTF8" in err, err


_FINALIZE_PROBE = textwrap.dedent("""
    import atexit, sys

    class Probe:
        def __del__(self):  # runs while the interpreter is finalised (module globals cleared)
            sys.stderr.write("finalised\\n")

    probe = Probe()
    atexit.register(lambda: print("atexit ran", flush=True))
    sys.argv = ["rankcraft"] + sys.argv[1:]
    from rankcraft.cli.main import main
    print("partial line", end="")
    main()
    print("not reached")
""")


@pytest.mark.parametrize("argv,code", [(["models"], 0), (["train", "--config", "missing.yaml"], 2),
                                       (["nosuch"], 2), (["--version"], 0)])
def test_the_program_ends_without_interpreter_finalisation(tmp_path, argv, code):
    """The ``rankcraft`` program returns its status with ``os._exit`` after flushing output and running the atexit
    handlers: interpreter finalisation, where native threads that still hold Python objects abort the process, never
    starts."""
    p = subprocess.run([sys.executable, "-c", _FINALIZE_PROBE, *argv], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == code, p.stderr
    assert "finalised" not in p.stderr and "not reached" not in p.stdout
    assert p.stdout.startswith("partial line") and p.stdout.rstrip().endswith("atexit ran")


def test_sigterm_stops_train_like_ctrl_c_and_the_run_resumes(tmp_path):
    run = tmp_path / "run"
    env = _env(RANKCRAFT_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    args = [sys.executable, "-m", "rankcraft.cli.main", "train", "--dataset", "synthetic", "--rows", "20000",
            "--model", "dnn", "--param", "hidden_units=[64,32]", "--batch-size", "32", "--epochs", "2",
            "--max-steps", "800", "--checkpoint-every", "5", "--quiet", "--out", str(run)]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "last.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err
    assert "terminated" in err and "--resume" in err and "Traceback" not in err
    assert not (run / "report.json").exists()
    done = subprocess.run([sys.executable, "-m", "rankcraft.cli.main", "train", "--out", str(run), "--resume",
                           "--quiet"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "valid auc" in done.stdout
    assert json.loads((run / "report.json").read_text())["steps"] == 800


# --------------------------------------------------------------------------------------------- docs
def test_docs_config_names_every_run_config_key():
    from rankcraft.data.spec import DataSpec
    from rankcraft.training import objectives
    from rankcraft.training.run import RunConfig
    from rankcraft.training.trainer import TrainConfig

    doc = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    from rankcraft.training.windows import WindowsConfig

    models = [RunConfig, DataSpec, TrainConfig, WindowsConfig] + [getattr(objectives, n) for n in (
        "BinaryObjectiveConfig", "SoftLabelObjectiveConfig", "TaskConfig", "MultiTaskObjectiveConfig",
        "DelayedFeedbackObjectiveConfig", "EnsembleObjectiveConfig", "DistillObjectiveConfig")
        if hasattr(objectives, n)]
    missing = [f"{m.__name__}.{f.alias or name}" for m in models for name, f in m.model_fields.items()
               if f"`{f.alias or name}`" not in doc]
    assert not missing, f"docs/config.md does not document: {missing}"
