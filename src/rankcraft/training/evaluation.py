"""Scoring and metrics of a model on column data (no training state involved)."""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rankcraft.data.dataset import ColumnData
from rankcraft.models.output import as_output
from rankcraft.training.objectives import Objective, default_objective


def autocast(enabled: bool, device_type: str = "cpu"):
    return torch.autocast(device_type, dtype=torch.bfloat16) if enabled else nullcontext()


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's parameters (CPU for a model without any)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device`` (the same dict when it is the CPU: batches are built on the CPU)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict_heads(model: nn.Module, data: ColumnData, objective: Objective | None = None, *,
                  batch_size: int = 16384, bf16: bool = False, progress: bool = False) -> dict[str, np.ndarray]:
    """Predictions of every head for every row of ``data``, in row order: ``{head: float32[N]}``
    (probabilities for binary heads, values for regression heads; see :meth:`Objective.probabilities`).
    ``progress`` shows a progress bar on a terminal when there is more than one batch."""
    objective = objective or default_objective()
    was_training = model.training
    model.eval()
    device = model_device(model)
    out: dict[str, list[torch.Tensor]] = {}
    n = data.num_batches(batch_size)
    show = progress and n > 1 and sys.stderr.isatty()
    try:
        for batch in tqdm(data.batches(batch_size), total=n, disable=not show, desc="scoring", unit="batch",
                          leave=False, dynamic_ncols=True):
            with autocast(bf16, device.type):
                heads = objective.probabilities(as_output(model(to_device(batch, device))))
            for h, p in heads.items():
                out.setdefault(h, []).append(p.cpu())
    finally:
        model.train(was_training)
    return {h: torch.cat(ps).numpy() for h, ps in out.items()}


def evaluate(model: nn.Module, data: ColumnData, objective: Objective | None = None, *, batch_size: int = 16384,
             bf16: bool = False, progress: bool = False) -> dict:
    """The objective's metrics of ``model`` on ``data`` (default: binary on ``"label"``, GAUC with a ``group``
    column), plus inference rows/s."""
    objective = objective or default_objective()
    if len(data) == 0:
        return {"rows": 0}
    t0 = time.perf_counter()
    preds = predict_heads(model, data, objective, batch_size=batch_size, bf16=bf16, progress=progress)
    dt = time.perf_counter() - t0
    m = objective.metrics(preds, data.columns)
    m["inference_rows_per_s"] = len(data) / dt if dt > 0 else None
    return m
