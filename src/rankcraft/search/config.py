"""Search configuration: the typed ``search.yaml`` (strategy, space, budget, fidelity, objective, zoo references)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rankcraft.data.schema import format_validation_error
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError
from rankcraft.search.space import SpaceConfig
from rankcraft.training.trainer import TrainConfig

Strategy = Literal["random", "evolution", "oneshot", "dnas"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ConfirmConfig(_Strict):
    """Re-train the ``top_k`` searched candidates with more seeds after the search, and choose ``best.json`` by the
    mean objective over all seeds: a single seed's score carries seed noise, and the best of many noisy scores is
    biased upwards (the winner's curse)."""

    top_k: int = Field(default=3, ge=1)
    seeds: list[int] = Field(default_factory=lambda: [1, 2], min_length=1)


class ZooRef(_Strict):
    model: str
    params: dict = Field(default_factory=dict)
    name: str | None = None  # label on the front (default: the model name)


class EvolutionConfig(_Strict):
    """Regularized (aging) evolution: keep the ``population`` most recent candidates; each child mutates the best
    of ``sample`` random members."""

    population: int = Field(default=12, ge=2)
    sample: int = Field(default=4, ge=1)
    #: zoo models that start the population as architectures (a name — hyperparameters from the dataset's
    #: benchmark presets — or {model, params}); the rest of the population is sampled from the space
    seeds: list[str | ZooRef] = Field(default_factory=list)


class OneShotConfig(_Strict):
    steps: int = Field(default=1500, ge=1)  # supernet training steps
    warmup: float = Field(default=0.25, ge=0, le=1)  # fraction of steps with decaying largest-path sampling
    batch_size: int | None = Field(default=None, ge=1)  # default: the candidates' batch size
    lr: float = Field(default=1e-3, gt=0)
    score_batches: int = Field(default=4, ge=1)  # validation batches for inherited-weight scores
    candidates: int = Field(default=300, ge=1)  # candidates scored by evolution over inherited weights
    population: int = Field(default=32, ge=2)
    sample: int = Field(default=8, ge=1)
    top_k: int = Field(default=3, ge=1)  # best scored candidates retrained from scratch
    checkpoint_every: int = Field(default=200, ge=1)


class DnasConfig(_Strict):
    lambdas: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.5])  # FLOPs penalty weights, one run each
    steps: int = Field(default=1500, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    lr: float = Field(default=1e-3, gt=0)
    alpha_lr: float = Field(default=3e-3, gt=0)
    warmup: float = Field(default=0.1, ge=0, lt=1)  # α frozen for this fraction of steps
    tau: float = Field(default=1.0, gt=0)
    checkpoint_every: int = Field(default=200, ge=1)


class Budget(_Strict):
    trials: int | None = Field(default=None, ge=1)
    minutes: float | None = Field(default=None, gt=0)


def parse_budget(text: str | float | None) -> Budget:
    """``"50"`` → 50 trials; ``"30m"`` / ``"1.5h"`` / ``"90s"`` → a time budget."""
    if text is None:
        return Budget()
    s = str(text).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(m|min|h|s)?", s)
    if not m:
        raise ConfigError(f"--budget '{text}': give a number of trials (e.g. 50) or a time (30m, 1.5h, 90s)")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None:
        if value != int(value) or value < 1:
            raise ConfigError(f"--budget '{text}': a trial budget is a positive whole number")
        return Budget(trials=int(value))
    return Budget(minutes=value * {"m": 1, "min": 1, "h": 60, "s": 1 / 60}[unit])


class SearchConfig(_Strict):
    data: dict = Field(default_factory=lambda: {"recipe": "synthetic"})
    space: str | SpaceConfig = "small"
    strategy: Strategy = "random"
    budget: Budget = Field(default_factory=lambda: Budget(trials=20))
    #: quality objective, minimised: validation logloss, NE, or "auc" (then 1 − AUC is minimised)
    objective: Literal["logloss", "ne", "auc"] = "logloss"
    #: a cap on FLOPs/example: proposals above it are not trained (resampled / mutated again)
    max_flops: float | None = Field(default=None, gt=0)
    embedding_dim: int = Field(default=10, ge=1)
    #: TrainConfig fields for every standalone candidate (the fidelity: ``max_steps`` limits training)
    train: dict = Field(default_factory=lambda: {"batch_size": 4096, "lr": 1e-3, "epochs": 1, "max_steps": 300,
                                                 "lr_schedule": "constant", "seed": 2024})
    seed: int = 0
    batch: int = Field(default=2, ge=1)  # candidates proposed per round (independent of workers: reproducible)
    workers: int = Field(default=1, ge=1)
    threads_per_task: int | None = Field(default=None, ge=1)
    ray_address: str | None = None
    #: zoo models trained at the same fidelity as references on the front: a name (hyperparameters from the
    #: dataset's benchmark presets when it has them, else the defaults) or {model, params}
    zoo: list[str | ZooRef] = Field(default_factory=lambda: ["dnn", "deepfm", "dcnv2"])
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)
    #: optional: the top candidates re-trained with more seeds after the search (outside the budget)
    confirm: ConfirmConfig | None = None
    oneshot: OneShotConfig = Field(default_factory=OneShotConfig)
    dnas: DnasConfig = Field(default_factory=DnasConfig)

    @classmethod
    def parse(cls, obj: dict, origin: str = "search config") -> SearchConfig:
        try:
            cfg = cls.model_validate(obj)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid search config:\n{format_validation_error(exc, obj)}") from None

        try:
            DataSpec.model_validate(cfg.data)
            TrainConfig.model_validate(cfg.train)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid data/train section:\n{format_validation_error(exc)}") from None
        if cfg.budget.trials is None and cfg.budget.minutes is None:
            raise ConfigError(f"{origin}: give a budget (trials or minutes)")
        return cfg

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")
