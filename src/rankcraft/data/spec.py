"""Which data a run uses, as a validated config section (``data:`` in a run or search config)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field

from rankcraft.data.catalog import get_source, schema_source
from rankcraft.data.dataset import DataSource, PreparedData, prepare
from rankcraft.data.encoders import Encoders
from rankcraft.data.out_of_core import (
    DEFAULT_BUFFER_SHARDS,
    DEFAULT_FIT_ROWS,
    DEFAULT_ROWS_PER_SHARD,
    prepare_out_of_core,
)
from rankcraft.data.partitions import PartitionSpec, PreparedStream, prepare_stream
from rankcraft.data.schema import Schema
from rankcraft.errors import ConfigError


class OutOfCoreSpec(BaseModel):
    """Read the training file in record batches into a sharded, memory-mapped cache (docs/out-of-core.md)."""

    model_config = ConfigDict(extra="forbid")

    fit_rows: int = Field(default=DEFAULT_FIT_ROWS, ge=1)  # the encoders are fitted on the first rows only
    rows_per_shard: int = Field(default=DEFAULT_ROWS_PER_SHARD, ge=1)
    buffer_shards: int = Field(default=DEFAULT_BUFFER_SHARDS, ge=1)  # shards shuffled together in memory


class DataSpec(BaseModel):
    """Which data to train on: a built-in ``recipe`` (with ``data_dir``) or a ``schema`` (YAML path or mapping)
    with ``train`` / ``valid`` / ``test`` files."""

    model_config = ConfigDict(extra="forbid")

    recipe: str | None = None
    data_dir: str | None = None
    schema_file: str | None = None
    schema_inline: dict | None = Field(default=None, alias="schema")
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    rows: int | None = Field(default=None, ge=10)  # synthetic recipe only
    seed: int = 0
    valid_fraction: float = Field(default=0.1, gt=0, lt=1)
    options: dict = Field(default_factory=dict)  # recipe-specific options, e.g. {max_len: 100} for ml-100k-seq
    #: time partitions for stream training (see rankcraft.data.partitions); absent: ordinary splits
    partitions: PartitionSpec | None = None
    #: read the training file out of core (bounded memory; file-based data only); absent: in memory
    out_of_core: OutOfCoreSpec | None = None
    #: train on a fixed random subsample of this many training rows (drawn with ``seed``; the encoders are still
    #: fitted on the whole training split, so vocabularies do not change with the subsample): the partial-data
    #: low fidelity of searches and tabular benchmarks. Absent: every training row.
    train_rows: int | None = Field(default=None, ge=1)
    #: select on a slice of the training data instead of the given validation split: this fraction of the
    #: training rows (a permutation seeded by ``seed``) becomes the validation split and the dataset's own
    #: validation and test splits are dropped, so that tuning, searching and early stopping never see the split a
    #: result is reported on. The encoders are still fitted on the whole training split. Absent: the given splits.
    valid_from_train: float | None = Field(default=None, gt=0, lt=1)

    def with_absolute_paths(self) -> "DataSpec":
        """The same spec with every file/directory path absolute (a run directory's ``config.json`` stores
        these, so ``--resume``, ``evaluate`` and ``predict`` work from any working directory)."""
        upd: dict = {k: str(Path(v).expanduser().resolve())
                     for k in ("data_dir", "schema_file", "train", "valid", "test") if (v := getattr(self, k)) is not None}
        if self.partitions is not None and self.partitions.files:
            upd["partitions"] = self.partitions.model_copy(
                update={"files": [str(Path(f).expanduser().resolve()) for f in self.partitions.files]})
        return self.model_copy(update=upd)

    def source(self) -> DataSource:
        if self.recipe:
            opts = dict(self.options)
            if self.recipe == "synthetic":
                opts.update(rows=self.rows or opts.get("rows", 50_000), seed=opts.get("seed", self.seed))
            try:
                return get_source(self.recipe, self.data_dir, **opts)
            except TypeError as exc:
                raise ConfigError(f"data.options: {exc}") from None
        if self.schema_file or self.schema_inline is not None:
            schema = (Schema.from_yaml(self.schema_file) if self.schema_file
                      else Schema.from_dict(self.schema_inline, origin="data.schema"))
            if self.partitions is not None and self.partitions.files:
                name = Path(self.partitions.files[0]).parent.name or "stream"
                return DataSource(name=name, schema=schema, time_column=self.partitions.column)
            if not self.train:
                raise ConfigError("data: a schema needs a 'train' file")
            return schema_source(schema, self.train, self.valid, self.test, valid_fraction=self.valid_fraction,
                                 seed=self.seed)
        raise ConfigError("data: give a 'recipe' (e.g. frappe_x1) or a 'schema' with 'train' (and 'valid') files")


def prepare_spec(spec: DataSpec | dict, cache_dir: str | Path | None = None) -> PreparedData:
    """Prepare (or load from the cache) the data a spec names."""
    if not isinstance(spec, DataSpec):
        spec = DataSpec.model_validate(spec)
    if spec.partitions is not None:
        raise ConfigError("data.partitions: time partitions are for stream training (rankcraft train); this "
                          "command needs ordinary train/valid splits — remove 'partitions'")
    if spec.out_of_core is not None:
        o = spec.out_of_core
        for key in ("train_rows", "valid_from_train"):
            if getattr(spec, key) is not None:
                raise ConfigError(f"data.{key}: this is for in-memory data; remove 'out_of_core' or '{key}'")
        return prepare_out_of_core(spec.source(), cache_dir, fit_rows=o.fit_rows, rows_per_shard=o.rows_per_shard,
                                   buffer_shards=o.buffer_shards)
    data = prepare(spec.source(), cache_dir=cache_dir)
    if spec.valid_from_train is not None:
        data = valid_from_train(data, spec.valid_from_train, spec.seed)
    return data if spec.train_rows is None else subsample_train(data, spec.train_rows, spec.seed)


def valid_from_train(data: PreparedData, fraction: float, seed: int) -> PreparedData:
    """``data`` with ``round(fraction · n)`` of its ``n`` training rows (a permutation seeded by ``seed``, kept in
    their original order) as the validation split, the rest as the training split, and no other split."""
    train = data.splits["train"]
    n_valid = int(round(len(train) * fraction))
    if n_valid < 1 or n_valid >= len(train):
        raise ConfigError(f"data.valid_from_train {fraction} leaves no validation or no training rows out of the "
                          f"{len(train):,} training rows of '{data.name}'")
    g = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(len(train), generator=g)
    return dataclasses.replace(data, splits={"train": train.subset(torch.sort(perm[n_valid:]).values),
                                             "valid": train.subset(torch.sort(perm[:n_valid]).values)})


def subsample_train(data: PreparedData, rows: int, seed: int) -> PreparedData:
    """``data`` with its training split replaced by ``rows`` rows drawn without replacement (a permutation seeded
    by ``seed``; kept in their original order). More rows than the split holds is an error naming both."""
    train = data.splits["train"]
    if rows > len(train):
        raise ConfigError(f"data.train_rows {rows:,} is more than the {len(train):,} training rows of "
                          f"'{data.name}'")
    g = torch.Generator().manual_seed(int(seed))
    index = torch.sort(torch.randperm(len(train), generator=g)[:rows]).values
    return dataclasses.replace(data, splits={**data.splits, "train": train.subset(index)})


def prepare_stream_spec(spec: DataSpec | dict, cache_dir: str | Path | None = None, *,
                        encoders: Encoders | None = None) -> PreparedStream:
    """Prepare (or load from the cache) the time partitions a spec names (``spec.partitions`` must be set)."""
    if not isinstance(spec, DataSpec):
        spec = DataSpec.model_validate(spec)
    if spec.partitions is None:
        raise ConfigError("data: stream training needs 'partitions' (e.g. {unit: day, fit_on: 7})")
    if spec.out_of_core is not None:
        raise ConfigError("data: 'out_of_core' and 'partitions' do not combine yet; partitions are read one at a "
                          "time already (each is cached on its own)")
    for key in ("train_rows", "valid_from_train"):
        if getattr(spec, key) is not None:
            raise ConfigError(f"data.{key}: not for streams (each partition is evaluated after training on the "
                              f"earlier ones); remove '{key}' or 'partitions'")
    return prepare_stream(spec.source(), spec.partitions, cache_dir=cache_dir, encoders=encoders)
