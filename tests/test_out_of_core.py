"""Out-of-core training data: the shard cache, its windowed shuffle, streaming encoding and prepare_out_of_core."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch

from rankcraft.data import out_of_core as ooc
from rankcraft.data.dataset import ColumnData, DataSource
from rankcraft.data.encoders import OOV, Encoders, validate_table
from rankcraft.data.out_of_core import (
    ShardedData,
    build_sharded,
    fit_encoders_on_prefix,
    prepare_out_of_core,
)
from rankcraft.data.readers import RawTable
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.data.synthetic import make_synthetic
from rankcraft.errors import DataError

N = 3000
ROWS_PER_SHARD = 250  # 12 shards
K = 3  # buffer_shards: 4 windows
B = 128


def _table_and_schema(n: int = N, seed: int = 0) -> tuple[pa.Table, Schema]:
    table, schema = make_synthetic(n, n_categorical=4, vocab_size=40, n_numeric=2, with_multi=True, seed=seed)
    table = table.append_column("rid", pa.array([str(i) for i in range(n)], pa.string()))
    feats = list(schema.features) + [FeatureSpec(name="rid", type="numeric")]
    return table, Schema(labels=["label"], features=feats, user_column="c0")


def _write(table: pa.Table, path: Path) -> Path:
    if path.suffix == ".parquet":
        pq.write_table(table, path, row_group_size=700)
    else:
        pacsv.write_csv(table, path, pacsv.WriteOptions(quoting_style="needed"))
    return path


def _rid(batch: dict) -> np.ndarray:
    return batch["num"][:, -1].numpy().astype(np.int64)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A Parquet and a CSV copy of one table, encoders fitted on all of it, the in-memory reference and the shards
    built from the Parquet file."""
    root = tmp_path_factory.mktemp("ooc")
    table, schema = _table_and_schema()
    parquet = _write(table, root / "train.parquet")
    csv_path = _write(table, root / "train.csv")
    enc = Encoders.fit(validate_table(RawTable(table, "mem", 0, "memory"), schema), schema)
    ref = enc.transform(RawTable(table, "mem", 0, "memory"))
    sharded = build_sharded(parquet, schema, enc, root / "shards", rows_per_shard=ROWS_PER_SHARD, batch_rows=400,
                            buffer_shards=K, progress=False)
    return {"root": root, "table": table, "schema": schema, "parquet": parquet, "csv": csv_path, "enc": enc,
            "ref": ref, "sharded": sharded}


def _epoch(sd, **kw) -> list[dict]:
    return list(sd.batches(B, **kw))


def _cat(batches: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def _assert_rows_match_reference(cols: dict[str, torch.Tensor], ref: dict[str, np.ndarray], rid: np.ndarray):
    """Every column of every row equals the reference row with the same id (``group`` excepted: see below)."""
    for k, v in ref.items():
        if k != "group":
            np.testing.assert_array_equal(cols[k].numpy(), v[rid], err_msg=k)
    # group ids are hashes (not dense ids) but still identify the user column c0 one to one
    pairs = set(zip(cols["group"].tolist(), cols["cat"][:, 0].tolist()))
    assert len({g for g, _ in pairs}) == len(pairs) == len({c for _, c in pairs})


# ------------------------------------------------------------------------------------------------ the cache
def test_shards_hold_the_encoded_rows_in_file_order(data):
    sd = data["sharded"]
    assert len(sd) == sd.num_rows == N and sd.num_shards == 12
    assert sd.shard_rows.tolist() == [ROWS_PER_SHARD] * 12
    assert set(sd.column_info) == set(data["ref"]) and "label/label" in sd.column_info and "group" in sd.column_info
    cols = sd.to_column_data().columns
    rid = _rid(cols)
    np.testing.assert_array_equal(rid, np.arange(N))
    _assert_rows_match_reference(cols, data["ref"], rid)
    manifest = json.loads((sd.directory / "manifest.json").read_text())
    assert manifest["columns"]["cat"] == {"dtype": "int64", "shape": [4]}
    assert (sd.directory / "00000" / "label%2Flabel.npy").exists()  # percent-encoded like ColumnData.save
    assert sd.label_mean() == pytest.approx(float(data["ref"]["label"].mean()))
    assert isinstance(sd.open_shard(3)["cat"], np.memmap)


def test_csv_and_parquet_give_the_same_shards(data, tmp_path):
    from_csv = build_sharded(data["csv"], data["schema"], data["enc"], tmp_path / "csv", rows_per_shard=400,
                             progress=False)
    a, b = from_csv.to_column_data().columns, data["sharded"].to_column_data().columns
    assert from_csv.num_shards == 8 and from_csv.shard_rows[-1] == N - 7 * 400
    for k in b:
        assert torch.equal(a[k], b[k]), k


def test_several_input_files_are_concatenated(data, tmp_path):
    table = data["table"]
    p1 = _write(table.slice(0, 1000), tmp_path / "a.parquet")
    p2 = _write(table.slice(1000), tmp_path / "b.csv")
    sd = build_sharded([p1, p2], data["schema"], data["enc"], tmp_path / "both", rows_per_shard=600, progress=False)
    assert torch.equal(sd.to_column_data().columns["cat"], data["sharded"].to_column_data().columns["cat"])


# ------------------------------------------------------------------------------------------------ the shuffle
def test_an_epoch_is_a_permutation_of_the_rows(data):
    batches = _epoch(data["sharded"], shuffle=True, seed=7, epoch=0)
    assert len(batches) == data["sharded"].num_batches(B) == (N + B - 1) // B
    assert [len(b["label"]) for b in batches] == [B] * (N // B) + [N % B]
    cols = _cat(batches)
    rid = _rid(cols)
    assert sorted(rid.tolist()) == list(range(N))  # the same multiset of rows as the in-memory split
    assert not np.array_equal(rid, np.arange(N))
    _assert_rows_match_reference(cols, data["ref"], rid)  # every column of a row travels together


def test_the_order_is_a_pure_function_of_seed_and_epoch(data):
    sd = data["sharded"]
    e0 = _rid(_cat(_epoch(sd, shuffle=True, seed=7, epoch=0)))
    again = ShardedData(sd.directory, buffer_shards=K)  # a new process would see the same order
    assert np.array_equal(e0, _rid(_cat(_epoch(again, shuffle=True, seed=7, epoch=0))))
    e1 = _rid(_cat(_epoch(sd, shuffle=True, seed=7, epoch=1)))
    other_seed = _rid(_cat(_epoch(sd, shuffle=True, seed=8, epoch=0)))
    assert not np.array_equal(e0, e1) and not np.array_equal(e0, other_seed)
    assert sorted(e1.tolist()) == list(range(N))
    # rows are mixed across the shards of a window: a window's first batch draws from several shards
    first = _rid(_epoch(sd, shuffle=True, seed=7, epoch=0)[0])
    assert len(set((first // ROWS_PER_SHARD).tolist())) == K


def test_the_shuffle_follows_its_documented_formula(data):
    """Batch rows = the window permutation σ_j applied to the shard-order windows W_j, concatenated."""
    sd = data["sharded"]
    seed, epoch = 3, 2
    expected = []
    for j, w in enumerate(sd.windows(shuffle=True, seed=seed, epoch=epoch)):
        local = np.concatenate([np.arange(s * ROWS_PER_SHARD, (s + 1) * ROWS_PER_SHARD) for s in w])
        expected.append(local[sd._window_perm(seed, epoch, j, len(local)).numpy()])
    got = _rid(_cat(_epoch(sd, shuffle=True, seed=seed, epoch=epoch)))
    assert np.array_equal(got, np.concatenate(expected))
    assert sorted(np.concatenate(sd.windows(shuffle=True, seed=seed, epoch=epoch)).tolist()) == list(range(12))


@pytest.mark.parametrize("shuffle", [True, False])
def test_resume_from_start_equals_the_tail(data, shuffle):
    sd = data["sharded"]
    full = _epoch(sd, shuffle=shuffle, seed=5, epoch=3)
    per_window = K * ROWS_PER_SHARD
    straddling = [b for b in range(len(full)) if (b * B) // per_window != min((b + 1) * B, N) // per_window]
    for start in [0, 1, 5, straddling[0], straddling[0] + 1, len(full) - 1, len(full)]:
        tail = _epoch(sd, shuffle=shuffle, seed=5, epoch=3, start=start)
        assert len(tail) == len(full) - start
        for a, b in zip(tail, full[start:]):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("world", [2, 3])
def test_rank_world_partitions_each_global_batch(data, shuffle, world):
    sd = data["sharded"]
    full = _epoch(sd, shuffle=shuffle, seed=1, epoch=0)
    ranks = [_epoch(sd, shuffle=shuffle, seed=1, epoch=0, shard=(r, world)) for r in range(world)]
    for r in range(world):
        assert len(ranks[r]) == len(full)
        for mine, glob in zip(ranks[r], full):
            assert all(torch.equal(mine[k], glob[k][r::world]) for k in glob)
    resumed = _epoch(sd, shuffle=shuffle, seed=1, epoch=0, start=9, shard=(1, world))
    assert all(torch.equal(a["cat"], b["cat"]) for a, b in zip(resumed, ranks[1][9:]))
    with pytest.raises(ValueError):
        next(sd.batches(B, shard=(world, world)))


def test_unshuffled_batches_are_contiguous_in_shard_order(data):
    sd = data["sharded"]
    batches = _epoch(sd)
    assert np.array_equal(_rid(_cat(batches)), np.arange(N))
    assert np.array_equal(_rid(batches[2]), np.arange(2 * B, 3 * B))
    assert sd.peak_buffered_shards >= 1


@pytest.mark.parametrize("k", [1, 3, 5])
def test_the_buffer_holds_at_most_buffer_shards(data, k):
    sd = ShardedData(data["sharded"].directory, buffer_shards=k)
    loads = []
    original = sd._load_window

    def counting(shards):
        loads.append(len(shards))
        assert sd._held <= k
        return original(shards)

    sd._load_window = counting
    rows = sum(len(b["label"]) for b in sd.batches(B, shuffle=True, seed=0, epoch=0))
    assert rows == N
    assert sd.peak_buffered_shards == k and max(loads) == k
    assert len(loads) == -(-12 // k)  # each window is loaded exactly once per epoch
    assert sd._held == 0  # released at the end of the epoch
    it = sd.batches(B, shuffle=True, seed=0, epoch=1)
    next(it)
    assert sd._held == k
    it.close()  # a consumer that stops early releases the buffer too
    assert sd._held == 0
    row = sd.row_bytes
    assert row == 4 * 8 + 3 * 4 + 4 + 4 + 4 * 8 + 8  # cat, num (2 + rid), label, label/label, genres, group
    assert sd.buffer_bytes(B) == k * ROWS_PER_SHARD * (row + 8) + 2 * B * row


# ------------------------------------------------------------------------------------------------ errors
def _with_bad_cell(table: pa.Table, row: int, column: str, value: str) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    return table.set_column(table.schema.get_field_index(column), column, pa.array(values, pa.string()))


@pytest.fixture
def small_csv_blocks(monkeypatch):
    """CSV read in 16 KiB blocks (a few hundred rows each), so errors happen in late record batches."""
    monkeypatch.setattr(ooc, "CSV_BLOCK_BYTES", 1 << 14)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_bad_value_in_a_late_record_batch_names_the_file(data, tmp_path, suffix, small_csv_blocks):
    bad = _write(_with_bad_cell(data["table"], 2801, "n0", "abc"), tmp_path / f"bad{suffix}")
    out = tmp_path / "cache"
    with pytest.raises(DataError) as err:
        build_sharded(bad, data["schema"], data["enc"], out, rows_per_shard=ROWS_PER_SHARD, batch_rows=400,
                      progress=False)
    msg = str(err.value)
    assert str(bad) in msg and "column 'n0'" in msg and "not a number" in msg
    if suffix == ".csv":
        assert err.value.line == 2803  # header is line 1
    else:
        assert "row 2802" in msg
    assert not out.exists() and os.listdir(tmp_path) == [bad.name]  # no half cache, no temp folder left


def test_csv_line_numbers_count_blank_lines_and_a_late_ragged_row_is_an_error(data, tmp_path, small_csv_blocks):
    lines = (data["csv"].read_text()).splitlines()
    lines.insert(5, "")  # a blank line: pyarrow skips it, so row indices and lines diverge
    lines[2701] += ",,"  # row 2699 (line 2702): two extra fields
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="ragged row") as err:
        build_sharded(ragged, data["schema"], data["enc"], tmp_path / "c", progress=False)
    assert err.value.line == 2702 and str(ragged) in str(err.value)
    lines[2701] = lines[2701][:-2]
    lines[2801] = "7" + lines[2801][1:]  # the label cell (first column) of row 2799 (line 2802)
    bad = tmp_path / "bad.csv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        build_sharded(bad, data["schema"], data["enc"], tmp_path / "c", progress=False)
    assert err.value.line == 2802 and err.value.column == "label"


def test_on_error_skip_drops_and_reports_bad_rows(data, tmp_path, small_csv_blocks):
    schema = data["schema"].model_copy(update={"on_error": "skip"})
    table = _with_bad_cell(_with_bad_cell(data["table"], 2801, "n0", "abc"), 10, "label", "7")
    bad = _write(table, tmp_path / "bad.csv")
    sd = build_sharded(bad, schema, data["enc"], tmp_path / "c", rows_per_shard=ROWS_PER_SHARD, batch_rows=400,
                       progress=False)
    assert len(sd) == N - 2
    assert sorted(set(range(N)) - set(_rid(sd.to_column_data().columns).tolist())) == [10, 2801]
    (msg,) = sd.skipped
    assert str(bad) in msg and "skipped 2 bad row(s)" in msg and "line 12" in msg and "line 2803" in msg


# ------------------------------------------------------------------------------------------------ caching
def test_a_complete_cache_is_reused_and_leftovers_are_ignored(data, tmp_path, monkeypatch):
    out = tmp_path / "cache"
    leftover = tmp_path / ".cache.tmp-crashed"  # what an interrupted build leaves behind
    (leftover / "00000").mkdir(parents=True)
    (leftover / "manifest.json").write_text("{broken")
    first = build_sharded(data["parquet"], data["schema"], data["enc"], out, rows_per_shard=1000, progress=False)
    stamp = (out / "manifest.json").stat().st_mtime_ns

    def no_reading(*a, **k):
        raise AssertionError("a complete cache must not be rebuilt")

    with monkeypatch.context() as m:
        m.setattr(ooc, "_read_chunks", no_reading)
        again = build_sharded(data["parquet"], data["schema"], data["enc"], out, rows_per_shard=1000,
                              buffer_shards=2, progress=False)
    assert again.num_rows == first.num_rows and again.buffer_shards == 2
    assert (out / "manifest.json").stat().st_mtime_ns == stamp
    # other encoders (or shard size) → another key → rebuilt in place
    enc2 = fit_encoders_on_prefix(data["parquet"], data["schema"], rows=500)
    rebuilt = build_sharded(data["parquet"], data["schema"], enc2, out, rows_per_shard=1000, progress=False)
    assert rebuilt.manifest["key"] != first.manifest["key"]
    # a damaged cache (a shard file missing) is rebuilt
    os.remove(out / "00001" / "cat.npy")
    build_sharded(data["parquet"], data["schema"], enc2, out, rows_per_shard=1000, progress=False)
    assert (out / "00001" / "cat.npy").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache.tmp-crashed", "cache"]


def test_an_interrupted_build_leaves_no_cache(data, tmp_path, monkeypatch):
    calls = []
    original = ooc._ShardWriter._flush

    def crash_on_third(self, n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, n)

    monkeypatch.setattr(ooc._ShardWriter, "_flush", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_sharded(data["parquet"], data["schema"], data["enc"], tmp_path / "c", rows_per_shard=ROWS_PER_SHARD,
                      progress=False)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------------------------ fitting
def test_fit_on_prefix_reads_only_the_prefix_and_maps_unseen_values_to_oov(data, tmp_path):
    table, schema = data["table"], data["schema"]
    prefix_values = set(table.column("c3").to_pylist()[:200])
    enc = fit_encoders_on_prefix(data["csv"], schema, rows=200)
    assert set(enc.state["c3"]["vocab"]["values"]) == prefix_values
    n0 = np.array(table.column("n0").to_pylist()[:200], dtype=float)
    assert enc.state["n0"]["mean"] == pytest.approx(n0.mean())
    sd = build_sharded(data["csv"], schema, enc, tmp_path / "c", rows_per_shard=1000, progress=False)
    cat = sd.to_column_data().columns["cat"][:, 3].numpy()
    unseen = ~np.isin(np.array(table.column("c3").to_pylist()), list(prefix_values))
    assert unseen.any() and (cat[unseen] == OOV).all() and (cat[~unseen] > OOV).all()


# ------------------------------------------------------------------------------------------------ prepare
def _source(data, tmp_path, files: dict, **kw) -> DataSource:
    return DataSource(name="synth", schema=data["schema"], files={k: str(v) for k, v in files.items()}, **kw)


def test_prepare_out_of_core_with_valid_and_test_files(data, tmp_path):
    table = data["table"]
    train = _write(table.slice(0, 2400), tmp_path / "train.parquet")
    valid = _write(table.slice(2400, 300), tmp_path / "valid.csv")
    test = _write(table.slice(2700), tmp_path / "test.parquet")
    src = _source(data, tmp_path, {"train": train, "valid": valid, "test": test})
    prep = prepare_out_of_core(src, tmp_path / "cache", fit_rows=1000, rows_per_shard=300, buffer_shards=2,
                               progress=False)
    tr = prep.splits["train"]
    assert isinstance(tr, ShardedData) and len(tr) == 2400 and tr.num_shards == 8 and tr.buffer_shards == 2
    assert isinstance(prep.splits["valid"], ColumnData) and len(prep.splits["valid"]) == 300
    assert len(prep.splits["test"]) == 300 and not prep.from_cache
    assert prep.encoders.state["c1"] == fit_encoders_on_prefix(train, src.schema, rows=1000).state["c1"]
    assert [f.name for f in prep.features.features] == [f.name for f in data["enc"].feature_set().features]
    again = prepare_out_of_core(src, tmp_path / "cache", fit_rows=1000, rows_per_shard=300, progress=False)
    assert again.from_cache and again.cache_path == prep.cache_path
    assert torch.equal(again.splits["valid"].columns["cat"], prep.splits["valid"].columns["cat"])
    assert np.array_equal(_rid(_cat(list(again.splits["train"].batches(B)))), np.arange(2400))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [prep.cache_path.name]


def test_prepare_out_of_core_holds_validation_rows_out_of_the_prefix(data, tmp_path):
    src = _source(data, tmp_path, {"train": data["parquet"]}, valid_fraction=0.1, seed=3)
    prep = prepare_out_of_core(src, tmp_path / "cache", fit_rows=1000, rows_per_shard=500, progress=False)
    tr, va = prep.splits["train"], prep.splits["valid"]
    assert len(va) == 100 and len(tr) == N - 100
    v_ids = set(_rid(va.columns).tolist())
    t_ids = set(_rid(tr.to_column_data().columns).tolist())
    assert not v_ids & t_ids and v_ids | t_ids == set(range(N)) and max(v_ids) < 1000


def test_prepare_out_of_core_needs_files(data, tmp_path):
    src = DataSource(name="recipe", schema=data["schema"], loader=dict)
    with pytest.raises(DataError, match="loader recipe"):
        prepare_out_of_core(src, tmp_path)
    with pytest.raises(DataError, match="no training file"):
        prepare_out_of_core(_source(data, tmp_path, {"valid": data["csv"]}), tmp_path)


# ------------------------------------------------------------------------------------------------ training
def test_a_trainer_trains_on_sharded_data_and_resumes_mid_epoch(data, tmp_path):
    """Two epochs through the real Trainer; a run stopped mid-epoch 2 and resumed ends with the same weights."""
    from rankcraft.models.catalog import build_model
    from rankcraft.training.trainer import StopTraining, TrainConfig, Trainer

    valid = ColumnData.from_numpy({k: v[:500] for k, v in data["ref"].items()})
    # one thread: on this shared 2-core machine a second thread makes step times erratic
    cfg = TrainConfig(epochs=2, quiet=True, batch_size=256, checkpoint_seconds=0, checkpoint_every=5, threads=1,
                      early_stopping_patience=5)

    def model(seed: int):
        torch.manual_seed(seed)
        return build_model("dnn", data["enc"].feature_set(), {"hidden_units": [32, 16]})

    def stop_at(step):
        if step == 17:  # mid-epoch 2 (12 steps per epoch), last checkpoint at step 15
            raise StopTraining

    threads = torch.get_num_threads()
    try:
        sd = ShardedData(data["sharded"].directory, buffer_shards=K)
        ref, steps = model(0), []
        res = Trainer(ref, cfg, tmp_path / "ref", on_step=steps.append).fit(sd, valid)
        assert len(res.history) == 2 and res.steps == 2 * sd.num_batches(256) == len(steps) == 24
        assert np.isfinite(res.history[-1]["train_loss"]) and 0.0 <= res.history[-1]["auc"] <= 1.0
        assert sd.peak_buffered_shards == K
        with pytest.raises(StopTraining):
            Trainer(model(0), cfg, tmp_path / "run", on_step=stop_at).fit(sd, valid)
        resumed = model(99)  # another init: everything must come from the checkpoint and the replayed batches
        res = Trainer(resumed, cfg, tmp_path / "run").fit(ShardedData(sd.directory, buffer_shards=K), valid,
                                                          resume=True)
        assert res.steps == 24
    finally:
        torch.set_num_threads(threads)
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6), k


def test_cli_trains_out_of_core_from_a_run_config_key(tmp_path, capsys):
    """`rankcraft train --out-of-core` (data.out_of_core) trains on the sharded cache and resumes like any run."""
    import json as _json

    from rankcraft.cli.main import main

    rng = np.random.default_rng(0)
    n = 3000
    u, x = rng.integers(0, 40, n), rng.normal(size=n)
    y = (rng.random(n) < 1 / (1 + np.exp(-((u % 4) - 1.5 + x)))).astype(int)
    lines = ["user,x,label"] + [f"u{a},{b:.3f},{c}" for a, b, c in zip(u, x, y)]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "schema.yaml").write_text(_json.dumps({"labels": ["label"], "features": [
        {"name": "user", "type": "categorical"}, {"name": "x", "type": "numeric"}]}))
    args = ["train", "--schema", str(tmp_path / "schema.yaml"), "--train", str(tmp_path / "train.csv"),
            "--model", "lr", "--out-of-core", "--epochs", "2", "--batch-size", "256", "--quiet"]
    assert main(args + ["--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "run")]) == 0
    cfg = _json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["data"]["out_of_core"]["rows_per_shard"] > 0
    assert any(p.name.startswith("train-ooc-") for p in (tmp_path / "c").iterdir())
    report = _json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["valid"]["auc"] > 0.6 and report["epochs_run"] == 2
