"""Shared pieces of the multi-task zoo (SharedBottom, MMoE, PLE; ESMM uses only the tower params).

A multi-task model returns a :class:`~rankcraft.models.output.ModelOutput` whose ``logits`` hold one ``Tensor[B]``
per head. Head names are the model's ``tasks`` param; left unset, they are the schema's label names
(``features.labels``), one head per label. The objective maps its tasks to these heads by name.

Every multi-task model class sets ``multitask = True`` and every instance lists its heads, in output order, in
``model.heads``.
"""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from rankcraft.data.features import FeatureSet
from rankcraft.errors import ConfigError
from rankcraft.models.common import Activation, Units
from rankcraft.models.registry import ModelParams
from rankcraft.nn.gradients import scale_gradient
from rankcraft.nn.mlp import MLP


def check_head_names(names: list[str]) -> list[str]:
    """Head names must be non-empty, unique, without whitespace or ``/`` (``/`` separates head and metric names,
    e.g. ``ctr/auc``). Raises ``ValueError`` naming the first offender."""
    for n in names:
        if not n or any(c.isspace() for c in n) or "/" in n:
            raise ValueError(f"task/head name {n!r} must be non-empty, without whitespace or '/'")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"task/head names must be unique, repeated: {dup}")
    return names


class MultiTaskParams(ModelParams):
    """Hyperparameters shared by SharedBottom, MMoE and PLE.

    ``tasks``: the head names (``None``: one head per schema label, named like the label). ``tower_units``: hidden
    widths of each task's tower (a final Linear to 1 logit is always added). ``activation``, ``dropout`` and
    ``batch_norm`` apply to every MLP of the model (experts / bottom and towers; gates are plain).
    """

    tasks: list[str] | None = None
    tower_units: Units = Field(default_factory=lambda: [32])
    #: task → β: that task's tower passes β × its gradient back into the shared layers (identity forward; ExFM's
    #: Gradient Scaling of an auxiliary distillation head). Absent tasks: 1.
    tower_grad_scale: dict[str, float] = Field(default_factory=dict)
    activation: Activation = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    batch_norm: bool = False

    @field_validator("tasks")
    @classmethod
    def _check_tasks(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("tasks must name at least one head (omit it for one head per schema label)")
        return check_head_names(list(v))


def resolve_tasks(features: FeatureSet, p: MultiTaskParams, model: str) -> list[str]:
    """The model's head names: ``p.tasks``, else the schema's labels."""
    if p.tasks is not None:
        return list(p.tasks)
    labels = list(features.labels)
    if not labels:
        raise ConfigError(f"model '{model}': tasks: the features carry no labels; name the heads with 'tasks'")
    try:
        return check_head_names(labels)
    except ValueError as exc:
        raise ConfigError(f"model '{model}': tasks (from the schema labels): {exc}; name the heads with 'tasks'") \
            from None


class TaskTowers(nn.Module):
    """One tower per task: ``MLP(in_dim, tower_units, 1)`` each.

    ``forward(h)`` takes ``h : [B, T, in_dim]`` (task ``t`` reads ``h[:, t]``) or ``[B, in_dim]`` (every tower
    reads the same vector, as in SharedBottom) and returns ``{task: logit [B]}`` in task order.
    """

    def __init__(self, in_dim: int, tasks: list[str], p: MultiTaskParams):
        super().__init__()
        self.tasks = list(tasks)
        unknown = sorted(set(p.tower_grad_scale) - set(self.tasks))
        if unknown:
            raise ConfigError(f"tower_grad_scale: {', '.join(unknown)} is not a task (tasks: {', '.join(self.tasks)})")
        self.grad_scale = [float(p.tower_grad_scale.get(t, 1.0)) for t in self.tasks]
        self.towers = nn.ModuleList(MLP(in_dim, p.tower_units, 1, act=p.activation, dropout=p.dropout,
                                        batch_norm=p.batch_norm) for _ in tasks)

    def forward(self, h: torch.Tensor) -> dict[str, torch.Tensor]:
        ins = [h if h.dim() == 2 else h[:, i] for i in range(len(self.tasks))]
        return {t: tower(scale_gradient(x, b)).squeeze(-1)
                for t, tower, x, b in zip(self.tasks, self.towers, ins, self.grad_scale)}


def parameter_count(model: nn.Module, *, embeddings: bool = True) -> int:
    """Number of parameters of ``model``; with ``embeddings=False`` the model's ``embedding`` submodule (the
    feature embedding tables, identical across zoo models built with the same ``embedding_dim``) is left out."""
    skip = {id(p) for p in model.embedding.parameters()} if not embeddings and hasattr(model, "embedding") else set()
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)
