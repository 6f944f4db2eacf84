"""The two training loops over one :class:`~rankcraft.training.state.TrainState`.

A loop decides what to train on and when to evaluate; the :class:`~rankcraft.training.trainer.Trainer` owns the
model, the optimisers, a training pass over a split (:meth:`Trainer.train_pass`), checkpoints and metric files.
Both loops are resumable: the cursor in the state says where the next step starts, the row order of every pass is
a pure function of ``(seed, order)``, and the RNG and optimiser states travel in ``last.pt`` — so a run killed at
any step and resumed ends with the same weights as one that was never interrupted.

* :class:`EpochLoop` — epochs over one training split; after each epoch, validation, the learning-rate schedule,
  early stopping on the monitored metric and ``best.pt``. Row order of epoch ``e``: permutation ``(seed, e)``.
* :class:`StreamLoop` — one pass (or ``passes``) over each time partition in order, with **progressive
  validation**: partition ``t`` is evaluated by the model trained on partitions ``< t`` before it trains on ``t``.
  Row order of pass ``p`` over partition ``i``: permutation ``(seed, i * passes + p)``. ``metrics.jsonl`` gets one
  line per partition, appended (a resumed run first drops lines written after its checkpoint). ``best.pt`` holds
  the final weights: in a stream the latest model is the one to serve.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from rankcraft.data.dataset import ColumnData
from rankcraft.errors import CheckpointError, DataError
from rankcraft.training.objectives import higher_is_better
from rankcraft.training.state import TrainState


@dataclass
class FitResult:
    best_epoch: int  # epoch loop: the best validation epoch; stream loop: the number of partitions trained
    best_metrics: dict
    history: list[dict]
    train_rows_per_s: float
    train_seconds: float
    stopped_early: bool
    steps: int
    extra: dict = field(default_factory=dict)


#: points of an epoch's training-loss curve kept in its history entry
LOSS_CURVE_POINTS = 8


def loss_curve(losses: list[float], points: int = LOSS_CURVE_POINTS) -> list[float]:
    """The epoch's step losses as ``points`` (or fewer, with fewer steps) means over consecutive, equally sized
    runs of steps: the learning curve a low-fidelity evaluation extrapolates (a resumed epoch has only the steps
    since the resume)."""
    if not losses:
        return []
    return [float(np.mean(c)) for c in np.array_split(np.asarray(losses, dtype=float), min(points, len(losses)))]


def _rows_per_s(state: TrainState) -> float:
    return state.rows / state.seconds if state.seconds > 0 else float("nan")


# ------------------------------------------------------------------------------------------------- epochs
class EpochLoop:
    """Epoch training on ``train`` with validation on ``valid`` after every epoch."""

    def __init__(self, train: ColumnData, valid: ColumnData):
        self.train, self.valid = train, valid

    def initial_state(self) -> TrainState:
        return TrainState(cursor={"epoch": 0, "step": 0})

    def check_resumable(self, state: TrainState) -> None:
        if "epoch" not in state.cursor:
            raise CheckpointError("last.pt was written by stream training; resume it with the same partitioned "
                                  "data (data.partitions)")

    @staticmethod
    def describe(cursor: dict) -> str:
        return f"epoch {cursor['epoch'] + 1}, step {cursor['step']}"

    def run(self, trainer, state: TrainState, stop) -> FitResult:
        c = trainer.cfg
        monitor = trainer.objective.usable_monitor(trainer.monitor, self.valid.columns,
                                                   warn=None if c.quiet else tqdm.write)
        better = higher_is_better(monitor)
        stopped_early = state.bad_epochs >= c.early_stopping_patience
        hook_epoch = None
        trainer.model.train()
        while state.cursor["epoch"] < c.epochs and not stopped_early:
            epoch = state.cursor["epoch"]
            _, done_by_max = trainer.train_pass(self.train, state, order=epoch,
                                                     desc=f"epoch {epoch + 1}/{c.epochs}", stop=stop)
            # ---- end of epoch: validate, schedule, early stopping, checkpoints
            metrics = trainer.evaluate(self.valid)
            metrics.update(epoch=epoch + 1, train_loss=float(np.mean(state.losses)) if state.losses else float("nan"),
                           lr=trainer.optimizers[0].param_groups[0]["lr"], steps=state.steps,
                           train_rows_per_s=_rows_per_s(state), loss_curve=loss_curve(state.losses))
            state.history.append(metrics)
            value = metrics.get(monitor)
            if value is None:
                raise DataError(f"the monitored metric '{monitor}' is undefined on the validation split; "
                                "monitor another metric (train.monitor), e.g. a logloss")
            best = state.best
            improved = not best or (value > best[monitor] + c.min_delta if better
                                    else value < best[monitor] - c.min_delta)
            if improved:
                state.best = dict(metrics)
                state.bad_epochs = 0
                trainer.save_best(state.best, epoch=epoch + 1)
            else:
                state.bad_epochs += 1
            if trainer.scheduler is not None:
                if isinstance(trainer.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    trainer.scheduler.step(value)
                else:
                    trainer.scheduler.step()
                trainer._sync_sparse_lr()
            trainer.write_history(state.history)
            trainer.report(metrics, epoch + 1)
            if not c.quiet and trainer.rank == 0:
                shown = [monitor] + [k for k in ("logloss", "mean/logloss") if k in metrics and k != monitor][:1]
                vals = "  ".join(f"{k} {metrics[k]:.4f}" for k in shown if metrics.get(k) is not None)
                tqdm.write(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f}  val {vals}  "
                           f"{metrics['train_rows_per_s']:,.0f} rows/s" + ("  *" if improved else ""))
            stopped_early = state.bad_epochs >= c.early_stopping_patience
            if trainer.after_epoch is not None and trainer.after_epoch(epoch + 1, metrics):
                stopped_early = True
                hook_epoch = epoch + 1
            state.cursor = {"epoch": epoch + 1, "step": 0}
            state.losses = []
            trainer.save_last(state)
            stop.check()
            if done_by_max:
                break
        trainer.barrier()
        return FitResult(best_epoch=int(state.best.get("epoch", 0)), best_metrics=state.best,
                         history=state.history, train_rows_per_s=_rows_per_s(state), train_seconds=state.seconds,
                         stopped_early=stopped_early, steps=state.steps,
                         extra={"stopped_by_hook": hook_epoch} if hook_epoch else {})


# ------------------------------------------------------------------------------------------------- steps
class StepLoop(EpochLoop):
    """A fixed number of steps over one training split, epoch after epoch, without validation (supernet training in
    one-shot and DNAS search). Row order of epoch ``e``: permutation ``(seed, e)``, as in :class:`EpochLoop`, whose
    cursor, resume check and description it shares. The trainer's ``stop_when`` (a time budget) may end it sooner;
    either way the phase is then marked finished in ``last.pt`` (cursor ``done``), so a resumed search moves on
    instead of training again."""

    def __init__(self, train: ColumnData, steps: int):
        self.train, self.steps = train, steps

    def run(self, trainer, state: TrainState, stop) -> FitResult:
        trainer.model.train()
        if trainer.cfg.max_steps != self.steps:
            raise ValueError("StepLoop needs the trainer's max_steps set to its steps")
        while not state.cursor.get("done") and state.steps < self.steps:
            epoch = state.cursor["epoch"]
            _, done = trainer.train_pass(self.train, state, order=epoch, desc=f"steps (epoch {epoch + 1})",
                                         stop=stop)
            if done:
                break
            state.cursor = {"epoch": epoch + 1, "step": 0}
            state.losses = []
        state.cursor["done"] = True
        trainer.save_last(state)
        stop.check()
        return FitResult(best_epoch=0, best_metrics={}, history=[], train_rows_per_s=_rows_per_s(state),
                         train_seconds=state.seconds, stopped_early=state.steps < self.steps, steps=state.steps)


# ------------------------------------------------------------------------------------------------- streams
class StreamPartition(Protocol):
    """One time partition of a stream: a sortable ``key`` (its start time, ISO text) and its rows."""

    key: str

    def data(self) -> ColumnData: ...


class StreamLoop:
    """Progressive validation and one pass per partition, in time order.

    ``freeze_after=k``: train on the first ``k`` partitions only, then evaluate the frozen model on the rest (the
    "model frozen after the first partitions" baseline). ``evaluate_first``: evaluate partition 0 as well (useful
    when the model was warm-started from an earlier run; a fresh model's score on it is meaningless). ``start``:
    the first partition to use (partitions before it were trained by the run warm-started from)."""

    def __init__(self, partitions: Sequence[StreamPartition], *, passes: int = 1, freeze_after: int | None = None,
                 evaluate_first: bool = False, start: int = 0):
        if passes < 1:
            raise ValueError("passes must be >= 1")
        self.partitions = list(partitions)
        self.passes = passes
        self.freeze_after = freeze_after
        self.evaluate_first = evaluate_first
        self.start = start

    def initial_state(self) -> TrainState:
        return TrainState(cursor={"partition": self.start, "pass": 0, "step": 0})

    def check_resumable(self, state: TrainState) -> None:
        if "partition" not in state.cursor:
            raise CheckpointError("last.pt was written by epoch training; it cannot be resumed as a stream")
        done = [h.get("partition") for h in state.history]
        keys = [p.key for p in self.partitions]
        for i, key in enumerate(done):
            j = self.start + i
            if j >= len(keys) or keys[j] != key:
                raise CheckpointError(f"the partitions differ from the ones this run trained on (partition "
                                      f"#{j} was '{key}', now '{keys[j] if j < len(keys) else 'missing'}'); "
                                      "resume with the same data")

    def describe(self, cursor: dict) -> str:
        i = cursor["partition"]
        key = self.partitions[i].key if i < len(self.partitions) else "the end"
        return f"partition {i + 1}/{len(self.partitions)} ({key}), pass {cursor.get('pass', 0) + 1}, " \
               f"step {cursor['step']}"

    def trains_on(self, index: int) -> bool:
        return self.freeze_after is None or index < self.freeze_after

    def run(self, trainer, state: TrainState, stop) -> FitResult:
        c = trainer.cfg
        trainer.trim_history(state.history)
        trainer.model.train()
        done_by_max = False
        n = len(self.partitions)
        while state.cursor["partition"] < n and not done_by_max:
            i = state.cursor["partition"]
            part = self.partitions[i]
            data = part.data()
            if state.pending is None:  # progressive validation: before any training on this partition
                evaluate = i > self.start or self.evaluate_first
                state.pending = trainer.evaluate(data) if evaluate and len(data) else {"rows": len(data)}
                trainer.model.train()
            if self.trains_on(i):
                while state.cursor.get("pass", 0) < self.passes:
                    p = state.cursor.get("pass", 0)
                    _, done_by_max = trainer.train_pass(data, state, order=i * self.passes + p,
                                                        desc=f"{part.key} ({i + 1}/{n})", stop=stop)
                    if done_by_max and state.cursor["step"] < trainer.num_batches(data):
                        break
                    state.cursor = {"partition": i, "pass": p + 1, "step": 0}
            entry = {"partition": part.key, "index": i, **state.pending, "rows": len(data),
                     "trained": self.trains_on(i),
                     "train_loss": float(np.mean(state.losses)) if state.losses else None,
                     "lr": trainer.optimizers[0].param_groups[0]["lr"], "steps": state.steps,
                     "train_rows_per_s": _rows_per_s(state)}
            state.history.append(entry)
            state.pending = None
            state.losses = []
            state.cursor = {"partition": i + 1, "pass": 0, "step": 0}
            trainer.append_history(entry)
            trainer.report(entry, i + 1)
            if trainer.after_epoch is not None:  # for streams: after every partition (e.g. a snapshot)
                trainer.after_epoch(i + 1, entry)
            if not c.quiet and trainer.rank == 0:
                shown = [k for k in trainer.objective.metric_names() if k.rsplit("/", 1)[-1] in ("auc", "logloss")]
                vals = "  ".join(f"{k} {entry[k]:.4f}" for k in shown[:2] if entry.get(k) is not None)
                tqdm.write(f"{part.key}: {entry['rows']:,} rows  progressive {vals or '(not evaluated)'}"
                           + (f"  loss {entry['train_loss']:.4f}" if entry["train_loss"] is not None else ""))
            trainer.save_last(state)
            stop.check()
        final = progressive_summary(state.history, trainer.objective.metric_names())
        state.best = final
        trainer.save_best(final, partitions=len(state.history))
        trainer.barrier()
        return FitResult(best_epoch=len(state.history), best_metrics=final, history=state.history,
                         train_rows_per_s=_rows_per_s(state), train_seconds=state.seconds, stopped_early=False,
                         steps=state.steps)


def progressive_summary(history: list[dict], metric_names: list[str]) -> dict:
    """The stream's progressive metrics over every evaluated partition: each metric averaged over partitions,
    weighted by their rows (a logloss so averaged is the logloss over all evaluated rows; an AUC so averaged is
    the row-weighted mean of per-partition AUCs, not the AUC of the pooled predictions)."""
    out: dict = {"partitions": len(history)}
    evaluated = [h for h in history if any(h.get(m) is not None for m in metric_names)]
    out["evaluated_partitions"] = len(evaluated)
    out["rows"] = int(sum(h.get("rows", 0) for h in evaluated))
    for m in metric_names:
        pairs = [(h[m], h.get("rows", 1)) for h in evaluated if h.get(m) is not None]
        if pairs:
            w = sum(r for _, r in pairs)
            out[m] = float(sum(v * r for v, r in pairs) / w) if w else None
        else:
            out[m] = None
    if history:
        out["last_partition"] = history[-1].get("partition")
    return out
