"""Bad input data: every problem is a DataError naming file, 1-based physical line and column; on_error: skip."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rankcraft.data.dataset import DataSource, prepare
from rankcraft.data.encoders import Encoders, describe_skips, validate_table
from rankcraft.data.readers import available_columns, read_table
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError, RankcraftError

FEATURES = [{"name": "a", "type": "categorical"}, {"name": "x", "type": "numeric"}]
SCHEMA = Schema.from_dict({"labels": ["label"], "features": FEATURES})
SKIP = Schema.from_dict({"labels": ["label"], "features": FEATURES, "on_error": "skip"})


def write(tmp_path, lines: list[str], *, name: str = "data.csv", eol: str = "\n", final_eol: bool = True):
    p = tmp_path / name
    p.write_bytes((eol.join(lines) + (eol if final_eol else "")).encode())
    return p


def load(path, schema: Schema = SCHEMA):
    """Read + validate, as the pipeline does."""
    raw = read_table(path, schema.required_columns(), delimiter=schema.delimiter,
                     column_names=schema.column_names, on_error=schema.on_error)
    return validate_table(raw, schema)


def expect_error(path, schema: Schema = SCHEMA, *, line, column) -> DataError:
    with pytest.raises(DataError) as ei:
        load(path, schema)
    err = ei.value
    assert isinstance(err, RankcraftError)
    assert err.path == str(path)
    assert err.line == line
    assert err.column == column
    msg = str(err)
    assert str(path) in msg
    if line is not None:
        assert f"line {line}" in msg
    if column is not None:
        assert f"column '{column}'" in msg
    return err


GOOD = ["label,a,x", "1,u,1.5", "0,v,2"]


# ------------------------------------------------------------------------------------------------ missing column
def test_missing_column_names_column_and_lists_file_columns(tmp_path):
    p = write(tmp_path, ["label,a,y", "1,u,3"])
    err = expect_error(p, line=1, column="x")
    assert "['label', 'a', 'y']" in str(err)  # the columns the file does have


def test_missing_label_column(tmp_path):
    p = write(tmp_path, ["click,a,x", "1,u,3"])
    expect_error(p, line=1, column="label")


def test_missing_column_headerless_file_has_no_line(tmp_path):
    s = Schema.from_dict({"labels": ["label"], "features": FEATURES, "column_names": ["label", "a"]})
    p = write(tmp_path, ["1,u", "0,v"])
    err = expect_error(p, s, line=None, column="x")
    assert "['label', 'a']" in str(err)


def test_header_names_are_stripped(tmp_path):
    p = write(tmp_path, ["label , a,x ", "1,u,3"])
    raw = load(p)
    assert raw.num_rows == 1 and available_columns(p) == ["label", "a", "x"]


# ------------------------------------------------------------------------------------------------ bad cells
@pytest.mark.parametrize("value, needle", [
    ("2", "found '2'"),
    ("0.5", "found '0.5'"),
    ("-1", "found '-1'"),
    ("yes", "not a number"),
    ("", "missing"),
    ("  ", "missing"),
])
def test_bad_label(tmp_path, value, needle):
    p = write(tmp_path, GOOD + [f"{value},w,3", "1,u,4"])
    err = expect_error(p, line=4, column="label")
    assert needle in str(err)


@pytest.mark.parametrize("value", ["1", "0", "1.0", "0.0", " 1 ", "+1"])
def test_valid_label_spellings(tmp_path, value):
    p = write(tmp_path, GOOD + [f"{value},w,3"])
    raw = load(p)
    assert raw.num_rows == 3


@pytest.mark.parametrize("value", ["abc", "1;5", "12a", "--3", "0x10"])
def test_unparseable_number(tmp_path, value):
    p = write(tmp_path, GOOD + ["1,w,3", f"0,w,{value}"])
    err = expect_error(p, line=5, column="x")
    assert "not a number" in str(err)


def test_empty_numeric_cell_is_not_an_error(tmp_path):
    p = write(tmp_path, GOOD + ["1,w,", "1,w, "])
    assert load(p).num_rows == 4


def test_first_bad_row_is_reported(tmp_path):
    p = write(tmp_path, GOOD + ["1,w,abc", "2,w,3", "0,w,zzz"])
    expect_error(p, line=4, column="x")
    p = write(tmp_path, GOOD + ["1,w,3", "3,w,3", "0,w,zzz"], name="b.csv")
    expect_error(p, line=5, column="label")


@pytest.mark.parametrize("row, found", [("1,w", 2), ("1", 1), ("1,w,3,4", 4), ("1,w,3,,", 5)])
def test_ragged_row(tmp_path, row, found):
    p = write(tmp_path, GOOD + ["1,w,3", row, "0,v,2"])
    with pytest.raises(DataError) as ei:
        load(p)
    err = ei.value
    assert err.path == str(p) and err.line == 5
    assert "line 5" in str(err) and str(p) in str(err)
    assert f"expected 3 fields, found {found}" in str(err)


def test_ragged_row_in_tsv(tmp_path):
    s = Schema.from_dict({"labels": ["label"], "features": FEATURES, "delimiter": "\t"})
    p = write(tmp_path, ["label\ta\tx", "1\tu\t1", "0\tv"], name="d.txt")
    with pytest.raises(DataError) as ei:
        load(p, s)
    assert ei.value.line == 3


def test_tsv_suffix_selects_tab_delimiter(tmp_path):
    p = write(tmp_path, ["label\ta\tx", "1\tu,v\t1", "0\tw\t2"], name="d.tsv")
    raw = load(p)
    assert raw.table.column("a").to_pylist() == ["u,v", "w"]


# ------------------------------------------------------------------------------------------------ line numbers
def test_line_number_counts_blank_lines(tmp_path):
    p = write(tmp_path, ["label,a,x", "", "1,u,1", "", "", "0,v,2", "", "0.5,w,3", "1,u,1"])
    expect_error(p, line=8, column="label")


def test_line_number_with_leading_blank_data_line(tmp_path):
    p = write(tmp_path, ["label,a,x", "", "1,u,abc"])
    expect_error(p, line=3, column="x")


def test_line_number_with_crlf(tmp_path):
    p = write(tmp_path, GOOD + ["1,w,3", "1,w,oops"], eol="\r\n")
    expect_error(p, line=5, column="x")


def test_line_number_with_crlf_and_blank_lines(tmp_path):
    p = write(tmp_path, ["label,a,x", "1,u,1", "", "0,v,2", "", "", "yes,w,3"], eol="\r\n")
    expect_error(p, line=7, column="label")


def test_crlf_values_are_clean(tmp_path):
    p = write(tmp_path, GOOD, eol="\r\n")
    raw = load(p)
    assert raw.table.column("x").to_pylist() == ["1.5", "2"]
    assert raw.table.column("label").to_pylist() == ["1", "0"]


def test_no_final_newline(tmp_path):
    p = write(tmp_path, GOOD + ["2,w,3"], final_eol=False)
    expect_error(p, line=4, column="label")


def test_ragged_line_counts_blank_lines_and_crlf(tmp_path):
    p = write(tmp_path, ["label,a,x", "", "1,u,1", "", "0,v"], eol="\r\n")
    with pytest.raises(DataError) as ei:
        load(p)
    assert ei.value.line == 5


# ------------------------------------------------------------------------------------------------ files
def test_file_not_found(tmp_path):
    p = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="not found") as ei:
        load(p)
    assert ei.value.path == str(p)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.csv"
    p.write_text("")
    with pytest.raises(DataError, match="empty") as ei:
        load(p)
    assert ei.value.line == 1 and ei.value.path == str(p)


def test_duplicate_header_columns(tmp_path):
    p = write(tmp_path, ["label,a,x,a", "1,u,1,2"])
    with pytest.raises(DataError, match="duplicate") as ei:
        load(p)
    assert ei.value.line == 1


def test_header_only_file_reads_zero_rows(tmp_path):
    p = write(tmp_path, ["label,a,x"])
    assert load(p).num_rows == 0


def test_error_message_format():
    e = DataError("boom", path="f.csv", line=3, column="c")
    assert str(e) == "f.csv, line 3, column 'c': boom"
    assert str(DataError("boom")) == "boom"
    assert (e.path, e.line, e.column) == ("f.csv", 3, "c")


# ------------------------------------------------------------------------------------------------ on_error: skip
BAD_MIX = [
    "label,a,x",   # 1
    "1,g1,1",      # 2 good
    "2,b,1",       # 3 label 2
    "0,g2,2",      # 4 good
    "0.5,b,1",     # 5 label 0.5
    ",b,1",        # 6 empty label
    "1,b,abc",     # 7 bad number
    "0,b",         # 8 ragged (too few)
    "1,b,1,1",     # 9 ragged (too many)
    "1,g3,",       # 10 good (empty numeric)
    "0,g4,4",      # 11 good
]
BAD_LINES = [3, 5, 6, 7, 8, 9]


def _check_skipped(raw, path, bad_lines):
    assert raw.table.column("a").to_pylist() == ["g1", "g2", "g3", "g4"]
    assert raw.num_rows == 4
    assert sorted(ln for ln, _ in raw.skipped) == bad_lines
    why = dict(raw.skipped)
    assert "label" in why[bad_lines[0]]
    text = describe_skips(raw, limit=100)
    assert text.startswith(f"{path}: skipped {len(bad_lines)} bad row(s)")
    for ln in bad_lines:
        assert f"line {ln}:" in text


def test_skip_drops_and_counts_bad_rows(tmp_path):
    p = write(tmp_path, BAD_MIX)
    raw = load(p, SKIP)
    _check_skipped(raw, p, BAD_LINES)
    why = dict(raw.skipped)
    assert "'2'" in why[3] and "'0.5'" in why[5] and "missing" in why[6]
    assert "column 'x'" in why[7] and "not a number" in why[7]
    assert "ragged" in why[8] and "ragged" in why[9]


def test_skip_with_blank_lines(tmp_path):
    lines = BAD_MIX[:3] + ["", ""] + BAD_MIX[3:6] + [""] + BAD_MIX[6:]
    p = write(tmp_path, lines)
    raw = load(p, SKIP)
    _check_skipped(raw, p, [3, 7, 8, 10, 11, 12])


def test_skip_with_crlf_and_blank_lines(tmp_path):
    lines = BAD_MIX[:2] + [""] + BAD_MIX[2:]
    p = write(tmp_path, lines, eol="\r\n")
    raw = load(p, SKIP)
    _check_skipped(raw, p, [ln + 1 for ln in BAD_LINES])


def test_skip_then_encode(tmp_path):
    p = write(tmp_path, BAD_MIX)
    raw = load(p, SKIP)
    out = Encoders.fit(raw, SKIP).transform(raw)
    np.testing.assert_array_equal(out["label"], [1, 0, 1, 0])
    np.testing.assert_allclose(out["num"][:, 0], [1, 2, 0, 4])


def test_describe_skips_limit(tmp_path):
    p = write(tmp_path, ["label,a,x"] + [f"{i + 2},b,1" for i in range(7)] + ["1,g,1"])
    raw = load(p, SKIP)
    assert raw.num_rows == 1 and len(raw.skipped) == 7
    text = describe_skips(raw, limit=3)
    assert "skipped 7 bad row(s)" in text and "(+4 more)" in text
    assert "line 2:" in text and "line 4:" in text and "line 5:" not in text
    assert describe_skips(load(write(tmp_path, GOOD, name="ok.csv"), SKIP)) == ""


def test_skip_through_prepare(tmp_path):
    tr = write(tmp_path, BAD_MIX, name="train.csv")
    va = write(tmp_path, GOOD + ["7,z,1"], name="valid.csv")
    data = prepare(DataSource(name="skip", schema=SKIP, files={"train": str(tr), "valid": str(va)}),
                   cache_dir=tmp_path / "cache")
    assert len(data.splits["train"]) == 4 and len(data.splits["valid"]) == 2
    assert len(data.skipped) == 2
    assert any(str(tr) in s and "skipped 6" in s for s in data.skipped)
    assert any(str(va) in s and "line 4" in s for s in data.skipped)
    again = prepare(DataSource(name="skip", schema=SKIP, files={"train": str(tr), "valid": str(va)}),
                    cache_dir=tmp_path / "cache")
    assert again.from_cache and again.skipped == data.skipped


def test_raise_mode_through_prepare(tmp_path):
    tr = write(tmp_path, BAD_MIX, name="train.csv")
    with pytest.raises(DataError) as ei:
        prepare(DataSource(name="raise", schema=SCHEMA, files={"train": str(tr)}), cache_dir=tmp_path / "c")
    assert ei.value.line == 8  # ragged rows are found while reading, before any cell is validated
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())


# ------------------------------------------------------------------------------------------------ Parquet
def write_parquet(tmp_path, table: pa.Table, name="data.parquet"):
    p = tmp_path / name
    pq.write_table(table, p)
    return p


def test_parquet_missing_column(tmp_path):
    p = write_parquet(tmp_path, pa.table({"label": [1, 0], "a": ["u", "v"]}))
    err = expect_error(p, line=None, column="x")
    assert "['label', 'a']" in str(err)


def test_parquet_int_float_list_columns(tmp_path):
    t = pa.table({
        "label": pa.array([1, 0, 1, None], pa.int64()),
        "a": pa.array([10, 20, None, 10], pa.int32()),
        "x": pa.array([1.5, None, -2.0, 1e6], pa.float64()),
        "tags": pa.array([["p", "q"], [], None, ["q"]], pa.list_(pa.string())),
        "ids": pa.array([[1, 2, 3], [4], [], None], pa.list_(pa.int64())),
    })
    p = write_parquet(tmp_path, t)
    s = Schema.from_dict({"labels": ["label"], "on_error": "skip", "features": [
        {"name": "a", "type": "categorical"}, {"name": "x", "type": "numeric", "fill_value": -9},
        {"name": "tags", "type": "multi_categorical", "max_len": 3},
        {"name": "ids", "type": "sequence", "max_len": 2}]})
    raw = read_table(p, s.required_columns())
    assert raw.kind == "parquet" and raw.line_of(0) is None
    assert raw.table.column("a").to_pylist() == ["10", "20", "", "10"]
    assert raw.table.column("label").to_pylist() == ["1", "0", "1", ""]
    assert raw.table.column("tags").to_pylist() == [["p", "q"], [], [], ["q"]]
    raw = validate_table(raw, s)  # the row with a null label is dropped (no line: Parquet has none)
    assert raw.num_rows == 3 and raw.skipped == [(None, "column 'label': label is missing")]
    enc = Encoders.fit(raw, s)
    out = enc.transform(raw)
    np.testing.assert_array_equal(out["label"], [1, 0, 1])
    np.testing.assert_allclose(out["num"][:, 0], [1.5, -9, -2.0])
    a = out["cat"][:, 0].tolist()
    assert a[0] >= 2 and a[1] >= 2 and a[0] != a[1] and a[2] == 0  # null cell -> 0
    tags = enc.vocab(s.features[2])
    assert out["tags"].tolist()[1] == [0, 0, 0] and out["tags"][0, 2] == 0 and out["tags"][0, 0] > 1
    assert tags.size == 4
    ids = out["ids"].tolist()
    vocab = enc.state["ids"]["vocab"]["values"]
    assert ids[0] == [2 + vocab.index("2"), 2 + vocab.index("3")]  # the last two, most recent last
    assert ids[1] == [0, 2 + vocab.index("4")]
    assert ids[2] == [0, 0]


def test_parquet_bad_label_names_row(tmp_path):
    p = write_parquet(tmp_path, pa.table({"label": [1, 0, 3], "a": ["u", "v", "w"], "x": [1.0, 2.0, 3.0]}))
    err = expect_error(p, line=None, column="label")
    assert "row 3" in str(err)


def test_parquet_not_readable(tmp_path):
    p = tmp_path / "junk.parquet"
    p.write_bytes(b"this is not parquet")
    with pytest.raises(DataError, match="Parquet") as ei:
        load(p)
    assert ei.value.path == str(p)


def test_parquet_through_prepare(tmp_path):
    t = pa.table({"label": [1, 0, 1, 0], "a": ["u", "v", "u", "w"], "x": [1.0, 2.0, 3.0, 4.0]})
    tr = write_parquet(tmp_path, t, "train.parquet")
    va = write_parquet(tmp_path, t.slice(0, 2), "valid.pq")
    data = prepare(DataSource(name="pq", schema=SCHEMA, files={"train": str(tr), "valid": str(va)}),
                   use_cache=False)
    assert len(data.splits["train"]) == 4 and len(data.splits["valid"]) == 2
    np.testing.assert_array_equal(data.splits["valid"].columns["cat"][:, 0].numpy(),
                                  data.splits["train"].columns["cat"][:2, 0].numpy())


# ------------------------------------------------------------------------------------------------ known bugs
EXTRA = Schema.from_dict({"labels": ["label"], "features": [{"name": "a", "type": "categorical"}]})
EXTRA_SKIP = Schema.from_dict({"labels": ["label"], "features": [{"name": "a", "type": "categorical"}],
                               "on_error": "skip"})


def test_bug_line_number_with_unused_column_and_blank_line(tmp_path):
    p = write(tmp_path, ["label,a,unused", "1,u,z", "", "2,v,z"])
    expect_error(p, EXTRA, line=4, column="label")


def test_bug_skip_with_unused_column(tmp_path):
    p = write(tmp_path, ["label,a,unused", "1,u,z", "2,v,z", "0,w,z", "5,v,z", "1,x,z"])
    raw = load(p, EXTRA_SKIP)
    assert raw.table.column("a").to_pylist() == ["u", "w", "x"]
    assert [ln for ln, _ in raw.skipped] == [3, 5]


def test_bug_skip_ragged_with_unused_column(tmp_path):
    p = write(tmp_path, ["label,a,unused", "1,u,z", "0,v", "2,w,z", "1,x,z"])
    raw = load(p, EXTRA_SKIP)
    assert raw.table.column("a").to_pylist() == ["u", "x"]
    assert sorted(ln for ln, _ in raw.skipped) == [3, 4]


def test_bug_first_bad_label_hidden_by_non_numeric_label(tmp_path):
    p = write(tmp_path, GOOD + ["2,w,3", "yes,w,3"])
    expect_error(p, line=4, column="label")


def test_bug_out_of_range_label_survives_skip(tmp_path):
    p = write(tmp_path, GOOD + ["2,w,3", "yes,w,3"])
    raw = load(p, SKIP)
    assert sorted(ln for ln, _ in raw.skipped) == [4, 5]
    out = Encoders.fit(raw, SKIP).transform(raw)
    assert set(out["label"].tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("column, row", [("x", "1,u,1_000"), ("x", "1,u,\u0661\u0662"), ("label", "1_0,u,1")])
def test_bug_python_only_number_spellings(tmp_path, column, row):
    p = write(tmp_path, GOOD + [row])
    with pytest.raises(DataError) as ei:  # today: validation passes, then fit/transform raise IndexError
        raw = load(p)
        Encoders.fit(raw, SCHEMA).transform(raw)
    assert (ei.value.line, ei.value.column) == (4, column)


def test_bug_utf8_bom_header(tmp_path):
    p = tmp_path / "bom.csv"
    p.write_bytes("\ufefflabel,a,x\n1,u,1\n0,v,2\n".encode("utf-8"))
    assert load(p).num_rows == 2


def test_bug_parquet_list_column_with_non_pipe_separator(tmp_path):
    p = write_parquet(tmp_path, pa.table({"label": [1, 0], "seq": [["a", "b", "c"], ["b"]]}))
    s = Schema.from_dict({"labels": ["label"], "features": [
        {"name": "seq", "type": "sequence", "separator": "^", "max_len": 3}]})
    raw = validate_table(read_table(p, s.required_columns()), s)
    enc = Encoders.fit(raw, s)
    assert sorted(enc.state["seq"]["vocab"]["values"]) == ["a", "b", "c"]
    assert (enc.transform(raw)["seq"][0] > 1).sum() == 3


def _boundary_file(tmp_path, eol: bytes) -> tuple:
    """A file whose first 1 MiB read chunk ends inside an empty line, followed by a bad row.

    Returns (path, physical line of the bad row)."""
    head, row = b"label,a,x" + eol, b"0,u,1" + eol
    # the blank line's first byte is the last byte of the first 1 MiB chunk
    target = (1 << 20) - 1
    k = (target - len(head)) // len(row) - 1
    rem = target - len(head) - k * len(row)
    pad = b"0," + b"u" * (rem - 4 - len(eol)) + b",1" + eol
    assert len(head) + k * len(row) + len(pad) == target
    p = tmp_path / "big.csv"
    p.write_bytes(head + row * k + pad + eol + b"2,v,1" + eol)
    return p, 1 + k + 1 + 1 + 1


def test_blank_line_at_read_chunk_boundary_lf(tmp_path):
    p, line = _boundary_file(tmp_path, b"\n")
    expect_error(p, line=line, column="label")


def test_bug_blank_crlf_line_at_read_chunk_boundary(tmp_path):
    p, line = _boundary_file(tmp_path, b"\r\n")
    expect_error(p, line=line, column="label")
