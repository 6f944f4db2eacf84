"""Raw file readers (CSV/TSV and Parquet through pyarrow) with precise error locations.

Every column the schema needs is read as *strings* (Parquet columns are cast to strings), so parsing and validation
happen in one vectorised place (:mod:`rankcraft.data.encoders`). The fast path is pyarrow's multi-threaded CSV
reader; only when something is wrong does a slow Python scan run to find the physical line of the fault, so errors
say ``file, line N, column 'c'``.

Line numbers are 1-based physical lines with the header as line 1. Empty lines are ignored (as pyarrow does).
Quoted values spanning several lines are not supported (``newlines_in_values`` is off) so that rows map to lines.

Compressed text files are read transparently: gzip and zstd are recognised by their magic bytes (so ``data.csv.gz``,
``data.tsv.zst`` and even a gzip file named ``data.csv`` all work), and line numbers refer to the *decompressed*
text. A compression suffix is ignored when deciding the format (``x.tsv.gz`` is tab-separated, ``x.parquet`` is
Parquet; Parquet compresses internally and is never wrapped). Every reader first checks that the path is a readable
regular file, so a missing file or a directory is a one-line :class:`DataError`.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from rankcraft.errors import DataError

PARQUET_SUFFIXES = {".parquet", ".pq"}
COMPRESSION_SUFFIXES = {".gz": "gzip", ".gzip": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"))
# delimiters the missing-columns error suggests when a header parses to a single column containing one of them
_DELIMITER_NAMES = (("\t", "tab", "\\t"), (";", "semicolon", ";"), ("|", "pipe", "|"), (",", "comma", ","))


# ------------------------------------------------------------------------------------------------ file access
def check_data_file(path: str | os.PathLike) -> str:
    """``path`` as a string if it names a readable regular file; otherwise a one-line :class:`DataError`
    (``file not found``, ``is a directory, not a data file``, ``permission denied``)."""
    path = str(path)
    if os.path.isdir(path):
        raise DataError("is a directory, not a data file", path=path)
    if not os.path.exists(path):
        raise DataError("file not found", path=path)
    if not os.access(path, os.R_OK):
        raise DataError("cannot read the file: permission denied", path=path)
    return path


def compression_of(path: str | os.PathLike) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``None``, from the file's first bytes. A name ending in ``.gz``/``.zst``/``.zstd``
    whose content is not compressed that way is an error (it would otherwise be parsed as garbage)."""
    path = check_data_file(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    found = next((codec for magic, codec in _MAGIC if head.startswith(magic)), None)
    named = COMPRESSION_SUFFIXES.get(Path(path).suffix.lower())
    if named is not None and found != named and head:
        raise DataError(f"the name ends in '{Path(path).suffix}' but the content is not {named}-compressed",
                        path=path)
    return found


def data_suffix(path: str | os.PathLike) -> str:
    """The format suffix of a file name, ignoring a compression suffix: ``x.tsv.gz`` → ``.tsv``."""
    p = Path(path)
    if p.suffix.lower() in COMPRESSION_SUFFIXES:
        p = p.with_suffix("")
    return p.suffix.lower()


def open_binary(path: str | os.PathLike):
    """A binary file object over the (decompressed) content of ``path``; use as a context manager."""
    codec = compression_of(path)
    if codec is None:
        return open(path, "rb")
    return pa.input_stream(str(path), compression=codec)


def open_text(path: str | os.PathLike, encoding: str = "utf-8") -> io.TextIOWrapper:
    """A text stream over the (decompressed) content of ``path`` for :mod:`csv` (``newline=""``, undecodable
    bytes replaced)."""
    return io.TextIOWrapper(open_binary(path), encoding=encoding, errors="replace", newline="")


def first_line(path: str | os.PathLike) -> str:
    """The first line of a (possibly compressed) text file, without its line ending (``""`` for an empty file)."""
    with open_text(path, "utf-8-sig") as fh:
        return fh.readline().rstrip("\r\n")


def sniff_delimiter(path: str | os.PathLike, default: str = ",") -> str:
    """The delimiter of a delimited text file guessed from its first line: tab, then semicolon, then pipe, if the
    line contains one and no comma; else ``default`` (``.tsv`` files: tab)."""
    if data_suffix(path) == ".tsv":
        return "\t"
    line = first_line(path)
    if "," in line:
        return ","
    for d, _, _ in _DELIMITER_NAMES:
        if d in line:
            return d
    return default


def _delimiter_hint(names: list[str], delimiter: str) -> str:
    """A hint for a header that parsed to a single column containing another common delimiter."""
    if len(names) != 1:
        return ""
    for d, word, shown in _DELIMITER_NAMES:
        if d != delimiter and d in names[0]:
            return f"; the header looks {word}-separated: set `delimiter: \"{shown}\"` in the schema"
    return ""


@dataclass
class RawTable:
    """A table of string columns plus enough provenance to turn a row index into a file line."""

    table: pa.Table
    path: str
    header_lines: int = 1
    kind: str = "csv"  # csv | parquet | memory
    delimiter: str = ","
    skipped: list[tuple[int | None, str]] = field(default_factory=list)  # (line, reason) of dropped rows
    file_columns: int = 0  # fields per record in the file (may exceed the columns kept)
    _lines: list[int] | None = field(default=None, repr=False)

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def line_of(self, row: int) -> int | None:
        """Physical line of data row ``row`` (None for Parquet / in-memory tables, which have no lines)."""
        if self.kind != "csv":
            return None
        if self._lines is None:
            if not self.skipped and not _has_blank_lines(self.path):
                return row + 1 + self.header_lines
            n_cols = self.file_columns or len(self.table.schema)
            self._lines = _data_lines(self.path, self.delimiter, self.header_lines, n_cols)
        return self._lines[row]

    def error(self, row: int, column: str | None, message: str) -> DataError:
        line = self.line_of(row)
        if line is None:
            message = f"row {row + 1}: {message}"
        return DataError(message, path=self.path, line=line, column=column)

    def filter_rows(self, keep: pa.Array | list[bool], reasons: list[tuple[int, str]]) -> "RawTable":
        """Drop rows (for ``on_error: skip``); ``reasons`` are (row, reason) for the dropped rows."""
        for row, why in reasons:
            self.skipped.append((self.line_of(row), why))
        lines = None
        if self.kind == "csv":
            all_lines = [self.line_of(i) for i in range(self.num_rows)]
            mask = keep.to_pylist() if isinstance(keep, pa.Array) else list(keep)
            lines = [ln for ln, k in zip(all_lines, mask) if k]
        out = RawTable(self.table.filter(keep), self.path, self.header_lines, self.kind, self.delimiter,
                       list(self.skipped), self.file_columns)
        out._lines = lines
        return out


def _has_blank_lines(path: str) -> bool:
    with open_binary(path) as fh:
        prev = b"\n"
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            data = prev[-2:] + chunk
            if b"\n\n" in data or b"\n\r\n" in data:
                return True
            prev = chunk
    return False


def _data_lines(path: str, delimiter: str, header_lines: int, n_cols: int) -> list[int]:
    """Physical line numbers of the rows pyarrow keeps (non-empty, right number of fields)."""
    lines = []
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        for _ in range(header_lines):
            next(reader, None)
        for rec in reader:
            if not rec:
                continue
            if len(rec) == n_cols:
                lines.append(reader.line_num)
    return lines


def _read_header(path: str, delimiter: str) -> list[str]:
    with open_text(path, "utf-8-sig") as fh:
        rec = next(csv.reader(fh, delimiter=delimiter), None)
    if not rec:
        raise DataError("file is empty (no header line)", path=path, line=1)
    return [c.strip() for c in rec]


def _find_ragged(path: str, delimiter: str, header_lines: int, n_cols: int) -> list[tuple[int, int]]:
    """(line, n_fields) of every non-empty record whose field count differs from ``n_cols``."""
    bad = []
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        for _ in range(header_lines):
            next(reader, None)
        for rec in reader:
            if rec and len(rec) != n_cols:
                bad.append((reader.line_num, len(rec)))
    return bad


def check_unique_names(names: list[str], path: str) -> None:
    """A header naming a column twice is a DataError (line 1)."""
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise DataError(f"duplicate column names in header: {dup}", path=path, line=1)


def csv_string_options(names: list[str], columns: list[str], delimiter: str, header_lines: int, on_invalid,
                       *, block_size: int) -> dict:
    """pyarrow CSV options that read ``columns`` (of a file whose fields are ``names``) as non-null strings;
    ragged rows go to ``on_invalid``. Keyword arguments for ``pacsv.read_csv`` / ``pacsv.open_csv``."""
    return {"read_options": pacsv.ReadOptions(column_names=names, skip_rows=header_lines, block_size=block_size),
            "parse_options": pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid),
            "convert_options": pacsv.ConvertOptions(column_types={c: pa.string() for c in names},
                                                    include_columns=columns, strings_can_be_null=False,
                                                    quoted_strings_can_be_null=False)}


def read_csv(path: str | os.PathLike, columns: list[str], *, delimiter: str = ",",
             column_names: list[str] | None = None, on_error: str = "raise") -> RawTable:
    """Read ``columns`` of a delimited text file as strings.

    Args:
        path: the file.
        columns: columns to keep (all must exist).
        delimiter: field separator (``","`` CSV, ``"\\t"`` TSV).
        column_names: names for a file without a header line; ``None`` means the first line is the header.
        on_error: ``"raise"``: a ragged row is a :class:`DataError` naming its line; ``"skip"``: such rows are
            dropped and listed in :attr:`RawTable.skipped`.

    The file may be gzip- or zstd-compressed (see the module docstring). When the header parses to a single column
    that contains a tab, semicolon, pipe or comma, the missing-columns error says which delimiter to set.
    """
    path = check_data_file(path)
    codec = compression_of(path)
    if column_names is None:
        names = _read_header(path, delimiter)
        header_lines = 1
    else:
        names = list(column_names)
        header_lines = 0
    missing = [c for c in columns if c not in names]
    if missing:
        hint = _delimiter_hint(names, delimiter) if header_lines else ""
        raise DataError(f"missing column(s) {missing}; the file has columns {names}{hint}", path=path,
                        line=1 if header_lines else None, column=missing[0])
    check_unique_names(names, path)
    ragged: list[str] = []

    def on_invalid(row) -> str:
        ragged.append(row.text)
        return "skip"

    opts = csv_string_options(names, columns, delimiter, header_lines, on_invalid, block_size=1 << 24)
    source = pa.input_stream(path, compression=codec) if codec else path
    try:
        table = pacsv.read_csv(source, **opts)
    except pa.ArrowInvalid as exc:  # e.g. invalid UTF-8, unterminated quote
        raise DataError(f"cannot parse file: {exc}", path=path) from None
    except OSError as exc:  # e.g. a truncated or corrupt compressed stream
        raise DataError(f"cannot read file: {exc}", path=path) from None
    raw = RawTable(table, path, header_lines, "csv", delimiter, file_columns=len(names))
    if ragged:
        bad = _find_ragged(path, delimiter, header_lines, len(names))
        if on_error == "raise":
            line, n = bad[0] if bad else (None, -1)
            raise DataError(f"ragged row: expected {len(names)} fields, found {n}", path=path, line=line)
        raw.skipped.extend((line, f"ragged row ({n} fields, expected {len(names)})") for line, n in bad)
    return raw


def read_parquet(path: str | os.PathLike, columns: list[str]) -> RawTable:
    """Read ``columns`` of a Parquet file, each cast to strings (list columns to lists of strings)."""
    path = _check_parquet(path)
    try:
        names = pq.read_schema(path).names
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has columns {names}", path=path, column=missing[0])
    table = pq.read_table(path, columns=columns)
    return RawTable(table_to_strings(table), path, 0, "parquet")


def table_to_strings(table: pa.Table) -> pa.Table:
    """Cast every column to string; nulls become empty strings (our 'missing' marker). List columns (Parquet
    multi-valued / sequence features) become ``list<string>`` and need no separator."""
    import pyarrow.compute as pc

    cols = []
    for col in table.columns:
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            col = pc.cast(col, pa.list_(pa.string()))
            cols.append(pc.fill_null(col, pa.scalar([], pa.list_(pa.string()))))
            continue
        elif not pa.types.is_string(col.type):
            col = pc.cast(col, pa.string())
        cols.append(pc.fill_null(col, ""))
    return pa.table(cols, names=table.column_names)


def _check_parquet(path: str | os.PathLike) -> str:
    path = check_data_file(path)
    if Path(path).suffix.lower() in COMPRESSION_SUFFIXES:
        raise DataError("a compressed Parquet file is not supported (Parquet compresses internally); "
                        "decompress it", path=path)
    return path


def read_table(path: str | os.PathLike, columns: list[str], *, delimiter: str = ",",
               column_names: list[str] | None = None, on_error: str = "raise") -> RawTable:
    """Read a CSV/TSV (by default) or Parquet (``.parquet``/``.pq``) file, optionally gzip/zstd-compressed
    (text formats only). ``.tsv`` files default to a tab delimiter."""
    check_data_file(path)
    suffix = data_suffix(path)
    if suffix in PARQUET_SUFFIXES:
        return read_parquet(path, columns)
    if suffix == ".tsv" and delimiter == ",":
        delimiter = "\t"
    return read_csv(path, columns, delimiter=delimiter, column_names=column_names, on_error=on_error)


def available_columns(path: str | os.PathLike, *, delimiter: str = ",",
                      column_names: list[str] | None = None) -> list[str]:
    """Column names of a file without reading its rows."""
    path = check_data_file(path)
    if data_suffix(path) in PARQUET_SUFFIXES:
        path = _check_parquet(path)
        try:
            return pq.read_schema(path).names
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
    if column_names is not None:
        return list(column_names)
    if data_suffix(path) == ".tsv" and delimiter == ",":
        delimiter = "\t"
    return _read_header(path, delimiter)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's raw (as stored, possibly compressed) bytes (part of the processed-cache key)."""
    import hashlib

    path = check_data_file(path)
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()
