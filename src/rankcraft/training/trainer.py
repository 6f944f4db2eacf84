"""The trainer: owns the optimiser, the loop, evaluation, early stopping and checkpoints. Models only map a batch to
logits (or named heads); the objective (:mod:`rankcraft.training.objectives`) owns the loss and the metrics.

Loss per step: ``objective.loss(model(batch), batch) + R``; the objective's loss includes the model's auxiliary
loss (e.g. a mixture-of-experts load-balancing term). ``R`` is the optional regulariser (FuxiCTR-style, applied to
whole tables every step):
``R = (λ_emb / 2) Σ_{embedding tables} ||W||²  +  (λ_net / 2) Σ_{other weights} ||W||²``.

Checkpoints: ``last.pt`` (everything needed to continue: model, optimiser(s), scheduler, epoch, step within the
epoch, early-stopping state, RNG state) is written atomically every ``checkpoint_every`` steps and
``checkpoint_seconds`` seconds and at each epoch end; ``best.pt`` holds the weights of the best validation epoch.
Because the epoch's row order is a pure function of ``(seed, epoch)``, a run resumed from ``last.pt`` replays
exactly the batches it had not finished.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from rankcraft.data.dataset import ColumnData
from rankcraft.errors import CheckpointError, DataError
from rankcraft.files import atomic_write_text, dumps_json_line
from rankcraft.interrupts import DeferredInterrupts
from rankcraft.models.output import as_output
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint
from rankcraft.training.evaluation import autocast, evaluate
from rankcraft.training.objectives import Objective, default_objective, higher_is_better
from rankcraft.training.reporters import make_reporters


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
    bf16: bool = False
    threads: int | None = Field(default=None, ge=1)
    compile: bool = False
    max_steps: int | None = Field(default=None, ge=1)  # stop after this many steps in total (smoke tests)
    checkpoint_every: int = Field(default=0, ge=0)  # steps; 0 = only time-based and at epoch ends
    checkpoint_seconds: float = Field(default=60.0, ge=0)
    quiet: bool = False
    #: experiment trackers for the per-epoch metrics besides metrics.jsonl (see training/reporters.py)
    report_to: list[Literal["jsonl", "tensorboard", "mlflow"]] = Field(default_factory=lambda: ["jsonl"])


@dataclass
class FitResult:
    best_epoch: int
    best_metrics: dict
    history: list[dict]
    train_rows_per_s: float
    train_seconds: float
    stopped_early: bool
    steps: int
    extra: dict = field(default_factory=dict)


class StopTraining(Exception):
    """Raised by a callback to stop training immediately (used to simulate interruptions in tests)."""


class Trainer:
    """Fits ``model`` on column data; writes checkpoints and metrics to ``run_dir`` when given."""

    def __init__(self, model: nn.Module, config: TrainConfig, run_dir: str | Path | None = None,
                 on_step: Callable[[int], None] | None = None, objective: Objective | None = None):
        self.model = model
        self.objective = objective if objective is not None else default_objective()
        self.monitor = self.objective.check_monitor(config.monitor)
        self.cfg = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.on_step = on_step
        if config.threads:
            torch.set_num_threads(config.threads)
        self._emb_params, self._net_params, self._sparse_params, self._dense_params = self._split_params()
        self.optimizers = self._make_optimizers()
        self.scheduler = self._make_scheduler()
        self._best_state: dict | None = None
        self.reporters: list = []
        if config.compile:
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
        for p in list(self.model.parameters()) + list(self.objective.parameters()):
            if not p.requires_grad:
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
        for opt in self.optimizers[1:]:
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

    def _train_step(self, batch: dict[str, torch.Tensor]) -> float:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with autocast(self.cfg.bf16):
            out = as_output(self.forward(batch))
        loss, _ = self.objective.loss(out, batch)
        total = loss + self.regularization() if (self.cfg.embedding_l2 or self.cfg.net_l2) else loss
        total.backward()
        if self.cfg.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self._dense_params, self.cfg.clip_grad_norm)
        for opt in self.optimizers:
            opt.step()
        return float(loss.detach())

    # ------------------------------------------------------------------ checkpoints
    def _state(self, epoch: int, step: int, best: dict, history: list, steps_total: int, bad_epochs: int,
               rows: int, seconds: float) -> dict:
        return {
            "format": 1,
            "model": self.model.state_dict(),
            "objective": self.objective.state_dict(),
            "optimizers": [o.state_dict() for o in self.optimizers],
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "epoch": epoch, "step": step, "steps_total": steps_total, "bad_epochs": bad_epochs,
            "best": best, "history": history, "rows": rows, "seconds": seconds,
            "rng": torch.get_rng_state(),
        }

    def _save_last(self, *args) -> None:
        if self.run_dir is not None:
            save_checkpoint(self.run_dir / "last.pt", self._state(*args))

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.objective.load_state_dict(state.get("objective", {}))
            for opt, s in zip(self.optimizers, state["optimizers"]):
                opt.load_state_dict(s)
            if self.scheduler is not None and state["scheduler"]:
                self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"checkpoint does not match this model/config: {exc}") from None

    # ------------------------------------------------------------------ fit
    def fit(self, train: ColumnData, valid: ColumnData, *, resume: bool = False) -> FitResult:
        """Train until ``epochs``, early stopping or ``max_steps``; resume from ``last.pt`` with ``resume``.
        The trackers of ``report_to`` are open for the duration of the call."""
        self.reporters = make_reporters(self.cfg.report_to, self.run_dir, self.cfg.model_dump(mode="json"))
        try:  # Ctrl-C / SIGTERM are deferred to a step boundary, where last.pt is written before stopping
            with DeferredInterrupts() as stop:
                return self._fit(train, valid, resume=resume, stop=stop)
        finally:
            for r in self.reporters:
                r.close()
            self.reporters = []

    def _fit(self, train: ColumnData, valid: ColumnData, *, resume: bool, stop: DeferredInterrupts) -> FitResult:
        c = self.cfg
        torch.manual_seed(c.seed)
        monitor = self.objective.usable_monitor(self.monitor, valid.columns, warn=None if c.quiet else tqdm.write)
        better = higher_is_better(monitor)
        start_epoch, start_step, steps_total, bad_epochs, rows, seconds = 0, 0, 0, 0, 0, 0.0
        best: dict = {}
        history: list[dict] = []
        if resume:
            if self.run_dir is None or not (self.run_dir / "last.pt").exists():
                raise CheckpointError(f"nothing to resume: {self.run_dir}/last.pt does not exist")
            st = load_checkpoint(self.run_dir / "last.pt")
            self._restore(st)
            start_epoch, start_step = st["epoch"], st["step"]
            steps_total, bad_epochs = st["steps_total"], st["bad_epochs"]
            best, history, rows, seconds = st["best"], st["history"], st["rows"], st["seconds"]
            if not c.quiet:
                tqdm.write(f"resuming at epoch {start_epoch + 1}, step {start_step} "
                           f"({steps_total} steps done)")
        n_batches = train.num_batches(c.batch_size)
        stopped_early = bad_epochs >= c.early_stopping_patience
        last_ckpt = time.monotonic()
        self.model.train()
        epoch = start_epoch
        while epoch < c.epochs and not stopped_early:
            t_epoch = time.perf_counter()
            losses = []
            bar = tqdm(total=n_batches, initial=start_step, desc=f"epoch {epoch + 1}/{c.epochs}",
                       disable=c.quiet or not sys.stderr.isatty(), leave=False, unit="batch", dynamic_ncols=True)
            step = start_step
            done_by_max = False
            for step, batch in enumerate(train.batches(c.batch_size, shuffle=True, seed=c.seed, epoch=epoch,
                                                       start=start_step), start_step):
                loss = self._train_step(batch)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss} at epoch {epoch + 1}, step {step}; "
                                             "lower the learning rate or enable clip_grad_norm")
                losses.append(loss)
                steps_total += 1
                rows += batch["label"].shape[0]
                bar.update(1)
                if steps_total % 20 == 0 and not c.quiet:
                    elapsed = seconds + time.perf_counter() - t_epoch
                    bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", rows_s=f"{rows / max(elapsed, 1e-9):,.0f}")
                if self.on_step is not None:
                    self.on_step(steps_total)
                due = (c.checkpoint_every and steps_total % c.checkpoint_every == 0) or \
                      (c.checkpoint_seconds and time.monotonic() - last_ckpt >= c.checkpoint_seconds)
                if due and step + 1 < n_batches:
                    self._save_last(epoch, step + 1, best, history, steps_total, bad_epochs, rows,
                                    seconds + time.perf_counter() - t_epoch)
                    last_ckpt = time.monotonic()
                if stop.requested:
                    self._save_last(epoch, step + 1, best, history, steps_total, bad_epochs, rows,
                                    seconds + time.perf_counter() - t_epoch)
                    stop.check()
                if c.max_steps and steps_total >= c.max_steps:
                    done_by_max = True
                    break
            bar.close()
            seconds += time.perf_counter() - t_epoch
            start_step = 0
            # ---- end of epoch: validate, schedule, early stopping, checkpoints
            metrics = evaluate(self.model, valid, self.objective, batch_size=c.eval_batch_size, bf16=c.bf16)
            metrics.update(epoch=epoch + 1, train_loss=float(np.mean(losses)) if losses else float("nan"),
                           lr=self.optimizers[0].param_groups[0]["lr"], steps=steps_total,
                           train_rows_per_s=rows / seconds if seconds > 0 else float("nan"))
            history.append(metrics)
            value = metrics.get(monitor)
            if value is None:
                raise DataError(f"the monitored metric '{monitor}' is undefined on the validation split; "
                                "monitor another metric (train.monitor), e.g. a logloss")
            improved = not best or (value > best[monitor] + c.min_delta if better
                                    else value < best[monitor] - c.min_delta)
            if improved:
                best = dict(metrics)
                bad_epochs = 0
                if self.run_dir is not None:
                    save_checkpoint(self.run_dir / "best.pt", {"format": 1, "model": self.model.state_dict(),
                                                               "objective": self.objective.state_dict(),
                                                               "epoch": epoch + 1, "metrics": best})
                else:
                    self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            else:
                bad_epochs += 1
            if self.scheduler is not None:
                if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    self.scheduler.step(value)
                else:
                    self.scheduler.step()
                self._sync_sparse_lr()
            if self.run_dir is not None:  # rewritten whole (atomically) so a resumed run never duplicates lines
                atomic_write_text(self.run_dir / "metrics.jsonl", "".join(dumps_json_line(h) + "\n" for h in history))
            for r in self.reporters:
                r.log_epoch(metrics, epoch + 1)
            if not c.quiet:
                shown = [monitor] + [k for k in ("logloss", "mean/logloss") if k in metrics and k != monitor][:1]
                vals = "  ".join(f"{k} {metrics[k]:.4f}" for k in shown if metrics.get(k) is not None)
                tqdm.write(f"epoch {epoch + 1}: loss {metrics['train_loss']:.4f}  val {vals}  "
                           f"{metrics['train_rows_per_s']:,.0f} rows/s" + ("  *" if improved else ""))
            stopped_early = bad_epochs >= c.early_stopping_patience
            epoch += 1
            self._save_last(epoch, 0, best, history, steps_total, bad_epochs, rows, seconds)
            last_ckpt = time.monotonic()
            stop.check()
            if done_by_max:
                break
        if self.run_dir is not None and (self.run_dir / "best.pt").exists():
            self.model.load_state_dict(load_checkpoint(self.run_dir / "best.pt")["model"])
        elif self._best_state is not None:
            self.model.load_state_dict(self._best_state)
        return FitResult(best_epoch=int(best.get("epoch", 0)), best_metrics=best, history=history,
                         train_rows_per_s=rows / seconds if seconds > 0 else float("nan"), train_seconds=seconds,
                         stopped_early=stopped_early, steps=steps_total)
