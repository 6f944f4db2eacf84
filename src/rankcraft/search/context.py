"""One search in progress: budget and FLOPs cap, candidate proposals, evaluation through the executor and the
trial store, confirmation of the best candidates, zoo references. Strategies drive a :class:`SearchContext`."""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from rankcraft.errors import ConfigError, RankcraftError
from rankcraft.models.arch.cost import arch_flops
from rankcraft.models.arch.format import Arch
from rankcraft.models.arch.zoo import zoo_arch
from rankcraft.parallel import is_failure
from rankcraft.search.config import SearchConfig, ZooRef
from rankcraft.search.encoding import decisions, hamming
from rankcraft.search.evaluate import evaluate_task
from rankcraft.search.space import get_space
from rankcraft.search.tabular import sample_pool
from rankcraft.training.presets import dataset_presets, load_presets
from rankcraft.training.trainer import TrainConfig


def arch_key(arch: Arch | dict, tag: str) -> str:
    key = arch.key() if isinstance(arch, Arch) else json.dumps(arch, sort_keys=True, separators=(",", ":"))
    return f"{tag}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


class SearchContext:
    """What a strategy sees: the space, the data, the store, the executor, the budget and ``evaluate``."""

    def __init__(self, cfg: SearchConfig, out: Path, store, executor, data, *, cache_dir=None, progress=True):
        self.cfg, self.out, self.store, self.executor, self.data = cfg, out, store, executor, data
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self._failures_in_a_row = 0
        self.notes: list[str] = []  # things the user should know, printed (with progress) and put in the report
        self._seeds: list[Arch] | None = None
        self.space = get_space(cfg.space, raw_dense=bool(data.features.numeric))
        self.t_start = time.monotonic()
        self.elapsed_before = float(store.get_meta("elapsed_seconds", 0.0))
        #: the architectures of a tabular benchmark when the executor is one (proposals stay among them)
        self.table_pool: list[Arch] | None = getattr(executor, "pool", None)
        self._pool: list[Arch] | None = None
        self._pool_decisions: list[dict] | None = None

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
        return arch_flops(arch, self.data.features, self.cfg.embedding_dim)

    def within_cap(self, arch: Arch) -> bool:
        """Whether ``arch`` builds on this data (shapes resolve) and is within ``max_flops``."""
        try:
            f = self.flops(arch)
        except ConfigError:
            return False
        return self.cfg.max_flops is None or f <= self.cfg.max_flops

    def pool(self) -> list[Arch]:
        """The candidates of the pool-based strategies: a table's architectures within the FLOPs cap, or
        ``pool_size`` distinct uniform samples of the space within the cap (seeded by the search seed)."""
        if self._pool is None:
            if self.table_pool is not None:
                self._pool = [a for a in self.table_pool if self.within_cap(a)]
                if not self._pool:
                    raise ConfigError(f"max_flops {self.cfg.max_flops:,.0f}: no architecture of the table is within "
                                      "the cap")
            else:
                self._pool = sample_pool(self.space, self.cfg.pool_size, self.cfg.seed, accept=self.within_cap)
        return self._pool

    def pool_decisions(self) -> list[dict]:
        if self._pool_decisions is None:
            self._pool_decisions = [decisions(a) for a in self.pool()]
        return self._pool_decisions

    def nearest_in_pool(self, arch: Arch, rng, exclude: Arch | None = None) -> Arch:
        """The pool member with the fewest differing decisions from ``arch`` (ties broken by ``rng``), other than
        ``exclude`` (equal decisions = the same model): how a mutation is projected onto a table's
        architectures."""
        target = decisions(arch)
        skip = decisions(exclude) if exclude is not None else None
        best, best_d = [], math.inf
        for a, dec in zip(self.pool(), self.pool_decisions()):
            if dec == skip:
                continue
            d = hamming(target, dec)
            if d < best_d:
                best, best_d = [a], d
            elif d == best_d:
                best.append(a)
        return rng.choice(best)

    def sample(self, rng) -> Arch:
        """A space sample within the FLOPs cap (up to 1000 draws); on a table, a uniform pick of its pool."""
        if self.table_pool is not None:
            return rng.choice(self.pool())
        for _ in range(1000):
            a = self.space.sample(rng)
            if self.within_cap(a):
                return a
        raise ConfigError(f"max_flops {self.cfg.max_flops:,.0f}: no architecture of space '{self.space.name}' "
                          "within the cap in 1000 samples; raise the cap or use a smaller space")

    def mutate(self, arch: Arch, rng) -> Arch:
        """A mutation of ``arch`` that changes what it computes (not only dead nodes) and stays within the FLOPs
        cap (up to 100 tries, then a fresh sample). On a table, the mutation is projected onto the table's pool
        (:meth:`nearest_in_pool`)."""
        if self.table_pool is not None:
            return self.nearest_in_pool(self.space.mutate(arch, rng), rng, exclude=arch)
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

        if self._seeds is not None:
            return self._seeds
        out = []
        for ref in self.resolve_refs(self.cfg.options("evolution").seeds):
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

    #: consecutive failed candidate trainings after which the search stops (a broken data/train section
    #: would otherwise make a trial-budgeted search propose and fail candidates forever)
    MAX_CONSECUTIVE_FAILURES = 10

    def _record(self, number: int, res, failed: bool) -> None:
        if failed:
            self.store.fail(number, res.error)
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= self.MAX_CONSECUTIVE_FAILURES:
                raise RankcraftError(f"search stopped: {self._failures_in_a_row} candidate trainings in a row "
                                     f"failed; the last error: {res.error}")
            return
        self._failures_in_a_row = 0
        self.store.complete(number, objective=self.objective(res["metrics"]), flops=res["flops"],
                            metrics=res["metrics"], params=res["params"], timings=res["timings"],
                            extra={"best_epoch": res["best_epoch"], "steps": res["steps"],
                                   "history": res.get("history", [])})

    def zoo_refs(self) -> list[ZooRef]:
        """The zoo references with their hyperparameters (benchmark presets of the recipe for bare names)."""
        return self.resolve_refs(self.cfg.zoo)

    def resolve_refs(self, refs: list) -> list[ZooRef]:
        found = dataset_presets(str(self.cfg.data.get("recipe") or ""), load_presets())
        ds = found[1] if found else {}
        out = []
        for z in refs:
            if isinstance(z, str):
                entry = ds.get("models", {}).get(z, {})
                z = ZooRef(model=entry.get("model", z), params=dict(entry.get("params", {})), name=z)
            out.append(z if z.name else z.model_copy(update={"name": z.model}))
        return out

    def evaluate_zoo(self) -> None:
        """Train the zoo references at the same fidelity (once per search directory)."""

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
