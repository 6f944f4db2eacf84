"""Built-in dataset recipes (criteo, avazu, frappe_x1, ml-100k, synthetic) and a user schema on Taobao data."""

from __future__ import annotations

import csv
import textwrap

import numpy as np
import pyarrow as pa
import pytest
import torch

from rankcraft.data.catalog import RECIPES, find_data_dir, get_source, schema_source
from rankcraft.data.dataset import prepare
from rankcraft.data.recipes import (
    AVAZU_CATEGORICAL,
    CRITEO_COLUMNS,
    FRAPPE_FIELDS,
    load_ml100k_table,
    time_split,
)
from rankcraft.data.schema import Schema
from rankcraft.data.synthetic import make_synthetic, synthetic_raw
from rankcraft.errors import DataError


# ------------------------------------------------------------------------------------------------ lookup
def test_get_source_unknown_name_lists_recipes():
    with pytest.raises(DataError) as ei:
        get_source("criteo-1tb")
    for name in ("criteo", "avazu", "frappe_x1", "ml-100k", "synthetic"):
        assert name in str(ei.value)
    assert set(RECIPES) >= {"criteo", "avazu", "frappe_x1", "ml-100k", "synthetic"}


@pytest.mark.parametrize("name", ["synthetic", "SYNTHETIC", "Synthetic"])
def test_get_source_name_normalisation(name):
    assert get_source(name, rows=10).name == "synthetic"


def test_name_normalisation_with_underscores_and_dashes(tmp_path):
    (tmp_path / "train.csv").write_text("label," + ",".join(FRAPPE_FIELDS) + "\n")
    for name in ("frappe_x1", "frappe-x1", "FRAPPE-X1"):
        assert get_source(name, data_dir=tmp_path).name == "frappe_x1"


def test_missing_data_dir(tmp_path):
    for name in ("criteo", "avazu", "frappe_x1", "ml-100k"):
        with pytest.raises(DataError, match="not found") as ei:
            get_source(name, data_dir=tmp_path / "nope")
        assert ei.value.path == str(tmp_path / "nope")


def test_data_dir_from_environment(tmp_path, monkeypatch):
    (tmp_path / "criteo").mkdir()
    monkeypatch.setenv("RANKCRAFT_DATA_DIR", str(tmp_path))
    assert find_data_dir("criteo", None) == tmp_path / "criteo"


def test_directory_without_train_file(tmp_path):
    (tmp_path / "valid.csv").write_text("label\n")
    with pytest.raises(DataError, match="no train file"):
        get_source("criteo", data_dir=tmp_path)


# ------------------------------------------------------------------------------------------------ criteo / avazu
def test_criteo_sample(shared_data):
    path = shared_data("samples", "deepctr", "criteo_sample.txt")
    src = get_source("criteo", data_dir=str(path))
    s = src.schema
    assert s.column_names is None and s.delimiter == "," and s.label_names == ["label"]
    assert src.files == {"train": str(path)}
    data = prepare(src, use_cache=False)
    fs = data.features
    assert [f.name for f in fs.numeric] == [f"I{i}" for i in range(1, 14)]
    assert [f.name for f in fs.categorical] == [f"C{i}" for i in range(1, 27)]
    assert len(fs.features) == 39
    tr, va = data.splits["train"], data.splits["valid"]
    assert len(tr) == 180 and len(va) == 20  # 200 rows, 10% seeded validation split
    assert tr.columns["num"].shape == (180, 13) and tr.columns["cat"].shape == (180, 26)
    assert (tr.columns["num"] >= 0).all()  # log1p(max(x, 0))
    assert set(tr.columns["label"].unique().tolist()) == {0.0, 1.0}
    # min_count 2: every vocabulary value occurs at least twice in the training split
    cat = tr.columns["cat"].numpy()
    for j in range(26):
        counts = np.bincount(cat[:, j])
        assert (counts[2:] >= 2).all() or len(counts) <= 2


def test_avazu_sample(shared_data):
    path = shared_data("samples", "deepctr", "avazu_sample.txt")
    src = get_source("avazu", data_dir=str(path))
    assert src.schema.label_names == ["click"]
    data = prepare(src, use_cache=False)
    fs = data.features
    assert [f.name for f in fs.categorical] == ["hour"] + AVAZU_CATEGORICAL
    assert len(fs.categorical) == 22 and fs.numeric == []
    assert len(data.splits["train"]) == 90 and len(data.splits["valid"]) == 10
    assert data.splits["train"].columns["cat"].shape == (90, 22)


def _criteo_row(i: int) -> list[str]:
    ints = [str(i), "", str(i * 10)] + [str(j) for j in range(10)]
    cats = [f"c{j}_{i % 2}" if j % 2 == 0 else f"d{j}_{i}" for j in range(26)]
    cats[3] = ""
    return [str(i % 2)] + ints + cats


def test_headerless_criteo_tsv(tmp_path):
    d = tmp_path / "criteo"
    d.mkdir()
    rows = [_criteo_row(i) for i in range(8)]
    (d / "train.txt").write_text("".join("\t".join(r) + "\n" for r in rows[:6]))
    (d / "valid.txt").write_text("".join("\t".join(r) + "\n" for r in rows[6:]))
    src = get_source("criteo", data_dir=str(d))
    assert src.schema.delimiter == "\t" and src.schema.column_names == CRITEO_COLUMNS
    assert set(src.files) == {"train", "valid"}
    data = prepare(src, use_cache=False)
    tr, va = data.splits["train"].columns, data.splits["valid"].columns
    assert len(tr["label"]) == 6 and len(va["label"]) == 2  # no header line was eaten
    assert tr["label"].tolist() == [0, 1, 0, 1, 0, 1]
    np.testing.assert_allclose(tr["num"][:, 0].numpy(), np.log1p(np.arange(6)), rtol=1e-6)  # I1
    assert (tr["num"][:, 1] == 0).all()  # empty I2 -> fill 0 -> log1p(0)
    np.testing.assert_allclose(tr["num"][:, 2].numpy(), np.log1p(np.arange(6) * 10), rtol=1e-6)  # I3
    np.testing.assert_allclose(va["num"][:, 0].numpy(), np.log1p([6, 7]), rtol=1e-6)
    c1 = tr["cat"][:, 0].tolist()  # C1 alternates between two values, each seen 3 times
    assert c1[0] == c1[2] == c1[4] != c1[1] == c1[3] == c1[5] and min(c1) >= 2
    assert (tr["cat"][:, 1] == 1).all()  # C2 values are unique -> below min_count 2 -> OOV
    assert (tr["cat"][:, 3] == 0).all()  # empty C4 -> padding


def test_headerless_criteo_single_file(tmp_path):
    p = tmp_path / "day_0.tsv"
    p.write_text("".join("\t".join(_criteo_row(i)) + "\n" for i in range(20)))
    data = prepare(get_source("criteo", data_dir=str(p)), use_cache=False)
    assert len(data.splits["train"]) == 18 and len(data.splits["valid"]) == 2


# ------------------------------------------------------------------------------------------------ frappe
def test_frappe_x1(shared_data):
    d = shared_data("frappe_x1")
    if not (d / "train.csv").exists() or not (d / "valid.csv").exists():
        pytest.skip("frappe_x1 train/valid files not available")
    src = get_source("frappe_x1", data_dir=str(d))
    assert src.schema.user_column == "user"
    data = prepare(src, use_cache=False)
    fs = data.features
    assert [f.name for f in fs.categorical] == FRAPPE_FIELDS and len(fs.features) == 10
    assert fs.has_group and fs["user"].source == "user" and fs["item"].source == "item"
    assert len(data.splits["train"]) == 202_027 and len(data.splits["valid"]) == 57_722
    for split in ("train", "valid"):
        cols = data.splits[split].columns
        assert cols["cat"].shape[1] == 10 and cols["num"].shape[1] == 0
        rate = cols["label"].mean().item()
        assert 0.30 < rate < 0.36
        vocab = torch.tensor([f.vocab_size for f in fs.categorical])
        assert (cols["cat"] < vocab).all() and (cols["cat"] >= 0).all()
    assert (data.splits["train"].columns["cat"] >= 2).all()  # every training value is in the vocabulary


# ------------------------------------------------------------------------------------------------ ml-100k
def test_ml100k_recipe(shared_data):
    d = shared_data("ml-100k")
    src = get_source("ml-100k", data_dir=str(d))
    parts = src.loader()
    assert {k: v.num_rows for k, v in parts.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    ts = {k: np.array(v.table.column("timestamp").to_pylist(), dtype=np.int64) for k, v in parts.items()}
    assert ts["valid"].min() >= ts["train"].max()
    assert ts["test"].min() >= ts["valid"].max()
    assert (np.diff(ts["train"]) >= 0).all()
    data = prepare(src, use_cache=False)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 80_000, "valid": 10_000, "test": 10_000}
    y = torch.cat([v.columns["label"] for v in data.splits.values()])
    assert abs(y.mean().item() - 0.55) < 0.01
    fs = data.features
    assert fs["age"].kind == "categorical" and fs["age"].vocab_size <= 2 + 6 + 1
    assert fs["genres"].kind == "multi_categorical" and fs["genres"].max_len == 6
    assert fs["genres"].vocab_size == 2 + 19
    assert fs.has_group


def test_ml100k_time_split_via_table(shared_data):
    d = shared_data("ml-100k")
    table, ts = load_ml100k_table(d)
    assert table.num_rows == 100_000 and len(ts) == 100_000
    labels = np.array(table.column("label").to_pylist(), dtype=int)
    ratings = np.array(table.column("rating").to_pylist(), dtype=int)
    np.testing.assert_array_equal(labels, ratings >= 4)
    assert abs(labels.mean() - 0.55) < 0.01
    users = np.array(table.column("user").to_pylist(), dtype=np.int64)
    items = np.array(table.column("item").to_pylist(), dtype=np.int64)
    parts = time_split(table, ts, [users, items])
    assert [parts[k].num_rows for k in ("train", "valid", "test")] == [80_000, 10_000, 10_000]
    t = {k: np.array(v.column("timestamp").to_pylist(), dtype=np.int64) for k, v in parts.items()}
    assert t["valid"].min() >= t["train"].max() and t["test"].min() >= t["valid"].max()


def test_time_split_breaks_ties_by_keys():
    table = pa.table({"k": ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]})
    ts = np.array([5, 1, 5, 1, 3, 9, 3, 7, 7, 2])
    user = np.array([2, 1, 1, 0, 0, 0, 0, 1, 0, 0])
    parts = time_split(table, ts, [user])
    assert parts["train"].column("k").to_pylist() == ["d", "b", "j", "e", "g", "c", "a", "i"]
    assert parts["valid"].column("k").to_pylist() == ["h"]
    assert parts["test"].column("k").to_pylist() == ["f"]


def _fake_ml100k(d, data_lines):
    d.mkdir()
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags_1 = ["0"] * 19
    flags_1[3], flags_1[5] = "1", "1"  # Animation, Comedy
    flags_2 = ["0"] * 19
    items = [f"1|Toy Story (1995)|01-Jan-1995||http://x|{'|'.join(flags_1)}",
             f"2|Nameless|||http://y|{'|'.join(flags_2)}"]
    (d / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (d / "u.data").write_text("".join("\t".join(r) + "\n" for r in data_lines))


def test_ml100k_join_on_tiny_files(tmp_path):
    d = tmp_path / "ml"
    _fake_ml100k(d, [("1", "1", "5", "300"), ("2", "2", "3", "100"), ("2", "1", "4", "200")])
    table, ts = load_ml100k_table(d)
    rows = table.to_pylist()
    assert ts.tolist() == [300, 100, 200]
    assert [r["label"] for r in rows] == ["1", "0", "1"]
    assert rows[0]["genres"] == "Animation|Comedy" and rows[1]["genres"] == ""
    assert rows[0]["release_year"] == "1995" and rows[1]["release_year"] == ""
    assert rows[0]["zip_prefix"] == "857" and rows[1]["gender"] == "F" and rows[1]["age"] == "53"


@pytest.mark.parametrize("line, column, needle", [
    (("1", "1", "6", "300"), "rating", "rating"),
    (("9", "1", "4", "300"), "user", "'9'"),
    (("1", "7", "4", "300"), "item", "'7'"),
    (("1", "1", "4"), None, "4 tab-separated"),
])
def test_ml100k_bad_rating_file(tmp_path, line, column, needle):
    d = tmp_path / "ml"
    _fake_ml100k(d, [("1", "1", "5", "100"), line])
    with pytest.raises(DataError) as ei:
        load_ml100k_table(d)
    err = ei.value
    assert err.path == str(d / "u.data") and err.line == 2 and err.column == column
    assert needle in str(err)


def test_ml100k_missing_file(tmp_path):
    d = tmp_path / "ml"
    _fake_ml100k(d, [("1", "1", "5", "100")])
    (d / "u.item").unlink()
    with pytest.raises(DataError, match="not found") as ei:
        load_ml100k_table(d)
    assert ei.value.path == str(d / "u.item")


# ------------------------------------------------------------------------------------------------ synthetic
def test_synthetic_is_deterministic_per_seed():
    a, sa = make_synthetic(3000, seed=5)
    b, sb = make_synthetic(3000, seed=5)
    c, _ = make_synthetic(3000, seed=6)
    assert a.equals(b) and sa == sb
    assert not a.equals(c)
    assert a.column_names == ["label"] + [f"c{i}" for i in range(8)] + ["n0", "n1", "genres"]


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.6])
def test_synthetic_label_rate(rate):
    table, _ = make_synthetic(20_000, label_rate=rate, seed=1)
    y = np.array(table.column("label").to_pylist(), dtype=int)
    assert set(np.unique(y)) == {0, 1}
    assert abs(y.mean() - rate) < 0.02


def test_synthetic_recipe(tmp_path):
    src = get_source("synthetic", rows=2000, seed=1)
    assert src.schema.user_column == "c0"
    a = prepare(src, cache_dir=tmp_path)
    b = prepare(get_source("synthetic", rows=2000, seed=1), use_cache=False)
    assert {k: len(v) for k, v in a.splits.items()} == {"train": 1600, "valid": 200, "test": 200}
    for split in a.splits:
        for k, v in a.splits[split].columns.items():
            assert torch.equal(v, b.splits[split].columns[k])
    assert abs(torch.cat([v.columns["label"] for v in a.splits.values()]).mean().item() - 0.3) < 0.05
    assert get_source("synthetic", rows=2000, seed=2).fingerprint() != src.fingerprint()
    assert get_source("synthetic", rows=3000, seed=1).fingerprint() != src.fingerprint()
    assert prepare(get_source("synthetic", rows=2000, seed=1), cache_dir=tmp_path).from_cache
    c = prepare(get_source("synthetic", rows=2000, seed=2), use_cache=False)
    assert not torch.equal(c.splits["train"].columns["cat"], a.splits["train"].columns["cat"])


def test_synthetic_raw_split_is_in_generation_order():
    table, _ = make_synthetic(1000, seed=3)
    parts, _ = synthetic_raw(1000, seed=3)
    assert [p.num_rows for p in parts.values()] == [800, 100, 100]
    assert pa.concat_tables([parts[k].table for k in ("train", "valid", "test")]).equals(table)


# ------------------------------------------------------------------------------------------------ Taobao (user schema)
TAOBAO_SCHEMA = textwrap.dedent("""\
    labels: [clk]
    user_column: userid
    features:
      - {name: userid, type: categorical, source: user}
      - {name: adgroup_id, type: categorical, source: item}
      - {name: pid, type: categorical}
      - {name: cate_id, type: categorical, source: item}
      - {name: brand, type: categorical, source: item}
      - {name: price, type: numeric, transform: log, source: item}
      - {name: pvalue_level, type: categorical, source: user}
      - {name: age_level, type: numeric, transform: bucketize, buckets: 3, source: user}
      - {name: clicks, column: click_sequence, type: sequence, separator: "^", max_len: 3,
         share_vocab_with: adgroup_id, source: user}
    """)


def test_taobao_tiny_csv_with_sequence(shared_data, tmp_path):
    d = shared_data("samples", "fuxictr", "tiny_csv")
    (tmp_path / "schema.yaml").write_text(TAOBAO_SCHEMA)
    schema = Schema.from_yaml(tmp_path / "schema.yaml")
    src = schema_source(schema, d / "train_sample.csv", d / "valid_sample.csv", d / "test_sample.csv",
                        name="taobao")
    data = prepare(src, cache_dir=tmp_path / "cache")
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 100, "valid": 100, "test": 100}
    fs = data.features
    assert fs["clicks"].kind == "sequence" and fs["clicks"].embedding_table == "adgroup_id"
    assert fs["clicks"].vocab_size == fs["adgroup_id"].vocab_size
    assert [f.name for f in fs.categorical] == ["userid", "adgroup_id", "pid", "cate_id", "brand", "pvalue_level",
                                                "age_level"]
    ids = {v: 2 + i for i, v in enumerate(data.encoders.state["adgroup_id"]["vocab"]["values"])}
    for split, fname in (("train", "train_sample.csv"), ("test", "test_sample.csv")):
        with open(d / fname, newline="") as fh:
            rows = list(csv.DictReader(fh))
        cols = data.splits[split].columns
        expected = []
        for r in rows:
            items = [x for x in r["click_sequence"].split("^") if x][-3:]
            expected.append([0] * (3 - len(items)) + [ids.get(x, 1) for x in items])
        assert cols["clicks"].tolist() == expected
        assert cols["label"].tolist() == [float(r["clk"]) for r in rows]
        np.testing.assert_allclose(cols["num"][:, 0].numpy(), np.log1p([float(r["price"]) for r in rows]),
                                   rtol=1e-5)
        pv = cols["cat"][:, 5].tolist()
        assert [v == 0 for v in pv] == [r["pvalue_level"] == "" for r in rows]
    train_lens = (data.splits["train"].columns["clicks"] > 0).sum(1)
    assert train_lens.max() == 3  # the one long sequence was truncated to its last 3 items
    assert data.splits["train"].columns["group"].shape == (100,)


def test_criteo_recipe_reads_a_gzip_file_with_the_same_header_and_delimiter(shared_data, tmp_path):
    import gzip

    path = shared_data("samples", "deepctr", "criteo_sample.txt")
    gz = tmp_path / "criteo_sample.txt.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    plain, packed = get_source("criteo", data_dir=str(path)), get_source("criteo", data_dir=str(gz))
    assert packed.schema == plain.schema
    a, b = prepare(plain, use_cache=False), prepare(packed, use_cache=False)
    assert all(torch.equal(a.splits["train"].columns[k], b.splits["train"].columns[k]) for k in ("cat", "num"))
