"""The training state: where a run is (its cursor) and what it has seen so far.

One :class:`TrainState` serves every loop. The cursor says where the next step starts:

* epoch training (:class:`~rankcraft.training.loops.EpochLoop`): ``{"epoch": e, "step": s}`` — batch ``s`` of
  epoch ``e`` (both 0-based) is the next one to train;
* stream training (:class:`~rankcraft.training.loops.StreamLoop`): ``{"partition": i, "step": s}`` — batch ``s``
  of partition ``i`` (in time order) is next; ``pending`` holds partition ``i``'s progressive-validation metrics
  (measured before training on it), so a run resumed in the middle of a partition does not evaluate it again on
  weights that have already seen part of it.

The state is saved inside ``last.pt`` (checkpoint format 2) as plain numbers, strings, lists and dicts, so it loads
with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class TrainState:
    cursor: dict = field(default_factory=lambda: {"epoch": 0, "step": 0})
    steps: int = 0  # optimiser steps taken in total
    rows: int = 0  # training rows seen in total (this process's shard under data-parallel training)
    seconds: float = 0.0  # training time in total (excluding evaluation)
    best: dict = field(default_factory=dict)  # metrics of the best validation epoch so far
    bad_epochs: int = 0  # epochs since the best one (early stopping)
    history: list[dict] = field(default_factory=list)  # one entry per epoch or partition
    pending: dict | None = None  # stream: metrics of the current partition, evaluated before training on it
    losses: list[float] = field(default_factory=list)  # step losses of the current epoch / partition so far

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    @classmethod
    def from_format_1(cls, st: dict) -> "TrainState":
        """The state of a checkpoint written before format 2 (positional epoch/step fields)."""
        return cls(cursor={"epoch": int(st["epoch"]), "step": int(st["step"])}, steps=int(st["steps_total"]),
                   rows=int(st["rows"]), seconds=float(st["seconds"]), best=st["best"],
                   bad_epochs=int(st["bad_epochs"]), history=st["history"])
