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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rankcraft.config import parse_model, read_config_yaml
from rankcraft.data.dataset import ColumnData, PreparedData
from rankcraft.data.encoders import Encoders
from rankcraft.data.features import FeatureSet
from rankcraft.data.partitions import PreparedStream
from rankcraft.data.spec import DataSpec, prepare_spec, prepare_stream_spec
from rankcraft.errors import CheckpointError, ConfigError, DataError
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
from rankcraft.training.distributed import process_group, spawn_workers
from rankcraft.training.evaluation import evaluate as evaluate_data
from rankcraft.training.loops import FitResult, StreamLoop
from rankcraft.training.objectives import Objective, ObjectiveConfig, build_objective
from rankcraft.training.profile import count_parameters, flops_per_example, slice_batch
from rankcraft.training.trainer import TrainConfig, Trainer
from rankcraft.training.windows import (
    WindowsConfig,
    fit_windows,
    save_windows,
    window_tasks,
)


class StreamConfig(BaseModel):
    """Stream training (``data.partitions`` set): one pass per partition in time order, progressive validation."""

    model_config = ConfigDict(extra="forbid")

    passes: int = Field(default=1, ge=1)  # passes over each partition
    #: train on the first k partitions only, then evaluate the frozen model on the rest (a baseline)
    freeze_after: int | None = Field(default=None, ge=1)


class RunConfig(BaseModel):
    """Everything that defines a training run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: DataSpec = Field(default_factory=lambda: DataSpec(recipe="synthetic"))
    model: str = "dnn"
    params: dict = Field(default_factory=dict)
    #: what to learn from which labels (default: binary on the schema's only label); see training/objectives.py
    objective: ObjectiveConfig | None = None
    train: TrainConfig = Field(default_factory=TrainConfig)
    stream: StreamConfig = Field(default_factory=StreamConfig)
    #: warm start (incremental training): a finished stream run directory whose weights and frozen encoders this
    #: run starts from; it trains on the partitions after the last one that run trained on
    init_from: str | None = None
    #: serve any conversion window from fixed-window heads (training/windows.py); absent: heads only
    windows: WindowsConfig | None = None

    @classmethod
    def parse(cls, obj: dict, origin: str = "<config>") -> "RunConfig":
        cfg = parse_model(cls, obj, origin)
        validate_params(cfg.model, cfg.params)
        if cfg.windows is not None and cfg.data.partitions is not None:
            raise ConfigError(f"{origin}: 'windows' is fitted on an ordinary training split; stream runs "
                              "(data.partitions) do not fit it yet")
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
    data: PreparedData | PreparedStream
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
    if not (len(objective.heads) == 1 and len(out.logits) == 1):
        missing = [h for h in objective.heads if h not in out.logits]
        if missing:
            raise ConfigError(f"model '{name}': the objective needs the head(s) {', '.join(missing)}; the model has "
                              f"{', '.join(out.heads)}")


def read_run_config(run_dir: Path) -> RunConfig:
    """The :class:`RunConfig` saved in a run directory; unreadable or invalid JSON is a named ConfigError."""
    path = run_dir / "config.json"
    obj = read_json(path, "run config")
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: not a run config (a JSON object)")
    return RunConfig.parse(obj, str(path))


def train(config: RunConfig | dict, *, out: str | Path | None = None, resume: bool = False,
          cache_dir: str | Path | None = None, data: PreparedData | None = None, workers: int = 1,
          after_epoch: Callable[[int, dict], bool] | None = None) -> RunResult:
    """Train one model; with ``out`` everything is written to that run directory (resumable with ``resume``).
    The run directory is locked while the run writes to it: a second process using it fails at once, naming it.

    ``workers > 1`` trains with that many processes on this machine (data-parallel, see
    :mod:`rankcraft.training.distributed`); it needs ``out``. Inside an already initialised process group (a Ray
    Train worker, ``torchrun``), call it with ``workers=1``: every process trains its shard, rank 0 writes.

    ``after_epoch(epoch, valid_metrics) -> bool`` (one process only): True stops training after that epoch (see
    :class:`~rankcraft.training.trainer.Trainer`)."""
    if isinstance(config, dict):
        config = RunConfig.parse(config)
    if workers < 1:
        raise ConfigError("workers must be >= 1")
    if out is None:
        if workers > 1:
            raise ConfigError("training with several workers needs a run directory (--out)")
        return _train(config, None, resume=resume, cache_dir=cache_dir, data=data, after_epoch=after_epoch)
    run_dir = Path(out)
    if resume and not (run_dir / "config.json").exists():
        raise CheckpointError(f"{run_dir}: not a run directory (no config.json) — nothing to resume")
    rank, _ = process_group()
    if rank != 0:  # rank 0 holds the lock for the process group
        return _train(config, run_dir, resume=resume, cache_dir=cache_dir, data=data)
    with DirectoryLock(run_dir):
        if workers == 1:
            return _train(config, run_dir, resume=resume, cache_dir=cache_dir, data=data, after_epoch=after_epoch)
        if resume:
            config = read_run_config(run_dir)
        else:
            _check_fresh(run_dir)
        _prepare(config, cache_dir)  # once, here: the workers then load it from the cache
        spawn_workers(_train_worker, workers, config, run_dir, resume, cache_dir,
                      threads=config.train.threads)
        return _result_of(run_dir, cache_dir)


def _train_worker(config: RunConfig, run_dir: Path, resume: bool, cache_dir) -> None:
    _train(config, run_dir, resume=resume, cache_dir=cache_dir, data=None)


def _result_of(run_dir: Path, cache_dir) -> RunResult:
    """The RunResult of a run that other processes trained (read back from its run directory)."""
    loaded = load_run(run_dir)
    report = read_json(run_dir / "report.json", "run report")
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    fit = FitResult(best_epoch=int(report.get("best_epoch", 0)), best_metrics=report.get("valid", {}),
                    history=history, train_rows_per_s=report.get("train_rows_per_s") or float("nan"),
                    train_seconds=report.get("train_seconds", 0.0), stopped_early=report.get("stopped_early", False),
                    steps=report.get("steps", 0))
    data = _prepare(loaded.config, cache_dir)
    return RunResult(run_dir, loaded.model, data, fit, report, loaded.objective)


def _check_fresh(run_dir: Path) -> None:
    if (run_dir / "last.pt").exists():
        raise CheckpointError(f"{run_dir}: holds a previous run; pass --resume to continue it or choose "
                              "another --out")


def _prepare(config: RunConfig, cache_dir, encoders: Encoders | None = None) -> PreparedData | PreparedStream:
    if config.data.partitions is not None:
        if encoders is None and config.init_from:
            encoders = Encoders.from_json(Path(config.init_from, "encoders.json").read_text())
        return prepare_stream_spec(config.data, cache_dir, encoders=encoders)
    if config.init_from:
        raise ConfigError("init_from (warm start) needs partitioned data (data.partitions): the new run trains on "
                          "the partitions after the ones the earlier run saw, with its frozen encoders")
    return prepare_spec(config.data, cache_dir)


@dataclass
class WarmStart:
    """What a run warm-started with ``init_from`` takes from the earlier run."""

    run_dir: Path
    state: dict  # model weights
    encoders: Encoders
    trained: list[str]  # the partitions it trained on, in order


def read_warm_start(config: RunConfig) -> WarmStart:
    """Check that ``config.init_from`` is a stream run of the same model, parameters and schema, and read its
    final weights, frozen encoders and trained partitions."""
    src = Path(config.init_from)
    for f in ("config.json", "encoders.json", "best.pt"):
        if not (src / f).exists():
            raise CheckpointError(f"init_from {src}: not a finished run directory ({f} is missing)")
    prev = read_run_config(src)
    if (prev.model, prev.params) != (config.model, config.params):
        raise ConfigError(f"init_from {src}: that run trained model '{prev.model}' with params {prev.params}; this "
                          f"run asks for '{config.model}' with {config.params} — warm start needs the same model")
    encoders = Encoders.from_json((src / "encoders.json").read_text())
    schema = config.data.source().schema
    if encoders.schema.fingerprint() != schema.fingerprint():
        old, new = encoders.schema.model_dump(), schema.model_dump()
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"init_from {src}: its schema differs from this data's schema (in: {', '.join(diff)}); "
                          "warm start needs the same features and labels")
    report = read_json(src / "report.json", "run report") if (src / "report.json").exists() else {}
    trained = list(report.get("stream", {}).get("trained", [])) if isinstance(report, dict) else []
    if not trained:
        raise ConfigError(f"init_from {src}: not a finished stream run (its report.json lists no trained "
                          "partitions)")
    return WarmStart(src, load_checkpoint(src / "best.pt")["model"], encoders, trained)


def _stream_start(stream: PreparedStream, warm: WarmStart | None) -> int:
    """The first partition to train: after the last one the warm-start run trained on. A partition older than that
    one which the earlier run never saw is out of order (it would be trained after newer data)."""
    if warm is None:
        return 0
    last = warm.trained[-1]
    seen = set(warm.trained)
    keys = stream.keys()
    late = [k for k in keys if k < last and k not in seen]
    if late:
        raise DataError(f"partitions out of order: {', '.join(late[:3])} precede{'s' if len(late) == 1 else ''} "
                        f"partition {last}, the last one the warm-start run {warm.run_dir} trained on, but that "
                        "run never saw it; retrain from scratch or drop it (data.partitions.first)")
    start = sum(1 for k in keys if k <= last)
    if start >= len(keys):
        raise DataError(f"no new partitions: the warm-start run {warm.run_dir} already trained on every partition "
                        f"up to {last}")
    return start


def _train(config: RunConfig, run_dir: Path | None, *, resume: bool, cache_dir: str | Path | None,
           data: PreparedData | PreparedStream | None, after_epoch=None) -> RunResult:
    rank, _ = process_group()
    writes = run_dir is not None and rank == 0
    if run_dir is not None:
        if resume:
            config = read_run_config(run_dir)
        elif rank == 0:
            _check_fresh(run_dir)
    warm = read_warm_start(config) if config.init_from else None
    t0 = time.perf_counter()
    if data is None:
        data = _prepare(config, cache_dir, warm.encoders if warm else None)
    prep_seconds = time.perf_counter() - t0
    if not config.train.quiet and rank == 0:
        for msg in data.skipped + data.warnings:
            print(f"warning: {msg}")
    stream = isinstance(data, PreparedStream)
    objective = build_objective(config.objective, data.features)
    torch.manual_seed(config.train.seed)  # the initial weights are part of the seeded run
    model = build_model(config.model, data.features, config.params)
    if warm is not None:
        try:
            model.load_state_dict(warm.state)
        except RuntimeError as exc:
            raise CheckpointError(f"init_from {warm.run_dir}: its weights do not fit this model: {exc}") from None
    probe = data.partitions[0].data() if stream else data.splits["valid"]
    check_heads(model, objective, probe, config.model)
    if writes:
        config = config.model_copy(update={"data": config.data.with_absolute_paths()})
        if config.init_from:
            config = config.model_copy(update={"init_from": str(Path(config.init_from).resolve())})
        atomic_write_json(run_dir / "config.json", config.to_dict())
        atomic_write_text(run_dir / "encoders.json", data.encoders.to_json())
        atomic_write_json(run_dir / "features.json", data.features.to_dict())
    trainer = Trainer(model, config.train, run_dir, objective=objective, after_epoch=after_epoch)
    if stream:
        start = _stream_start(data, warm)
        loop = StreamLoop(data.partitions, passes=config.stream.passes, freeze_after=config.stream.freeze_after,
                          evaluate_first=warm is not None, start=start)
        fit = trainer.run(loop, resume=resume)
    else:
        fit = trainer.fit(data.splits["train"], data.splits["valid"], resume=resume)
    sample = _sample_batch(probe)
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
        "workers": trainer.world,
    }
    if stream:
        report["stream"] = {"progressive": fit.best_metrics, "partitions": [h["partition"] for h in fit.history],
                            "fit_on": data.fit_on, "encoders_fitted_on": data.keys()[:data.fit_on] if warm is None
                            else f"frozen, from {warm.run_dir}", "started_at": data.keys()[start],
                            # every partition these weights have trained on, warm-start runs included
                            "trained": (warm.trained if warm else [])
                            + [h["partition"] for h in fit.history if h.get("trained")]}
    elif "test" in data.splits and len(data.splits["test"]):
        m = evaluate_data(model, data.splits["test"], objective, batch_size=config.train.eval_batch_size,
                          bf16=config.train.bf16)
        report["test"] = objective_metrics(m, objective)
    if config.windows is not None and not stream:
        wtasks = window_tasks(data.encoders.schema, objective)
        wi = fit_windows(config.windows, data.encoders.schema, objective, data.features, data.splits["train"])
        report["windows"] = {"anchors_days": wi.anchors, "heads": [t[0] for t in wtasks],
                             "pooled_beta_per_day": wi.global_beta, "groups": len(wi.betas)}
        if writes:
            save_windows(run_dir, wi, config.windows, wtasks)
    if writes:
        atomic_write_json(run_dir / "report.json", report)
        if fit.history:
            plot_curves(fit.history, objective.metric_names(), run_dir / "curves.png",
                        title=f"{config.model} on {data.name}" + (" (progressive validation)" if stream else ""),
                        x="partition" if stream else "epoch")
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
