"""The trainer: owns the optimiser, the loop, evaluation, early stopping and checkpoints. Models only map a batch to
logits (or named heads); the objective (:mod:`rankcraft.training.objectives`) owns the loss and the metrics.

Loss per step: ``objective.loss(model(batch), batch) + R``; the objective's loss includes the model's auxiliary
loss (e.g. a mixture-of-experts load-balancing term). ``R`` is the optional regulariser (FuxiCTR-style, applied to
whole tables every step):
``R = (λ_emb / 2) Σ_{embedding tables} ||W||²  +  (λ_net / 2) Σ_{other weights} ||W||²``.

The loops (:mod:`rankcraft.training.loops`: epochs, time partitions, fixed step counts) decide what to train on
and when to evaluate; the trainer gives them one training pass (:meth:`Trainer.train_pass`), evaluation and the
run-directory files. Checkpoints: ``last.pt`` (model, optimiser(s), scheduler, the
:class:`~rankcraft.training.state.TrainState` with its cursor, RNG states) is written atomically every
``checkpoint_every`` steps and ``checkpoint_seconds`` seconds and at each epoch or partition end; ``best.pt`` holds
the weights to use (the best validation epoch, or a stream's final weights). Because every pass's row order is a
pure function of ``(seed, order)``, a run resumed from ``last.pt`` replays exactly the batches it had not finished.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from rankcraft.data.dataset import ColumnData
from rankcraft.errors import CheckpointError, ConfigError
from rankcraft.files import atomic_write_text, dumps_json_line
from rankcraft.interrupts import DeferredInterrupts
from rankcraft.models.output import as_output
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint
from rankcraft.training.distributed import process_group, wrap_data_parallel
from rankcraft.training.evaluation import autocast, evaluate, to_device
from rankcraft.training.loops import EpochLoop, FitResult
from rankcraft.training.objectives import Objective, default_objective, higher_is_better
from rankcraft.training.reporters import make_reporters
from rankcraft.training.state import TrainState


class TrainConfig(BaseModel):
    """Training hyperparameters (validated; unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=4096, ge=1)
    eval_batch_size: int = Field(default=16384, ge=1)
    optimizer: Literal["adam", "adamw", "adagrad", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    embedding_l2: float = Field(default=0.0, ge=0)
    net_l2: float = Field(default=0.0, ge=0)
    lr_schedule: Literal["constant", "plateau", "cosine", "step"] = "plateau"
    lr_factor: float = Field(default=0.1, gt=0, le=1)  # plateau / step decay factor
    lr_patience: int = Field(default=0, ge=0)  # plateau: epochs without improvement before decaying
    lr_step_epochs: int = Field(default=2, ge=1)  # step: decay every k epochs
    min_lr: float = Field(default=1e-6, ge=0)
    clip_grad_norm: float | None = Field(default=10.0, gt=0)
    #: any metric the objective reports (``auc``, ``logloss``, ``ne``, ``gauc`` for one head; ``<task>/auc``,
    #: ``mean/auc``, ... for several); default: the objective's (``auc``, or ``mean/auc`` for multi-task)
    monitor: str | None = None
    early_stopping_patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.0, ge=0)  # early stopping: a gain smaller than this is no improvement
    seed: int = 2024
    #: where to train: cpu, cuda, cuda:N, or auto (cuda when available); the trained model comes back on the CPU
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    bf16: bool = False
    threads: int | None = Field(default=None, ge=1)
    compile: bool = False
    max_steps: int | None = Field(default=None, ge=1)  # stop after this many steps in total (smoke tests)
    checkpoint_every: int = Field(default=0, ge=0)  # steps; 0 = only time-based and at epoch ends
    checkpoint_seconds: float = Field(default=60.0, ge=0)
    quiet: bool = False
    #: experiment trackers for the per-epoch metrics besides metrics.jsonl (see training/reporters.py)
    report_to: list[Literal["jsonl", "tensorboard", "mlflow"]] = Field(default_factory=lambda: ["jsonl"])


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available) as a torch device; a CUDA device that is not
    there is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device '{name}': no CUDA device is available here (this torch build or "
                              "machine has none); use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device '{name}': there are only {torch.cuda.device_count()} CUDA devices")
    return dev


class StopTraining(Exception):
    """Raised by a callback to stop training immediately (used to simulate interruptions in tests)."""


__all__ = ["FitResult", "SeparateOptimizer", "StopTraining", "TrainConfig", "Trainer"]


@dataclass
class SeparateOptimizer:
    """Parameters trained by their own Adam with their own learning rate, stepped only from step ``start_step``
    on (e.g. DNAS architecture logits α: own lr, frozen during a weight warm-up). They are left out of the main
    optimiser and of gradient clipping."""

    params: list
    lr: float
    start_step: int = 0


class Trainer:
    """Fits ``model`` on column data; writes checkpoints and metrics to ``run_dir`` when given."""

    def __init__(self, model: nn.Module, config: TrainConfig, run_dir: str | Path | None = None,
                 on_step: Callable[[int], None] | None = None, objective: Objective | None = None, *,
                 before_step: Callable[[int], None] | None = None, stop_when: Callable[[], bool] | None = None,
                 separate: list[SeparateOptimizer] = (),
                 after_epoch: Callable[[int, dict], bool] | None = None):
        """``on_step(steps_done)`` runs after every step, ``before_step(steps_done)`` before it (e.g. a supernet
        picks the path of that step), and ``stop_when()`` is asked before every step: True ends training there
        (a time budget), like ``max_steps``. ``after_epoch(epoch, valid_metrics)`` is asked after every epoch's
        validation: True stops training like early stopping (a tuner pruning a bad trial); in a stream it is
        called after every partition with that partition's entry (the answer is ignored). ``separate``:
        parameter sets with their own optimiser."""
        self.model = model
        self.after_epoch = after_epoch
        self.before_step = before_step
        self.stop_when = stop_when
        self.separate = list(separate)
        self.objective = objective if objective is not None else default_objective()
        self.monitor = self.objective.check_monitor(config.monitor)
        self.cfg = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_step = on_step
        if config.threads:
            torch.set_num_threads(config.threads)
        #: data-parallel training: this process's rank and the number of processes (0 and 1 without
        #: torch.distributed; see rankcraft.training.distributed)
        self.rank, self.world = process_group()
        self.device = resolve_device(config.device)
        if self.device.type != "cpu":
            if self.world > 1:
                raise ConfigError("train.device: data-parallel training (--workers) runs on CPUs; use device cpu")
            model.to(self.device)
            self.objective.to(self.device)
        self._emb_params, self._net_params, self._sparse_params, self._dense_params = self._split_params()
        self.optimizers = self._make_optimizers()
        self.n_main_optimizers = len(self.optimizers)
        self.optimizers += [torch.optim.Adam(g.params, lr=g.lr) for g in self.separate]
        self.scheduler = self._make_scheduler()
        self._best_state: dict | None = None
        self._last_ckpt = time.monotonic()
        self.reporters: list = []
        if self.world > 1:
            self.forward = wrap_data_parallel(model)
        elif config.compile:
            self.forward = torch.compile(model)
        else:
            self.forward = model

    # ------------------------------------------------------------------ construction
    def _split_params(self):
        emb, net, sparse, dense = [], [], [], []
        emb_ids = set()
        for module in self.model.modules():
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                emb.append(module.weight)
                emb_ids.add(id(module.weight))
                if module.sparse:
                    sparse.append(module.weight)
        sparse_ids = {id(p) for p in sparse}
        own = {id(p) for g in self.separate for p in g.params}
        for p in list(self.model.parameters()) + list(self.objective.parameters()):
            if not p.requires_grad or id(p) in own:
                continue
            if id(p) not in sparse_ids:
                dense.append(p)
            if id(p) not in emb_ids and p.dim() > 1:
                net.append(p)
        return emb, net, sparse, dense

    def _make_optimizers(self) -> list[torch.optim.Optimizer]:
        c = self.cfg
        opts: list[torch.optim.Optimizer] = []
        if c.optimizer == "adam":
            opts.append(torch.optim.Adam(self._dense_params, lr=c.lr, weight_decay=c.weight_decay))
            if self._sparse_params:
                opts.append(torch.optim.SparseAdam(self._sparse_params, lr=c.lr))
        elif c.optimizer == "adamw":
            opts.append(torch.optim.AdamW(self._dense_params, lr=c.lr, weight_decay=c.weight_decay))
            if self._sparse_params:
                opts.append(torch.optim.SparseAdam(self._sparse_params, lr=c.lr))
        elif c.optimizer == "adagrad":  # Adagrad accepts sparse gradients directly
            opts.append(torch.optim.Adagrad(self._dense_params + self._sparse_params, lr=c.lr,
                                            weight_decay=c.weight_decay if not self._sparse_params else 0.0))
        else:
            opts.append(torch.optim.SGD(self._dense_params + self._sparse_params, lr=c.lr))
        return opts

    def _make_scheduler(self):
        c = self.cfg
        opt = self.optimizers[0]
        if c.lr_schedule == "plateau":
            mode = "max" if higher_is_better(self.monitor) else "min"
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode=mode, factor=c.lr_factor,
                                                              patience=c.lr_patience, min_lr=c.min_lr)
        if c.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=c.epochs, eta_min=c.min_lr)
        if c.lr_schedule == "step":
            return torch.optim.lr_scheduler.StepLR(opt, step_size=c.lr_step_epochs, gamma=c.lr_factor)
        return None

    def _sync_sparse_lr(self) -> None:
        lr = self.optimizers[0].param_groups[0]["lr"]
        for opt in self.optimizers[1:self.n_main_optimizers]:
            for g in opt.param_groups:
                g["lr"] = lr

    # ------------------------------------------------------------------ loss and step
    def regularization(self) -> torch.Tensor | float:
        c = self.cfg
        reg: torch.Tensor | float = 0.0
        if c.embedding_l2 > 0:
            reg = reg + c.embedding_l2 / 2 * sum(p.pow(2).sum() for p in self._emb_params if not p.is_sparse)
        if c.net_l2 > 0:
            reg = reg + c.net_l2 / 2 * sum(p.pow(2).sum() for p in self._net_params)
        return reg

    def _train_step(self, batch: dict[str, torch.Tensor], steps_done: int = 0) -> float:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with autocast(self.cfg.bf16, self.device.type):
            out = as_output(self.forward(batch))
        loss, _ = self.objective.loss(out, batch)
        total = loss + self.regularization() if (self.cfg.embedding_l2 or self.cfg.net_l2) else loss
        total.backward()
        if self.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._dense_params, self.cfg.clip_grad_norm)
        for opt in self.optimizers[:self.n_main_optimizers]:
            opt.step()
        for opt, g in zip(self.optimizers[self.n_main_optimizers:], self.separate):
            if steps_done >= g.start_step:
                opt.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ one pass over a split
    def train_pass(self, data: ColumnData, state: TrainState, *, order: int, desc: str,
                   stop: DeferredInterrupts) -> tuple[list[float], bool]:
        """Train on the batches of ``data`` from ``state.cursor["step"]`` to the end, in the row order numbered
        ``order`` (a pure function of ``(seed, order)``); checkpoint when due; return the step losses and whether
        ``max_steps`` was reached. ``state.cursor["step"]`` advances with every step."""
        c = self.cfg
        start_step = int(state.cursor.get("step", 0))
        n_batches = self.num_batches(data)
        bar = tqdm(total=n_batches, initial=start_step, desc=desc, disable=c.quiet or not sys.stderr.isatty(),
                   leave=False, unit="batch", dynamic_ncols=True)
        t0 = time.perf_counter()
        seconds0 = state.seconds
        losses: list[float] = []
        done_by_max = False
        try:
            for step, batch in enumerate(data.batches(c.batch_size, shuffle=True, seed=c.seed, epoch=order,
                                                      start=start_step, shard=(self.rank, self.world)),
                                         start_step):
                if step >= n_batches:
                    break
                if self.stop_when is not None and self.stop_when():
                    done_by_max = True
                    break
                if self.before_step is not None:
                    self.before_step(state.steps)
                loss = self._train_step(to_device(batch, self.device), state.steps)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at {desc}, step {step}; "
                                             "lower the learning rate or enable clip_grad_norm")
                losses.append(loss)
                state.losses.append(loss)
                state.steps += 1
                state.rows += min(c.batch_size, len(data) - step * c.batch_size)  # the global batch's rows
                state.cursor["step"] = step + 1
                state.seconds = seconds0 + time.perf_counter() - t0
                bar.update(1)
                if state.steps % 20 == 0 and not c.quiet:
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}",
                                    rows_s=f"{state.rows / max(state.seconds, 1e-9):,.0f}")
                if self.on_step is not None:
                    self.on_step(state.steps)
                due = (c.checkpoint_every and state.steps % c.checkpoint_every == 0) or \
                      (c.checkpoint_seconds and time.monotonic() - self._last_ckpt >= c.checkpoint_seconds)
                if due and step + 1 < n_batches:
                    self.save_last(state)
                if stop.requested:
                    self.save_last(state)
                    stop.check()
                if c.max_steps and state.steps >= c.max_steps:
                    done_by_max = True
                    break
        finally:
            bar.close()
        state.seconds = seconds0 + time.perf_counter() - t0
        return losses, done_by_max

    def num_batches(self, data: ColumnData) -> int:
        """Batches per pass over ``data``. With several processes, a last global batch smaller than the number of
        processes is dropped (a process would otherwise get no rows for a step that all processes must take)."""
        n = data.num_batches(self.cfg.batch_size)
        if self.world > 1 and n and len(data) - (n - 1) * self.cfg.batch_size < self.world:
            n -= 1
        return n

    def evaluate(self, data: ColumnData) -> dict:
        """The objective's metrics of the model on ``data`` (every process evaluates all of it: same numbers)."""
        return evaluate(self.model, data, self.objective, batch_size=self.cfg.eval_batch_size, bf16=self.cfg.bf16)

    # ------------------------------------------------------------------ checkpoints and metrics files
    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (rank 0 only under data-parallel training)."""
        return self.run_dir is not None and self.rank == 0

    def checkpoint(self, state: TrainState) -> dict:
        return {
            "format": 2,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "state": state.to_dict(),
            "rng": torch.get_rng_state(),
            **({"cuda_rng": torch.cuda.get_rng_state(self.device)} if self.device.type == "cuda" else {}),
        }

    def save_last(self, state: TrainState) -> None:
        if self.writes:
            save_checkpoint(self.run_dir / "last.pt", self.checkpoint(state))
        self._last_ckpt = time.monotonic()

    def save_best(self, metrics: dict, **info) -> None:
        """Keep the current weights as the best ones (``best.pt``, or in memory without a run directory)."""
        if self.run_dir is not None:
            if self.writes:
                save_checkpoint(self.run_dir / "best.pt", {"format": 2, "model": self.model.state_dict(),
                                                           "objective": self.objective.state_dict(),
                                                           "metrics": metrics, **info})
        else:
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self, ckpt: dict) -> TrainState:
        """Load a ``last.pt`` dict into the model, objective, optimisers, scheduler and RNG; return its state."""
        try:
            self.model.load_state_dict(ckpt["model"])
            self.objective.load_state_dict(ckpt.get("objective", {}))
            for opt, s in zip(self.optimizers, ckpt["optimizers"]):
                opt.load_state_dict(s)
            if self.scheduler is not None and ckpt["scheduler"]:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            torch.set_rng_state(ckpt["rng"])
            if self.device.type == "cuda" and "cuda_rng" in ckpt:
                torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)
            return TrainState.from_dict(ckpt["state"]) if ckpt.get("format", 1) >= 2 \
                else TrainState.from_format_1(ckpt)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"checkpoint does not match this model/config: {exc}") from None

    def write_history(self, history: list[dict]) -> None:
        """``metrics.jsonl``, rewritten whole (atomically) so a resumed run never duplicates lines."""
        if self.writes:
            atomic_write_text(self.run_dir / "metrics.jsonl", "".join(dumps_json_line(h) + "\n" for h in history))

    def append_history(self, entry: dict) -> None:
        """Append one line to ``metrics.jsonl`` (streams: the file only grows; see :meth:`trim_history`)."""
        if self.writes:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(dumps_json_line(entry) + "\n")
                fh.flush()
                os.fsync(fh.fileno())

    def trim_history(self, history: list[dict]) -> None:
        """Before appending on resume: drop lines that a killed run wrote after its last checkpoint."""
        if not self.writes:
            return
        path = self.run_dir / "metrics.jsonl"
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
        if len(lines) != len(history):
            self.write_history(history)

    def barrier(self) -> None:
        """Wait for every process (data-parallel training): e.g. before reading ``best.pt`` that rank 0 wrote."""
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def report(self, metrics: dict, step: int) -> None:
        for r in self.reporters:
            r.log_epoch(metrics, step)

    # ------------------------------------------------------------------ fit
    def fit(self, train: ColumnData, valid: ColumnData, *, resume: bool = False) -> FitResult:
        """Epoch training: until ``epochs``, early stopping or ``max_steps``; resume from ``last.pt`` with
        ``resume`` (see :class:`~rankcraft.training.loops.EpochLoop`)."""
        return self.run(EpochLoop(train, valid), resume=resume)

    def run(self, loop, *, resume: bool = False) -> FitResult:
        """Drive ``loop`` (an :class:`~rankcraft.training.loops.EpochLoop` or ``StreamLoop``) over one
        :class:`TrainState`, fresh or restored from ``last.pt``. The trackers of ``report_to`` are open for the
        duration of the call; Ctrl-C / SIGTERM are deferred to a step boundary, where ``last.pt`` is written."""
        self.reporters = make_reporters(self.cfg.report_to, self.run_dir if self.writes else None,
                                        self.cfg.model_dump(mode="json")) if self.rank == 0 else []
        try:
            with DeferredInterrupts() as stop:
                torch.manual_seed(self.cfg.seed)
                state = loop.initial_state()
                if resume:
                    if self.run_dir is None or not (self.run_dir / "last.pt").exists():
                        raise CheckpointError(f"nothing to resume: {self.run_dir}/last.pt does not exist")
                    state = self.restore(load_checkpoint(self.run_dir / "last.pt"))
                    loop.check_resumable(state)
                    if not self.cfg.quiet and self.rank == 0:
                        tqdm.write(f"resuming at {loop.describe(state.cursor)} ({state.steps} steps done)")
                self._last_ckpt = time.monotonic()
                result = loop.run(self, state, stop)
        finally:
            for r in self.reporters:
                r.close()
            self.reporters = []
        if self.run_dir is not None and (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(self.run_dir / "best.pt")["model"])
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        if self.device.type != "cpu":  # the trained model comes back on the CPU, like a loaded run
            self.model.to("cpu")
            self.objective.to("cpu")
        return result
