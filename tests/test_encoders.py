"""Fitted encoders: vocabularies, hashing, numeric transforms, multi-valued/sequence padding, JSON state."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pytest

from rankcraft.data.dataset import DataSource, encode_splits, prepare
from rankcraft.data.encoders import OOV, PAD, Encoders, validate_table
from rankcraft.data.readers import RawTable
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError


def table(**cols: list[str]) -> RawTable:
    n = len(next(iter(cols.values())))
    if "label" not in cols:  # both classes (a one-class training label is an error)
        cols = {"label": [str(i % 2) for i in range(n)], **cols}
    return RawTable(pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), "<mem>", 0, "memory")


def schema(*features: dict, **kw) -> Schema:
    return Schema.from_dict({"labels": ["label"], "features": list(features), **kw})


def fit_transform(s: Schema, train: RawTable, *others: RawTable):
    enc = Encoders.fit(validate_table(train, s), s)
    return enc, [enc.transform(validate_table(t, s)) for t in (train, *others)]


# ------------------------------------------------------------------------------------------------ categorical
def test_vocabulary_fitted_on_train_only():
    s = schema({"name": "c", "type": "categorical"})
    train = table(c=["a", "b", "a", "c", "a", "b"])
    valid = table(c=["a", "only_in_valid", "b", "c", ""])
    enc, (tr, va) = fit_transform(s, train, valid)
    # ids by frequency then value: a (3) -> 2, b (2) -> 3, c (1) -> 4
    assert enc.state["c"]["vocab"]["values"] == ["a", "b", "c"]
    assert tr["cat"][:, 0].tolist() == [2, 3, 2, 4, 2, 3]
    assert va["cat"][:, 0].tolist() == [2, OOV, 3, 4, PAD]
    assert enc.feature_set()["c"].vocab_size == 2 + 3
    assert "only_in_valid" not in enc.to_json()


def test_vocabulary_fitted_on_train_split_via_encode_splits():
    s = schema({"name": "c", "type": "categorical"})
    enc, splits, _ = encode_splits({"train": table(c=["a", "b"]), "valid": table(c=["z", "a"]),
                                    "test": table(c=["y", "b"])}, s)
    assert enc.state["c"]["vocab"]["values"] == ["a", "b"]
    assert splits["valid"].columns["cat"][:, 0].tolist() == [OOV, 2]
    assert splits["test"].columns["cat"][:, 0].tolist() == [OOV, 3]


def test_vocabulary_ties_are_broken_by_value():
    s = schema({"name": "c", "type": "categorical"})
    enc, _ = fit_transform(s, table(c=["z", "m", "a", "m", "z"]))
    assert enc.state["c"]["vocab"]["values"] == ["m", "z", "a"]


def test_min_count_moves_rare_values_to_oov():
    s = schema({"name": "c", "type": "categorical", "min_count": 3})
    train = table(c=["a", "a", "a", "b", "b", "c", "", "", ""])
    enc, (tr,) = fit_transform(s, train)
    assert enc.state["c"]["vocab"]["values"] == ["a"]  # empty cells are never vocabulary entries
    assert tr["cat"][:, 0].tolist() == [2, 2, 2, OOV, OOV, OOV, PAD, PAD, PAD]
    assert enc.feature_set()["c"].vocab_size == 3


def test_empty_cell_is_padding_and_values_are_not_stripped():
    s = schema({"name": "c", "type": "categorical"})
    enc, (tr, va) = fit_transform(s, table(c=["a", "", "a"]), table(c=["", " a", "a"]))
    assert tr["cat"][:, 0].tolist() == [2, PAD, 2]
    assert va["cat"][:, 0].tolist() == [PAD, OOV, 2]


def test_hash_buckets_range_and_stability():
    H = 7
    s = schema({"name": "c", "type": "categorical", "hash_buckets": H, "min_count": 5})
    values = [f"v{i}" for i in range(200)]
    enc, (tr, va) = fit_transform(s, table(c=values + [""]), table(c=["never_seen", "v3", ""]))
    ids = tr["cat"][:, 0]
    assert ids[-1] == PAD
    assert ((ids[:-1] >= 2) & (ids[:-1] < 2 + H)).all()
    assert len(set(ids[:-1].tolist())) == H  # 200 values fill all 7 buckets
    expected = [2 + zlib.crc32(v.encode()) % H for v in values]  # stable: crc32, no per-process salt
    assert ids[:-1].tolist() == expected
    assert va["cat"][:, 0].tolist() == [2 + zlib.crc32(b"never_seen") % H, expected[3], PAD]
    assert enc.state["c"]["vocab"] == {"values": None, "hash_buckets": H}  # no vocabulary is stored
    assert enc.feature_set()["c"].vocab_size == 2 + H
    # a second fit on other data hashes identically
    enc2, (tr2,) = fit_transform(s, table(c=["v5", "v3"]))
    assert tr2["cat"][:, 0].tolist() == [expected[5], expected[3]]


def test_hash_buckets_on_multi_categorical():
    s = schema({"name": "m", "type": "multi_categorical", "hash_buckets": 3, "max_len": 4})
    _, (tr,) = fit_transform(s, table(m=["a|b", "", "c|a|b|d|e"]))
    m = tr["m"]
    assert m.shape == (3, 4)
    assert m[0, 0] == m[2, 1] == 2 + zlib.crc32(b"a") % 3
    assert (m[0, 2:] == 0).all() and (m[1] == 0).all()
    assert ((m[2] >= 2) & (m[2] < 5)).all()


# ------------------------------------------------------------------------------------------------ numeric
def test_numeric_fill_value_and_no_transform():
    s = schema({"name": "x", "type": "numeric", "fill_value": -7.5})
    _, (tr, va) = fit_transform(s, table(x=["1.5", "", "-3", " 2 ", "1e3"]), table(x=["", "4"]))
    assert tr["num"].dtype == np.float32 and tr["num"].shape == (5, 1)
    np.testing.assert_allclose(tr["num"][:, 0], [1.5, -7.5, -3, 2, 1000])
    np.testing.assert_allclose(va["num"][:, 0], [-7.5, 4])


def test_log_transform():
    s = schema({"name": "x", "type": "numeric", "transform": "log", "fill_value": 3})
    _, (tr,) = fit_transform(s, table(x=["0", "1", "-5", "", "99"]))
    np.testing.assert_allclose(tr["num"][:, 0], np.log1p([0, 1, 0, 3, 99]), rtol=1e-6)


def test_standardize_uses_train_statistics():
    rng = np.random.default_rng(0)
    x_train = rng.normal(5, 3, 1000)
    x_valid = np.array([5.0, 8.0, -1.0])
    s = schema({"name": "x", "type": "numeric", "transform": "standardize"})
    enc, (tr, va) = fit_transform(s, table(x=[repr(float(v)) for v in x_train]),
                                     table(x=[repr(float(v)) for v in x_valid]))
    z = tr["num"][:, 0].astype(np.float64)
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-5
    st = enc.state["x"]
    assert st["mean"] == pytest.approx(x_train.mean()) and st["std"] == pytest.approx(x_train.std())
    np.testing.assert_allclose(va["num"][:, 0], (x_valid - x_train.mean()) / x_train.std(), rtol=1e-5)


def test_standardize_constant_column_does_not_divide_by_zero():
    s = schema({"name": "x", "type": "numeric", "transform": "standardize"})
    enc, (tr, va) = fit_transform(s, table(x=["4", "4", "4"]), table(x=["6"]))
    assert enc.state["x"]["std"] == 1.0
    np.testing.assert_allclose(tr["num"][:, 0], [0, 0, 0])
    np.testing.assert_allclose(va["num"][:, 0], [2])


def test_bucketize_becomes_categorical():
    s = schema({"name": "c", "type": "categorical"},
               {"name": "plain", "type": "numeric"},
               {"name": "b", "type": "numeric", "transform": "bucketize", "buckets": 4, "fill_value": 0},
               {"name": "d", "type": "categorical"})
    n = 400
    x = np.arange(n, dtype=float)
    train = table(c=["a"] * n, plain=["1"] * n, b=[str(v) for v in x], d=["z"] * n)
    valid = table(c=["a"] * 4, plain=["1"] * 4, b=["-1000", "1e9", "", "150"], d=["z"] * 4)
    enc, (tr, va) = fit_transform(s, train, valid)
    fs = enc.feature_set()
    assert fs["b"].kind == "categorical" and fs["plain"].kind == "numeric"
    assert [f.name for f in fs.categorical] == ["c", "b", "d"]  # schema order = "cat" column order
    assert [f.name for f in fs.numeric] == ["plain"]
    assert tr["cat"].shape == (n, 3) and tr["num"].shape == (n, 1)
    bounds = enc.state["b"]["boundaries"]
    assert len(bounds) == 3 and bounds == sorted(bounds)
    assert fs["b"].vocab_size == 2 + 3 + 1
    ids = tr["cat"][:, 1]
    assert ((ids >= 2) & (ids < fs["b"].vocab_size)).all()
    assert np.all(np.diff(ids) >= 0)  # monotone in x
    assert np.bincount(ids)[2:].tolist() == [100, 100, 100, 100]  # quantile bins: equal counts
    vb = va["cat"][:, 1].tolist()
    assert vb[0] == 2 and vb[1] == fs["b"].vocab_size - 1 and vb[2] == 2 and 2 <= vb[3] < 6
    assert tr["cat"][:, 0].tolist() == [2] * n and tr["cat"][:, 2].tolist() == [2] * n


def test_bucketize_duplicate_quantiles_are_merged():
    s = schema({"name": "b", "type": "numeric", "transform": "bucketize", "buckets": 10})
    enc, (tr,) = fit_transform(s, table(b=["1"] * 90 + ["2"] * 10))
    bounds = enc.state["b"]["boundaries"]
    assert bounds == sorted(set(bounds))
    assert tr["cat"][:, 0].max() < enc.feature_set()["b"].vocab_size


# ------------------------------------------------------------------------------------------------ multi-valued
def test_multi_categorical_right_padded_and_truncated():
    s = schema({"name": "m", "type": "multi_categorical", "separator": ";", "max_len": 3})
    train = table(m=["a;b", "c;a;b;d;e", "", "b", ";a;;c;"])
    enc, (tr, va) = fit_transform(s, train, table(m=["x;e;y;a", "a|b"]))
    assert enc.state["m"]["vocab"]["values"] == ["a", "b", "c", "d", "e"]  # a:3 b:3 c:2 d:1 e:1
    a, b, c, d, e = 2, 3, 4, 5, 6
    assert tr["m"].shape == (5, 3) and tr["m"].dtype == np.int64
    assert tr["m"].tolist() == [
        [a, b, 0],
        [c, a, b],  # the FIRST max_len values, in order
        [0, 0, 0],
        [b, 0, 0],
        [a, c, 0],  # empty elements are skipped
    ]
    assert va["m"].tolist() == [[OOV, e, OOV], [OOV, 0, 0]]  # 'a|b' is one (unknown) value with ';'


def test_multi_categorical_vocab_counts_values():
    s = schema({"name": "m", "type": "multi_categorical", "separator": "|", "max_len": 4, "min_count": 2})
    enc, (tr, va) = fit_transform(s, table(m=["a|b", "a|c", "b|a", "d"]), table(m=["c|a|zz", "||a||"]))
    assert enc.state["m"]["vocab"]["values"] == ["a", "b"]
    assert va["m"].tolist() == [[OOV, 2, OOV, 0], [2, 0, 0, 0]]
    fs = enc.feature_set()
    assert fs["m"].kind == "multi_categorical" and fs["m"].max_len == 4 and fs["m"].vocab_size == 4
    assert "m" not in [f.name for f in fs.categorical] and tr["cat"].shape == (4, 0)


def test_sequence_left_padded_keeps_last_items_with_timestamps():
    s = schema({"name": "hist", "column": "clicks", "type": "sequence", "separator": "^", "max_len": 3,
                "timestamp_column": "ts"})
    train = table(clicks=["a^b^c^d^e", "a^b", "", "e"],
                  ts=["1^2^3^4^5", "10^20", "", "7.5"])
    enc, (tr,) = fit_transform(s, train)
    vocab = enc.state["hist"]["vocab"]["values"]
    ids = {v: 2 + i for i, v in enumerate(vocab)}
    assert tr["hist"].tolist() == [
        [ids["c"], ids["d"], ids["e"]],  # the LAST max_len items, most recent in the last slot
        [0, ids["a"], ids["b"]],
        [0, 0, 0],
        [0, 0, ids["e"]],
    ]
    assert tr["hist__ts"].dtype == np.float64
    np.testing.assert_allclose(tr["hist__ts"], [[3, 4, 5], [0, 10, 20], [0, 0, 0], [0, 0, 7.5]])
    fs = enc.feature_set()
    assert fs["hist"].kind == "sequence" and fs["hist"].has_timestamps and fs["hist"].max_len == 3
    assert s.required_columns() == ["label", "clicks", "ts"]


def test_sequence_timestamps_must_match_ids():
    s = schema({"name": "hist", "type": "sequence", "separator": "^", "timestamp_column": "ts"})
    with pytest.raises(DataError, match="timestamps") as ei:
        fit_transform(s, table(hist=["a^b", "c"], ts=["1^2", "3^4"]))
    assert ei.value.column == "ts"


def test_sequence_without_timestamps_has_no_ts_column():
    s = schema({"name": "hist", "type": "sequence", "max_len": 2})
    enc, (tr,) = fit_transform(s, table(hist=["a|b|c", "b"]))
    assert enc.state["hist"]["vocab"]["values"] == ["b", "a", "c"]
    assert "hist__ts" not in tr and tr["hist"].tolist() == [[2, 4], [0, 2]]
    assert not enc.feature_set()["hist"].has_timestamps


def test_share_vocab_with():
    s = schema({"name": "item", "type": "categorical", "source": "item"},
               {"name": "clicks", "type": "sequence", "separator": "^", "max_len": 4, "share_vocab_with": "item"},
               {"name": "liked", "type": "multi_categorical", "max_len": 2, "share_vocab_with": "item"})
    train = table(item=["i1", "i2", "i1", "i3"], clicks=["i2^i9^i1", "", "i3", "i9^i9^i9^i9"],
                  liked=["i3|i1", "i9", "", "i2"])
    enc, (tr, va) = fit_transform(s, train, table(item=["i3"], clicks=["i1^i2^i3"], liked=["i2|i3"]))
    assert set(enc.state) == {"item"}  # the sharing features have no vocabulary of their own
    ids = {v: 2 + i for i, v in enumerate(enc.state["item"]["vocab"]["values"])}
    assert set(ids) == {"i1", "i2", "i3"}  # i9 appears only in the sequences: not in the shared vocabulary
    assert tr["cat"][:, 0].tolist() == [ids["i1"], ids["i2"], ids["i1"], ids["i3"]]
    assert tr["clicks"].tolist() == [[0, ids["i2"], OOV, ids["i1"]], [0, 0, 0, 0], [0, 0, 0, ids["i3"]],
                                     [OOV] * 4]
    assert tr["liked"].tolist() == [[ids["i3"], ids["i1"]], [OOV, 0], [0, 0], [ids["i2"], 0]]
    assert va["clicks"].tolist() == [[0, ids["i1"], ids["i2"], ids["i3"]]]
    fs = enc.feature_set()
    assert fs["clicks"].embedding_table == "item" and fs["liked"].embedding_table == "item"
    assert fs["item"].embedding_table == "item"
    assert fs["clicks"].vocab_size == fs["liked"].vocab_size == fs["item"].vocab_size == 5


# ------------------------------------------------------------------------------------------------ labels, groups
def test_multiple_labels_and_group():
    s = Schema.from_dict({"labels": ["click", "conv"], "user_column": "uid",
                          "features": [{"name": "c", "type": "categorical"}]})
    t = RawTable(pa.table({"click": ["1", "0", "1"], "conv": ["0", "0", "1"], "uid": ["u7", "u3", "u7"],
                           "c": ["a", "b", "a"]}), "<mem>", 0, "memory")
    enc, (out,) = fit_transform(s, t)
    assert out["label"].dtype == np.float32 and out["label"].tolist() == [1, 0, 1]
    assert out["label/click"].tolist() == [1, 0, 1] and out["label/conv"].tolist() == [0, 0, 1]
    assert "labels" not in out
    g = out["group"]
    assert g.dtype == np.int64 and g[0] == g[2] != g[1]
    fs = enc.feature_set()
    assert fs.labels == ("click", "conv") and fs.has_group
    assert fs.label_kinds == {"click": "binary", "conv": "binary"}


def test_single_label_has_no_labels_key_and_no_group():
    s = schema({"name": "c", "type": "categorical"})
    enc, (out,) = fit_transform(s, table(label=["1", "0"], c=["a", "b"]))
    assert "labels" not in out and "group" not in out and not enc.feature_set().has_group
    assert out["num"].shape == (2, 0) and out["cat"].dtype == np.int64


def test_transform_of_unvalidated_table_reports_bad_number():
    s = schema({"name": "x", "type": "numeric"})
    t = RawTable(pa.table({"label": ["1", "0"], "x": ["1", "nope"]}), "<mem>", 0, "memory")
    enc = Encoders.fit(table(x=["1"]), s)
    with pytest.raises(DataError, match="not a number") as ei:
        enc.transform(t)
    assert ei.value.column == "x" and "row 2" in str(ei.value)


# ------------------------------------------------------------------------------------------------ JSON
ALL_KINDS = schema(
    {"name": "user", "type": "categorical", "source": "user", "min_count": 2},
    {"name": "item", "type": "categorical", "source": "item"},
    {"name": "h", "type": "categorical", "hash_buckets": 11},
    {"name": "price", "type": "numeric", "transform": "log", "fill_value": 1},
    {"name": "z", "type": "numeric", "transform": "standardize"},
    {"name": "age", "type": "numeric", "transform": "bucketize", "buckets": 3},
    {"name": "tags", "type": "multi_categorical", "separator": "|", "max_len": 2},
    {"name": "hist", "type": "sequence", "separator": "^", "max_len": 3, "share_vocab_with": "item",
     "timestamp_column": "ts"},
    user_column="user",
)


def _all_kinds_table(seed: int, n: int = 60) -> RawTable:
    rng = np.random.default_rng(seed)

    def pick(prefix, k, size=n):
        return [f"{prefix}{i}" for i in rng.integers(0, k, size)]

    hist = ["^".join(pick("i", 12, rng.integers(0, 5))) for _ in range(n)]
    ts = ["^".join(str(j) for j in range(len([h for h in s.split("^") if h]))) for s in hist]
    return table(label=[str(v) for v in rng.integers(0, 2, n)], user=pick("u", 15), item=pick("i", 10),
                 h=pick("h", 100), price=[f"{v:.3f}" for v in rng.exponential(10, n)],
                 z=[f"{v:.4f}" for v in rng.normal(0, 5, n)], age=[str(v) for v in rng.integers(10, 70, n)],
                 tags=["|".join(pick("t", 6, rng.integers(0, 4))) for _ in range(n)], hist=hist, ts=ts)


def test_json_round_trip_gives_identical_transforms():
    train, valid = _all_kinds_table(0), _all_kinds_table(1)
    enc = Encoders.fit(train, ALL_KINDS)
    text = enc.to_json()
    back = Encoders.from_json(text)
    assert back.schema == ALL_KINDS and back.state == enc.state
    assert back.to_json() == text
    assert back.feature_set() == enc.feature_set()
    for t in (train, valid):
        a, b = enc.transform(t), back.transform(t)
        assert a.keys() == b.keys() == {"label", "label/label", "cat", "num", "tags", "hist", "hist__ts", "group"}
        for k in a:
            assert a[k].dtype == b[k].dtype
            np.testing.assert_array_equal(a[k], b[k])


def test_json_state_is_plain_json_without_pickle():
    enc = Encoders.fit(_all_kinds_table(0), ALL_KINDS)
    text = enc.to_json()
    assert isinstance(text, str)
    for marker in ("pickle", "py/object", "__reduce__", "!!python", "\\u0080"):
        assert marker not in text

    def plain(node):
        if isinstance(node, dict):
            assert all(isinstance(k, str) for k in node)
            return all(plain(v) for v in node.values())
        if isinstance(node, list):
            return all(plain(v) for v in node)
        return node is None or type(node) in (str, int, float, bool)

    assert plain(json.loads(text))


def test_cache_holds_json_encoders(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("label,c,x\n1,a,1\n0,b,2\n1,a,3\n")
    s = schema({"name": "c", "type": "categorical"}, {"name": "x", "type": "numeric", "transform": "standardize"})
    data = prepare(DataSource(name="j", schema=s, files={"train": str(p), "valid": str(p)}),
                   cache_dir=tmp_path / "cache")
    files = sorted(f.name for f in data.cache_path.rglob("*") if f.is_file())
    assert all(f.endswith((".json", ".npy")) for f in files)
    for f in data.cache_path.rglob("*.npy"):  # plain arrays: loadable without pickle
        np.load(f, allow_pickle=False)
    assert Encoders.from_json((data.cache_path / "encoders.json").read_text()).state == data.encoders.state


# ------------------------------------------------------------------------------------------------ known bugs
def test_bug_timestamp_mismatch_names_the_line(tmp_path):
    p = tmp_path / "ts.csv"
    p.write_text("label,h,ts\n1,a^b,1^2\n0,c,4^5\n1,d,5\n")
    from rankcraft.data.readers import read_table

    s = schema({"name": "h", "type": "sequence", "separator": "^", "timestamp_column": "ts"})
    raw = validate_table(read_table(p, s.required_columns()), s)
    with pytest.raises(DataError) as ei:
        Encoders.fit(raw, s).transform(raw)
    assert (ei.value.path, ei.value.line, ei.value.column) == (str(p), 3, "ts")


def test_bug_feature_names_clash_with_batch_keys():
    d = {"labels": ["click"], "features": [{"name": "x", "type": "numeric"},
                                           {"name": "num", "type": "multi_categorical", "max_len": 2},
                                           {"name": "label", "type": "multi_categorical", "max_len": 2}]}
    try:
        s = Schema.from_dict(d)
    except Exception as exc:  # rejecting reserved names is an acceptable fix
        from rankcraft.errors import ConfigError

        assert isinstance(exc, ConfigError)
        return
    t = RawTable(pa.table({"click": ["1", "0"], "x": ["1", "2"], "num": ["a|b", "c"], "label": ["q", "r"]}),
                 "<mem>", 0, "memory")
    out = Encoders.fit(t, s).transform(t)
    assert out["label"].tolist() == [1.0, 0.0]
    assert out["num"].shape == (2, 1)
    assert any(v.shape == (2, 2) and v.tolist() == [[2, 3], [4, 0]] for v in out.values())


def test_shared_columns_are_encoded_once_and_broadcast_like_repeated_values():
    enc = Encoders.fit(_all_kinds_table(0), ALL_KINDS)
    t = _all_kinds_table(1, n=7).table
    shared_cols = ["user", "price", "age", "hist", "ts"]  # every kind: categorical, numeric, bucketized, sequence
    one = t.slice(2, 1).select(shared_cols)
    repeated = t.select([c for c in t.column_names if c not in shared_cols])
    for c in shared_cols:
        repeated = repeated.append_column(c, pa.array([one.column(c)[0].as_py()] * t.num_rows, pa.string()))
    want = enc.transform(RawTable(repeated, "<x>", 0, "memory"), labels=False)
    per_row = RawTable(t.select([c for c in t.column_names if c not in shared_cols]), "<x>", 0, "memory")
    got = enc.transform(per_row, labels=False, shared=RawTable(one, "<x>", 0, "memory"))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    with pytest.raises(DataError, match="must come from the same place"):
        enc.transform(RawTable(t.select([c for c in t.column_names if c != "ts"]), "<x>", 0, "memory"),
                      labels=False, shared=RawTable(one.select(["ts"]), "<x>", 0, "memory"))
