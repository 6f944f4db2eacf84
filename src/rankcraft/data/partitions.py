"""Time partitions: a dataset as a sequence of days, weeks or hours, for stream training.

Two ways to declare the partitions (``data.partitions`` in a run config, :class:`PartitionSpec`):

* **a time column** (``column``, or the recipe's ``time_column``) holding unix seconds or ISO dates/times
  (``2017-11-25``, ``2017-11-25T13:05:00``, ``2017-11-25 13:05``). Every row of every raw split is bucketed by
  ``unit``: ``hour`` → key ``2017-11-25T13``, ``day`` → ``2017-11-25``, ``week`` → the ISO week ``2017-W47``
  (Monday to Sunday). Buckets are taken in the ``utc_offset_hours`` time zone (e.g. 8 for Beijing time). Keys sort
  in time order. A missing or unparseable time is an error naming the file, line and value.
* **one file per partition** (``files``, in time order; the key is the file name without extensions). With a time
  column too, a file holding rows earlier than the previous file's last row is an error ("out of order").

Encoders are fitted on the first ``fit_on`` partitions and then **frozen**: a category first seen later maps to the
OOV id, or to its hash bucket for features declared with ``hash_buckets`` (the streaming-safe choice for ids that
keep arriving). ``first`` / ``last`` keep only partitions whose keys lie in that range (after fitting, so the
encoders do not depend on them).

Cache. Every partition's encoded columns are cached on their own, under a key made of the encoders' fingerprint and
the partition's content hash: a new day adds one directory and leaves the old ones valid. A manifest keyed by the
whole source's fingerprint lets an unchanged dataset skip reading the raw files altogether.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from rankcraft.data.dataset import ColumnData, DataSource, default_cache_dir
from rankcraft.data.encoders import Encoders, describe_skips, validate_table
from rankcraft.data.features import FeatureSet
from rankcraft.data.readers import RawTable, file_digest, read_table
from rankcraft.errors import ConfigError, DataError

STREAM_CACHE_VERSION = "1"


class PartitionSpec(BaseModel):
    """How to cut a dataset into time partitions (``data.partitions``)."""

    model_config = ConfigDict(extra="forbid")

    unit: Literal["hour", "day", "week"] = "day"
    #: the time column (unix seconds or ISO text); default: the recipe's time column
    column: str | None = None
    #: one file per partition, in time order (instead of bucketing one table by time)
    files: list[str] | None = None
    #: the encoders are fitted on this many leading partitions, then frozen
    fit_on: int = Field(default=1, ge=1)
    #: bucket boundaries in this time zone; default: the recipe's (e.g. 8 for Taobao, Beijing time), else UTC
    utc_offset_hours: float | None = Field(default=None, ge=-12, le=14)
    #: keep partitions with first <= key <= last (keys as in the partition list)
    first: str | None = None
    last: str | None = None


@dataclass
class Partition:
    """One encoded, cached partition. ``key`` is its time bucket; ``start`` the bucket's first second (UTC unix
    time, shifted by the spec's offset) or its position for file partitions."""

    key: str
    start: int
    rows: int
    path: Path

    def data(self) -> ColumnData:
        return ColumnData.load(self.path)


@dataclass
class PreparedStream:
    name: str
    features: FeatureSet
    encoders: Encoders
    partitions: list[Partition]
    fit_on: int
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    from_cache: bool = False

    def keys(self) -> list[str]:
        return [p.key for p in self.partitions]

    def concat(self, upto: int, start: int = 0) -> ColumnData:
        """Partitions ``start..upto-1`` as one in-memory split (retraining on everything so far)."""
        parts = [self.partitions[i].data() for i in range(start, upto)]
        keys = parts[0].columns.keys()
        import torch

        return ColumnData({k: torch.cat([p.columns[k] for p in parts]) for k in keys})


# ------------------------------------------------------------------------------------------------- times
_INT_RE = re.compile(r"^-?\d+(\.\d*)?$")
_ISO_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?)?Z?$")


def parse_times(raw: RawTable, column: str) -> np.ndarray:
    """``column`` of ``raw`` as int64 unix seconds; a missing or unparseable value is a DataError naming the file,
    line, column and value."""
    if column not in raw.table.column_names:
        raise DataError(f"the time column '{column}' is not in the data (columns: "
                        f"{', '.join(raw.table.column_names)})", path=raw.path)
    col = raw.table.column(column).combine_chunks()
    nulls = np.asarray(col.is_null())
    if nulls.any():
        raise raw.error(int(np.flatnonzero(nulls)[0]), column, "missing time (the partition column needs a time "
                        "in every row)")
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False)).astype(np.int64)
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        return np.asarray(col.cast(pa.timestamp("s")).to_numpy(zero_copy_only=False)).astype("datetime64[s]") \
            .astype(np.int64)
    values = [str(v).strip() for v in col.to_pylist()]
    for row, v in enumerate(values):
        if not v:
            raise raw.error(row, column, "missing time (the partition column needs a time in every row)")
    if all(_INT_RE.match(v) for v in values):
        return np.array([int(float(v)) for v in values], dtype=np.int64)
    for row, v in enumerate(values):
        if not _ISO_RE.match(v):
            raise raw.error(row, column, f"cannot parse time '{v}' (expected unix seconds or an ISO date/time such "
                            "as 2017-11-25 or 2017-11-25T13:05:00, all rows alike)")
    try:
        return np.array([v.rstrip("Z").replace(" ", "T") for v in values], dtype="datetime64[s]").astype(np.int64)
    except ValueError:
        for row, v in enumerate(values):  # a well-formed but impossible date, e.g. 2017-02-30
            try:
                np.datetime64(v.rstrip("Z").replace(" ", "T"), "s")
            except ValueError:
                raise raw.error(row, column, f"cannot parse time '{v}' (not a valid date/time)") from None
        raise


def bucket(times: np.ndarray, unit: str, utc_offset_hours: float = 0.0) -> tuple[np.ndarray, dict[int, str]]:
    """Start second of each row's bucket, and each bucket's key. Weeks are ISO weeks (Monday first)."""
    t = times + int(round(utc_offset_hours * 3600))
    if unit == "hour":
        start = t // 3600 * 3600
    elif unit == "day":
        start = t // 86400 * 86400
    else:
        days = t // 86400
        start = (days - (days + 3) % 7) * 86400  # 1970-01-01 was a Thursday: (days + 3) % 7 == 0 on Mondays
    keys = {}
    for s in np.unique(start).tolist():
        d = dt.datetime.fromtimestamp(s, dt.timezone.utc)
        if unit == "hour":
            keys[s] = d.strftime("%Y-%m-%dT%H")
        elif unit == "day":
            keys[s] = d.strftime("%Y-%m-%d")
        else:
            y, w, _ = d.isocalendar()
            keys[s] = f"{y}-W{w:02d}"
    return start, keys


# ------------------------------------------------------------------------------------------------- preparing
def _table_digest(table: pa.Table) -> str:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:20]


def _safe(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", key)


def _spec_fingerprint(spec: PartitionSpec, column: str | None) -> str:
    return hashlib.sha256(json.dumps({**spec.model_dump(mode="json"), "column": column},
                                     sort_keys=True).encode()).hexdigest()[:16]


def encoders_fingerprint(encoders: Encoders) -> str:
    return hashlib.sha256(encoders.to_json().encode()).hexdigest()[:16]


def _raw_parts(source: DataSource, spec: PartitionSpec, column: str | None) -> list[tuple[str, int, RawTable]]:
    """(key, start, validated raw table) per partition, in time order."""
    schema = source.schema
    if spec.files:
        cols = schema.required_columns() + ([column] if column and column not in schema.required_columns() else [])
        parts, prev_max, prev_name = [], None, None
        for pos, path in enumerate(spec.files):
            raw = validate_table(read_table(path, cols, delimiter=schema.delimiter, column_names=schema.column_names,
                                            on_error=schema.on_error), schema)
            if column is not None and raw.num_rows:
                t = parse_times(raw, column)
                if prev_max is not None and t.min() < prev_max:
                    row = int(np.argmin(t))
                    raise raw.error(row, column, f"partitions out of order: this file has a row earlier than the "
                                    f"last row of the previous partition file {prev_name}; list the files in time "
                                    "order")
                prev_max, prev_name = int(t.max()), path
            key = Path(path).name.split(".")[0]
            parts.append((key, pos, raw))
        keys = [k for k, _, _ in parts]
        if len(set(keys)) != len(keys):
            raise ConfigError(f"data.partitions.files: two files have the same name ({keys}); partition keys "
                              "are the file names")
        return parts
    if column is None:
        raise ConfigError(f"data.partitions: dataset '{source.name}' has no time column; name one "
                          "(partitions.column) or give one file per partition (partitions.files)")
    splits = source.load_raw()
    tables, times = [], []
    for split in sorted(splits, key=lambda s: ["train", "valid", "test"].index(s) if s in
                        ("train", "valid", "test") else 3):
        raw = validate_table(splits[split], schema)
        times.append(parse_times(raw, column))
        tables.append(raw)
    first = tables[0]
    table = pa.concat_tables([r.table for r in tables], promote_options="default")
    t = np.concatenate(times)
    offset = spec.utc_offset_hours if spec.utc_offset_hours is not None else source.utc_offset_hours
    start, keys = bucket(t, spec.unit, offset)
    order = np.lexsort((t, start))  # by bucket, then time (stable: file order within equal times)
    start_sorted = start[order]
    bounds = np.flatnonzero(np.diff(start_sorted)) + 1
    parts = []
    for idx in np.split(order, bounds):
        s = int(start[idx[0]])
        parts.append((keys[s], s, RawTable(table.take(pa.array(idx)), first.path, first.header_lines, "memory")))
    return parts


def prepare_stream(source: DataSource, spec: PartitionSpec, *, cache_dir: str | Path | None = None,
                   encoders: Encoders | None = None, use_cache: bool = True) -> PreparedStream:
    """Partition ``source``, fit the encoders on the first ``fit_on`` partitions (or use the given, frozen
    ``encoders``, e.g. those of a run warm-started from), encode and cache every partition."""
    column = spec.column or source.time_column
    if spec.files is None and column is not None and source.time_column is None and source.files:
        source = DataSource(**{**source.__dict__, "time_column": column})
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / f"{source.name}-stream"
    given = encoders_fingerprint(encoders) if encoders is not None else "fit"
    src_fp = hashlib.sha256(f"{STREAM_CACHE_VERSION}|{source.fingerprint()}|"
                            f"{_spec_fingerprint(spec, column)}|{given}|"
                            f"{'|'.join(file_digest(f) for f in spec.files or [])}".encode()).hexdigest()[:20]
    manifest = root / f"manifest-{src_fp}.json"
    if use_cache and manifest.exists():
        try:
            return _load_manifest(manifest, source.name)
        except Exception:  # a damaged or stale manifest: rebuild below
            pass
    parts = _raw_parts(source, spec, column)
    if not parts:
        raise DataError(f"dataset '{source.name}' has no rows to partition")
    skipped = [msg for _, _, r in parts if (msg := describe_skips(r))]
    if encoders is None:
        if spec.fit_on > len(parts):
            raise ConfigError(f"data.partitions.fit_on = {spec.fit_on}, but there are only {len(parts)} "
                              f"partitions ({parts[0][0]} .. {parts[-1][0]})")
        prefix = parts[:spec.fit_on]
        fit_table = pa.concat_tables([r.table for _, _, r in prefix], promote_options="default")
        encoders = Encoders.fit(RawTable(fit_table, prefix[0][2].path, 0, "memory"), source.schema)
    enc_fp = encoders_fingerprint(encoders)
    enc_dir = root / f"enc-{enc_fp}"
    enc_dir.mkdir(parents=True, exist_ok=True)
    (enc_dir / "encoders.json").write_text(encoders.to_json())
    features = encoders.feature_set()
    (enc_dir / "features.json").write_text(json.dumps(features.to_dict()))
    keys = [k for k, _, _ in parts]
    for bound in (spec.first, spec.last):
        if bound is not None and bound not in keys:
            raise ConfigError(f"data.partitions: partition '{bound}' does not exist; the partitions are "
                              f"{', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} {keys[-1]}")
    out: list[Partition] = []
    for key, start, raw in parts:
        if (spec.first is not None and key < spec.first) or (spec.last is not None and key > spec.last):
            continue
        pdir = enc_dir / f"{_safe(key)}-{_table_digest(raw.table)}"
        if not (use_cache and (pdir / "done").exists()):
            _write_partition(pdir, ColumnData.from_numpy(encoders.transform(raw)))
        out.append(Partition(key, start, raw.num_rows, pdir))
    stream = PreparedStream(source.name, features, encoders, out, spec.fit_on, skipped)
    if use_cache:
        _write_manifest(manifest, stream, enc_dir)
    return stream


def _write_partition(pdir: Path, data: ColumnData) -> None:
    pdir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{pdir.name}.", dir=pdir.parent))
    try:
        data.save(tmp)
        (tmp / "done").write_text(str(len(data)))
        shutil.rmtree(pdir, ignore_errors=True)
        os.replace(tmp, pdir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_manifest(path: Path, stream: PreparedStream, enc_dir: Path) -> None:
    doc = {"version": STREAM_CACHE_VERSION, "encoders": str(enc_dir), "fit_on": stream.fit_on,
           "skipped": stream.skipped,
           "partitions": [{"key": p.key, "start": p.start, "rows": p.rows, "path": str(p.path)}
                          for p in stream.partitions]}
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, path)


def _load_manifest(path: Path, name: str) -> PreparedStream:
    doc = json.loads(path.read_text())
    if doc["version"] != STREAM_CACHE_VERSION:
        raise ValueError("stream cache version differs")
    enc_dir = Path(doc["encoders"])
    encoders = Encoders.from_json((enc_dir / "encoders.json").read_text())
    features = FeatureSet.from_dict(json.loads((enc_dir / "features.json").read_text()))
    parts = [Partition(p["key"], p["start"], p["rows"], Path(p["path"])) for p in doc["partitions"]]
    for p in parts:
        if not (p.path / "done").exists():
            raise ValueError(f"partition {p.key} is missing from the cache")
    return PreparedStream(name, features, encoders, parts, doc["fit_on"], doc.get("skipped", []), from_cache=True)
