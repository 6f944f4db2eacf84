"""Python API, mirroring the CLI.

>>> from rankcraft import api
>>> run = api.train(api.RunConfig(data={"recipe": "synthetic", "rows": 20000}, model="dcnv2",
...                               train={"epochs": 2}), out="runs/dcnv2")
>>> api.evaluate("runs/dcnv2", "new_rows.csv")          # metrics dict
>>> api.predict("runs/dcnv2", "new_rows.csv", "scores.csv")

A run directory holds ``config.json`` (the resolved :class:`RunConfig`), ``features.json`` and ``encoders.json``
(fitted on the training split), ``metrics.jsonl`` (one line per epoch), ``report.json`` (final metrics, FLOPs,
parameters, timings), ``best.pt`` (best weights) and ``last.pt`` (state to resume from).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from rankcraft.data.dataset import (
    ColumnData,
    DataSource,
    PreparedData,
    encode_file,
    prepare,
)
from rankcraft.data.encoders import Encoders, describe_skips
from rankcraft.data.features import FeatureSet
from rankcraft.data.recipes import get_source, schema_source
from rankcraft.data.schema import Schema, format_validation_error, read_yaml_file
from rankcraft.errors import CheckpointError, ConfigError
from rankcraft.models.registry import build_model, validate_params
from rankcraft.training.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    load_checkpoint,
)
from rankcraft.training.profile import count_parameters, flops_per_example, slice_batch
from rankcraft.training.trainer import FitResult, TrainConfig, Trainer, predict_proba
from rankcraft.training.trainer import evaluate as evaluate_data


class DataSpec(BaseModel):
    """Which data to train on: a built-in ``recipe`` (with ``data_dir``) or a ``schema`` (YAML path or mapping)
    with ``train`` / ``valid`` / ``test`` files."""

    model_config = ConfigDict(extra="forbid")

    recipe: str | None = None
    data_dir: str | None = None
    schema_file: str | None = None
    schema_inline: dict | None = Field(default=None, alias="schema")
    train: str | None = None
    valid: str | None = None
    test: str | None = None
    rows: int | None = Field(default=None, ge=10)  # synthetic recipe only
    seed: int = 0
    valid_fraction: float = Field(default=0.1, gt=0, lt=1)
    options: dict = Field(default_factory=dict)  # recipe-specific options, e.g. {max_len: 100} for ml-100k-seq

    def source(self) -> DataSource:
        if self.recipe:
            opts = dict(self.options)
            if self.recipe == "synthetic":
                opts.update(rows=self.rows or 50_000, seed=self.seed)
            try:
                return get_source(self.recipe, self.data_dir, **opts)
            except TypeError as exc:
                raise ConfigError(f"data.options: {exc}") from None
        if self.schema_file or self.schema_inline is not None:
            schema = (Schema.from_yaml(self.schema_file) if self.schema_file
                      else Schema.from_dict(self.schema_inline, origin="data.schema"))
            if not self.train:
                raise ConfigError("data: a schema needs a 'train' file")
            return schema_source(schema, self.train, self.valid, self.test, valid_fraction=self.valid_fraction,
                                 seed=self.seed)
        raise ConfigError("data: give a 'recipe' (e.g. frappe_x1) or a 'schema' with 'train' (and 'valid') files")


def read_config_yaml(path: str | Path) -> dict:
    """A YAML config file as a mapping (``{}`` when empty); unreadable or invalid files are a ConfigError."""
    path = Path(path)
    obj = read_yaml_file(path, "config file")
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: a config file is a YAML mapping (sections data, train, ...), "
                          f"got {type(obj).__name__}")
    return obj


class RunConfig(BaseModel):
    """Everything that defines a training run."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    data: DataSpec = Field(default_factory=lambda: DataSpec(recipe="synthetic"))
    model: str = "dnn"
    params: dict = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=TrainConfig)

    @classmethod
    def parse(cls, obj: dict, origin: str = "<config>") -> "RunConfig":
        try:
            cfg = cls.model_validate(obj)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid config:\n{format_validation_error(exc, obj)}") from None
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


def _sample_batch(data: ColumnData, n: int = 256) -> dict:
    return slice_batch(next(data.batches(n)), n)


def train(config: RunConfig | dict, *, out: str | Path | None = None, resume: bool = False,
          cache_dir: str | Path | None = None, data: PreparedData | None = None) -> RunResult:
    """Train one model; with ``out`` everything is written to that run directory (resumable with ``resume``)."""
    if isinstance(config, dict):
        config = RunConfig.parse(config)
    run_dir = Path(out) if out is not None else None
    if run_dir is not None:
        if resume:
            if not (run_dir / "config.json").exists():
                raise CheckpointError(f"{run_dir}: not a run directory (no config.json) — nothing to resume")
            config = RunConfig.parse(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
        elif (run_dir / "last.pt").exists():
            raise CheckpointError(f"{run_dir}: holds a previous run; pass --resume to continue it or choose "
                                  "another --out")
        run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if data is None:
        data = prepare(config.data.source(), cache_dir=cache_dir)
    prep_seconds = time.perf_counter() - t0
    if not config.train.quiet:
        for msg in data.skipped:
            print(f"warning: {msg}")
    torch.manual_seed(config.train.seed)  # the initial weights are part of the seeded run
    model = build_model(config.model, data.features, config.params)
    if run_dir is not None:
        atomic_write_json(run_dir / "config.json", config.to_dict())
        atomic_write_text(run_dir / "encoders.json", data.encoders.to_json())
        atomic_write_json(run_dir / "features.json", data.features.to_dict())
    trainer = Trainer(model, config.train, run_dir)
    fit = trainer.fit(data.splits["train"], data.splits["valid"], resume=resume)
    sample = _sample_batch(data.splits["valid"])
    report = {
        "model": config.model,
        "dataset": data.name,
        "best_epoch": fit.best_epoch,
        "valid": {k: v for k, v in fit.best_metrics.items() if k in ("auc", "logloss", "ne", "gauc", "calibration",
                                                                      "rows")},
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
    }
    if "test" in data.splits and len(data.splits["test"]):
        m = evaluate_data(model, data.splits["test"], batch_size=config.train.eval_batch_size, bf16=config.train.bf16)
        report["test"] = {k: v for k, v in m.items() if k != "inference_rows_per_s"}
    if run_dir is not None:
        atomic_write_json(run_dir / "report.json", report)
    return RunResult(run_dir, model, data, fit, report)


# --------------------------------------------------------------------------------------------- using a run
@dataclass
class LoadedRun:
    config: RunConfig
    model: nn.Module
    encoders: Encoders
    features: FeatureSet


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild the trained model of a run directory (best weights) with its encoders."""
    run_dir = Path(run_dir)
    for f in ("config.json", "encoders.json", "features.json", "best.pt"):
        if not (run_dir / f).exists():
            raise CheckpointError(f"{run_dir}: not a finished run directory ({f} is missing)")
    config = RunConfig.parse(json.loads((run_dir / "config.json").read_text()), str(run_dir / "config.json"))
    encoders = Encoders.from_json((run_dir / "encoders.json").read_text())
    features = FeatureSet.from_dict(json.loads((run_dir / "features.json").read_text()))
    model = build_model(config.model, features, config.params)
    state = load_checkpoint(run_dir / "best.pt")
    try:
        model.load_state_dict(state["model"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{run_dir / 'best.pt'}: does not match the run's model: {exc}") from None
    model.eval()
    return LoadedRun(config, model, encoders, features)


def evaluate(run_dir: str | Path, file: str | Path) -> dict:
    """Metrics of a run's model on a labelled file (auc, logloss, ne, calibration, rows, gauc with a user column)."""
    run = load_run(run_dir)
    data, raw = encode_file(run.encoders, file)
    m = evaluate_data(run.model, data, batch_size=run.config.train.eval_batch_size)
    m.pop("inference_rows_per_s", None)
    if raw.skipped:
        m["skipped"] = describe_skips(raw)
    return m


def predict(run_dir: str | Path, file: str | Path, out: str | Path | None = None) -> np.ndarray:
    """Scores (probabilities) for every row of ``file`` in input order; labels may be absent. With ``out``, a CSV
    with one ``score`` column is written atomically."""
    run = load_run(run_dir)
    data, raw = encode_file(run.encoders, file, require_labels=False)
    if raw.skipped:
        raise ConfigError(f"{file}: {len(raw.skipped)} row(s) could not be read; predictions must cover every row "
                          f"({describe_skips(raw)})")
    p = predict_proba(run.model, data, batch_size=run.config.train.eval_batch_size)
    if out is not None:
        import io

        buf = io.BytesIO()
        pacsv.write_csv(pa.table({"score": pa.array(p.astype(np.float64))}), buf)
        from rankcraft.training.checkpoint import atomic_write_bytes

        atomic_write_bytes(out, buf.getvalue())
    return p
