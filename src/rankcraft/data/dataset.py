"""Column-wise datasets, batching by index slicing, and the processed-data cache.

:class:`ColumnData` keeps every column as one tensor with rows on axis 0. A batch is built by one
``index_select`` per column on a seeded permutation (or a contiguous slice when not shuffling) — there is no
per-row Python on the hot path.

:func:`prepare` turns a :class:`DataSource` (schema + raw splits) into a :class:`PreparedData`: encoders fitted on
the training split, every split encoded, all of it cached on disk under a key made of the raw files' content hash,
the schema's fingerprint and the encoder format version, so a second run skips preprocessing. The cache directory
is written in a temporary folder and renamed into place, so an interrupted run never leaves half a cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import torch
from tqdm.auto import tqdm

from rankcraft.data.encoders import (
    Encoders,
    describe_skips,
    validate_table,
    vocabulary_warnings,
)
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.data.readers import (
    RawTable,
    data_suffix,
    file_digest,
    open_text,
    read_table,
)
from rankcraft.data.schema import Schema
from rankcraft.errors import DataError

CACHE_VERSION = "2"  # 2: one "label/<name>" column per label


def default_cache_dir() -> Path:
    return Path(os.environ.get("RANKCRAFT_CACHE", Path.home() / ".cache" / "rankcraft"))


class ColumnData:
    """A split held as column tensors ``{key: Tensor[N, ...]}``."""

    def __init__(self, columns: dict[str, torch.Tensor]):
        sizes = {k: v.shape[0] for k, v in columns.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"columns have different row counts: {sizes}")
        self.columns = columns
        self.num_rows = next(iter(sizes.values())) if sizes else 0

    def __len__(self) -> int:
        return self.num_rows

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray]) -> "ColumnData":
        return cls({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})

    def take(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.index_select(0, index) for k, v in self.columns.items()}

    def subset(self, index: torch.Tensor | np.ndarray) -> "ColumnData":
        return ColumnData(self.take(torch.as_tensor(index, dtype=torch.long)))

    def num_batches(self, batch_size: int) -> int:
        return (self.num_rows + batch_size - 1) // batch_size

    @staticmethod
    def permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
        """The epoch's row order: a pure function of (seed, epoch), so a resumed run sees the same batches.
        (seed, epoch) pairs are mixed through numpy's SeedSequence, so distinct pairs never share a stream seed
        by arithmetic accident."""
        mixed = int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch)]).generate_state(1, np.uint64)[0])
        g = torch.Generator().manual_seed(mixed & 0x7FFFFFFFFFFFFFFF)
        return torch.randperm(n, generator=g)

    def batches(self, batch_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                start: int = 0, shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, torch.Tensor]]:
        """Yield batches ``start, start+1, ...`` of the epoch (``start`` lets a resumed run skip done steps).

        ``shard=(rank, world)``: every process walks the same global batches (same permutation) and keeps the rows
        ``rank, rank + world, ...`` of each, so ``world`` processes together see exactly the global batch of
        ``batch_size`` rows that one process would (data-parallel training with the same total batch)."""
        rank, world = shard
        if shuffle:
            perm = self.permutation(self.num_rows, seed, epoch)
            for i in range(start, self.num_batches(batch_size)):
                index = perm[i * batch_size:(i + 1) * batch_size]
                yield self.take(index[rank::world] if world > 1 else index)
        else:
            for i in range(start, self.num_batches(batch_size)):
                if world > 1:
                    yield {k: v[i * batch_size + rank:(i + 1) * batch_size:world] for k, v in self.columns.items()}
                else:
                    yield {k: v[i * batch_size:(i + 1) * batch_size] for k, v in self.columns.items()}

    # -- persistence: one .npy per column -----------------------------------------------------------
    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        for k, v in self.columns.items():  # keys may hold '/' (label/<name>): percent-encoded file names
            np.save(directory / f"{quote(k, safe='')}.npy", v.numpy())

    @classmethod
    def load(cls, directory: Path) -> "ColumnData":
        return cls.from_numpy({unquote(p.stem): np.load(p) for p in sorted(directory.glob("*.npy"))})


# ------------------------------------------------------------------------------------------------- sources
@dataclass
class DataSource:
    """Where a dataset's raw splits come from.

    Either ``files`` (split name → CSV/TSV/Parquet path) or ``loader`` (split name → :class:`RawTable`, for recipes
    that assemble tables in memory, with ``inputs`` naming the files they read so the cache key sees their content).
    ``valid_fraction`` carves a seeded random validation split out of ``train`` when no ``valid`` is given.
    """

    name: str
    schema: Schema
    files: dict[str, str] = field(default_factory=dict)
    loader: Callable[[], dict[str, RawTable]] | None = None
    inputs: list[str] = field(default_factory=list)
    valid_fraction: float = 0.1
    seed: int = 0
    version: str = "1"
    #: a raw column with each row's event time (unix seconds or ISO date/time), kept in the raw tables (not a
    #: feature) so that the rows can be bucketed into time partitions (:mod:`rankcraft.data.partitions`)
    time_column: str | None = None
    #: the time zone of the data's calendar (hours east of UTC), for bucketing ``time_column`` into days
    utc_offset_hours: float = 0.0

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(f"{CACHE_VERSION}|{self.version}|{self.name}|{self.schema.fingerprint()}|"
                 f"{self.valid_fraction}|{self.seed}".encode())
        if self.time_column is not None:
            h.update(f"|time={self.time_column}|utc{self.utc_offset_hours:+g}".encode())
        for split, path in sorted(self.files.items()):
            h.update(f"|{split}={file_digest(path)}".encode())
        for path in self.inputs:
            h.update(f"|in={file_digest(path)}".encode())
        return h.hexdigest()[:20]

    def load_raw(self) -> dict[str, RawTable]:
        if self.loader is not None:
            return self.loader()
        if "train" not in self.files:
            raise DataError(f"dataset '{self.name}' has no training file")
        cols = self.schema.required_columns()
        if self.time_column is not None and self.time_column not in cols:
            cols = cols + [self.time_column]
        return {split: read_table(path, cols, delimiter=self.schema.delimiter,
                                  column_names=self.schema.column_names, on_error=self.schema.on_error)
                for split, path in self.files.items()}


@dataclass
class PreparedData:
    """Fitted encoders and encoded splits. ``skipped`` summarises rows dropped by ``on_error: skip``;
    ``warnings`` are preparation warnings (e.g. a mostly out-of-vocabulary feature, see
    :func:`~rankcraft.data.encoders.vocabulary_warnings`), one line each, kept in the cache."""

    name: str
    features: FeatureSet
    encoders: Encoders
    splits: dict[str, ColumnData]
    skipped: list[str] = field(default_factory=list)
    cache_path: Path | None = None
    from_cache: bool = False
    warnings: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        """Rows, label rate and vocabulary sizes (for ``rankcraft datasets``)."""
        out = {"name": self.name, "splits": {}, "features": []}
        for split, data in self.splits.items():
            y = data.columns["label"]
            out["splits"][split] = {"rows": len(data), "label_rate": round(float(y.mean()), 6) if len(data) else None}
        for f in self.features.features:
            out["features"].append({"name": f.name, "kind": f.kind, "source": f.source,
                                    "vocab_size": f.vocab_size or None,
                                    "max_len": f.max_len if f.kind in ("multi_categorical", "sequence") else None})
        return out


def encode_splits(raw: dict[str, RawTable], schema: Schema, *, valid_fraction: float = 0.1,
                  seed: int = 0) -> tuple[Encoders, dict[str, ColumnData], list[str]]:
    """Validate every split, fit encoders on ``train`` only, encode all splits."""
    checked = {split: validate_table(t, schema) for split, t in raw.items()}
    skipped = [msg for t in checked.values() if (msg := describe_skips(t))]
    train = checked["train"]
    if train.num_rows == 0:
        raise DataError("the training split has no rows", path=train.path)
    if "valid" not in checked:
        n = train.num_rows
        n_valid = max(1, int(round(n * valid_fraction))) if n > 1 else 0
        perm = np.random.default_rng(seed).permutation(n)
        v_idx, t_idx = np.sort(perm[:n_valid]), np.sort(perm[n_valid:])
        import pyarrow as pa

        full = train
        train = RawTable(full.table.take(pa.array(t_idx)), full.path, full.header_lines, "memory")
        checked["valid"] = RawTable(full.table.take(pa.array(v_idx)), full.path, full.header_lines, "memory")
        checked["train"] = train
    enc = Encoders.fit(train, schema)
    splits = {split: ColumnData.from_numpy(enc.transform(t)) for split, t in checked.items()}
    return enc, splits, skipped


def label_class_warnings(splits: dict[str, ColumnData], schema: Schema, train_path: str | None) -> list[str]:
    """A binary label with one class in the training split is an error (nothing to learn, AUC undefined); in
    another split it is a warning (its AUC will be reported as null)."""
    warnings = []
    for spec in schema.labels:
        if spec.kind != "binary":
            continue
        for split, data in splits.items():
            y = data.columns[label_key(spec.name)]
            if len(y) == 0:
                continue
            rate = float(y.mean())
            if rate in (0.0, 1.0):
                what = f"label '{spec.name}' has one class only (all {int(rate)}) in the {split} split"
                if split == "train":
                    raise DataError(f"{what}: there is nothing to learn; check the label column "
                                    f"'{spec.raw_column}' (or its threshold/map)", path=train_path)
                warnings.append(f"{what}: its AUC is undefined and will be reported as null")
    return warnings


def prepare(source: DataSource, *, cache_dir: str | Path | None = None, use_cache: bool = True,
            progress: bool = True) -> PreparedData:
    """Prepare (or load from the cache) every split of ``source``; ``progress`` shows the stage (reading,
    encoding, writing the cache) on a terminal."""
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = source.fingerprint()
    path = cache_root / f"{source.name}-{key}"
    if use_cache and path.exists():
        try:
            return _load_cache(path, source.name)
        except Exception:  # any damage (missing/truncated files, bad JSON): rebuild below
            shutil.rmtree(path, ignore_errors=True)
    show = progress and sys.stderr.isatty()
    with tqdm(total=3 if use_cache else 2, desc=f"preparing {source.name}", disable=not show, leave=False,
              bar_format="{desc}: {n}/{total} {postfix}") as bar:
        bar.set_postfix_str("reading")
        raw = source.load_raw()
        bar.update(1)
        bar.set_postfix_str(f"encoding {sum(t.num_rows for t in raw.values()):,} rows")
        enc, splits, skipped = encode_splits(raw, source.schema, valid_fraction=source.valid_fraction,
                                             seed=source.seed)
        warnings = label_class_warnings(splits, source.schema, raw["train"].path)
        if source.schema.vocabulary_check != "off":
            vocab = vocabulary_warnings(enc, {k: v.numpy() for k, v in splits["valid"].columns.items()})
            if vocab and source.schema.vocabulary_check == "error":
                raise DataError("; ".join(vocab) + " (schema vocabulary_check: error; set it to warn or off to "
                                "continue)", path=raw["train"].path)
            warnings += vocab
        data = PreparedData(source.name, enc.feature_set(), enc, splits, skipped, path if use_cache else None,
                            warnings=warnings)
        bar.update(1)
        if use_cache:
            bar.set_postfix_str("writing the cache")
            _write_cache(path, data)
            bar.update(1)
    return data


def _write_cache(path: Path, data: PreparedData) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        (tmp / "encoders.json").write_text(data.encoders.to_json())
        (tmp / "features.json").write_text(json.dumps(data.features.to_dict()))
        for split, cd in data.splits.items():
            cd.save(tmp / split)
        columns = {split: {k: [len(cd), list(v.shape[1:])] for k, v in cd.columns.items()}
                   for split, cd in data.splits.items()}
        (tmp / "meta.json").write_text(json.dumps({"name": data.name, "splits": list(data.splits),
                                                   "columns": columns, "skipped": data.skipped,
                                                   "warnings": data.warnings,
                                                   "version": CACHE_VERSION}))
        if path.exists() and not (path / "meta.json").exists():
            shutil.rmtree(path, ignore_errors=True)  # a damaged leftover, not a concurrent writer's result
        try:
            os.replace(tmp, path)
        except OSError:  # another process won the race: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_cache(path: Path, name: str) -> PreparedData:
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("version") != CACHE_VERSION:
        raise ValueError("cache format version differs")
    enc = Encoders.from_json((path / "encoders.json").read_text())
    features = FeatureSet.from_dict(json.loads((path / "features.json").read_text()))
    splits = {s: ColumnData.load(path / s) for s in meta["splits"]}
    for s, cols in meta["columns"].items():  # every column present with the recorded shape
        got = {k: [len(splits[s]), list(v.shape[1:])] for k, v in splits[s].columns.items()}
        if got != cols:
            raise ValueError(f"cache split '{s}' is incomplete")
    return PreparedData(name, features, enc, splits, meta.get("skipped", []), path, from_cache=True,
                        warnings=meta.get("warnings", []))


def _first_record_width(path: str | Path, delimiter: str) -> int:
    import csv

    if data_suffix(path) in (".parquet", ".pq"):
        return -1
    if data_suffix(path) == ".tsv" and delimiter == ",":
        delimiter = "\t"
    with open_text(path, "utf-8-sig") as fh:
        rec = next(csv.reader(fh, delimiter=delimiter), [])
    return len(rec)


def encode_file(encoders: Encoders, path: str | Path, *, require_labels: bool = True) -> tuple[ColumnData, RawTable]:
    """Encode a new file with fitted encoders (evaluation / prediction). Unseen categories map to OOV.

    With ``require_labels=False`` (prediction input) labels are neither needed nor read: the label columns may be
    absent or blank, and the result has no label keys.
    """
    schema = encoders.schema
    cols = schema.required_columns()
    column_names = schema.column_names
    label_cols = schema.label_columns
    if not require_labels:
        if column_names is not None and _first_record_width(path, schema.delimiter) == \
                len(column_names) - len(label_cols):
            column_names = [c for c in column_names if c not in label_cols]  # headerless file without labels
        cols = [c for c in cols if c not in label_cols]
    raw = read_table(path, cols, delimiter=schema.delimiter, column_names=column_names,
                     on_error=schema.on_error)
    raw = validate_table(raw, schema, labels=require_labels)
    return ColumnData.from_numpy(encoders.transform(raw, labels=require_labels)), raw
