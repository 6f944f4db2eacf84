"""A training run and its run directory.

>>> from rankcraft.training.run import RunConfig, train
>>> run = train(RunConfig(data={"recipe": "synthetic", "rows": 20000}, model="dcnv2", train={"epochs": 2}),
...             out="runs/dcnv2")

A run directory holds ``config.json`` (the resolved :class:`RunConfig`), ``features.json`` and ``encoders.json``
(fitted on the training split), ``metrics.jsonl`` (one line per epoch), ``report.json`` (final metrics, FLOPs,
parameters, timings), ``curves.png`` (training loss and validation metrics per epoch), ``best.pt`` (best weights) and ``last.pt`` (state to resume from). This module writes that
format, so it is also the one that reads it back (:func:`load_run`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rankcraft.config import parse_model, read_config_yaml
from rankcraft.data.dataset import ColumnData, PreparedData
from rankcraft.data.encoders import Encoders
from rankcraft.data.features import FeatureSet
from rankcraft.data.spec import DataSpec, prepare_spec
from rankcraft.errors import CheckpointError, ConfigError
from rankcraft.files import (
    DirectoryLock,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from rankcraft.models.catalog import build_model, validate_params
from rankcraft.models.output import as_output
from rankcraft.training.checkpoint import load_checkpoint
from rankcraft.training.curves import plot_curves
from rankcraft.training.evaluation import evaluate as evaluate_data
from rankcraft.training.objectives import Objective, ObjectiveConfig, build_objective
from rankcraft.training.profile import count_parameters, flops_per_example, slice_batch
from rankcraft.training.trainer import FitResult, TrainConfig, Trainer


class RunConfig(BaseModel):
    """Everything that defines a training run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: DataSpec = Field(default_factory=lambda: DataSpec(recipe="synthetic"))
    model: str = "dnn"
    params: dict = Field(default_factory=dict)
    #: what to learn from which labels (default: binary on the schema's only label); see training/objectives.py
    objective: ObjectiveConfig | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)

    @classmethod
    def parse(cls, obj: dict, origin: str = "<config>") -> "RunConfig":
        cfg = parse_model(cls, obj, origin)
        validate_params(cfg.model, cfg.params)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "RunConfig":
        return cls.parse(read_config_yaml(path), str(path))

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


@dataclass
class RunResult:
    run_dir: Path | None
    model: nn.Module
    data: PreparedData
    fit: FitResult
    report: dict
    objective: Objective


def _sample_batch(data: ColumnData, n: int = 256) -> dict:
    return slice_batch(next(data.batches(n)), n)


def objective_metrics(metrics: dict, objective: Objective) -> dict:
    """The objective's metrics (and row counts) out of an evaluation's or a history entry's dict."""
    keep = set(objective.metric_names())
    return {k: v for k, v in metrics.items() if k in keep or k == "rows" or k.endswith("/rows")}


@torch.no_grad()
def check_heads(model: nn.Module, objective: Objective, data: ColumnData, name: str) -> None:
    """Fail before training when the model's heads do not serve the objective's tasks (one eval-mode forward
    pass on a few rows; no state changes)."""
    if len(data) == 0:
        return
    was_training = model.training
    model.eval()
    try:
        out = as_output(model(_sample_batch(data, 8)))
    finally:
        model.train(was_training)
    try:
        for t in objective.tasks:
            objective.head_of(t, out)
    except ConfigError as exc:
        raise ConfigError(f"model '{name}': {exc}") from None


def read_run_config(run_dir: Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run directory; unreadable or invalid JSON is a named ConfigError."""
    path = run_dir / "config.json"
    obj = read_json(path, "run config")
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not a run config (a JSON object)")
    return RunConfig.parse(obj, str(path))


def train(config: RunConfig | dict, *, out: str | Path | None = None, resume: bool = False,
          cache_dir: str | Path | None = None, data: PreparedData | None = None) -> RunResult:
    """Train one model; with ``out`` everything is written to that run directory (resumable with ``resume``).
    The run directory is locked while the run writes to it: a second process using it fails at once, naming it."""
    if isinstance(config, dict):
        config = RunConfig.parse(config)
    if out is None:
        return _train(config, None, resume=resume, cache_dir=cache_dir, data=data)
    run_dir = Path(out)
    if resume and not (run_dir / "config.json").exists():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json) — nothing to resume")
    with DirectoryLock(run_dir):
        return _train(config, run_dir, resume=resume, cache_dir=cache_dir, data=data)


def _train(config: RunConfig, run_dir: Path | None, *, resume: bool, cache_dir: str | Path | None,
           data: PreparedData | None) -> RunResult:
    if run_dir is not None:
        if resume:
            config = read_run_config(run_dir)
        elif (run_dir / "last.pt").exists():
            raise CheckpointError(f"{run_dir}: holds a previous run; pass --resume to continue it or choose "
                                  "another --out")
    t0 = time.perf_counter()
    if data is None:
        data = prepare_spec(config.data, cache_dir)
    prep_seconds = time.perf_counter() - t0
    if not config.train.quiet:
        for msg in data.skipped + data.warnings:
            print(f"warning: {msg}")
    objective = build_objective(config.objective, data.features)
    torch.manual_seed(config.train.seed)  # the initial weights are part of the seeded run
    model = build_model(config.model, data.features, config.params)
    check_heads(model, objective, data.splits["valid"], config.model)
    if run_dir is not None:
        config = config.model_copy(update={"data": config.data.with_absolute_paths()})
        atomic_write_json(run_dir / "config.json", config.to_dict())
        atomic_write_text(run_dir / "encoders.json", data.encoders.to_json())
        atomic_write_json(run_dir / "features.json", data.features.to_dict())
    trainer = Trainer(model, config.train, run_dir, objective=objective)
    fit = trainer.fit(data.splits["train"], data.splits["valid"], resume=resume)
    sample = _sample_batch(data.splits["valid"])
    report = {
        "model": config.model,
        "dataset": data.name,
        "best_epoch": fit.best_epoch,
        "heads": objective.heads,
        "monitor": trainer.monitor,
        "valid": objective_metrics(fit.best_metrics, objective),
        "params": count_parameters(model),
        "flops_per_example": flops_per_example(model, sample),
        "train_rows_per_s": fit.train_rows_per_s,
        "inference_rows_per_s": fit.best_metrics.get("inference_rows_per_s"),
        "train_seconds": fit.train_seconds,
        "prepare_seconds": prep_seconds,
        "prepared_from_cache": data.from_cache,
        "epochs_run": len(fit.history),
        "steps": fit.steps,
        "stopped_early": fit.stopped_early,
        "skipped_rows": data.skipped,
        "warnings": data.warnings,
    }
    if "test" in data.splits and len(data.splits["test"]):
        m = evaluate_data(model, data.splits["test"], objective, batch_size=config.train.eval_batch_size,
                          bf16=config.train.bf16)
        report["test"] = objective_metrics(m, objective)
    if run_dir is not None:
        atomic_write_json(run_dir / "report.json", report)
        if fit.history:
            plot_curves(fit.history, objective.metric_names(), run_dir / "curves.png",
                        title=f"{config.model} on {data.name}")
    return RunResult(run_dir, model, data, fit, report, objective)


# --------------------------------------------------------------------------------------------- using a run
@dataclass
class LoadedRun:
    config: RunConfig
    model: nn.Module
    encoders: Encoders
    features: FeatureSet
    objective: Objective


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the trained model of a run directory (best weights) with its encoders."""
    run_dir = Path(run_dir)
    for f in ("config.json", "encoders.json", "features.json", "best.pt"):
        if not (run_dir / f).exists():
            raise CheckpointError(f"{run_dir}: not a finished run directory ({f} is missing)")
    config = read_run_config(run_dir)
    encoders = Encoders.from_json((run_dir / "encoders.json").read_text())
    features = FeatureSet.from_dict(json.loads((run_dir / "features.json").read_text()))
    model = build_model(config.model, features, config.params)
    objective = build_objective(config.objective, features)
    state = load_checkpoint(run_dir / "best.pt")
    try:
        model.load_state_dict(state["model"])
        objective.load_state_dict(state.get("objective", {}))
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir / 'best.pt'}: does not match the run's model: {exc}") from None
    model.eval()
    return LoadedRun(config, model, encoders, features, objective)
