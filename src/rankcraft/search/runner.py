"""The architecture search driver: configuration, budget, trial bookkeeping and the search directory.

A search directory holds::

    config.json      the resolved SearchConfig (a resumed search must use the same one)
    trials.db        the Optuna trial store (unless --storage names another database)
    supernet.pt      one-shot supernet checkpoint (oneshot); dnas-<λ>.pt per penalty weight (dnas)
    front.png        the Pareto front (validation objective vs FLOPs/example) with the zoo references
    report.md/json   the front, its hypervolume, the best architecture and the zoo comparison
    best.json        the best searched architecture: {"arch": ..., "params": ..., "metrics": ..., "flops": ...}

Every candidate evaluation is recorded in the store before and after it runs, so a search killed at any moment
(``kill -9``) continues with ``resume=True``: completed trials are reused (candidates are keyed by a hash of their
architecture and fidelity), interrupted ones are marked failed and re-run, and the strategies replay their
seeded decisions over the stored results.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rankcraft.errors import ConfigError
from rankcraft.search.arch import Arch
from rankcraft.search.space import SpaceConfig, get_space

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
        from rankcraft.data.schema import format_validation_error

        try:
            cfg = cls.model_validate(obj)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid search config:\n{format_validation_error(exc, obj)}") from None
        from rankcraft.api import DataSpec
        from rankcraft.training.trainer import TrainConfig

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


def arch_key(arch: Arch | dict, tag: str) -> str:
    key = arch.key() if isinstance(arch, Arch) else json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return f"{tag}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


class SearchContext:
    """What a strategy sees: the space, the data, the store, the executor, the budget and ``evaluate``."""

    def __init__(self, cfg: SearchConfig, out: Path, store, executor, data, *, cache_dir=None, progress=True):
        self.cfg, self.out, self.store, self.executor, self.data = cfg, out, store, executor, data
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.notes: list[str] = []  # things the user should know, printed (with progress) and put in the report
        self._seeds: list[Arch] | None = None
        self.space = get_space(cfg.space, raw_dense=bool(data.features.numeric))
        self.t_start = time.monotonic()
        self.elapsed_before = float(store.get_meta("elapsed_seconds", 0.0))

    # -- budget ----------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def save_elapsed(self) -> None:
        self.store.set_meta("elapsed_seconds", self.elapsed())

    def time_fraction(self) -> float:
        """Fraction of a time budget spent (0 without one)."""
        m = self.cfg.budget.minutes
        return self.elapsed() / (60 * m) if m else 0.0

    def searched(self, fidelity: str = "standalone") -> list:
        return [t for t in self.store.trials() if t.strategy == self.cfg.strategy
                and t.fidelity.get("tag") == fidelity]

    def trials_left(self) -> int | None:
        if self.cfg.budget.trials is None:
            return None
        return self.cfg.budget.trials - len(self.searched())

    def budget_left(self) -> bool:
        left = self.trials_left()
        if left is not None and left <= 0:
            return False
        return self.time_fraction() < 1.0

    # -- evaluation ----------------------------------------------------------------------------------------------
    @property
    def objective_name(self) -> str:
        """How the minimised objective is labelled in reports (``1-auc`` for the AUC objective)."""
        return "1-auc" if self.cfg.objective == "auc" else self.cfg.objective

    def objective(self, metrics: dict) -> float:
        """The minimised objective of a metrics dict (NaN when the metric is missing)."""
        v = float(metrics.get(self.cfg.objective, math.nan))
        return 1.0 - v if self.cfg.objective == "auc" else v

    # -- proposals within the FLOPs cap ------------------------------------------------------------------------
    def flops(self, arch: Arch) -> float:
        from rankcraft.search.cost import arch_flops

        return arch_flops(arch, self.data.features, self.cfg.embedding_dim)

    def within_cap(self, arch: Arch) -> bool:
        """Whether ``arch`` builds on this data (shapes resolve) and is within ``max_flops``."""
        try:
            f = self.flops(arch)
        except ConfigError:
            return False
        return self.cfg.max_flops is None or f <= self.cfg.max_flops

    def sample(self, rng) -> Arch:
        """A space sample within the FLOPs cap (up to 1000 draws)."""
        for _ in range(1000):
            a = self.space.sample(rng)
            if self.within_cap(a):
                return a
        raise ConfigError(f"max_flops {self.cfg.max_flops:,.0f}: no architecture of space '{self.space.name}' "
                          "within the cap in 1000 samples; raise the cap or use a smaller space")

    def mutate(self, arch: Arch, rng) -> Arch:
        """A mutation of ``arch`` that changes what it computes (not only dead nodes) and stays within the FLOPs
        cap (up to 100 tries, then a fresh sample)."""
        for _ in range(100):
            a = self.space.mutate(arch, rng)
            if a.live_key() != arch.live_key() and self.within_cap(a):
                return a
        return self.sample(rng)

    def note(self, text: str) -> None:
        self.notes.append(text)
        if self.progress:
            print(f"note: {text}")

    def seed_archs(self) -> list[Arch]:
        """The evolution seeds as architectures (zoo models over the FLOPs cap are left out, with a note)."""
        from rankcraft.search.human import zoo_arch

        if self._seeds is not None:
            return self._seeds
        out = []
        for ref in self.resolve_refs(self.cfg.evolution.seeds):
            a = zoo_arch(ref.model, ref.params)
            if not self.within_cap(a):
                self.note(f"evolution seed {ref.name}: {self.flops(a):,.0f} FLOPs/example is over max_flops "
                          f"{self.cfg.max_flops:,.0f}; left out")
                continue
            out.append(a)
        self._seeds = out
        return out

    def train_config(self, seed: int | None = None) -> dict:
        """The candidates' TrainConfig fields, with the training seed replaced for a confirmation run."""
        return self.cfg.train if seed is None else {**self.cfg.train, "seed": seed}

    def task(self, key: str, model: str, params: dict, seed: int | None = None) -> dict:
        return {"key": key, "model": model, "params": params, "data": self.cfg.data,
                "train": self.train_config(seed), "cache_dir": self.cache_dir}

    def arch_params(self, arch: Arch) -> dict:
        return {"embedding_dim": self.cfg.embedding_dim, "arch": arch.to_dict()}

    def evaluate(self, archs: list[Arch], *, strategy: str | None = None, extra: list[dict] | None = None,
                 count: bool = True, seed: int | None = None) -> list[float]:
        """Train each architecture standalone at the search fidelity (in parallel) and record it; returns the
        objective per architecture (``inf`` for a failed one). Architectures already in the store are not
        retrained. With ``count``, the batch is cut to the remaining trial budget. ``seed`` overrides the training
        seed (confirmation runs; their trials are tagged ``seed-<seed>`` and are not search trials)."""
        from rankcraft.search.evaluate import evaluate_task
        from rankcraft.search.parallel import is_failure

        strategy = strategy or self.cfg.strategy
        extra = extra or [{} for _ in archs]
        tag = "standalone" if seed is None else f"seed-{seed}"
        keys = [arch_key(a, tag) for a in archs]
        out: list[float] = [math.inf] * len(archs)
        todo = []
        done_keys = set()
        for idx, (a, k) in enumerate(zip(archs, keys)):
            rec = self.store.get(k)
            if rec is not None:
                out[idx] = self.objective(rec.metrics)
            elif k not in done_keys:
                todo.append(idx)
                done_keys.add(k)
        if count:
            left = self.trials_left()
            if left is not None:
                todo = todo[:max(left, 0)]
        if todo:
            numbers = {}
            for idx in todo:
                numbers[idx] = self.store.start(keys[idx], arch=archs[idx].to_dict(), hparams=self.train_config(seed),
                                                fidelity={"tag": tag, **self._fidelity()},
                                                strategy=strategy, extra=extra[idx])
            tasks = [self.task(keys[idx], "arch", self.arch_params(archs[idx]), seed) for idx in todo]
            results = self.executor.map(evaluate_task, tasks,
                                        progress=f"{strategy}: training {len(tasks)} candidate(s)"
                                        if self.progress else None)
            for idx, res in zip(todo, results):
                self._record(numbers[idx], res, is_failure(res))
                if not is_failure(res) and math.isfinite(self.objective(res["metrics"])):
                    out[idx] = self.objective(res["metrics"])
            for idx in range(len(archs)):  # duplicates within the batch share the first one's result
                if idx not in numbers and out[idx] == math.inf:
                    rec = self.store.get(keys[idx])
                    if rec is not None:
                        out[idx] = self.objective(rec.metrics)
        self.save_elapsed()
        return out

    # -- confirmation --------------------------------------------------------------------------------------------
    def base_seed(self) -> int:
        from rankcraft.training.trainer import TrainConfig

        return int(TrainConfig.model_validate(self.cfg.train).seed)

    def confirm(self) -> None:
        """Re-train the ``confirm.top_k`` best searched candidates with each of ``confirm.seeds``."""
        c = self.cfg.confirm
        ranked = sorted(self.searched(), key=lambda t: self.objective(t.metrics))[: c.top_k]
        if not ranked:
            return
        archs = [Arch.model_validate(t.arch) for t in ranked]
        for seed in c.seeds:
            if seed == self.base_seed():
                continue
            self.evaluate(archs, extra=[{"of": t.key, "seed": seed} for t in ranked], count=False, seed=seed)

    def confirmed(self) -> list[dict]:
        """Per confirmed candidate: its search trial, the objective per seed and their mean (all seeds present),
        best mean first."""
        c = self.cfg.confirm
        if c is None:
            return []
        base = self.base_seed()
        seeds = [base] + [s for s in c.seeds if s != base]
        by_key = {t.key: t for t in self.searched()}
        runs: dict[str, dict[int, float]] = {}
        for t in self.store.trials():
            if t.strategy == self.cfg.strategy and str(t.fidelity.get("tag", "")).startswith("seed-"):
                of = t.extra.get("of")
                if of in by_key:
                    runs.setdefault(of, {})[int(t.extra["seed"])] = self.objective(t.metrics)
        out = []
        for key, per_seed in runs.items():
            per_seed = {base: self.objective(by_key[key].metrics), **per_seed}
            if all(s in per_seed and math.isfinite(per_seed[s]) for s in seeds):
                vals = [per_seed[s] for s in seeds]
                out.append({"trial": by_key[key], "per_seed": {s: per_seed[s] for s in seeds},
                            "mean": sum(vals) / len(vals)})
        return sorted(out, key=lambda r: r["mean"])

    def _fidelity(self) -> dict:
        t = self.cfg.train
        return {"max_steps": t.get("max_steps"), "epochs": t.get("epochs", 1)}

    def _record(self, number: int, res, failed: bool) -> None:
        if failed:
            self.store.fail(number, res.error)
            return
        self.store.complete(number, objective=self.objective(res["metrics"]), flops=res["flops"],
                            metrics=res["metrics"], params=res["params"], timings=res["timings"],
                            extra={"best_epoch": res["best_epoch"], "steps": res["steps"]})

    def zoo_refs(self) -> list[ZooRef]:
        """The zoo references with their hyperparameters (benchmark presets of the recipe for bare names)."""
        return self.resolve_refs(self.cfg.zoo)

    def resolve_refs(self, refs: list) -> list[ZooRef]:
        from rankcraft.bench.zoo import load_presets

        presets = load_presets()
        recipe = str(self.cfg.data.get("recipe") or "")
        ds = presets.get(recipe.replace("_", "-")) or presets.get(recipe) or {}
        out = []
        for z in refs:
            if isinstance(z, str):
                entry = ds.get("models", {}).get(z, {})
                z = ZooRef(model=entry.get("model", z), params=dict(entry.get("params", {})), name=z)
            out.append(z if z.name else z.model_copy(update={"name": z.model}))
        return out

    def evaluate_zoo(self) -> None:
        """Train the zoo references at the same fidelity (once per search directory)."""
        from rankcraft.search.evaluate import evaluate_task
        from rankcraft.search.parallel import is_failure

        todo = []
        for ref in self.zoo_refs():
            key = f"zoo-{ref.name}"
            if self.store.get(key) is None:
                params = {"embedding_dim": self.cfg.embedding_dim, **ref.params}
                num = self.store.start(key, arch={"zoo": ref.model, "params": params}, hparams=self.cfg.train,
                                       fidelity={"tag": "standalone", **self._fidelity()}, strategy="zoo",
                                       extra={"model": ref.name})
                todo.append((num, self.task(key, ref.model, params)))
        if todo:
            results = self.executor.map(evaluate_task, [t for _, t in todo],
                                        progress="zoo references" if self.progress else None)
            for (num, _), res in zip(todo, results):
                self._record(num, res, is_failure(res))
        self.save_elapsed()


# --------------------------------------------------------------------------------------------- the driver
#: what a resumed search may change in its saved config: a longer budget, a confirmation step
RESUME_CHANGES = ("budget", "confirm")


def run_search(cfg: SearchConfig | dict, out: str | Path, *, resume: bool = False, storage: str | None = None,
               cache_dir: str | Path | None = None, progress: bool = True, changes: dict | None = None) -> dict:
    """Run (or, with ``resume``, continue) a search into directory ``out``; returns the report dict.

    A resumed search continues with its saved config; ``changes`` may replace its ``budget`` (e.g. a finished
    search extended by more trials or minutes) or ``confirm`` section. Anything else would make the stored trials
    a different search's, and is an error."""
    from rankcraft.data.dataset import prepare
    from rankcraft.models.registry import model_class
    from rankcraft.search.parallel import make_executor
    from rankcraft.search.store import TrialStore
    from rankcraft.search.strategies import STRATEGIES
    from rankcraft.training.checkpoint import atomic_write_json

    if isinstance(cfg, dict):
        cfg = SearchConfig.parse(cfg)
    out = Path(out)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        saved = json.loads(cfg_path.read_text())
        if not resume:
            raise ConfigError(f"{out}: holds a search already; pass --resume to continue it or choose another --out")
        if saved != cfg.to_dict():
            cfg = SearchConfig.parse(saved, str(cfg_path))  # a resumed search continues with its own config
        if changes:
            bad = sorted(set(changes) - set(RESUME_CHANGES))
            if bad:
                raise ConfigError(f"{out}: a resumed search cannot change {', '.join(bad)} (only "
                                  f"{', '.join(RESUME_CHANGES)}); start a new search with another --out")
            cfg = SearchConfig.parse({**cfg.to_dict(), **changes}, f"{out}: resumed search")
    elif resume:
        raise ConfigError(f"{out}: no search to resume (config.json is missing)")
    for z in cfg.zoo:
        model_class(z if isinstance(z, str) else z.model)  # unknown zoo reference -> ConfigError
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, cfg.to_dict())
    store = TrialStore(storage or (out / "trials.db"), study="search")
    interrupted = store.recover()
    if interrupted and progress:
        print(f"resuming: {interrupted} interrupted trial(s) will be re-run")
    from rankcraft.api import DataSpec

    data = prepare(DataSpec.model_validate(cfg.data).source(), cache_dir=cache_dir)
    # default: the machine's cores shared by the workers (a sequential search uses all of them)
    threads = cfg.threads_per_task or max(1, (os.cpu_count() or 1) // cfg.workers)
    with make_executor(cfg.workers, ray_address=cfg.ray_address, threads_per_task=threads) as executor:
        ctx = SearchContext(cfg, out, store, executor, data, cache_dir=cache_dir, progress=progress)
        if cfg.strategy == "evolution":
            ctx.seed_archs()  # unsupported seeds fail here, before any training
        elif cfg.evolution.seeds:
            ctx.note(f"evolution.seeds are used by the evolution strategy only, not by {cfg.strategy}")
        if cfg.strategy == "dnas" and cfg.max_flops is not None:
            ctx.note("dnas controls cost through dnas.lambdas; max_flops does not constrain its derived "
                     "architectures")
        if cfg.zoo:
            ctx.evaluate_zoo()
        STRATEGIES[cfg.strategy](ctx)
        ctx.save_elapsed()
        if cfg.confirm is not None:
            ctx.confirm()
    return write_report(ctx)


def _fmt(x, spec=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def write_report(ctx: SearchContext) -> dict:
    """Front, hypervolume, plot, ``best.json`` and ``report.md``/``report.json`` from the store."""
    import numpy as np

    from rankcraft.search.pareto import (
        default_reference,
        hypervolume_2d,
        pareto_front,
        plot_front,
    )
    from rankcraft.training.checkpoint import atomic_write_json, atomic_write_text

    cfg, out = ctx.cfg, ctx.out
    obj = ctx.objective_name
    searched = ctx.searched()
    zoo = [t for t in ctx.store.trials() if t.strategy == "zoo" and t.fidelity.get("tag") == "standalone"]
    pts = np.array([[ctx.objective(t.metrics), t.flops] for t in searched], dtype=float).reshape(-1, 2)
    zoo_pts = np.array([[ctx.objective(t.metrics), t.flops] for t in zoo], dtype=float).reshape(-1, 2)
    # pareto/hypervolume take (FLOPs, objective)-free order: both minimised; we pass (objective, flops)
    front_idx = pareto_front(pts) if len(pts) else np.zeros(0, dtype=int)
    allpts = np.concatenate([pts, zoo_pts]) if len(zoo_pts) else pts
    ref = default_reference(allpts) if len(allpts) else None
    hv = hypervolume_2d(pts, ref) if len(pts) else 0.0
    hv_zoo = hypervolume_2d(zoo_pts, ref) if len(zoo_pts) else 0.0
    report: dict = {"strategy": cfg.strategy, "space": ctx.space.name, "objective": obj,
                    "trials": len(searched), "elapsed_minutes": ctx.elapsed() / 60,
                    "failed": sum(1 for t in ctx.store.trials(status="failed") if t.strategy == cfg.strategy),
                    "hypervolume": hv, "hypervolume_zoo": hv_zoo,
                    "reference_point": list(ref) if ref is not None else None,
                    "front": [], "zoo": [], "best": None, "notes": list(ctx.notes)}
    for i in front_idx:
        t = searched[int(i)]
        report["front"].append({"key": t.key, obj: ctx.objective(t.metrics), "auc": t.metrics.get("auc"),
                                "flops": t.flops, "params": t.params})
    for t in zoo:
        report["zoo"].append({"model": t.extra.get("model", t.key), obj: ctx.objective(t.metrics),
                              "auc": t.metrics.get("auc"), "flops": t.flops, "params": t.params})
    confirmed = ctx.confirmed()
    report["confirmed"] = [{"key": r["trial"].key, "per_seed": {str(k): v for k, v in r["per_seed"].items()},
                            "mean": r["mean"], "flops": r["trial"].flops} for r in confirmed]
    if searched:
        # with confirmation runs, the best mean over seeds; otherwise the best single-seed search trial
        best = confirmed[0]["trial"] if confirmed else min(searched, key=lambda t: ctx.objective(t.metrics))
        best_doc = {"arch": best.arch, "params": {"embedding_dim": cfg.embedding_dim},
                    "metrics": best.metrics, "flops": best.flops, "params_count": best.params,
                    "fidelity": best.fidelity, "search": {"strategy": cfg.strategy, "space": ctx.space.name,
                                                           "key": best.key}}
        if confirmed:
            best_doc["confirmed"] = report["confirmed"][0]
        atomic_write_json(out / "best.json", best_doc)
        report["best"] = {"key": best.key, obj: ctx.objective(best.metrics), "auc": best.metrics.get("auc"),
                          "flops": best.flops, "params": best.params}
        if confirmed:
            report["best"][f"{obj}_mean_over_seeds"] = confirmed[0]["mean"]
        plot_front(pts, path=out / "front.png", front=front_idx,
                   zoo=[(z["model"], z[obj], z["flops"]) for z in report["zoo"]],
                   title=f"{cfg.strategy} search, space {ctx.space.name}", ylabel=f"validation {obj}")
    atomic_write_json(out / "report.json", report)
    lines = [f"# Search report: {cfg.strategy} on space {ctx.space.name}", "",
             (f"- standalone trials: {len(searched)} (failed: {report['failed']}), elapsed "
             f"{report['elapsed_minutes']:.1f} min"),
             f"- fidelity: {ctx._fidelity()}; objective: validation {obj} (lower is better)",
             (f"- hypervolume of the front: {_fmt(hv, '.6g')} (zoo references alone: {_fmt(hv_zoo, '.6g')}; "
             f"reference point {report['reference_point']})"),
             *[f"- note: {n}" for n in ctx.notes],
             "", "## Pareto front", "", f"| key | {obj} | auc | FLOPs/example | params |", "|---|---|---|---|---|"]
    for f in report["front"]:
        lines.append(f"| {f['key']} | {_fmt(f[obj])} | {_fmt(f['auc'])} | {f['flops']:,.0f} | {f['params']:,} |")
    lines += ["", "## Zoo references (same fidelity)", "", f"| model | {obj} | auc | FLOPs/example | params |",
              "|---|---|---|---|---|"]
    for z in report["zoo"]:
        lines.append(f"| {z['model']} | {_fmt(z[obj])} | {_fmt(z['auc'])} | {z['flops']:,.0f} | {z['params']:,} |")
    if confirmed:
        seeds = list(confirmed[0]["per_seed"])
        lines += ["", f"## Confirmation: the top {cfg.confirm.top_k} re-trained with seeds {seeds[1:]}", "",
                  "| key | " + " | ".join(f"{obj} (seed {sd})" for sd in seeds) + f" | mean {obj} | FLOPs/example |",
                  "|---|" + "---|" * (len(seeds) + 2)]
        for r in confirmed:
            lines.append(f"| {r['trial'].key} | " + " | ".join(_fmt(v, ".5f") for v in r["per_seed"].values())
                         + f" | {_fmt(r['mean'], '.5f')} | {r['trial'].flops:,.0f} |")
        lines += ["", "The best architecture below is the best mean over these seeds."]
    if report["best"]:
        b = report["best"]
        lines += ["", (f"Best searched architecture: `{b['key']}` — {obj} {_fmt(b[obj])}, auc {_fmt(b['auc'])}, "
                  f"{b['flops']:,.0f} FLOPs/example (`best.json`; retrain with `rankcraft train --arch "
                  f"{out / 'best.json'}`).")]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return report
