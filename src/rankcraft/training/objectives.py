"""Objectives: what a model is trained to predict, the loss that says so, and the metrics that judge it.

An objective maps the named heads of a :class:`~rankcraft.models.output.ModelOutput` to label columns of the batch
(``"label/<name>"``, one per schema label; see :mod:`rankcraft.data.features`). The trainer calls
:meth:`Objective.loss` every step and :meth:`Objective.metrics` at every evaluation; it never looks at a label.

Config (``objective:`` in a run config; a discriminated union on ``type``):

* ``binary`` (default): one head, BCE with logits on one binary label. ``label`` defaults to the schema's only
  non-weight label (several labels and no ``label`` is an error that says how to declare tasks).
* ``soft_bce``: one head, BCE against a soft target ``y ∈ [0, 1]`` (a teacher's probability, for distillation);
  metrics use ``hard_label`` when given, else ``y ≥ 0.5``.
* ``multitask``: named tasks, each ``{name (head), label, kind: binary|regression|soft, weight, weight_column,
  monitor_weight}``. Loss ``L = Σ_t w_t L_t`` or, with ``uncertainty_weighting``, Kendall et al.'s
  ``L = Σ_t exp(−s_t) L_t + s_t`` with a learned ``s_t = log σ_t²`` per task.

Per-task loss with sample weights ``ω_i`` (a label of kind ``weight``, or a binary label used as a mask, e.g. a
CVR task on clicked rows only: ``weight_column: click``; rows with ``ω_i = 0`` are left out):
``L_t = Σ_i ω_i ℓ(z_i, y_i) / max(Σ_i ω_i, 1e-12)``; ``ℓ`` is BCE with logits for binary/soft tasks and squared
error for regression tasks. Heads without a task (e.g. ESMM's CVR) are predicted but not supervised.

* ``delayed_feedback``: Chapelle (2014) on a ``delay`` label ``label`` (:mod:`rankcraft.data.delays`): heads
  ``conversion`` (logit ``z``, the eventual conversion probability ``p = σ(z)``) and ``delay_rate`` (``r = log λ``
  of an exponential delay, per day). With ``c`` = a conversion observed by the log's cut and ``t`` = its delay
  (``c = 1``) or the time elapsed since the click (``c = 0``), both in days, the loss is the negative
  log-likelihood ``−[log p + r − λ t]`` for ``c = 1`` and ``−log(1 − p + p e^{−λ t})`` for ``c = 0``. The
  probability of a conversion within a window ``T`` is ``p (1 − e^{−λ T})``. Metrics: the conversion head against
  ``c`` (``conversion/auc`` …, and ``mean/*`` equal to them).

* ``ensemble``: the collaborative ensemble (models/ensemble.py) on one binary ``label``: BCE of the fused head
  ``score`` plus ``member_weight ·`` BCE of each of the ``members`` heads ``member_0 …`` (the model adds its
  distillation term itself). Metrics per head (``score/auc``, ``member_0/auc``, …); ``mean/*`` and the default
  monitor are the fused head's.

* ``distill``: external distillation from a foundation model (FM) whose predictions ``p_F`` are a soft label
  ``teacher`` (ExFM; docs/distillation.md). The serving head ``score`` learns the true ``label``:
  ``L = BCE(z_S, y) + w · BCE(z_T, t)`` with ``t = min(α p_F, 1)`` (Label Scaling α, Loss Weighting w) and
  ``z_T = z_S`` (``mode: single``) or the separate head ``distill`` (``mode: aux``, the Auxiliary Head; Gradient
  Scaling β is the model's ``tower_grad_scale: {distill: β}``); ``mode: none`` is the plain VM. ``adapter``
  adds the Student Adapter, a small MLP ``s = SA(p_F)`` (or ``SA(logit p_F)``, ``adapter_input``) trained on the fresh labels (``BCE(s, y)``, its
  input is data, so only SA learns from it) whose ``sg(σ(s))`` is one more target of the distillation head:
  ``+ adapter_weight · BCE(z_T, sg(σ(s)))``. SA and the model update in the same optimiser step. Rows whose
  teacher value is NaN (not scored by the FM yet) get only the serving loss. Metrics: the serving head against
  ``label``.

Metric names: single-head objectives report ``auc``, ``logloss``, ``ne``, ``calibration``, ``rows`` (and ``gauc``
with a user column), exactly as before multi-task support. Multi-task objectives report ``<task>/<metric>`` for
every task (``mse``/``mae`` for regression tasks) plus ``mean/auc`` and ``mean/logloss``, the
``monitor_weight``-weighted means over binary/soft tasks. An undefined metric (AUC of a one-class split) is
``None``, never NaN.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

import numpy as np
import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from torch import nn

from rankcraft.config import format_validation_error
from rankcraft.data.features import FeatureSet, label_key
from rankcraft.errors import ConfigError
from rankcraft.models.output import DEFAULT_HEAD, ModelOutput
from rankcraft.training.metrics import compute_metrics

LOWER_IS_BETTER_SUFFIXES = ("logloss", "ne", "mse", "mae", "loss")
HIGHER_IS_BETTER_SUFFIXES = ("auc", "gauc")


def higher_is_better(metric: str) -> bool:
    last = metric.rsplit("/", 1)[-1]
    if last in HIGHER_IS_BETTER_SUFFIXES:
        return True
    if last in LOWER_IS_BETTER_SUFFIXES:
        return False
    raise ConfigError(f"metric '{metric}' cannot be monitored (monitor an auc, gauc, logloss, ne, mse or mae)")


# ------------------------------------------------------------------------------------------------ configs
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BinaryObjectiveConfig(_Strict):
    type: Literal["binary"] = "binary"
    label: str | None = None
    weight_column: str | None = None


class SoftLabelObjectiveConfig(_Strict):
    type: Literal["soft_bce"]
    label: str
    hard_label: str | None = None
    weight_column: str | None = None


class TaskConfig(_Strict):
    name: str = Field(min_length=1)
    label: str | None = None  # default: the label named like the task
    kind: Literal["binary", "regression", "soft"] = "binary"
    weight: float = Field(default=1.0, ge=0)
    weight_column: str | None = None
    monitor_weight: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _no_slash(self) -> "TaskConfig":
        if "/" in self.name:
            raise ValueError(f"task name '{self.name}' may not contain '/'")
        return self


class MultiTaskObjectiveConfig(_Strict):
    type: Literal["multitask"]
    tasks: list[TaskConfig] = Field(min_length=1)
    uncertainty_weighting: bool = False

    @model_validator(mode="after")
    def _unique(self) -> "MultiTaskObjectiveConfig":
        names = [t.name for t in self.tasks]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate task names: {dup}")
        if "mean" in names:
            raise ValueError("'mean' is reserved for the averaged metrics; rename the task")
        return self


class DelayedFeedbackObjectiveConfig(_Strict):
    """Chapelle (2014)'s delayed-feedback model on a ``delay`` label named ``label`` (see the module docstring)."""

    type: Literal["delayed_feedback"]
    label: str = Field(min_length=1)
    max_log_rate: float = 6.0  # log λ is clamped to [−max_log_rate, max_log_rate] (per day)


class EnsembleObjectiveConfig(_Strict):
    """The collaborative ensemble's labelled terms (see the module docstring)."""

    type: Literal["ensemble"]
    label: str | None = None
    members: int = Field(ge=2)
    member_weight: float = Field(default=1.0, ge=0)


class DistillObjectiveConfig(_Strict):
    """External distillation from a foundation model's logged predictions (ExFM; see the module docstring)."""

    type: Literal["distill"]
    label: str | None = None  # the true binary label (default: the schema's only binary label)
    teacher: str = Field(min_length=1)  # the soft label with the foundation model's predictions
    mode: Literal["none", "single", "aux"] = "aux"
    weight: float = Field(default=1.0, ge=0)  # w: Loss Weighting
    label_scale: float = Field(default=1.0, gt=0)  # α: Label Scaling, target min(α·p_F, 1)
    adapter: bool = False  # the Student Adapter
    adapter_hidden: int = Field(default=8, ge=1)
    adapter_weight: float = Field(default=1.0, ge=0)
    adapter_input: Literal["probability", "logit"] = "probability"  # what SA reads of the FM prediction


ObjectiveConfig = Annotated[Union[BinaryObjectiveConfig, SoftLabelObjectiveConfig, MultiTaskObjectiveConfig,
                                  DelayedFeedbackObjectiveConfig, EnsembleObjectiveConfig, DistillObjectiveConfig],
                            Field(discriminator="type")]


# ------------------------------------------------------------------------------------------------ runtime
class Task:
    """One supervised head at run time."""

    def __init__(self, name: str, label: str, kind: str, weight: float = 1.0, weight_column: str | None = None,
                 monitor_weight: float = 1.0, hard_label: str | None = None):
        self.name, self.label, self.kind = name, label, kind
        self.weight, self.weight_column, self.monitor_weight = weight, weight_column, monitor_weight
        self.hard_label = hard_label

    def pointwise_loss(self, z: torch.Tensor, y: torch.Tensor, reduction: str = "none") -> torch.Tensor:
        """Per-row loss (``reduction="none"``) or its mean. The mean goes through the fused reduction, not
        ``.mean()`` of the per-row losses: the two differ in the last bit of the gradient when the batch size is
        not a power of two, and the fused one is what every earlier result was trained with."""
        if self.kind == "regression":
            return nn.functional.mse_loss(z, y, reduction=reduction)
        return nn.functional.binary_cross_entropy_with_logits(z, y, reduction=reduction)


class Objective(nn.Module):
    """Loss and metrics over named heads. An ``nn.Module`` so that learned loss weights (uncertainty weighting)
    are optimised and checkpointed with the model."""

    def __init__(self, tasks: list[Task], *, single: bool, has_group: bool, uncertainty_weighting: bool = False):
        super().__init__()
        self.tasks = tasks
        self.single = single
        self.has_group = has_group
        self.log_vars = nn.Parameter(torch.zeros(len(tasks))) if uncertainty_weighting else None

    # ------------------------------------------------------------------ heads
    def head_of(self, task: Task, out: ModelOutput) -> torch.Tensor:
        if task.name in out.logits:
            return out.logits[task.name]
        if self.single and len(out.logits) == 1:
            return next(iter(out.logits.values()))
        raise ConfigError(f"the model has heads {out.heads}, but the objective needs a head named '{task.name}' "
                          "(name the tasks after the model's heads)")

    def probabilities(self, out: ModelOutput) -> dict[str, torch.Tensor]:
        """Every head as a prediction: ``σ(logit)`` for binary/soft heads and heads without a task, the raw value
        for regression heads."""
        kinds = {t.name: t.kind for t in self.tasks}
        if self.single and len(out.logits) == 1:
            kinds = {next(iter(out.logits)): self.tasks[0].kind}
        return {h: (z.float() if kinds.get(h) == "regression" else torch.sigmoid(z.float()))
                for h, z in out.logits.items()}

    def prediction_head(self, out_heads: list[str]) -> dict[str, str]:
        """task name → head name, as :meth:`head_of` resolves it."""
        if self.single and len(out_heads) == 1:
            return {self.tasks[0].name: out_heads[0]}
        return {t.name: t.name for t in self.tasks}

    # ------------------------------------------------------------------ loss
    def loss(self, out: ModelOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """``(total, {task: loss value})``; ``total`` includes the model's aux loss."""
        total: torch.Tensor | float = 0.0
        parts: dict[str, float] = {}
        for i, t in enumerate(self.tasks):
            z = self.head_of(t, out).float()
            y = batch[t.label]
            if t.weight_column is not None:
                w = batch[t.weight_column]
                lt = (t.pointwise_loss(z, y) * w).sum() / w.sum().clamp_min(1e-12)
            else:
                lt = t.pointwise_loss(z, y, "mean")
            parts[t.name] = float(lt.detach())
            if self.log_vars is not None:
                total = total + torch.exp(-self.log_vars[i]) * lt + self.log_vars[i]
            else:
                total = total + (t.weight * lt if t.weight != 1.0 else lt)
        if out.aux_loss is not None:
            total = total + out.aux_loss.float()
        return total, parts  # type: ignore[return-value]

    # ------------------------------------------------------------------ metrics
    def metrics(self, preds: dict[str, np.ndarray], columns: dict[str, torch.Tensor]) -> dict:
        """Metrics of predicted heads against the label columns (see the module docstring for the names)."""
        head_for = self.prediction_head(list(preds))
        group = columns["group"].numpy() if self.has_group and "group" in columns else None
        out: dict = {}
        for t in self.tasks:
            p = preds[head_for[t.name]]
            y = columns[t.label].numpy()
            if t.weight_column is not None:
                keep = columns[t.weight_column].numpy() > 0
                y, p = y[keep], p[keep]
                g = group[keep] if group is not None else None
            else:
                g = group
            if t.kind == "regression":
                err = p.astype(np.float64) - y
                m = {"mse": float(np.mean(err ** 2)) if len(y) else None,
                     "mae": float(np.mean(np.abs(err))) if len(y) else None, "rows": int(len(y))}
            else:
                if t.hard_label is not None:
                    y = columns[t.hard_label].numpy()[keep] if t.weight_column is not None else \
                        columns[t.hard_label].numpy()
                elif t.kind == "soft":
                    y = (y >= 0.5).astype(np.float64)
                m = compute_metrics(y, p, g) if len(y) else {"rows": 0}
            m = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
            if self.single:
                return m
            out.update({f"{t.name}/{k}": v for k, v in m.items()})
        for metric in ("auc", "logloss"):
            vals = [(t.monitor_weight, out.get(f"{t.name}/{metric}")) for t in self.tasks if t.kind != "regression"]
            vals = [(w, v) for w, v in vals if v is not None and w > 0]
            if vals:
                out[f"mean/{metric}"] = sum(w * v for w, v in vals) / sum(w for w, _ in vals)
            elif any(t.kind != "regression" for t in self.tasks):
                out[f"mean/{metric}"] = None
        return out

    def metric_names(self) -> list[str]:
        if self.single:
            t = self.tasks[0]
            base = ["mse", "mae"] if t.kind == "regression" else ["auc", "logloss", "ne", "calibration"]
            return base + (["gauc"] if self.has_group and t.kind != "regression" else [])
        names = []
        for t in self.tasks:
            base = ["mse", "mae"] if t.kind == "regression" else ["auc", "logloss", "ne", "calibration"]
            if self.has_group and t.kind != "regression":
                base.append("gauc")
            names += [f"{t.name}/{b}" for b in base]
        if any(t.kind != "regression" for t in self.tasks):
            names += ["mean/auc", "mean/logloss"]
        return names

    @property
    def default_monitor(self) -> str:
        if self.single:
            return "mse" if self.tasks[0].kind == "regression" else "auc"
        return "mean/auc" if any(t.kind != "regression" for t in self.tasks) else f"{self.tasks[0].name}/mse"

    def check_monitor(self, monitor: str | None) -> str:
        """The metric to monitor: ``monitor`` if the objective reports it (error listing the valid names if not),
        else :attr:`default_monitor`."""
        if monitor is None:
            return self.default_monitor
        names = self.metric_names()
        if monitor not in names:
            raise ConfigError(f"train.monitor: '{monitor}' is not a metric of this objective; valid: "
                              f"{', '.join(names)}")
        higher_is_better(monitor)
        return monitor

    def usable_monitor(self, monitor: str, columns: dict[str, torch.Tensor], warn=None) -> str:
        """``monitor``, or its logloss counterpart when it is an AUC that the validation labels leave undefined
        (every monitored task has one class only); ``warn`` (a callable) is told about the switch."""
        head, _, last = monitor.rpartition("/")
        if last not in ("auc", "gauc"):
            return monitor
        tasks = self.tasks if self.single or head == "mean" else [t for t in self.tasks if t.name == head]
        tasks = [t for t in tasks if t.kind != "regression"]

        def one_class(t: Task) -> bool:
            y = columns[t.hard_label or t.label].numpy()
            if t.weight_column is not None:
                y = y[columns[t.weight_column].numpy() > 0]
            if t.kind == "soft" and t.hard_label is None:
                y = y >= 0.5
            return len(np.unique(y)) < 2

        if tasks and all(one_class(t) for t in tasks):
            fallback = f"{head}/logloss" if head else "logloss"
            if warn is not None:
                warn(f"warning: the validation labels have one class only, so '{monitor}' is undefined; early "
                     f"stopping and the learning-rate schedule monitor '{fallback}' instead")
            return fallback
        return monitor

    @property
    def heads(self) -> list[str]:
        return [t.name for t in self.tasks]



class DelayedFeedbackObjective(Objective):
    """The ``delayed_feedback`` objective (module docstring)."""

    def __init__(self, label: str, *, has_group: bool, max_log_rate: float = 6.0):
        super().__init__([Task("conversion", label_key(f"{label}_observed"), "binary"),
                          Task("delay_rate", label_key(f"{label}_elapsed_days"), "regression")],
                         single=False, has_group=has_group)
        self.max_log_rate = max_log_rate

    def loss(self, out: ModelOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        z = self.head_of(self.tasks[0], out).float()
        r = self.head_of(self.tasks[1], out).float().clamp(-self.max_log_rate, self.max_log_rate)
        c, t = batch[self.tasks[0].label], batch[self.tasks[1].label]
        lam_t = torch.exp(r) * t
        log_p = nn.functional.logsigmoid(z)
        converted = -(log_p + r - lam_t)
        waiting = -torch.logaddexp(nn.functional.logsigmoid(-z), log_p - lam_t)
        total = torch.where(c > 0.5, converted, waiting).mean()
        if out.aux_loss is not None:
            total = total + out.aux_loss.float()
        return total, {"nll": float(total.detach())}

    def metrics(self, preds: dict[str, np.ndarray], columns: dict[str, torch.Tensor]) -> dict:
        y = columns[self.tasks[0].label].numpy()
        group = columns["group"].numpy() if self.has_group and "group" in columns else None
        m = compute_metrics(y, preds["conversion"], group) if len(y) else {"rows": 0}
        out = {f"conversion/{k}": (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
        out["mean/auc"], out["mean/logloss"] = out.get("conversion/auc"), out.get("conversion/logloss")
        return out

    def metric_names(self) -> list[str]:
        return [f"conversion/{b}" for b in ["auc", "logloss", "ne", "calibration"]
                + (["gauc"] if self.has_group else [])] + ["mean/auc", "mean/logloss"]

    @property
    def default_monitor(self) -> str:
        return "conversion/logloss"


class DistillObjective(Objective):
    """The ``distill`` objective (module docstring)."""

    def __init__(self, config: DistillObjectiveConfig, label: str, *, has_group: bool):
        super().__init__([Task(DEFAULT_HEAD, label_key(label), "binary")], single=True, has_group=has_group)
        self.cfg = config
        self.teacher = label_key(config.teacher)
        self.distill_head = "distill" if config.mode == "aux" else DEFAULT_HEAD
        self.adapter = nn.Sequential(nn.Linear(1, config.adapter_hidden), nn.ReLU(),
                                     nn.Linear(config.adapter_hidden, 1)) if config.adapter else None

    @property
    def heads(self) -> list[str]:
        return [DEFAULT_HEAD, "distill"] if self.cfg.mode == "aux" else [DEFAULT_HEAD]

    def head_of(self, task: Task, out: ModelOutput) -> torch.Tensor:
        if DEFAULT_HEAD not in out.logits:
            raise ConfigError(f"the model has heads {out.heads}; the distill objective needs a serving head "
                              f"'{DEFAULT_HEAD}'")
        return out.logits[DEFAULT_HEAD]

    def loss(self, out: ModelOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        c = self.cfg
        y = batch[self.tasks[0].label]
        z_s = self.head_of(self.tasks[0], out).float()
        total = nn.functional.binary_cross_entropy_with_logits(z_s, y)
        parts = {"serving": float(total.detach())}
        if c.mode != "none":
            if self.distill_head not in out.logits:
                raise ConfigError(f"the model has heads {out.heads}; mode 'aux' needs a head named 'distill' "
                                  "(e.g. sharedbottom with tasks: [score, distill])")
            z_t = out.logits[self.distill_head].float()
            p_f = batch[self.teacher]
            known = torch.isfinite(p_f)  # rows the FM has not scored (NaN) get no distillation
            w = known.float() / known.float().sum().clamp_min(1.0)
            p_f = torch.where(known, p_f, torch.zeros_like(p_f))

            def bce(z, t):
                return (nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none") * w).sum()

            ld = bce(z_t, (c.label_scale * p_f).clamp(max=1.0))
            total = total + c.weight * ld
            parts["distill"] = float(ld.detach())
            if self.adapter is not None:
                x = (torch.logit(p_f.clamp(1e-6, 1 - 1e-6)) if c.adapter_input == "logit" else p_f).unsqueeze(-1)
                s = self.adapter(x).squeeze(-1)
                l_sta = bce(s, y)
                l_sa = bce(z_t, torch.sigmoid(s).detach())
                total = total + l_sta + c.adapter_weight * l_sa
                parts.update(adapter=float(l_sta.detach()), adapter_distill=float(l_sa.detach()))
        if out.aux_loss is not None:
            total = total + out.aux_loss.float()
        return total, parts


# ------------------------------------------------------------------------------------------------ building
def default_objective() -> Objective:
    """Binary cross-entropy on the batch's ``"label"`` column (the first non-weight label): what a model without
    a declared objective is trained and evaluated on. GAUC is reported when the data has a ``group`` column."""
    return Objective([Task(DEFAULT_HEAD, "label", "binary")], single=True, has_group=True)


def _label_kind(features: FeatureSet, name: str, where: str) -> str:
    kinds = features.label_kinds
    if name not in kinds:
        raise ConfigError(f"{where}: no label named '{name}' in the schema (labels: {', '.join(kinds) or 'none'})")
    return kinds[name]


def _weight(features: FeatureSet, name: str | None, where: str) -> str | None:
    if name is None:
        return None
    kind = _label_kind(features, name, where)
    if kind not in ("weight", "binary"):
        raise ConfigError(f"{where}: weight_column '{name}' is a {kind} label; a sample weight is a weight label "
                          "(or a binary one, which masks rows: e.g. a CVR task weighted by click)")
    return label_key(name)


def build_objective(config: BaseModel | dict | None, features: FeatureSet) -> Objective:
    """The runtime objective of ``config`` (``None``: binary) checked against the schema's labels."""
    if config is None or isinstance(config, dict):
        obj = config or {"type": "binary"}
        try:
            config = TypeAdapter(ObjectiveConfig).validate_python(obj)
        except ValidationError as exc:
            raise ConfigError(f"objective: invalid:\n{format_validation_error(exc, obj)}") from None
    kinds = features.label_kinds
    targets = features.targets
    if isinstance(config, DistillObjectiveConfig):
        if config.label is None:
            binaries = [n for n in targets if kinds[n] == "binary"]
            if len(binaries) != 1:
                raise ConfigError(f"objective.label: name the true label (binary labels: {', '.join(binaries)})")
            name = binaries[0]
        else:
            name = config.label
        if _label_kind(features, name, "objective.label") != "binary":
            raise ConfigError(f"objective.label: '{name}' must be a binary label")
        if _label_kind(features, config.teacher, "objective.teacher") not in ("soft", "binary"):
            raise ConfigError(f"objective.teacher: '{config.teacher}' must be a soft label (the FM's probability)")
        if config.adapter and config.mode == "none":
            raise ConfigError("objective.adapter: the Student Adapter feeds a distillation head; use mode single "
                              "or aux")
        return DistillObjective(config, name, has_group=features.has_group)
    if isinstance(config, EnsembleObjectiveConfig):
        if config.label is None and len(targets) > 1:
            raise ConfigError(f"objective.label: the schema has several labels ({', '.join(targets)}); name the one "
                              "the ensemble learns")
        name = config.label or (targets[0] if targets else "label")
        if _label_kind(features, name, "objective.label") != "binary":
            raise ConfigError(f"objective.label: '{name}' must be a binary label for the ensemble objective")
        tasks = [Task(DEFAULT_HEAD, label_key(name), "binary")]
        tasks += [Task(f"member_{i}", label_key(name), "binary", config.member_weight, monitor_weight=0.0)
                  for i in range(config.members)]
        return Objective(tasks, single=False, has_group=features.has_group)
    if isinstance(config, DelayedFeedbackObjectiveConfig):
        for suffix in ("observed", "elapsed_days"):
            if f"{config.label}_{suffix}" not in kinds:
                delays = sorted({n.rsplit("_", 1)[0] for n in kinds if n.endswith("_observed")})
                raise ConfigError(f"objective.label: '{config.label}' is not a label of kind 'delay' (the schema's "
                                  f"delay labels: {', '.join(delays) or 'none'})")
        return DelayedFeedbackObjective(config.label, has_group=features.has_group,
                                        max_log_rate=config.max_log_rate)
    if isinstance(config, BinaryObjectiveConfig):
        if config.label is None:
            if len(targets) > 1:
                raise ConfigError(
                    f"the schema declares several labels ({', '.join(targets)}) and the objective does not say which "
                    "to learn; declare them, e.g.\n  objective: {type: multitask, tasks: [" +
                    ", ".join(f"{{name: {n}" + ("" if kinds[n] == "binary" else f", kind: {kinds[n]}") + "}"
                              for n in targets) + "]}\n"
                    f"or pick one: objective: {{type: binary, label: {targets[0]}}}")
            if not targets:
                raise ConfigError("the schema declares no target label (only weights)")
            name = targets[0]
        else:
            name = config.label
        kind = _label_kind(features, name, "objective.label")
        if kind not in ("binary",):
            raise ConfigError(f"objective.label: '{name}' is a {kind} label; the binary objective needs a binary "
                              "label (use type: soft_bce for probabilities, multitask for regression)")
        task = Task(DEFAULT_HEAD, label_key(name), "binary",
                    weight_column=_weight(features, config.weight_column, "objective"))
        return Objective([task], single=True, has_group=features.has_group)
    if isinstance(config, SoftLabelObjectiveConfig):
        kind = _label_kind(features, config.label, "objective.label")
        if kind not in ("soft", "binary"):
            raise ConfigError(f"objective.label: '{config.label}' is a {kind} label; soft_bce needs a soft (or "
                              "binary) label")
        hard = None
        if config.hard_label is not None:
            if _label_kind(features, config.hard_label, "objective.hard_label") != "binary":
                raise ConfigError(f"objective.hard_label: '{config.hard_label}' must be a binary label")
            hard = label_key(config.hard_label)
        task = Task(DEFAULT_HEAD, label_key(config.label), "soft",
                    weight_column=_weight(features, config.weight_column, "objective"), hard_label=hard)
        return Objective([task], single=True, has_group=features.has_group)
    tasks = []
    for i, t in enumerate(config.tasks):
        where = f"objective.tasks[{i}]({t.name})"
        name = t.label or t.name
        kind = _label_kind(features, name, where + ".label")
        allowed = {"binary": ("binary",), "soft": ("soft", "binary"), "regression": ("regression", "binary", "soft")}
        if kind not in allowed[t.kind]:
            raise ConfigError(f"{where}: label '{name}' is a {kind} label, which a {t.kind} task cannot learn")
        tasks.append(Task(t.name, label_key(name), t.kind, t.weight, _weight(features, t.weight_column, where),
                          t.monitor_weight))
    return Objective(tasks, single=False, has_group=features.has_group,
                     uncertainty_weighting=config.uncertainty_weighting)
