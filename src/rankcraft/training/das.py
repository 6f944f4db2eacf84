"""External distillation on a stream: foundation-model snapshots and the Data Augmentation Service (ExFM).

* :func:`train_snapshots` trains a foundation model (FM) one pass per partition in time order (the shared stream
  loop, progressive validation) and keeps its weights after every partition: ``DIR/snapshot-<i>.pt`` holds the FM
  that has seen partitions ``0..i``. Finished snapshots are kept, so a killed run is not redone.
* :func:`annotate` is the DAS: for partition ``t`` and staleness ``δ`` it scores every row once with snapshot
  ``t − δ`` (the FM as it was δ partitions ago) and stores the probabilities in ``DIR/das-delta<δ>/<key>.npy``,
  keyed by the row's position in its partition (the example id). However many vertical models use a row, the FM
  scores it once. Partitions with ``t − δ < 0`` have no teacher yet (NaN); vertical models start after them.
* :class:`AnnotatedPartition` is a partition with the teacher column added as a soft label (``label/<name>``)
  and, optionally, only some rows (a vertical model's domain). The feature set is unchanged; the schema's labels
  gain the teacher (:func:`with_teacher_label`).
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rankcraft.data.dataset import ColumnData
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_bytes
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint
from rankcraft.training.evaluation import predict_heads
from rankcraft.training.loops import StreamLoop, StreamPartition
from rankcraft.training.objectives import Objective
from rankcraft.training.trainer import TrainConfig, Trainer


@dataclasses.dataclass
class MemoryPartition:
    """A partition held in memory: ``key`` and its columns."""

    key: str
    columns: ColumnData

    def data(self) -> ColumnData:
        return self.columns

    def __len__(self) -> int:
        return len(self.columns)


def _snapshot(directory: Path, i: int) -> Path:
    return directory / f"snapshot-{i:03d}.pt"


def train_snapshots(model: nn.Module, partitions: Sequence[StreamPartition], config: TrainConfig, directory: Path,
                    *, objective: Objective | None = None) -> list[Path]:
    """Train ``model`` one pass per partition and keep a snapshot after each (module docstring). When every
    snapshot exists already, nothing is trained and the model holds the last one."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [_snapshot(directory, i) for i in range(len(partitions))]
    if all(p.exists() for p in paths):
        model.load_state_dict(load_checkpoint(paths[-1])["model"])
        return paths

    def snap(i: int, entry: dict) -> bool:
        save_checkpoint(paths[i - 1], {"model": model.state_dict()})
        return False

    Trainer(model, config, objective=objective, after_epoch=snap).run(StreamLoop(partitions))
    return paths


def annotate(build: Callable[[], nn.Module], snapshots: list[Path], partitions: Sequence[StreamPartition],
             delta: int, directory: Path, *, batch_size: int = 16384) -> list[np.ndarray]:
    """The DAS (module docstring): per partition, the FM's probability of every row from snapshot ``t − δ``
    (NaN where ``t − δ < 0``), computed once and stored."""
    if delta < 1:
        raise ConfigError(f"staleness δ must be >= 1 partition (the FM cannot have seen the partition it scores), "
                          f"got {delta}")
    if len(snapshots) < len(partitions) - delta:
        raise ConfigError(f"{len(snapshots)} FM snapshots cannot annotate {len(partitions)} partitions at "
                          f"staleness {delta}")
    out_dir = directory / f"das-delta{delta}"
    out_dir.mkdir(parents=True, exist_ok=True)
    fm = build()
    loaded = None
    result = []
    for t, part in enumerate(partitions):
        path = out_dir / f"{part.key}.npy"
        if path.exists():
            result.append(np.load(path))
            continue
        data = part.data()
        if t - delta < 0:
            p = np.full(len(data), np.nan, dtype=np.float32)
        else:
            if loaded != t - delta:
                fm.load_state_dict(load_checkpoint(snapshots[t - delta])["model"])
                loaded = t - delta
            heads = predict_heads(fm, data, batch_size=batch_size)
            p = next(iter(heads.values())).astype(np.float32)
        buf = io.BytesIO()
        np.save(buf, p)
        atomic_write_bytes(path, buf.getvalue())
        result.append(p)
    return result


def with_teacher_label(features: FeatureSet, name: str = "fm") -> FeatureSet:
    """``features`` whose labels also list the soft teacher label ``name`` (the feature set itself is unchanged)."""
    if name in features.labels:
        raise ConfigError(f"the data already has a label '{name}'; name the teacher column differently")
    return dataclasses.replace(features, labels=(*features.labels, name),
                               label_kinds={**features.label_kinds, name: "soft"})


@dataclasses.dataclass
class AnnotatedPartition:
    """A partition plus the teacher's probabilities as ``label/<name>``, restricted to ``rows`` (None: all)."""

    key: str
    base: StreamPartition
    teacher: np.ndarray
    rows: np.ndarray | None = None
    name: str = "fm"

    def data(self) -> ColumnData:
        d = self.base.data()
        cols = dict(d.columns)
        cols[label_key(self.name)] = torch.from_numpy(self.teacher.astype(np.float32))  # NaN: not scored
        full = ColumnData(cols)
        return full if self.rows is None else full.subset(torch.from_numpy(self.rows))
