"""Search configuration: the typed ``search.yaml`` (strategy, space, budget, fidelity, objective, zoo references).

The strategy's own options are a section named after it (``evolution:``, ``oneshot:``, ``dnas:``, ``predictor_rl:``,
…), validated against the options model the strategy registered (:mod:`rankcraft.search.registry`)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from rankcraft.data.schema import format_validation_error
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError
from rankcraft.search.registry import strategies
from rankcraft.search.space import SpaceConfig
from rankcraft.training.trainer import TrainConfig


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


class TableExecutorConfig(_Strict):
    """Run the search against a tabular benchmark (:mod:`rankcraft.search.tabular`) instead of training:
    candidates are looked up at ``fidelity`` and proposals are restricted to the table's architectures."""

    path: str
    fidelity: str = "low"


class SearchConfig(BaseModel):
    # extra keys are strategy sections, validated against the registry (see _sections)
    model_config = ConfigDict(extra="allow")

    data: dict = Field(default_factory=lambda: {"recipe": "synthetic"})
    space: str | SpaceConfig = "small"
    strategy: str = "random"
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
    #: evaluate candidates by lookup in a tabular benchmark instead of training them
    table: TableExecutorConfig | None = None
    #: proposal pool of the strategies that choose among sampled architectures (predictor_rl, tpe): this many
    #: uniform samples of the space within the FLOPs cap (a table's own architectures when ``table`` is set)
    pool_size: int = Field(default=5000, ge=10)
    #: zoo models trained at the same fidelity as references on the front: a name (hyperparameters from the
    #: dataset's benchmark presets when it has them, else the defaults) or {model, params}
    zoo: list[str | ZooRef] = Field(default_factory=lambda: ["dnn", "deepfm", "dcnv2"])
    #: optional: the top candidates re-trained with more seeds after the search (outside the budget)
    confirm: ConfirmConfig | None = None

    _sections: dict[str, BaseModel] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _sections_of_strategies(self) -> SearchConfig:
        known = strategies()
        if self.strategy not in known:
            raise ValueError(f"strategy: unknown search strategy '{self.strategy}'; choose from {', '.join(known)}")
        for key, value in (self.model_extra or {}).items():
            if key not in known:
                raise ValueError(f"unknown key '{key}' (a strategy section must be named after a strategy: "
                                 f"{', '.join(known)})")
            try:
                self._sections[key] = known[key].options.model_validate(value if value is not None else {})
            except ValidationError as exc:
                raise ValueError(f"section '{key}': {format_validation_error(exc, value)}") from None
        return self

    def options(self, strategy: str | None = None) -> BaseModel:
        """The typed options of ``strategy`` (default: the search's), its defaults when the section is absent."""
        name = strategy or self.strategy
        return self._sections.get(name) or strategies()[name].options()

    def sections(self) -> list[str]:
        """The strategy sections the config gives."""
        return list(self._sections)

    @classmethod
    def parse(cls, obj: dict, origin: str = "search config") -> SearchConfig:
        if isinstance(obj, dict):
            known = strategies()
            fields = set(cls.model_fields)
            for key, value in obj.items():
                if key in fields or key not in known:
                    continue
                try:
                    known[key].options.model_validate(value if value is not None else {})
                except ValidationError as exc:
                    lines = format_validation_error(exc, value).splitlines()
                    lines = [f"  {key}.{ln.strip()}" for ln in lines]
                    raise ConfigError(f"{origin}: invalid search config:\n" + "\n".join(lines)) from None
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
        """The JSON form, with every given section and the running strategy's options at their validated values
        (a resumed search continues with these, even if a default changes later)."""
        out = self.model_dump(mode="json")
        for name in {*self._sections, self.strategy}:
            out[name] = self.options(name).model_dump(mode="json")
        return out
