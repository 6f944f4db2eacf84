"""Input formats: gzip/zstd text files, delimiter hints, missing or directory input paths, list syntax and Parquet
lists in multi-valued / sequence columns, and the out-of-vocabulary warning at preparation."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankcraft.cli.main import main
from rankcraft.data.dataset import DataSource, encode_file, prepare
from rankcraft.data.encoders import Encoders, validate_table
from rankcraft.data.readers import (
    available_columns,
    first_line,
    read_table,
    sniff_delimiter,
)
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError

FEATURES = [{"name": "a", "type": "categorical"}, {"name": "x", "type": "numeric"}]
SCHEMA = Schema.from_dict({"labels": ["label"], "features": FEATURES})
TEXT = "label,a,x\n1,u,1.5\n0,v,2\n1,u,3\n"


def compress(path, data: bytes, codec: str):
    if codec == "gzip":
        path.write_bytes(gzip.compress(data))
    else:
        with pa.output_stream(str(path), compression="zstd") as fh:
            fh.write(data)
    return path


def load(path, schema: Schema = SCHEMA):
    raw = read_table(path, schema.required_columns(), delimiter=schema.delimiter,
                     column_names=schema.column_names, on_error=schema.on_error)
    return validate_table(raw, schema)


# ------------------------------------------------------------------------------------------------ compressed input
@pytest.mark.parametrize("name, codec", [("d.csv.gz", "gzip"), ("d.csv.zst", "zstd"), ("d.csv.zstd", "zstd"),
                                         ("d.csv", "gzip")])  # the last: gzip content under a plain name
def test_compressed_csv_reads_like_plain(tmp_path, name, codec):
    p = compress(tmp_path / name, TEXT.encode(), codec)
    raw = load(p)
    assert raw.table.column("a").to_pylist() == ["u", "v", "u"]
    assert raw.table.column("x").to_pylist() == ["1.5", "2", "3"]
    assert available_columns(p) == ["label", "a", "x"]
    assert first_line(p) == "label,a,x"


def test_compressed_tsv_is_tab_separated(tmp_path):
    p = compress(tmp_path / "d.tsv.gz", TEXT.replace(",", "\t").encode(), "gzip")
    assert sniff_delimiter(p) == "\t"
    assert load(p).num_rows == 3


@pytest.mark.parametrize("codec, name", [("gzip", "d.csv.gz"), ("zstd", "d.csv.zst")])
def test_error_lines_in_compressed_files_count_decompressed_lines(tmp_path, codec, name):
    # a blank line (ignored) before the bad label: the error must still name physical line 5
    p = compress(tmp_path / name, b"label,a,x\n1,u,1\n\n0,v,2\n7,w,3\n", codec)
    with pytest.raises(DataError) as ei:
        load(p)
    assert ei.value.line == 5 and ei.value.column == "label"
    # a ragged row
    q = compress(tmp_path / ("r" + name), b"label,a,x\n1,u,1\n0,v\n", codec)
    with pytest.raises(DataError) as ei:
        load(q)
    assert ei.value.line == 3 and "ragged" in str(ei.value)


def test_prepare_and_encode_file_on_gzip(tmp_path):
    train = compress(tmp_path / "train.csv.gz", TEXT.encode(), "gzip")
    (tmp_path / "valid.csv").write_text(TEXT)
    data = prepare(DataSource("gz", SCHEMA, files={"train": str(train), "valid": str(tmp_path / "valid.csv")}),
                   cache_dir=tmp_path / "cache")
    assert len(data.splits["train"]) == 3
    enc, _ = encode_file(data.encoders, train)
    assert np.array_equal(enc.columns["cat"].numpy(), data.splits["train"].columns["cat"].numpy())
    # prediction input without the label column, compressed
    nolabel = compress(tmp_path / "score.csv.gz", b"a,x\nu,1\nzz,2\n", "gzip")
    enc, _ = encode_file(data.encoders, nolabel, require_labels=False)
    assert enc.columns["cat"][:, 0].tolist() == [data.encoders.vocab(SCHEMA.features[0]).encode(
        pa.array(["u"]))[0], 1]


def test_gz_name_without_gzip_content_is_an_error(tmp_path):
    p = tmp_path / "d.csv.gz"
    p.write_text(TEXT)
    with pytest.raises(DataError, match="not gzip-compressed"):
        load(p)


def test_truncated_gzip_is_a_data_error(tmp_path):
    blob = gzip.compress((TEXT * 2000).encode())
    p = tmp_path / "d.csv.gz"
    p.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as ei:
        load(p)
    assert str(p) in str(ei.value)


# ------------------------------------------------------------------------------------------------ delimiter hint
@pytest.mark.parametrize("sep, word, shown", [("\t", "tab", "\\t"), (";", "semicolon", ";"), ("|", "pipe", "|")])
def test_single_column_header_gets_delimiter_hint(tmp_path, sep, word, shown):
    p = tmp_path / "d.csv"
    p.write_text(TEXT.replace(",", sep))
    with pytest.raises(DataError) as ei:
        load(p)
    msg = str(ei.value)
    assert f"looks {word}-separated" in msg and f'delimiter: "{shown}"' in msg
    assert ei.value.line == 1 and "\n" not in msg


def test_comma_file_read_as_tsv_gets_comma_hint(tmp_path):
    p = tmp_path / "d.tsv"
    p.write_text(TEXT)
    with pytest.raises(DataError, match='comma-separated: set `delimiter: ","`'):
        load(p)


def test_no_hint_when_header_really_lacks_the_column(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("label,a,y\n1,u,3\n")
    with pytest.raises(DataError) as ei:
        load(p)
    assert "looks" not in str(ei.value)


# ------------------------------------------------------------------------------------------------ input paths
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_bad_input_path_in_prepare_is_one_line_data_error(tmp_path, kind):
    (tmp_path / "t.csv").write_text(TEXT)
    bad = tmp_path / ("nope.csv" if kind == "missing" else "adir")
    if kind == "directory":
        bad.mkdir()
    for files in ({"train": str(bad)}, {"train": str(tmp_path / "t.csv"), "valid": str(bad)}):
        with pytest.raises(DataError) as ei:
            prepare(DataSource("p", SCHEMA, files=files), cache_dir=tmp_path / "cache")
        assert ei.value.path == str(bad)
        assert ("file not found" if kind == "missing" else "is a directory, not a data file") in str(ei.value)


@pytest.mark.parametrize("flag", ["--train", "--valid", "--test"])
def test_cli_bad_input_paths_exit_2_without_traceback(capsys, tmp_path, flag):
    (tmp_path / "t.csv").write_text(TEXT)
    schema = tmp_path / "s.yaml"
    SCHEMA.to_yaml(schema)
    (tmp_path / "adir").mkdir()
    for bad, needle in ((tmp_path / "nope.csv", "file not found"), (tmp_path / "adir", "is a directory")):
        files = {"--train": tmp_path / "t.csv", flag: bad}
        argv = ["train", "--schema", schema, "--out", tmp_path / "run", "--quiet", "--max-steps", "1"]
        for k, v in files.items():
            argv += [k, v]
        code = main([str(a) for a in argv])
        _, err = capsys.readouterr()
        assert code == 2
        assert "Traceback" not in err and str(bad) in err and needle in err
        assert len(err.strip().splitlines()) == 1


def test_encode_file_bad_paths(tmp_path):
    (tmp_path / "t.csv").write_text(TEXT)
    data = prepare(DataSource("p", SCHEMA, files={"train": str(tmp_path / "t.csv")}), cache_dir=tmp_path / "c")
    for kw in ({}, {"require_labels": False}):
        with pytest.raises(DataError, match="file not found"):
            encode_file(data.encoders, tmp_path / "nope.csv", **kw)
        with pytest.raises(DataError, match="is a directory"):
            encode_file(data.encoders, tmp_path, **kw)
    with pytest.raises(DataError, match="is a directory"):
        read_table(tmp_path, ["label"])


def test_unreadable_parquet_is_a_data_error(tmp_path):
    p = tmp_path / "d.parquet"
    p.write_text("not parquet")
    with pytest.raises(DataError, match="not a readable Parquet"):
        available_columns(p)


# ------------------------------------------------------------------------------------------------ list syntax
LIST_SCHEMA = Schema.from_dict({"labels": ["label"], "features": [
    {"name": "item", "type": "categorical"},
    {"name": "tags", "type": "multi_categorical", "separator": ",", "max_len": 3},
    {"name": "hist", "type": "sequence", "separator": "|", "max_len": 3, "share_vocab_with": "item"}]})


def list_table(tags: list[str], hist: list[str], items: list[str] | None = None):
    from rankcraft.data.readers import RawTable

    n = len(tags)
    cols = {"label": ["1", "0"] * (n // 2) + ["1"] * (n % 2), "item": items or ["13179", "29247", "5"][:1] * n,
            "tags": tags, "hist": hist}
    return RawTable(pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), "mem.csv", 0, "memory")


def test_list_syntax_cells_are_split_like_separated_cells():
    tags = ["[13179, 29247]", "['a', 'b']", "[]", "a,b", ' ["a b", "c"] ', "['']"]
    hist = ["[13179, 29247]", "[5]", "[]", "13179|5", "['5', '13179', '29247', '5']", ""]
    raw = list_table(tags, hist, ["13179", "29247", "5", "13179", "5", "29247"])
    enc = Encoders.fit(raw, LIST_SCHEMA)
    assert sorted(enc.state["tags"]["vocab"]["values"]) == ["13179", "29247", "a", "a b", "b", "c"]
    out = enc.transform(raw)
    voc = enc.vocab(LIST_SCHEMA.features[1])

    def ids(*vals):
        return voc.encode(pa.array(list(vals), pa.string())).tolist()

    assert out["tags"][0].tolist() == ids("13179", "29247") + [0]
    assert out["tags"][1].tolist() == out["tags"][3].tolist() == ids("a", "b") + [0]
    assert out["tags"][2].tolist() == out["tags"][5].tolist() == [0, 0, 0]
    assert out["tags"][4].tolist() == ids("a b", "c") + [0]
    item = enc.vocab(LIST_SCHEMA.features[0])
    iid = {v: item.encode(pa.array([v]))[0] for v in ("13179", "29247", "5")}
    # sequences: left-padded, most recent last, the last max_len values kept
    assert out["hist"][0].tolist() == [0, iid["13179"], iid["29247"]]
    assert out["hist"][1].tolist() == [0, 0, iid["5"]]
    assert out["hist"][3].tolist() == [0, iid["13179"], iid["5"]]
    assert out["hist"][4].tolist() == [iid["13179"], iid["29247"], iid["5"]]
    assert out["hist"][5].tolist() == [0, 0, 0]
    assert 1 not in out["hist"]  # no token out of vocabulary


def test_list_syntax_in_csv_end_to_end(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text('label,item,tags,hist\n1,5,"[13179, 29247]","[5, 13179]"\n0,13179,"[\'a\']",[]\n')
    data = prepare(DataSource("l", LIST_SCHEMA, files={"train": str(p), "valid": str(p)}), cache_dir=tmp_path / "c")
    hist = data.splits["train"].columns["hist"].numpy()
    assert hist[0, 0] == 0 and (hist[0, 1:] >= 2).all() and (hist[1] == 0).all()


def test_parquet_list_columns_for_multi_valued_and_sequence(tmp_path):
    p = tmp_path / "d.parquet"
    schema = Schema.from_dict({"labels": ["label"], "features": [
        {"name": "item", "type": "categorical"},
        {"name": "tags", "type": "multi_categorical", "max_len": 2},
        {"name": "hist", "type": "sequence", "max_len": 3, "share_vocab_with": "item", "timestamp_column": "ts"}]})
    pq.write_table(pa.table({"label": [1, 0, 1], "item": [7, 8, 9],
                             "tags": pa.array([["x", "y", "z"], [], None], pa.list_(pa.string())),
                             "hist": pa.array([[7, 8], [9], None], pa.list_(pa.int64())),
                             "ts": pa.array([[100, 200], [300], None], pa.large_list(pa.int32()))}), p)
    data = prepare(DataSource("pl", schema, files={"train": str(p), "valid": str(p)}), cache_dir=tmp_path / "c")
    cols = data.splits["train"].columns
    item = data.encoders.vocab(schema.features[0])
    assert cols["hist"][0].tolist() == [0] + item.encode(pa.array(["7", "8"])).tolist()
    assert cols["hist__ts"][0].tolist() == [0, 100, 200] and cols["hist__ts"][1].tolist() == [0, 0, 300]
    assert (cols["tags"][0] > 1).all() and (cols["tags"][1:] == 0).all()


@pytest.mark.parametrize("ftype", ["categorical", "numeric"])
def test_parquet_list_column_as_single_valued_feature_is_one_line_error(tmp_path, ftype):
    p = tmp_path / "d.parquet"
    pq.write_table(pa.table({"label": [1, 0], "hist": pa.array([[1, 2], [3]], pa.list_(pa.int64()))}), p)
    schema = Schema.from_dict({"labels": ["label"], "features": [{"name": "hist", "type": ftype}]})
    with pytest.raises(DataError) as ei:
        prepare(DataSource("pc", schema, files={"train": str(p)}), cache_dir=tmp_path / "c")
    msg = str(ei.value)
    assert ei.value.path == str(p) and ei.value.column == "hist" and "\n" not in msg
    assert "list column" in msg and "multi_categorical" in msg


# ------------------------------------------------------------------------------------------------ OOV warnings
def oov_source(tmp_path, train_hist: list[str], valid_hist: list[str], sep: str = ","):
    schema = Schema.from_dict({"labels": ["label"], "features": [
        {"name": "user", "type": "categorical"},
        {"name": "hist", "type": "sequence", "separator": sep, "max_len": 5}]})
    for name, hist in (("train", train_hist), ("valid", valid_hist)):
        users = [f"u{i % 7}" for i in range(len(hist))]
        labels = [str(i % 2) for i in range(len(hist))]
        pa_table = pa.table({"label": labels, "user": users, "hist": hist})
        import pyarrow.csv as pacsv

        pacsv.write_csv(pa_table, tmp_path / f"{name}.csv")
    return DataSource("oov", schema, files={"train": str(tmp_path / "train.csv"),
                                            "valid": str(tmp_path / "valid.csv")})


def test_mostly_oov_sequence_warns_and_warning_is_cached(tmp_path):
    rng = np.random.default_rng(0)
    train = [",".join(map(str, rng.integers(0, 50, 4))) for _ in range(60)]
    valid = [",".join(map(str, rng.integers(1000, 2000, 4))) for _ in range(30)]  # ids never seen in training
    src = oov_source(tmp_path, train, valid)
    data = prepare(src, cache_dir=tmp_path / "c")
    assert len(data.warnings) == 1
    msg = data.warnings[0]
    assert "feature 'hist'" in msg and "100% of its 120 validation values are out of vocabulary" in msg
    again = prepare(src, cache_dir=tmp_path / "c")
    assert again.from_cache and again.warnings == data.warnings


def test_lists_under_another_separator_warn_with_the_separator_to_set(tmp_path):
    rng = np.random.default_rng(1)
    train = ["|".join(map(str, rng.integers(0, 30, 3))) for _ in range(60)]  # written with '|', schema says ','
    valid = ["|".join(map(str, rng.integers(0, 30, 3))) for _ in range(30)]
    data = prepare(oov_source(tmp_path, train, valid), cache_dir=tmp_path / "c")
    hist_msgs = [m for m in data.warnings if "feature 'hist'" in m]
    assert len(hist_msgs) == 1
    assert "look like lists separated by '|'" in hist_msgs[0] and 'separator: "|"' in hist_msgs[0]
    assert "out of vocabulary" in hist_msgs[0]


def test_in_vocabulary_data_has_no_warning(tmp_path):
    rng = np.random.default_rng(2)
    train = ["[" + ", ".join(map(str, rng.integers(0, 20, 3))) + "]" for _ in range(80)]  # pandas list syntax
    valid = ["[" + ", ".join(map(str, rng.integers(0, 20, 3))) + "]" for _ in range(30)]
    data = prepare(oov_source(tmp_path, train, valid), cache_dir=tmp_path / "c")
    assert data.warnings == []


def test_categorical_in_list_syntax_warns(tmp_path):
    from rankcraft.data.encoders import vocabulary_warnings

    vals = [f"[{i}, {i + 1}]" for i in range(40)]
    raw = list_table(["a"] * 40, [""] * 40, vals)
    schema = Schema.from_dict({"labels": ["label"], "features": [{"name": "item", "type": "categorical"}]})
    enc = Encoders.fit(raw, schema)
    msgs = vocabulary_warnings(enc, enc.transform(raw))
    assert len(msgs) == 1 and "'[a, b]' syntax" in msgs[0] and "multi_categorical" in msgs[0]


def test_vocabulary_check_can_be_an_error_or_off(tmp_path):
    import dataclasses

    rng = np.random.default_rng(0)
    train = [",".join(map(str, rng.integers(0, 50, 4))) for _ in range(60)]
    valid = [",".join(map(str, rng.integers(1000, 2000, 4))) for _ in range(30)]
    src = oov_source(tmp_path, train, valid)
    strict = dataclasses.replace(src, schema=src.schema.model_copy(update={"vocabulary_check": "error"}))
    with pytest.raises(DataError, match=r"feature 'hist'.*out of vocabulary.*vocabulary_check: error"):
        prepare(strict, use_cache=False)
    off = dataclasses.replace(src, schema=src.schema.model_copy(update={"vocabulary_check": "off"}))
    assert prepare(off, use_cache=False).warnings == []
