"""Time partitions and stream training: bucketing, frozen encoders, the per-partition cache, progressive
validation, kill -9 / resume, warm start and the named errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from rankcraft.data.dataset import DataSource
from rankcraft.data.partitions import PartitionSpec, bucket, prepare_stream
from rankcraft.data.schema import Schema
from rankcraft.errors import CheckpointError, ConfigError, DataError
from rankcraft.models.catalog import build_model
from rankcraft.training.checkpoint import load_checkpoint
from rankcraft.training.loops import StreamLoop
from rankcraft.training.run import RunConfig, train
from rankcraft.training.trainer import TrainConfig, Trainer

DAY = 86400
T0 = 1_511_568_000  # 2017-11-25 00:00:00 UTC, a Saturday

SCHEMA = {"labels": ["label"], "features": [
    {"name": "user", "type": "categorical"}, {"name": "item", "type": "categorical"},
    {"name": "x", "type": "numeric"}]}


def write_days(path, days: int, rows_per_day: int = 400, seed: int = 0, start_day: int = 0, iso: bool = False):
    """A CSV of ``days`` days of events; new items appear every day (ids grow with the day) and the label
    follows a planted logit of the user and x."""
    rng = np.random.default_rng(seed)
    lines = ["user,item,x,ts,label"]
    for d in range(start_day, start_day + days):
        users = rng.integers(0, 30, rows_per_day)
        items = rng.integers(0, 20, rows_per_day) + 10 * d
        x = rng.normal(size=rows_per_day)
        ts = T0 + d * DAY + np.sort(rng.integers(0, DAY, rows_per_day))
        logit = (users % 3 - 1) * 1.5 + x
        y = (rng.random(rows_per_day) < 1 / (1 + np.exp(-logit))).astype(int)
        for u, i, v, t, lab in zip(users, items, x, ts, y):
            when = np.datetime64(int(t), "s").astype(str) if iso else str(int(t))
            lines.append(f"u{u},i{i},{v:.4f},{when},{lab}")
    path.write_text("\n".join(lines) + "\n")
    return path


def _items_of_day(d: int, rows_per_day: int = 400, seed: int = 0) -> np.ndarray:
    """The raw item ids ``write_days`` gives day ``d`` (same generator calls)."""
    rng = np.random.default_rng(seed)
    for day in range(d + 1):
        rng.integers(0, 30, rows_per_day)
        items = rng.integers(0, 20, rows_per_day) + 10 * day
        rng.normal(size=rows_per_day)
        ts = np.sort(rng.integers(0, DAY, rows_per_day))
        rng.random(rows_per_day)
    order = np.argsort(ts, kind="stable")
    return items[order]


def stream_config(train_file, **partitions) -> dict:
    return {"schema": SCHEMA, "train": str(train_file), "partitions": {"unit": "day", "column": "ts", "fit_on": 2,
                                                                      **partitions}}


def run_config(train_file, tmp_path, **kw) -> RunConfig:
    obj = {"data": stream_config(train_file, **kw.pop("partitions", {})), "model": "lr",
           "train": {"batch_size": 64, "quiet": True, "threads": 1, "lr": 0.01, "checkpoint_seconds": 0}}
    obj.update(kw)
    return RunConfig.parse(obj)


# ------------------------------------------------------------------------------------------------- bucketing
def test_bucket_keys_for_hours_days_and_iso_weeks():
    t = np.array([T0, T0 + 3600 * 13 + 5, T0 + 2 * DAY, T0 + 9 * DAY])
    start, keys = bucket(t, "day")
    assert [keys[s] for s in start] == ["2017-11-25", "2017-11-25", "2017-11-27", "2017-12-04"]
    start, keys = bucket(t, "hour")
    assert keys[start[1]] == "2017-11-25T13"
    start, keys = bucket(t, "week")  # Saturday 25th is in ISO week 47; Monday 27th starts week 48
    assert [keys[s] for s in start] == ["2017-W47", "2017-W47", "2017-W48", "2017-W49"]
    start, keys = bucket(np.array([T0 - 3600]), "day", utc_offset_hours=8)  # 23:00 UTC = 07:00 next day UTC+8
    assert keys[start[0]] == "2017-11-25"


def test_partitions_from_a_time_column_fit_encoders_on_the_prefix_only(tmp_path):
    f = write_days(tmp_path / "events.csv", 4)
    src = DataSource(name="ev", schema=Schema.from_dict(SCHEMA), files={"train": str(f)}, time_column="ts")
    stream = prepare_stream(src, PartitionSpec(unit="day", fit_on=2), cache_dir=tmp_path / "cache")
    assert stream.keys() == ["2017-11-25", "2017-11-26", "2017-11-27", "2017-11-28"]
    assert [p.rows for p in stream.partitions] == [400] * 4
    cols = [p.data().columns for p in stream.partitions]
    cat_index = [f.name for f in stream.features.categorical].index("item")
    # items of day d are 10d .. 10d+19: day 4's (30..49) were never seen in the fit prefix (days 1-2: 0..29)
    assert (cols[3]["cat"][:, cat_index] == 1).all(), "items first seen after the fit prefix map to the OOV id"
    assert (cols[1]["cat"][:, cat_index] > 1).all()
    assert ((cols[2]["cat"][:, cat_index] == 1) == torch.as_tensor(_items_of_day(2) >= 30)).all()


def test_iso_times_and_the_named_time_errors(tmp_path):
    f = write_days(tmp_path / "iso.csv", 3, iso=True)
    src = DataSource(name="iso", schema=Schema.from_dict(SCHEMA), files={"train": str(f)}, time_column="ts")
    assert prepare_stream(src, PartitionSpec(fit_on=1), cache_dir=tmp_path / "c").keys()[0] == "2017-11-25"
    lines = f.read_text().splitlines()
    bad = lines[:5] + [lines[5].rsplit(",", 2)[0] + ",yesterday," + lines[5].rsplit(",", 1)[1]] + lines[6:]
    (tmp_path / "bad.csv").write_text("\n".join(bad) + "\n")
    src = DataSource(name="bad", schema=Schema.from_dict(SCHEMA), files={"train": str(tmp_path / "bad.csv")},
                     time_column="ts")
    with pytest.raises(DataError, match=r"bad.csv, line 6, column 'ts': cannot parse time 'yesterday'"):
        prepare_stream(src, PartitionSpec(), cache_dir=tmp_path / "c")
    missing = lines[:3] + [lines[3].rsplit(",", 2)[0] + ",," + lines[3].rsplit(",", 1)[1]] + lines[4:]
    (tmp_path / "missing.csv").write_text("\n".join(missing) + "\n")
    src = DataSource(name="m", schema=Schema.from_dict(SCHEMA), files={"train": str(tmp_path / "missing.csv")},
                     time_column="ts")
    with pytest.raises(DataError, match=r"missing.csv, line 4, column 'ts': missing time"):
        prepare_stream(src, PartitionSpec(), cache_dir=tmp_path / "c")


def test_partition_files_out_of_order_is_a_named_error(tmp_path):
    a = write_days(tmp_path / "day1.csv", 1, start_day=1)
    b = write_days(tmp_path / "day0.csv", 1, start_day=0)
    cfg = {"schema": SCHEMA, "partitions": {"files": [str(a), str(b)], "column": "ts"}}
    from rankcraft.data.spec import prepare_stream_spec

    with pytest.raises(DataError, match=r"day0.csv, line \d+, column 'ts': partitions out of order"):
        prepare_stream_spec(cfg, tmp_path / "c")
    stream = prepare_stream_spec({**cfg, "partitions": {"files": [str(b), str(a)], "column": "ts"}}, tmp_path / "c")
    assert stream.keys() == ["day0", "day1"]


def test_a_new_day_keeps_the_cached_partitions(tmp_path):
    f = write_days(tmp_path / "events.csv", 3)
    src = DataSource(name="ev", schema=Schema.from_dict(SCHEMA), files={"train": str(f)}, time_column="ts")
    first = prepare_stream(src, PartitionSpec(fit_on=2), cache_dir=tmp_path / "cache")
    stamps = {p.key: (p.path, (p.path / "done").stat().st_mtime_ns) for p in first.partitions}
    write_days(tmp_path / "events.csv", 4)  # same seed: the same three days plus a fourth
    second = prepare_stream(src, PartitionSpec(fit_on=2), cache_dir=tmp_path / "cache")
    assert second.keys()[:3] == first.keys() and len(second.partitions) == 4
    for p in second.partitions[:3]:
        assert (p.path, (p.path / "done").stat().st_mtime_ns) == stamps[p.key], "old partitions were rebuilt"
    again = prepare_stream(src, PartitionSpec(fit_on=2), cache_dir=tmp_path / "cache")
    assert again.from_cache and again.keys() == second.keys()


# ------------------------------------------------------------------------------------------------- training
def test_stream_run_progressive_validation_and_frozen_baseline(tmp_path):
    f = write_days(tmp_path / "events.csv", 5)
    res = train(run_config(f, tmp_path), out=tmp_path / "run", cache_dir=tmp_path / "cache")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["partition"] for x in lines] == ["2017-11-25", "2017-11-26", "2017-11-27", "2017-11-28",
                                                "2017-11-29"]
    assert lines[0]["auc"] is None if "auc" in lines[0] else True  # day 1: not evaluated (fresh model)
    assert all(x["auc"] is not None and x["rows"] == 400 for x in lines[1:])
    assert (tmp_path / "run" / "curves.png").stat().st_size > 1000
    prog = res.report["stream"]["progressive"]
    assert prog["evaluated_partitions"] == 4 and prog["auc"] == pytest.approx(np.mean([x["auc"] for x in lines[1:]]))
    assert prog["auc"] > 0.65  # the planted logit is learnable
    # progressive validation: partition t is scored before training on it — a model frozen after day 1 gives
    # the same day-2 metrics as the incremental one, and identical metrics on every later day
    frozen = train(run_config(f, tmp_path, stream={"freeze_after": 1}), out=tmp_path / "frozen",
                   cache_dir=tmp_path / "cache")
    fl = frozen.fit.history
    assert fl[1]["logloss"] == pytest.approx(lines[1]["logloss"], abs=1e-9)
    assert fl[2]["logloss"] != pytest.approx(lines[2]["logloss"], abs=1e-6)
    assert [x["trained"] for x in fl] == [True, False, False, False, False]


KILL_STREAM = textwrap.dedent("""
    import os, signal, sys, torch
    from rankcraft.data.spec import prepare_stream_spec
    from rankcraft.models.catalog import build_model
    from rankcraft.training.loops import StreamLoop
    from rankcraft.training.trainer import Trainer, TrainConfig
    spec = {"schema": %(schema)r, "train": sys.argv[3], "partitions": {"unit": "day", "column": "ts", "fit_on": 2}}
    stream = prepare_stream_spec(spec, sys.argv[4])
    torch.manual_seed(0)
    model = build_model("dnn", stream.features, {"hidden_units": [16], "dropout": 0.2})
    cfg = TrainConfig(batch_size=64, quiet=True, seed=7, threads=1, checkpoint_seconds=0, checkpoint_every=3)
    def kill(step):
        if step == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
    Trainer(model, cfg, sys.argv[1], on_step=kill).run(StreamLoop(stream.partitions), resume=len(sys.argv) > 5)
""") % {"schema": SCHEMA}


def test_kill_minus_nine_mid_partition_then_resume_gives_identical_weights_and_metrics(tmp_path):
    from rankcraft.data.spec import prepare_stream_spec

    f = write_days(tmp_path / "events.csv", 3, rows_per_day=300)
    script = tmp_path / "kill.py"
    script.write_text(KILL_STREAM)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # 5 steps per partition: step 8 is in the middle of the second partition (last checkpoint after step 6)
    proc = subprocess.run([sys.executable, str(script), str(run), "8", str(f), str(tmp_path / "c")],
                          capture_output=True, timeout=180, env=env)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    st = load_checkpoint(run / "last.pt")["state"]
    assert st["cursor"] == {"partition": 1, "pass": 0, "step": 1} and st["pending"] is not None
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    proc = subprocess.run([sys.executable, str(script), str(run), "-1", str(f), str(tmp_path / "c"), "resume"],
                          capture_output=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    stream = prepare_stream_spec({"schema": SCHEMA, "train": str(f), "partitions": {"unit": "day", "column": "ts",
                                                                                     "fit_on": 2}}, tmp_path / "c")
    torch.manual_seed(0)
    ref = build_model("dnn", stream.features, {"hidden_units": [16], "dropout": 0.2})
    cfg = TrainConfig(batch_size=64, quiet=True, seed=7, threads=1, checkpoint_seconds=0, checkpoint_every=3)
    Trainer(ref, cfg, tmp_path / "ref").run(StreamLoop(stream.partitions))
    got = load_checkpoint(run / "best.pt")["model"]
    for k, v in ref.state_dict().items():
        assert torch.equal(v, got[k]), k
    def lines(path):  # every metric and loss, without the timings
        return [{k: v for k, v in json.loads(x).items() if not k.endswith("per_s")}
                for x in path.read_text().splitlines()]

    assert lines(run / "metrics.jsonl") == lines(tmp_path / "ref" / "metrics.jsonl")


def test_stream_loop_refuses_an_epoch_checkpoint(tmp_path):
    f = write_days(tmp_path / "events.csv", 2)
    from rankcraft.data.spec import prepare_stream_spec

    stream = prepare_stream_spec(stream_config(f), tmp_path / "c")
    model = build_model("lr", stream.features, {})
    trainer = Trainer(model, TrainConfig(quiet=True, epochs=1, batch_size=128), tmp_path / "run")
    trainer.fit(stream.partitions[0].data(), stream.partitions[1].data())
    with pytest.raises(CheckpointError, match="written by epoch training"):
        Trainer(model, TrainConfig(quiet=True), tmp_path / "run").run(StreamLoop(stream.partitions), resume=True)


# ------------------------------------------------------------------------------------------------- warm start
def test_init_from_trains_only_the_new_partitions_with_frozen_encoders(tmp_path):
    f = write_days(tmp_path / "events.csv", 5)
    first = train(run_config(f, tmp_path, partitions={"last": "2017-11-27"}), out=tmp_path / "a",
                  cache_dir=tmp_path / "cache")
    assert first.report["stream"]["partitions"][-1] == "2017-11-27"
    second = train(run_config(f, tmp_path, init_from=str(tmp_path / "a")), out=tmp_path / "b",
                   cache_dir=tmp_path / "cache")
    hist = second.fit.history
    assert [h["partition"] for h in hist] == ["2017-11-28", "2017-11-29"]
    assert hist[0]["auc"] is not None  # the warm-started model is evaluated on its first new partition
    enc_a = json.loads((tmp_path / "a" / "encoders.json").read_text())
    assert json.loads((tmp_path / "b" / "encoders.json").read_text()) == enc_a
    assert second.report["stream"]["trained"] == ["2017-11-25", "2017-11-26", "2017-11-27", "2017-11-28",
                                                  "2017-11-29"]
    # on day 29 the warm-started model (four days seen) beats a cold one trained on day 28 only
    cold = train(run_config(f, tmp_path, partitions={"first": "2017-11-28"}), out=tmp_path / "cold",
                 cache_dir=tmp_path / "cache")
    assert cold.fit.history[0].get("auc") is None
    assert hist[1]["logloss"] < cold.fit.history[1]["logloss"]
    with pytest.raises(DataError, match="no new partitions"):
        train(run_config(f, tmp_path, init_from=str(tmp_path / "b")), out=tmp_path / "c",
              cache_dir=tmp_path / "cache")


def test_init_from_with_another_schema_or_model_is_a_named_error(tmp_path):
    f = write_days(tmp_path / "events.csv", 3)
    train(run_config(f, tmp_path), out=tmp_path / "a", cache_dir=tmp_path / "cache")
    other = RunConfig.parse({"data": {**stream_config(f), "schema": {**SCHEMA, "features": SCHEMA["features"][:2]}},
                             "model": "lr", "init_from": str(tmp_path / "a"), "train": {"quiet": True}})
    with pytest.raises(ConfigError, match="schema differs"):
        train(other, out=tmp_path / "b", cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match="warm start needs the same model"):
        train(run_config(f, tmp_path, model="fm", init_from=str(tmp_path / "a")), out=tmp_path / "c",
              cache_dir=tmp_path / "cache")


def test_init_from_with_a_late_partition_is_out_of_order(tmp_path):
    f = write_days(tmp_path / "events.csv", 4)
    train(run_config(f, tmp_path, partitions={"first": "2017-11-27"}), out=tmp_path / "a",
          cache_dir=tmp_path / "cache")
    # the new data holds days 25-26, older than the last day run a trained on, which it never saw
    with pytest.raises(DataError, match="partitions out of order: 2017-11-25, 2017-11-26 precede partition 2017-11-28"):
        train(run_config(f, tmp_path, init_from=str(tmp_path / "a")), out=tmp_path / "b", cache_dir=tmp_path / "cache")


def test_partitions_need_a_time_column_and_stream_only_commands(tmp_path):
    f = write_days(tmp_path / "events.csv", 2)
    cfg = RunConfig.parse({"data": {"schema": SCHEMA, "train": str(f), "partitions": {"unit": "day"}},
                           "model": "lr", "train": {"quiet": True}})
    with pytest.raises(ConfigError, match="has no time column"):
        train(cfg, cache_dir=tmp_path / "c")
    from rankcraft.data.spec import prepare_spec

    with pytest.raises(ConfigError, match="time partitions are for stream training"):
        prepare_spec(stream_config(f), tmp_path / "c")
    with pytest.raises(ConfigError, match="fit_on = 9, but there are only 2 partitions"):
        train(run_config(f, tmp_path, partitions={"fit_on": 9}), cache_dir=tmp_path / "c")


# ------------------------------------------------------------------------------------------------- CLI
def test_cli_stream_training_warm_start_and_errors(tmp_path, capsys):
    from rankcraft.cli.main import main

    f = write_days(tmp_path / "events.csv", 4)
    (tmp_path / "schema.yaml").write_text(json.dumps(SCHEMA))
    common = ["train", "--schema", str(tmp_path / "schema.yaml"), "--train", str(f), "--model", "lr",
              "--partition-by", "day", "--partition-column", "ts", "--fit-on", "2", "--quiet",
              "--batch-size", "128", "--cache-dir", str(tmp_path / "cache")]
    assert main(common + ["--out", str(tmp_path / "a"), "--opt", "checkpoint_seconds=0"]) == 0
    out = capsys.readouterr().out
    assert "progressive" in out and "4 partitions" in out
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["stream"]["trained"][-1] == "2017-11-28"
    assert main(common + ["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")]) == 2
    assert "no new partitions" in capsys.readouterr().err
    assert main(common[:-2] + ["--cache-dir", str(tmp_path / "c2"), "--partition-column", "user",
                               "--out", str(tmp_path / "d")]) == 2
    assert "cannot parse time 'u" in capsys.readouterr().err


def test_taobao_stream_has_one_partition_per_beijing_day(tmp_path):
    from rankcraft.data.registry import find_data_dir

    try:
        find_data_dir("taobao-userbehavior-84k", None)
    except DataError:
        pytest.skip("needs ../shared/data/taobao-userbehavior-84k")
    from rankcraft.data.spec import prepare_stream_spec

    stream = prepare_stream_spec({"recipe": "taobao-userbehavior", "partitions": {"unit": "day", "fit_on": 7}},
                                 tmp_path / "c")
    assert stream.keys() == [f"2017-11-{d}" for d in range(25, 31)] + ["2017-12-01", "2017-12-02", "2017-12-03"]
