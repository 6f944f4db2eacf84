"""ColumnData batching, prepare() and its on-disk cache, encode_file."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pyarrow as pa
import pytest
import torch

from rankcraft.data import dataset as ds
from rankcraft.data.dataset import (
    ColumnData,
    DataSource,
    encode_file,
    encode_splits,
    prepare,
)
from rankcraft.data.readers import RawTable
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError


# ------------------------------------------------------------------------------------------------ ColumnData
def make_data(n: int = 103) -> ColumnData:
    ids = np.arange(n, dtype=np.int64)
    return ColumnData.from_numpy({
        "id": ids,
        "cat": np.stack([ids * 10, ids * 10 + 1], axis=1),
        "label": (ids % 2).astype(np.float32),
        "seq": np.tile(ids[:, None], (1, 3)),
    })


def check_aligned(batch):
    """Every column of a batch refers to the same rows."""
    ids = batch["id"]
    assert torch.equal(batch["cat"][:, 0], ids * 10) and torch.equal(batch["cat"][:, 1], ids * 10 + 1)
    assert torch.equal(batch["label"], (ids % 2).float())
    assert torch.equal(batch["seq"], ids[:, None].expand(-1, 3))


def test_column_data_basics():
    d = make_data(10)
    assert len(d) == 10 and d.num_rows == 10
    assert d.num_batches(3) == 4 and d.num_batches(5) == 2 and d.num_batches(100) == 1
    sub = d.subset(np.array([7, 2]))
    assert sub.columns["id"].tolist() == [7, 2] and sub.columns["cat"].tolist() == [[70, 71], [20, 21]]
    with pytest.raises(ValueError, match="row counts"):
        ColumnData({"a": torch.zeros(3), "b": torch.zeros(4)})
    assert len(ColumnData({})) == 0


@pytest.mark.parametrize("batch_size", [1, 10, 103, 500])
def test_unshuffled_batches_reproduce_data_in_order(batch_size):
    d = make_data()
    batches = list(d.batches(batch_size))
    assert len(batches) == d.num_batches(batch_size)
    assert all(len(b["id"]) == batch_size for b in batches[:-1]) and 0 < len(batches[-1]["id"]) <= batch_size
    for k, v in d.columns.items():
        assert torch.equal(torch.cat([b[k] for b in batches]), v)


def test_shuffled_epoch_covers_every_row_once():
    d = make_data()
    batches = list(d.batches(16, shuffle=True, seed=3, epoch=0))
    assert len(batches) == 7
    ids = torch.cat([b["id"] for b in batches])
    assert sorted(ids.tolist()) == list(range(103))
    assert ids.tolist() != list(range(103))  # actually shuffled
    for b in batches:
        check_aligned(b)


def test_shuffle_order_is_a_function_of_seed_and_epoch():
    d = make_data()

    def order(seed, epoch):
        return torch.cat([b["id"] for b in d.batches(10, shuffle=True, seed=seed, epoch=epoch)]).tolist()

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    assert order(1, 2) == ColumnData.permutation(103, 1, 2).tolist()
    # the same for any other data of the same length (a resumed run sees the same order)
    other = make_data()
    assert torch.cat([b["id"] for b in other.batches(10, shuffle=True, seed=1, epoch=0)]).tolist() == order(1, 0)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("start", [0, 1, 5, 10, 11])
def test_start_yields_the_remaining_batches_of_the_epoch(shuffle, start):
    d = make_data()
    full = list(d.batches(10, shuffle=shuffle, seed=7, epoch=2))
    rest = list(d.batches(10, shuffle=shuffle, seed=7, epoch=2, start=start))
    assert len(rest) == max(0, len(full) - start)
    for a, b in zip(full[start:], rest):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k])


def test_save_load_round_trip(tmp_path):
    d = make_data(12)
    d.save(tmp_path / "split")
    back = ColumnData.load(tmp_path / "split")
    assert back.columns.keys() == d.columns.keys()
    for k in d.columns:
        assert back.columns[k].dtype == d.columns[k].dtype and torch.equal(back.columns[k], d.columns[k])


# ------------------------------------------------------------------------------------------------ prepare & cache
SCHEMA = Schema.from_dict({"labels": ["label"], "user_column": "user", "features": [
    {"name": "user", "type": "categorical", "source": "user"},
    {"name": "item", "type": "categorical", "min_count": 2},
    {"name": "x", "type": "numeric", "transform": "standardize"},
    {"name": "tags", "type": "multi_categorical", "max_len": 3},
]})


def write_csv(path, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = ["label,user,item,x,tags"]
    for i in range(n):
        tags = "|".join(f"t{t}" for t in rng.integers(0, 5, rng.integers(0, 4)))
        rows.append(f"{rng.integers(0, 2)},u{rng.integers(0, 8)},i{rng.integers(0, 20)},{rng.normal():.4f},{tags}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def files(tmp_path):
    return {"train": str(write_csv(tmp_path / "train.csv", 200, 0)),
            "valid": str(write_csv(tmp_path / "valid.csv", 50, 1))}


def source(files, schema=SCHEMA, **kw) -> DataSource:
    return DataSource(name="toy", schema=schema, files=dict(files), **kw)


def assert_same(a, b):
    assert a.splits.keys() == b.splits.keys()
    for split in a.splits:
        ca, cb = a.splits[split].columns, b.splits[split].columns
        assert ca.keys() == cb.keys()
        for k in ca:
            assert ca[k].dtype == cb[k].dtype and torch.equal(ca[k], cb[k]), (split, k)
    assert a.features == b.features
    assert a.encoders.to_json() == b.encoders.to_json()


def entries(root):
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_prepare_writes_then_loads_the_cache(tmp_path, files):
    root = tmp_path / "cache"
    first = prepare(source(files), cache_dir=root)
    assert not first.from_cache
    assert first.cache_path is not None and first.cache_path.parent == root
    assert first.cache_path.name.startswith("toy-")
    assert (first.cache_path / "meta.json").exists()
    assert entries(root) == [first.cache_path.name]  # no leftover temporary directories
    second = prepare(source(files), cache_dir=root)
    assert second.from_cache and second.cache_path == first.cache_path
    assert_same(first, second)
    assert set(first.splits) == {"train", "valid"}
    assert len(first.splits["train"]) == 200 and len(first.splits["valid"]) == 50
    assert set(first.splits["train"].columns) == {"label", "label/label", "cat", "num", "tags", "group"}


def test_prepare_uses_env_cache_dir_by_default(tmp_path, files, monkeypatch):
    monkeypatch.setenv("RANKCRAFT_CACHE", str(tmp_path / "envcache"))
    data = prepare(source(files))
    assert data.cache_path.parent == tmp_path / "envcache"


def test_use_cache_false_writes_nothing(tmp_path, files):
    root = tmp_path / "cache"
    data = prepare(source(files), cache_dir=root, use_cache=False)
    assert data.cache_path is None and not data.from_cache
    assert entries(root) == []
    assert_same(data, prepare(source(files), cache_dir=root))


def test_changed_file_content_changes_cache_key(tmp_path, files):
    root = tmp_path / "cache"
    first = prepare(source(files), cache_dir=root)
    write_csv(tmp_path / "train.csv", 201, 0)
    second = prepare(source(files), cache_dir=root)
    assert not second.from_cache and second.cache_path != first.cache_path
    assert len(second.splits["train"]) == 201
    assert len(entries(root)) == 2


def test_touching_a_file_keeps_the_cache_key(tmp_path, files):
    root = tmp_path / "cache"
    first = prepare(source(files), cache_dir=root)
    os.utime(files["train"], (1, 1))
    second = prepare(source(files), cache_dir=root)
    assert second.from_cache and second.cache_path == first.cache_path


def test_changed_schema_changes_cache_key(tmp_path, files):
    root = tmp_path / "cache"
    first = prepare(source(files), cache_dir=root)
    other = SCHEMA.model_copy(update={"features": [f if f.name != "item" else f.model_copy(update={"min_count": 1000})
                                                   for f in SCHEMA.features]})
    second = prepare(source(files, other), cache_dir=root)
    assert not second.from_cache and second.cache_path != first.cache_path
    assert second.features["item"].vocab_size == 2 < first.features["item"].vocab_size


@pytest.mark.parametrize("change", [{"seed": 1}, {"valid_fraction": 0.2}, {"version": "2"}])
def test_source_options_change_cache_key(tmp_path, change):
    p = write_csv(tmp_path / "train.csv", 30)
    a = DataSource(name="t", schema=SCHEMA, files={"train": str(p)})
    b = DataSource(name="t", schema=SCHEMA, files={"train": str(p)}, **change)
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() == DataSource(name="t", schema=SCHEMA, files={"train": str(p)}).fingerprint()


def test_loader_inputs_are_part_of_cache_key(tmp_path):
    dep = tmp_path / "dep.txt"
    dep.write_text("one")
    src = DataSource(name="l", schema=SCHEMA, loader=lambda: {}, inputs=[str(dep)])
    key = src.fingerprint()
    dep.write_text("two")
    assert src.fingerprint() != key


@pytest.mark.parametrize("corrupt", ["meta_garbage", "encoders_garbage", "features_missing", "npy_truncated",
                                     "encoders_bad_schema"])
def test_corrupt_cache_is_rebuilt(tmp_path, files, corrupt):
    root = tmp_path / "cache"
    good = prepare(source(files), cache_dir=root)
    p = good.cache_path
    if corrupt == "meta_garbage":
        (p / "meta.json").write_text("{not json")
    elif corrupt == "encoders_garbage":
        (p / "encoders.json").write_text("")
    elif corrupt == "features_missing":
        (p / "features.json").unlink()
    elif corrupt == "npy_truncated":
        f = p / "train" / "cat.npy"
        f.write_bytes(f.read_bytes()[:150])
    elif corrupt == "encoders_bad_schema":
        (p / "encoders.json").write_text(json.dumps({"schema": {"labels": []}, "state": {}}))
    rebuilt = prepare(source(files), cache_dir=root)
    assert not rebuilt.from_cache
    assert_same(good, rebuilt)
    again = prepare(source(files), cache_dir=root)
    assert again.from_cache
    assert_same(good, again)
    assert entries(root) == [p.name]


def test_loader_failure_leaves_no_cache(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()

    def boom():
        raise DataError("loader failed midway")

    with pytest.raises(DataError, match="midway"):
        prepare(DataSource(name="bad", schema=SCHEMA, loader=boom), cache_dir=root)
    assert entries(root) == []


def test_failure_while_writing_cache_leaves_nothing(tmp_path, files, monkeypatch):
    root = tmp_path / "cache"
    real_save = ColumnData.save
    calls = []

    def flaky_save(self, directory):
        calls.append(directory)
        # while a split is being written, the final cache directory must not exist yet (written aside, renamed)
        assert not list(root.glob("toy-*")), "cache written in place, not atomically"
        if len(calls) == 2:  # the first split is written, the second one fails
            raise OSError("disk full")
        real_save(self, directory)

    monkeypatch.setattr(ColumnData, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(source(files), cache_dir=root)
    assert len(calls) == 2
    assert entries(root) == []  # neither the final directory nor a temporary one
    monkeypatch.setattr(ColumnData, "save", real_save)
    assert not prepare(source(files), cache_dir=root).from_cache
    assert prepare(source(files), cache_dir=root).from_cache


def test_interrupt_while_writing_cache_leaves_nothing(tmp_path, files, monkeypatch):
    root = tmp_path / "cache"

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ds.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(source(files), cache_dir=root)
    assert entries(root) == []


# ------------------------------------------------------------------------------------------------ splits
def test_valid_split_carved_from_train(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("label,x\n" + "".join(f"{i % 2},{i}\n" for i in range(100)))
    s = Schema.from_dict({"labels": ["label"], "features": [{"name": "x", "type": "numeric"}]})

    def split_ids(seed, frac=0.1):
        d = prepare(DataSource(name="carve", schema=s, files={"train": str(p)}, seed=seed,
                               valid_fraction=frac), use_cache=False)
        return ([int(v) for v in d.splits["train"].columns["num"][:, 0]],
                [int(v) for v in d.splits["valid"].columns["num"][:, 0]])

    tr, va = split_ids(0)
    assert len(va) == 10 and len(tr) == 90
    assert sorted(tr + va) == list(range(100)) and tr == sorted(tr) and va == sorted(va)
    assert split_ids(0) == (tr, va)
    assert split_ids(1)[1] != va
    assert len(split_ids(0, 0.25)[1]) == 25


def test_encoders_fitted_on_carved_train_only():
    s = Schema.from_dict({"labels": ["label"], "features": [{"name": "c", "type": "categorical"}]})
    vals = [f"v{i}" for i in range(20)]
    raw = RawTable(pa.table({"label": ["0", "1"] * 10, "c": vals}), "<mem>", 0, "memory")
    enc, splits, _ = encode_splits({"train": raw}, s, valid_fraction=0.25, seed=0)
    assert len(splits["valid"]) == 5 and len(splits["train"]) == 15
    assert len(enc.state["c"]["vocab"]["values"]) == 15
    assert splits["valid"].columns["cat"][:, 0].tolist() == [1] * 5  # held-out values are unseen


def test_empty_training_split_is_an_error(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("label,user,item,x,tags\n")
    with pytest.raises(DataError, match="no rows") as ei:
        prepare(source({"train": str(p)}), use_cache=False)
    assert ei.value.path == str(p)


def test_source_without_train_file(tmp_path, files):
    with pytest.raises(DataError, match="no training file"):
        prepare(source({"valid": files["valid"]}), use_cache=False)


def test_describe(files):
    d = prepare(source(files), use_cache=False)
    info = d.describe()
    assert info["name"] == "toy"
    assert info["splits"]["train"]["rows"] == 200
    y = d.splits["valid"].columns["label"].numpy()
    assert info["splits"]["valid"]["label_rate"] == pytest.approx(y.mean(), abs=1e-6)
    feats = {f["name"]: f for f in info["features"]}
    assert feats["x"]["vocab_size"] is None and feats["tags"]["max_len"] == 3
    assert feats["user"]["vocab_size"] == 10  # 8 users + pad + OOV


# ------------------------------------------------------------------------------------------------ encode_file
def test_encode_file_without_label_column(tmp_path, files):
    data = prepare(source(files), use_cache=False)
    labelled = tmp_path / "labelled.csv"
    labelled.write_text("label,user,item,x,tags\n1,u1,i3,0.5,t1|t2\n0,new_user,i4,,\n")
    unlabelled = tmp_path / "unlabelled.csv"
    unlabelled.write_text("user,item,x,tags\nu1,i3,0.5,t1|t2\nnew_user,i4,,\n")
    a, raw_a = encode_file(data.encoders, labelled)
    b, raw_b = encode_file(data.encoders, unlabelled, require_labels=False)
    assert len(a) == len(b) == 2 and raw_b.num_rows == 2
    assert "label" not in b.columns and a.columns["label"].tolist() == [1.0, 0.0]
    for k in ("cat", "num", "tags"):
        assert torch.equal(a.columns[k], b.columns[k])
    assert a.columns["cat"][1, 0].item() == 1  # unseen user -> OOV
    with pytest.raises(DataError) as ei:
        encode_file(data.encoders, unlabelled)
    assert ei.value.column == "label" and ei.value.line == 1


def test_encode_file_matches_prepared_split(files):
    data = prepare(source(files), use_cache=False)
    enc, _ = encode_file(data.encoders, files["valid"])
    for k, v in data.splits["valid"].columns.items():
        assert torch.equal(enc.columns[k], v), k


def test_encode_file_with_reloaded_encoders(tmp_path, files):
    data = prepare(source(files), cache_dir=tmp_path / "c")
    cached = prepare(source(files), cache_dir=tmp_path / "c")
    assert cached.from_cache
    a, _ = encode_file(data.encoders, files["valid"])
    b, _ = encode_file(cached.encoders, files["valid"])
    for k in a.columns:
        assert torch.equal(a.columns[k], b.columns[k])


def test_encode_file_reports_bad_rows(tmp_path, files):
    data = prepare(source(files), use_cache=False)
    p = tmp_path / "bad.csv"
    p.write_text("label,user,item,x,tags\n1,u1,i3,0.5,\n1,u1,i3,zero,\n")
    with pytest.raises(DataError) as ei:
        encode_file(data.encoders, p)
    assert (ei.value.path, ei.value.line, ei.value.column) == (str(p), 3, "x")


# ------------------------------------------------------------------------------------------------ known bugs
def test_bug_empty_npy_in_cache_is_rebuilt(tmp_path, files):
    root = tmp_path / "cache"
    good = prepare(source(files), cache_dir=root)
    (good.cache_path / "train" / "label.npy").write_bytes(b"")
    rebuilt = prepare(source(files), cache_dir=root)
    assert not rebuilt.from_cache
    assert_same(good, rebuilt)


@pytest.mark.parametrize("damage", ["npy", "split"])
def test_bug_incomplete_cache_is_rebuilt(tmp_path, files, damage):
    root = tmp_path / "cache"
    good = prepare(source(files), cache_dir=root)
    if damage == "npy":
        (good.cache_path / "train" / "label.npy").unlink()
    else:
        shutil.rmtree(good.cache_path / "valid")
    data = prepare(source(files), cache_dir=root)
    assert not data.from_cache
    assert_same(good, data)


def test_bug_cache_without_meta_is_repaired(tmp_path, files):
    root = tmp_path / "cache"
    good = prepare(source(files), cache_dir=root)
    (good.cache_path / "meta.json").unlink()
    assert not prepare(source(files), cache_dir=root).from_cache
    again = prepare(source(files), cache_dir=root)
    assert again.from_cache
    assert_same(good, again)


def test_bug_encode_file_headerless_without_labels(tmp_path):
    s = Schema.from_dict({"labels": ["label"], "column_names": ["label", "a", "x"],
                          "features": [{"name": "a", "type": "categorical"}, {"name": "x", "type": "numeric"}]})
    tr = tmp_path / "train.csv"
    tr.write_text("1,u,1\n0,v,2\n")
    data = prepare(DataSource(name="hl", schema=s, files={"train": str(tr), "valid": str(tr)}), use_cache=False)
    pred = tmp_path / "pred.csv"
    pred.write_text("u,1\nw,2\n")
    cd, _ = encode_file(data.encoders, pred, require_labels=False)
    assert "label" not in cd.columns
    assert cd.columns["cat"][:, 0].tolist() == [2, 1]


def test_preparation_shows_its_stage_on_a_terminal(files, capsys, monkeypatch):
    monkeypatch.setattr(type(sys.stderr), "isatty", lambda self: True, raising=False)
    prepare(source(files), use_cache=False)
    err = capsys.readouterr().err
    assert "preparing" in err and "encoding" in err
    prepare(source(files), use_cache=False, progress=False)
    assert "preparing" not in capsys.readouterr().err
