"""Out-of-core training data: an encoded per-shard cache, read through memory maps and shuffled in a bounded buffer.

A training file too large for memory is read in record batches (Parquet: ``pyarrow.parquet.ParquetFile
.iter_batches``; CSV/TSV: the streaming ``pyarrow.csv.open_csv`` reader), each batch is validated and encoded with
encoders fitted on a prefix of the file (:func:`fit_encoders_on_prefix`), and the encoded rows are written as
*shards*: ``rows_per_shard`` consecutive rows per shard, one ``.npy`` per column (:func:`build_sharded`). A
:class:`ShardedData` then serves batches to the trainer with the interface of
:class:`~rankcraft.data.dataset.ColumnData` (``len``, ``num_rows``, ``num_batches``, ``batches``).

Shapes. Every shard holds the columns of the in-memory split, with ``n`` its row count (see
:mod:`rankcraft.data.features`): ``"cat"`` int64 ``[n, n_cat]``, ``"num"`` float32 ``[n, n_num]``, ``"label"`` and
``"label/<name>"`` float32 ``[n]``, ``<multi/sequence>`` int64 ``[n, max_len]``, ``<sequence>__ts`` float64
``[n, max_len]``, ``"group"`` int64 ``[n]``. A batch is the same dict with ``n = B`` (the last batch may be shorter).

Cache layout (``out_dir``)::

    manifest.json          format, cache key, shard row counts, column dtypes and trailing shapes, label sums
    00000/<column>.npy     shard 0, one file per column (names percent-encoded: "label%2Fclick.npy")
    00001/...

The directory is written under a temporary name beside ``out_dir`` and renamed into place when complete, so an
interrupted build leaves no half cache (a leftover ``.<name>.tmp-*`` folder is never read). A complete cache whose
key (digests of the input files, the fitted encoders, ``rows_per_shard`` and the rows held out) matches is reused.

The shuffle. Let the shards ``0..S-1`` hold ``r_0..r_{S-1}`` rows, ``N = Σ r_s``, ``K = buffer_shards`` and ``B`` the
batch size. For an epoch ``e`` with seed ``s``:

* ``π = perm(S)`` drawn from the stream ``(s, e, 0)`` is the epoch's shard order;
* the shards are taken ``K`` at a time in that order: window ``W_j = (π[jK], ..., π[min(jK+K, S)-1])`` holds
  ``n_j = Σ_{t∈W_j} r_t`` rows, its shards' rows concatenated in window order (local rows ``0..n_j-1``);
* ``σ_j = perm(n_j)`` drawn from the stream ``(s, e, j + 1)`` orders the rows of window ``j``;
* the epoch's row sequence is ``σ_0(W_0) ‖ σ_1(W_1) ‖ …``: with ``E_j = n_0 + … + n_j``, position ``p`` with
  ``E_{j-1} ≤ p < E_j`` holds local row ``σ_j[p - E_{j-1}]`` of window ``j``;
* batch ``b`` is positions ``bB .. min((b+1)B, N) - 1`` (so there are ``ceil(N / B)`` batches, as in ColumnData);
  with ``shard=(rank, world)`` a process keeps positions ``bB + rank, bB + rank + world, …`` of it.

Each stream is a numpy ``SeedSequence(entropy=[s mod 2^32, e], spawn_key=(k,))``, so the order is a pure function of
``(seed, epoch)`` (given the cache and ``K``); batch ``b`` is found without replaying earlier windows (the window of
position ``bB`` is a binary search in ``E``), which is how ``start=b`` resumes an epoch. A batch that straddles two
windows takes its first rows from the tail of one and the rest from the head of the next; the first window is
released before the next is loaded. Without ``shuffle`` the shards are read in order, one at a time, in contiguous
batches (evaluation order). Rows of one shard always share a window, so the shuffle mixes rows across ``K`` shards,
not across the whole file: a file sorted by time or label mixes better with a larger ``K``.

Memory bound while training (``row_bytes`` = the bytes of one encoded row, :attr:`ShardedData.row_bytes`)::

    buffer  ≈ K · rows_per_shard · row_bytes          one window copied into memory (its shards are memory-mapped,
                                                      copied once, then unmapped)
            + K · rows_per_shard · 8                  the window's permutation σ_j (int64)
            + 2 · B · row_bytes                       the batch being assembled and the one the trainer holds

(:meth:`ShardedData.buffer_bytes`). During :func:`build_sharded` memory is bounded by one record batch of raw
strings (``batch_rows`` rows, or one 16 MiB block for CSV) plus about two shards of encoded rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from rankcraft.data.dataset import (
    CACHE_VERSION,
    ColumnData,
    DataSource,
    PreparedData,
    default_cache_dir,
    label_class_warnings,
)
from rankcraft.data.encoders import Encoders, validate_table, vocabulary_warnings
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.data.readers import (
    PARQUET_SUFFIXES,
    RawTable,
    available_columns,
    check_data_file,
    check_unique_names,
    compression_of,
    csv_string_options,
    data_suffix,
    file_digest,
    open_text,
    read_table,
    table_to_strings,
)
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError

#: format of the shard cache (manifest.json) and of the prepare_out_of_core cache (meta.json)
OOC_FORMAT = "1"
DEFAULT_ROWS_PER_SHARD = 262_144
DEFAULT_BUFFER_SHARDS = 8
DEFAULT_BATCH_ROWS = 65_536
DEFAULT_FIT_ROWS = 1_000_000
CSV_BLOCK_BYTES = 1 << 24
_SKIPS_KEPT = 5  # skipped rows described one by one in the summary; the rest are counted


# ============================================================================================== ShardedData
class ShardedData:
    """A training split stored as encoded shards (see the module docstring for the layout, shuffle and memory).

    ``buffer_shards`` (``K``) is how many shards are held in memory at once while shuffling; it is part of the
    shuffle (a resumed run must use the same value). :attr:`peak_buffered_shards` records the most shards held at
    once since this object was made.
    """

    def __init__(self, directory: str | Path, *, buffer_shards: int = DEFAULT_BUFFER_SHARDS):
        if buffer_shards < 1:
            raise ValueError("buffer_shards must be >= 1")
        self.directory = Path(directory)
        self.buffer_shards = int(buffer_shards)
        self.manifest = _read_manifest(self.directory)
        self.shard_rows = np.asarray(self.manifest["shards"], dtype=np.int64)
        self.num_rows = int(self.shard_rows.sum())
        self.column_info: dict[str, tuple[np.dtype, tuple[int, ...]]] = {
            k: (np.dtype(v["dtype"]), tuple(v["shape"])) for k, v in self.manifest["columns"].items()}
        self._held = 0
        self.peak_buffered_shards = 0

    def __len__(self) -> int:
        return self.num_rows

    def __repr__(self) -> str:
        return (f"ShardedData({str(self.directory)!r}, rows={self.num_rows:,}, shards={self.num_shards}, "
                f"buffer_shards={self.buffer_shards})")

    @property
    def num_shards(self) -> int:
        return len(self.shard_rows)

    @property
    def skipped(self) -> list[str]:
        return list(self.manifest.get("skipped", []))

    @property
    def row_bytes(self) -> int:
        """Bytes of one encoded row over all columns."""
        return int(sum(dt.itemsize * int(np.prod(shape, dtype=np.int64)) for dt, shape in self.column_info.values()))

    def buffer_bytes(self, batch_size: int) -> int:
        """The memory bound of a shuffled epoch (module docstring): the largest window, its permutation and two
        batches."""
        k = self.buffer_shards
        biggest = int(np.sort(self.shard_rows)[::-1][:k].sum()) if self.num_shards else 0
        return biggest * (self.row_bytes + 8) + 2 * batch_size * self.row_bytes

    def label_mean(self, key: str = "label") -> float | None:
        """Mean of a label column over all rows (kept in the manifest; ``None`` without rows)."""
        total, count = self.manifest["label_sums"][key]
        return total / count if count else None

    def num_batches(self, batch_size: int) -> int:
        return (self.num_rows + batch_size - 1) // batch_size

    # ------------------------------------------------------------------ the shuffle
    @staticmethod
    def _stream(seed: int, epoch: int, k: int) -> np.random.Generator:
        ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)], spawn_key=(int(k),))
        return np.random.Generator(np.random.PCG64(ss))

    def shard_order(self, seed: int, epoch: int) -> np.ndarray:
        """``π``: the epoch's shard order."""
        return self._stream(seed, epoch, 0).permutation(self.num_shards)

    def windows(self, *, shuffle: bool, seed: int = 0, epoch: int = 0) -> list[np.ndarray]:
        """The shards of each window, in reading order (one shard per window without shuffle)."""
        if not shuffle:
            return [np.array([s]) for s in range(self.num_shards)]
        order = self.shard_order(seed, epoch)
        k = self.buffer_shards
        return [order[i:i + k] for i in range(0, self.num_shards, k)]

    def _window_perm(self, seed: int, epoch: int, j: int, n: int) -> torch.Tensor:
        """``σ_j``: the row order inside window ``j``."""
        return torch.from_numpy(self._stream(seed, epoch, j + 1).permutation(n))

    # ------------------------------------------------------------------ reading
    def _column_file(self, shard: int, key: str) -> Path:
        return self.directory / f"{shard:05d}" / f"{quote(key, safe='')}.npy"

    def open_shard(self, shard: int) -> dict[str, np.ndarray]:
        """The columns of one shard as read-only memory maps."""
        return {k: np.load(self._column_file(shard, k), mmap_mode="r") for k in self.column_info}

    def _hold(self, n: int) -> None:
        self._held += n
        self.peak_buffered_shards = max(self.peak_buffered_shards, self._held)

    def _load_window(self, shards: np.ndarray) -> dict[str, torch.Tensor]:
        """Copy the rows of ``shards`` (concatenated in order) into memory, one shard's memory map at a time."""
        n = int(self.shard_rows[shards].sum())
        out = {}
        for k, (dt, shape) in self.column_info.items():
            buf = np.empty((n, *shape), dtype=dt)
            at = 0
            for s in shards:
                m = np.load(self._column_file(int(s), k), mmap_mode="r")
                buf[at:at + len(m)] = m
                at += len(m)
                del m  # unmapped now: its pages leave this process's resident set
            out[k] = torch.from_numpy(buf)
        return out

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                start: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches ``start, start+1, ...`` of the epoch, as :meth:`ColumnData.batches` does.

        ``shuffle``: the windowed shuffle of the module docstring, a pure function of ``(seed, epoch)``; otherwise
        the rows in shard order. ``shard=(rank, world)`` keeps rows ``rank, rank + world, ...`` of each global
        batch."""
        rank, world = shard
        if not (world >= 1 and 0 <= rank < world):
            raise ValueError(f"shard=(rank, world) needs 0 <= rank < world, got {shard}")
        windows = self.windows(shuffle=shuffle, seed=seed, epoch=epoch)
        sizes = np.array([int(self.shard_rows[w].sum()) for w in windows], dtype=np.int64)
        ends = np.cumsum(sizes)
        current: int | None = None
        cols: dict = {}
        perm: torch.Tensor | None = None
        held = 0
        try:
            for b in range(start, self.num_batches(batch_size)):
                g0 = b * batch_size
                g1 = min(g0 + batch_size, self.num_rows)
                parts = []
                pos = g0
                while pos < g1:
                    j = int(np.searchsorted(ends, pos, side="right"))
                    if j != current:  # release the window, then load the next one
                        cols, perm = {}, None
                        self._held -= held
                        held = len(windows[j])
                        self._hold(held)
                        current = j
                        if shuffle:
                            cols = self._load_window(windows[j])
                            perm = self._window_perm(seed, epoch, j, int(sizes[j]))
                        else:
                            cols = self.open_shard(int(windows[j][0]))
                    w0 = int(ends[j] - sizes[j])
                    hi = min(g1, int(ends[j]))
                    first = pos + (rank - (pos - g0)) % world  # the first position >= pos that this rank keeps
                    lo_l, hi_l = first - w0, hi - w0
                    if shuffle:
                        index = perm[lo_l:hi_l:world] if lo_l < hi_l else perm[:0]
                        parts.append({k: v.index_select(0, index) for k, v in cols.items()})
                    else:
                        lo_l = min(lo_l, hi_l)
                        parts.append({k: torch.from_numpy(np.array(v[lo_l:hi_l:world])) for k, v in cols.items()})
                    pos = hi
                yield parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
        finally:
            cols, perm = {}, None
            self._held -= held

    def to_column_data(self) -> ColumnData:
        """All rows in shard order as an in-memory :class:`ColumnData` (small caches and tests only)."""
        return ColumnData.from_numpy({k: np.concatenate([np.asarray(self.open_shard(s)[k])
                                                          for s in range(self.num_shards)])
                                      for k in self.column_info})


def _read_manifest(directory: Path) -> dict:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except FileNotFoundError:
        raise DataError("not a shard cache (no manifest.json)", path=str(directory)) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"unreadable shard cache manifest: {exc}", path=str(directory)) from None
    if manifest.get("format") != OOC_FORMAT:
        raise DataError(f"shard cache format {manifest.get('format')!r} is not {OOC_FORMAT!r}; rebuild it",
                        path=str(directory))
    return manifest


def _complete(directory: Path, key: str) -> bool:
    """A finished cache with this key and every shard file present with its recorded length."""
    try:
        manifest = _read_manifest(directory)
    except DataError:
        return False
    if manifest.get("key") != key:
        return False
    for s, n in enumerate(manifest["shards"]):
        for k, info in manifest["columns"].items():
            p = directory / f"{s:05d}" / f"{quote(k, safe='')}.npy"
            try:
                m = np.load(p, mmap_mode="r")
            except (OSError, ValueError):
                return False
            if m.shape != (n, *info["shape"]) or str(m.dtype) != info["dtype"]:
                return False
    return True


# ============================================================================================== reading
@dataclass
class _Chunk(RawTable):
    """One record batch of a file as a :class:`RawTable` whose errors name the row (or CSV line) in the *file*.

    ``first_row`` is the file row index of the chunk's first row; ``rows`` (when rows were taken out) the file row
    index of each row. ``lines`` finds CSV line numbers by scanning the file (only when an error is reported)."""

    first_row: int = 0
    rows: np.ndarray | None = field(default=None, repr=False)
    lines: _LineIndex | None = field(default=None, repr=False)

    def file_row(self, row: int) -> int:
        return self.first_row + row if self.rows is None else int(self.rows[row])

    def line_of(self, row: int) -> int | None:
        if self.kind != "csv" or self.lines is None:
            return None
        if self._lines is None:
            lo, hi = self.file_row(0), self.file_row(self.num_rows - 1)
            span = self.lines.lines(lo, hi - lo + 1)
            self._lines = span if self.rows is None else [span[int(r) - lo] for r in self.rows]
        return self._lines[row]

    def error(self, row: int, column: str | None, message: str) -> DataError:
        line = self.line_of(row)
        if line is None:
            message = f"row {self.file_row(row) + 1}: {message}"
        return DataError(message, path=self.path, line=line, column=column)

    def filter_rows(self, keep, reasons):
        if self.kind != "csv":
            reasons = [(r, f"row {self.file_row(r) + 1}: {why}") for r, why in reasons]
        return super().filter_rows(keep, reasons)

    def take_rows(self, mask: np.ndarray) -> _Chunk:
        """The rows where ``mask`` is true, still naming their file rows in errors."""
        idx = np.flatnonzero(mask)
        rows = (self.first_row + idx) if self.rows is None else self.rows[idx]
        return _Chunk(self.table.take(pa.array(idx)), self.path, self.header_lines, self.kind, self.delimiter,
                      file_columns=self.file_columns, first_row=self.first_row, rows=rows, lines=self.lines)


class _LineIndex:
    """Physical line numbers of a CSV file's data rows (the rows pyarrow keeps: non-empty, with the header's number
    of fields), found by a forward scan that restarts only when asked for an earlier row."""

    def __init__(self, path: str, delimiter: str, header_lines: int, n_cols: int):
        self.path, self.delimiter, self.header_lines, self.n_cols = path, delimiter, header_lines, n_cols
        self._fh = None
        self._reader = None
        self._next = 0  # data row index of the next record the reader yields

    def _restart(self) -> None:
        self.close()
        self._fh = open_text(self.path)
        self._reader = csv.reader(self._fh, delimiter=self.delimiter)
        for _ in range(self.header_lines):
            next(self._reader, None)
        self._next = 0

    def lines(self, first: int, count: int) -> list[int]:
        if self._reader is None or first < self._next:
            self._restart()
        out: list[int] = []
        for rec in self._reader:
            if not rec or len(rec) != self.n_cols:
                continue
            row = self._next
            self._next += 1
            if row >= first:
                out.append(self._reader.line_num)
                if len(out) == count:
                    break
        return out

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = self._reader = None


def _ragged_lines(path: str, delimiter: str, header_lines: int, n_cols: int, limit: int, *,
                  count_all: bool = True) -> tuple[list[tuple[int, int]], int]:
    """(line, fields) of the first ``limit`` non-empty records whose field count differs from ``n_cols``, and how
    many there are in all (``count_all=False``: stop after the first ``limit``)."""
    found, count = [], 0
    with open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        for _ in range(header_lines):
            next(reader, None)
        for rec in reader:
            if rec and len(rec) != n_cols:
                count += 1
                if len(found) < limit:
                    found.append((reader.line_num, len(rec)))
                if not count_all and len(found) >= limit:
                    break
    return found, count


def _ragged_error(path: str, delimiter: str, header_lines: int, n_cols: int) -> DataError:
    found, _ = _ragged_lines(path, delimiter, header_lines, n_cols, 1, count_all=False)
    line, n = found[0] if found else (None, -1)
    return DataError(f"ragged row: expected {n_cols} fields, found {n}", path=path, line=line)


@dataclass
class _Skips:
    """Rows dropped by ``on_error: skip`` in one file: a count and the first few reasons (bounded memory)."""

    path: str
    count: int = 0
    first: list[tuple[int | None, str]] = field(default_factory=list)

    def add(self, entries: Sequence[tuple[int | None, str]], count: int | None = None) -> None:
        self.count += len(entries) if count is None else count
        self.first.extend(entries[:max(0, _SKIPS_KEPT - len(self.first))])

    def describe(self) -> str:
        if not self.count:
            return ""
        shown = "; ".join(f"line {ln}: {why}" if ln else why for ln, why in sorted(
            self.first, key=lambda e: (e[0] is None, e[0] or 0)))
        more = f" (+{self.count - len(self.first)} more)" if self.count > len(self.first) else ""
        return f"{self.path}: skipped {self.count} bad row(s): {shown}{more}"


def _is_parquet(path: str) -> bool:
    return data_suffix(path) in PARQUET_SUFFIXES


def _read_chunks(path: str, schema: Schema, *, batch_rows: int = DEFAULT_BATCH_ROWS,
                 skips: _Skips | None = None) -> Iterator[_Chunk]:
    """Stream the columns ``schema`` needs from one file as string record batches (:class:`_Chunk`, rows in file
    order). Ragged CSV rows are an error naming their line (``on_error: raise``) or are dropped and counted in
    ``skips``."""
    path = check_data_file(path)
    columns = schema.required_columns()
    names = available_columns(path, delimiter=schema.delimiter, column_names=schema.column_names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"missing column(s) {missing}; the file has columns {names}", path=path, column=missing[0])
    if _is_parquet(path):
        try:
            # pre_buffer=False: with pre-buffering the reader keeps every row group's bytes it has read until it is
            # closed, so memory would grow with the file (measured: +0.7 GB over a 0.7 GB file)
            pf = pq.ParquetFile(path, pre_buffer=False)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"not a readable Parquet file: {exc}", path=path) from None
        first = 0
        for rb in pf.iter_batches(batch_size=batch_rows, columns=columns):
            table = table_to_strings(pa.Table.from_batches([rb]))
            yield _Chunk(table, path, 0, "parquet", first_row=first)
            first += rb.num_rows
        return
    delimiter = "\t" if data_suffix(path) == ".tsv" and schema.delimiter == "," else schema.delimiter
    header_lines = 0 if schema.column_names is not None else 1
    check_unique_names(names, path)
    ragged: list[int] = []

    def on_invalid(row) -> str:
        ragged.append(row.actual_columns)
        return "skip"

    codec = compression_of(path)
    source = pa.input_stream(path, compression=codec) if codec else path
    opts = csv_string_options(names, columns, delimiter, header_lines, on_invalid, block_size=CSV_BLOCK_BYTES)
    lines = _LineIndex(path, delimiter, header_lines, len(names))
    first = 0
    n_ragged = 0
    try:
        try:
            reader = pacsv.open_csv(source, **opts)
            batches = iter(reader)
            while True:
                try:
                    rb = next(batches)
                except StopIteration:
                    break
                if ragged and schema.on_error == "raise":
                    raise _ragged_error(path, delimiter, header_lines, len(names))
                n_ragged += len(ragged)
                ragged.clear()
                yield _Chunk(pa.Table.from_batches([rb]), path, header_lines, "csv", delimiter,
                             file_columns=len(names), first_row=first, lines=lines)
                first += rb.num_rows
        except pa.ArrowInvalid as exc:  # e.g. invalid UTF-8, an unterminated quote
            raise DataError(f"cannot parse file: {exc}", path=path) from None
        except OSError as exc:  # e.g. a truncated or corrupt compressed stream
            raise DataError(f"cannot read file: {exc}", path=path) from None
        if ragged and schema.on_error == "raise":
            raise _ragged_error(path, delimiter, header_lines, len(names))
        n_ragged += len(ragged)
        if n_ragged and skips is not None:
            found, count = _ragged_lines(path, delimiter, header_lines, len(names), _SKIPS_KEPT)
            skips.add([(ln, f"ragged row ({n} fields, expected {len(names)})") for ln, n in found], count)
    finally:
        lines.close()


def _as_paths(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        return [str(path_or_paths)]
    paths = [str(p) for p in path_or_paths]
    if not paths:
        raise DataError("no input files given")
    return paths


def _read_prefix(paths: list[str], schema: Schema, rows: int,
                 batch_rows: int = DEFAULT_BATCH_ROWS) -> list[_Chunk]:
    """The first ``rows`` rows of ``paths`` (read in order, before validation) as chunks."""
    out: list[_Chunk] = []
    left = rows
    for path in paths:
        if left <= 0:
            break
        for chunk in _read_chunks(path, schema, batch_rows=min(batch_rows, max(left, 1))):
            if chunk.num_rows > left:
                mask = np.zeros(chunk.num_rows, dtype=bool)
                mask[:left] = True
                chunk = chunk.take_rows(mask)
            out.append(chunk)
            left -= chunk.num_rows
            if left <= 0:
                break
    return out


def _concat(chunks: list[RawTable], schema: Schema) -> RawTable:
    path = chunks[0].path if chunks else "<empty>"
    if not chunks:
        table = pa.table({c: pa.array([], pa.string()) for c in schema.required_columns()})
    else:
        table = pa.concat_tables([c.table for c in chunks])
    return RawTable(table, path, 0, "memory")


def fit_encoders_on_prefix(paths: str | os.PathLike | Sequence[str | os.PathLike], schema: Schema, *,
                           rows: int = DEFAULT_FIT_ROWS, batch_rows: int = DEFAULT_BATCH_ROWS) -> Encoders:
    """Fit the encoders on the first ``rows`` rows of ``paths`` (in order), never reading the whole file.

    The documented choice: vocabularies, ``standardize`` means/stds and ``bucketize`` boundaries come from that
    prefix only. Later rows with values the prefix did not contain map to the OOV id (1) — or to their hash bucket
    for ``hash_buckets`` features — exactly as unseen values in a validation file do. For a file ordered by time
    the prefix is its oldest rows; a larger ``rows`` costs memory (about ``rows`` times the raw row size as Arrow
    strings) and covers more of the vocabulary. Bad rows in the prefix raise (or are skipped) as
    :func:`~rankcraft.data.encoders.validate_table` says.
    """
    chunks = _read_prefix(_as_paths(paths), schema, rows, batch_rows)
    checked = [validate_table(c, schema) for c in chunks]
    raw = _concat(checked, schema)
    if raw.num_rows == 0:
        raise DataError("no valid rows to fit the encoders on", path=raw.path)
    return Encoders.fit(raw, schema)


# ============================================================================================== writing
def _stable_ids(values: pa.Array) -> np.ndarray:
    """int64 ids of string values that do not depend on the chunk they are in: 63 bits of a BLAKE2b hash."""
    enc = pc.dictionary_encode(values)
    uniq = enc.dictionary.to_pylist()
    codes = np.fromiter((int.from_bytes(hashlib.blake2b(str(u).encode(), digest_size=8).digest(), "little") >> 1
                         for u in uniq), dtype=np.int64, count=len(uniq))
    return codes[enc.indices.to_numpy(zero_copy_only=False)]


class _ShardWriter:
    """Accumulates encoded row blocks and writes ``rows_per_shard``-row shards (the last may be shorter)."""

    def __init__(self, directory: Path, rows_per_shard: int):
        self.directory = directory
        self.rows_per_shard = rows_per_shard
        self.pending: list[dict[str, np.ndarray]] = []
        self.pending_rows = 0
        self.shards: list[int] = []
        self.columns: dict[str, dict] | None = None
        self.label_sums: dict[str, list[float]] = {}

    def add(self, arrays: dict[str, np.ndarray]) -> None:
        n = len(next(iter(arrays.values())))
        if n == 0:
            return
        info = {k: {"dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in arrays.items()}
        if self.columns is None:
            self.columns = info
            self.label_sums = {k: [0.0, 0] for k in arrays if k == "label" or k.startswith("label/")}
        elif info != self.columns:
            raise DataError(f"encoded columns changed between record batches: {self.columns} then {info}")
        for k, acc in self.label_sums.items():
            acc[0] += float(np.sum(arrays[k], dtype=np.float64))
            acc[1] += n
        self.pending.append(arrays)
        self.pending_rows += n
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def _flush(self, n: int) -> None:
        taken, parts, rest = 0, [], []
        for block in self.pending:
            m = len(next(iter(block.values())))
            if taken >= n:
                rest.append(block)
            elif taken + m <= n:
                parts.append(block)
                taken += m
            else:
                cut = n - taken
                parts.append({k: v[:cut] for k, v in block.items()})
                rest.append({k: v[cut:] for k, v in block.items()})
                taken = n
        shard = self.directory / f"{len(self.shards):05d}"
        shard.mkdir()
        for k in self.columns:
            np.save(shard / f"{quote(k, safe='')}.npy", np.concatenate([p[k] for p in parts]))
        self.shards.append(n)
        self.pending, self.pending_rows = rest, self.pending_rows - n

    def finish(self) -> None:
        if self.pending_rows:
            self._flush(self.pending_rows)


def sharded_cache_key(paths: Sequence[str], encoders: Encoders, rows_per_shard: int,
                      exclude_rows: np.ndarray | None = None) -> str:
    """The key of a shard cache: the input files' SHA-256 digests, the fitted encoders (their JSON), the shard
    size and the rows held out."""
    h = hashlib.sha256()
    h.update(f"ooc{OOC_FORMAT}|{CACHE_VERSION}|rows_per_shard={rows_per_shard}|".encode())
    h.update(hashlib.sha256(encoders.to_json().encode()).digest())
    for p in paths:
        h.update(f"|{file_digest(p)}".encode())
    if exclude_rows is not None:
        h.update(b"|exclude=" + hashlib.sha256(np.ascontiguousarray(exclude_rows, dtype=np.int64).tobytes()).digest())
    return h.hexdigest()[:24]


def build_sharded(path_or_paths: str | os.PathLike | Sequence[str | os.PathLike], schema: Schema,
                  encoders: Encoders, out_dir: str | Path, *, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                  batch_rows: int = DEFAULT_BATCH_ROWS, buffer_shards: int = DEFAULT_BUFFER_SHARDS,
                  exclude_rows: np.ndarray | None = None, cache_key: str | None = None, progress: bool = True,
                  on_rows: Callable[[int], None] | None = None) -> ShardedData:
    """Encode ``path_or_paths`` (Parquet or CSV/TSV, several files are concatenated in order) into a shard cache in
    ``out_dir`` and open it; a complete cache with the same key is opened without reading the inputs.

    Args:
        schema, encoders: the schema and encoders fitted for it (e.g. :func:`fit_encoders_on_prefix`).
        out_dir: the cache directory (created; replaced when its key differs).
        rows_per_shard: rows per shard (memory while training: ``buffer_shards × rows_per_shard`` rows).
        batch_rows: rows per Parquet record batch read (CSV is read in 16 MiB blocks).
        buffer_shards: passed to the returned :class:`ShardedData`.
        exclude_rows: sorted row indices (0-based, counting the rows of all files in reading order, before
            validation) to leave out, e.g. rows held out for validation.
        cache_key: a precomputed key (default: :func:`sharded_cache_key`, which reads every input file once).
        progress: a progress bar on a terminal; ``on_rows(n)`` is called with the rows read so far.

    Every record batch is validated (:func:`~rankcraft.data.encoders.validate_table`): a bad cell is a
    :class:`DataError` naming the file and, for CSV, the line (Parquet: the row number), or with ``on_error: skip``
    the row is dropped and counted (:attr:`ShardedData.skipped`). The ``group`` column (schema ``user_column``)
    holds a 63-bit hash of the user value, so that equal users have equal ids across record batches.
    """
    paths = _as_paths(path_or_paths)
    out_dir = Path(out_dir)
    if rows_per_shard < 1 or batch_rows < 1:
        raise ValueError("rows_per_shard and batch_rows must be >= 1")
    excl = None if exclude_rows is None else np.unique(np.asarray(exclude_rows, dtype=np.int64))
    key = cache_key or sharded_cache_key(paths, encoders, rows_per_shard, excl)
    if _complete(out_dir, key):
        return ShardedData(out_dir, buffer_shards=buffer_shards)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    show = progress and sys.stderr.isatty()
    try:
        writer = _ShardWriter(tmp, rows_per_shard)
        skipped: list[str] = []
        seen = 0  # rows read so far over all files, before validation (the index space of exclude_rows)
        with tqdm(desc="encoding shards", unit="row", unit_scale=True, disable=not show, leave=False) as bar:
            for path in paths:
                skips = _Skips(path)
                for chunk in _read_chunks(path, schema, batch_rows=batch_rows, skips=skips):
                    n = chunk.num_rows
                    if excl is not None and len(excl):
                        lo, hi = np.searchsorted(excl, [seen, seen + n])
                        if hi > lo:
                            keep = np.ones(n, dtype=bool)
                            keep[excl[lo:hi] - seen] = False
                            chunk = chunk.take_rows(keep)
                    seen += n
                    checked = validate_table(chunk, schema)
                    if checked.skipped:
                        skips.add(checked.skipped)
                    arrays = encoders.transform(checked)
                    if schema.user_column and checked.num_rows:
                        arrays["group"] = _stable_ids(checked.table.column(schema.user_column).combine_chunks())
                    writer.add(arrays)
                    bar.update(n)
                    if on_rows is not None:
                        on_rows(seen)
                if skips.count:
                    skipped.append(skips.describe())
        writer.finish()
        if not writer.shards:
            raise DataError("the training split has no rows", path=paths[0])
        manifest = {"format": OOC_FORMAT, "key": key, "num_rows": int(sum(writer.shards)), "shards": writer.shards,
                    "rows_per_shard": rows_per_shard, "columns": writer.columns, "label_sums": writer.label_sums,
                    "skipped": skipped, "sources": paths}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        if out_dir.exists():
            shutil.rmtree(out_dir)  # a stale or damaged cache for other inputs
        try:
            os.replace(tmp, out_dir)
        except OSError:  # another process finished the same cache first: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
            if not _complete(out_dir, key):
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ShardedData(out_dir, buffer_shards=buffer_shards)


# ============================================================================================== prepare
def _encode_in_memory(path: str, schema: Schema, enc: Encoders) -> tuple[ColumnData, str]:
    raw = read_table(path, schema.required_columns(), delimiter=schema.delimiter,
                     column_names=schema.column_names, on_error=schema.on_error)
    checked = validate_table(raw, schema)
    skips = _Skips(path)
    skips.add(checked.skipped)
    return ColumnData.from_numpy(enc.transform(checked)), skips.describe()


def _train_label_check(train: ShardedData, schema: Schema, path: str) -> None:
    for spec in schema.labels:
        if spec.kind != "binary":
            continue
        rate = train.label_mean(label_key(spec.name))
        if rate in (0.0, 1.0):
            raise DataError(f"label '{spec.name}' has one class only (all {int(rate)}) in the train split: there is "
                            f"nothing to learn; check the label column '{spec.raw_column}' (or its threshold/map)",
                            path=path)


def prepare_out_of_core(source: DataSource, cache_dir: str | Path | None = None, *,
                        fit_rows: int = DEFAULT_FIT_ROWS, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                        buffer_shards: int = DEFAULT_BUFFER_SHARDS, batch_rows: int = DEFAULT_BATCH_ROWS,
                        progress: bool = True, on_rows: Callable[[int], None] | None = None) -> PreparedData:
    """Prepare a file-based :class:`DataSource` whose training file may not fit in memory.

    Returns a :class:`PreparedData` whose ``splits["train"]`` is a :class:`ShardedData` and whose other splits
    (``valid``, ``test``) are in-memory :class:`ColumnData`: they are assumed small enough to read whole. Encoders
    are fitted on the first ``fit_rows`` training rows (:func:`fit_encoders_on_prefix`). Without a ``valid`` file,
    the validation split is a seeded random ``valid_fraction`` of those first ``fit_rows`` rows (not of the whole
    file), held out of fitting and of the shards.

    Everything is cached under ``cache_dir`` (default: the processed-data cache) in ``<name>-ooc-<key>``, keyed on
    the source's fingerprint (file digests, schema, seed, valid_fraction), ``fit_rows`` and ``rows_per_shard``, and
    written in a temporary folder renamed into place when complete. Sources built by a loader recipe (no files)
    are a :class:`DataError`: they are assembled in memory and can use :func:`~rankcraft.data.dataset.prepare`.
    ``progress`` and ``on_rows`` report the encoding of the training file as :func:`build_sharded` does.
    """
    if source.loader is not None or not source.files:
        raise DataError(f"dataset '{source.name}' is assembled in memory by a loader recipe; out-of-core "
                        "preparation reads files only (use the in-memory prepare for it)")
    if "train" not in source.files:
        raise DataError(f"dataset '{source.name}' has no training file")
    schema = source.schema
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    h = hashlib.sha256(f"ooc{OOC_FORMAT}|{source.fingerprint()}|fit_rows={fit_rows}|"
                       f"rows_per_shard={rows_per_shard}".encode())
    key = h.hexdigest()[:20]
    path = cache_root / f"{source.name}-ooc-{key}"
    if path.exists():
        try:
            return _load_prepared(path, source.name, buffer_shards)
        except (OSError, ValueError, KeyError, DataError):  # damaged: rebuild below
            shutil.rmtree(path, ignore_errors=True)
    cache_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=cache_root))
    try:
        train_path = str(source.files["train"])
        prefix = _read_prefix([train_path], schema, fit_rows, batch_rows)
        exclude = None
        valid: ColumnData | None = None
        skipped: list[str] = []
        if "valid" not in source.files:
            n = sum(c.num_rows for c in prefix)
            n_valid = max(1, round(n * source.valid_fraction)) if n > 1 else 0
            exclude = np.sort(np.random.default_rng(source.seed).permutation(n)[:n_valid])
            held = np.zeros(n, dtype=bool)
            held[exclude] = True
            fit_chunks, valid_chunks, at = [], [], 0
            for c in prefix:
                m = held[at:at + c.num_rows]
                at += c.num_rows
                fit_chunks.append(c.take_rows(~m))
                valid_chunks.append(c.take_rows(m))
            prefix = fit_chunks
            skips = _Skips(train_path)
            checked = []
            for c in valid_chunks:
                v = validate_table(c, schema)
                skips.add(v.skipped)
                checked.append(v)
            if skips.count:
                skipped.append(skips.describe() + " (validation rows held out of the training file)")
        enc = Encoders.fit(_concat([validate_table(c, schema) for c in prefix], schema), schema)
        if exclude is not None:
            valid = ColumnData.from_numpy(enc.transform(_concat(checked, schema)))
        del prefix
        train = build_sharded(train_path, schema, enc, tmp / "train", rows_per_shard=rows_per_shard,
                              batch_rows=batch_rows, buffer_shards=buffer_shards, exclude_rows=exclude,
                              cache_key=key, progress=progress, on_rows=on_rows)
        skipped = train.skipped + skipped
        _train_label_check(train, schema, train_path)
        splits: dict = {"train": train}
        for split, p in source.files.items():
            if split == "train":
                continue
            splits[split], msg = _encode_in_memory(str(p), schema, enc)
            if msg:
                skipped.append(msg)
        if valid is not None:
            splits["valid"] = valid
        in_memory = {s: d for s, d in splits.items() if s != "train"}
        warnings = label_class_warnings(in_memory, schema, train_path)
        if schema.vocabulary_check != "off" and "valid" in splits:
            vocab = vocabulary_warnings(enc, {k: v.numpy() for k, v in splits["valid"].columns.items()})
            if vocab and schema.vocabulary_check == "error":
                raise DataError("; ".join(vocab) + " (schema vocabulary_check: error; set it to warn or off to "
                                "continue)", path=train_path)
            warnings += vocab
        features = enc.feature_set()
        (tmp / "encoders.json").write_text(enc.to_json())
        (tmp / "features.json").write_text(json.dumps(features.to_dict()))
        for split, data in in_memory.items():
            data.save(tmp / split)
        columns = {s: {k: [len(d), list(v.shape[1:])] for k, v in d.columns.items()} for s, d in in_memory.items()}
        (tmp / "meta.json").write_text(json.dumps({
            "format": OOC_FORMAT, "name": source.name, "splits": list(splits), "columns": columns,
            "skipped": skipped, "warnings": warnings, "fit_rows": fit_rows}))
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race: use theirs
            shutil.rmtree(tmp, ignore_errors=True)
            return _load_prepared(path, source.name, buffer_shards)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    splits["train"] = ShardedData(path / "train", buffer_shards=buffer_shards)
    return PreparedData(source.name, features, enc, splits, skipped, path, warnings=warnings)


def _load_prepared(path: Path, name: str, buffer_shards: int) -> PreparedData:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != OOC_FORMAT:
        raise ValueError("out-of-core cache format differs")
    enc = Encoders.from_json((path / "encoders.json").read_text())
    features = FeatureSet.from_dict(json.loads((path / "features.json").read_text()))
    splits: dict = {}
    for s in meta["splits"]:
        if s == "train":
            splits[s] = ShardedData(path / "train", buffer_shards=buffer_shards)
            continue
        splits[s] = ColumnData.load(path / s)
        got = {k: [len(splits[s]), list(v.shape[1:])] for k, v in splits[s].columns.items()}
        if got != meta["columns"][s]:
            raise ValueError(f"cache split '{s}' is incomplete")
    train = splits["train"]
    if not _complete(train.directory, train.manifest["key"]):
        raise ValueError("shard cache is incomplete")
    return PreparedData(name, features, enc, splits, meta.get("skipped", []), path, from_cache=True,
                        warnings=meta.get("warnings", []))
