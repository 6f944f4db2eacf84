"""Hyperparameter tuning of any zoo model (``rankcraft tune``): typed ranges over model parameters and training
options, Optuna samplers, median pruning, the search's trial store, executor, resume and report.

A tune directory holds ``config.json`` (the resolved :class:`TuneConfig`; a resumed tune uses it), ``trials.db``
(study ``tune``, one minimised value per objective: ``1-auc`` for ``auc``), ``report.md``/``report.json`` and
``best.json`` — a run config (``{data, model, params, train}``) that ``rankcraft train --config best.json``
retrains. For several objectives the report lists the Pareto front and its hypervolume.

Each trial is a candidate ``{"zoo": model, "params": {...}}`` with its training configuration as ``hparams``: the
model's benchmark preset for the dataset (``use_preset``; the BARS recipe for Frappe_x1), then ``params``/``train``
of the config, then the sampled values. Sampled values are Optuna parameters named ``params.<name>`` /
``train.<name>``, so the study is an ordinary Optuna study (``optuna-dashboard sqlite:///trials.db``) and Optuna's
samplers see the whole history, also after a resume.

Pruning (``pruner: median``) is Optuna's median rule evaluated where the trial trains (also in a Ray worker): from
epoch ``prune_warmup_epochs`` on, once ``prune_startup`` trials have completed, a trial whose monitored
validation metric at an epoch is worse than the median of the completed trials at that epoch stops there; it is
recorded with its best value so far and ``pruned_at``.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from tqdm.auto import tqdm

from rankcraft.config import format_validation_error
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError, RankcraftError
from rankcraft.files import atomic_write_json, atomic_write_text, read_json
from rankcraft.models.catalog import model_class, validate_params
from rankcraft.parallel import is_failure, make_executor
from rankcraft.search.config import Budget
from rankcraft.search.evaluate import evaluate_task
from rankcraft.search.pareto import default_reference, hypervolume_nd, pareto_front_nd
from rankcraft.search.store import TrialStore
from rankcraft.training.presets import preset_for
from rankcraft.training.run import RunConfig
from rankcraft.training.trainer import TrainConfig

#: objectives and how each is minimised
OBJECTIVES = {"auc": "1-auc", "logloss": "logloss", "ne": "ne", "flops": "flops", "params": "params"}
QUALITY = ("auc", "logloss", "ne")
SAMPLERS = ("tpe", "random", "nsga2")
RESUME_CHANGES = ("budget",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Range(_Strict):
    """A typed range: ``float`` / ``int`` in ``[low, high]`` (``log``: sampled on a log scale; ``step``: a grid),
    or ``choice`` among ``choices`` (any YAML values, e.g. lists of layer widths)."""

    type: Literal["float", "int", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(default=None, gt=0)
    choices: list | None = None

    @model_validator(mode="after")
    def _check(self) -> Range:
        if self.type == "choice":
            if not self.choices:
                raise ValueError("a choice range needs at least one value in 'choices'")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("a choice range takes 'choices' only (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.type} range takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} range needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"empty range: low {self.low:g} is not below high {self.high:g} (give a fixed value "
                             "in params/train instead)")
        if self.log and self.low <= 0:
            raise ValueError(f"a log range needs low > 0, got {self.low:g}")
        if self.log and self.step:
            raise ValueError("a range is either log-scaled or stepped, not both")
        if self.type == "int":
            for name, v in (("low", self.low), ("high", self.high), ("step", self.step)):
                if v is not None and v != int(v):
                    raise ValueError(f"an int range needs whole numbers; {name} is {v:g}")
        return self

    def distribution(self):
        import optuna.distributions as d

        if self.type == "float":
            return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.CategoricalDistribution([_encode_choice(c) for c in self.choices])

    def value(self, sampled):
        """The config value of a sampled parameter (choices are stored as YAML text, see below)."""
        return yaml.safe_load(sampled) if self.type == "choice" else sampled


def _encode_choice(value) -> str | int | float | bool | None:
    # Optuna stores categorical choices in its database as JSON scalars: lists and mappings travel as YAML text
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


_RANGE_RE = re.compile(r"(float|int|choice):(.*)", re.S)


def parse_range(name: str, text: str, what: str = "--param") -> Range:
    """``float:LOW:HIGH[:log]``, ``int:LOW:HIGH[:STEP]`` or ``choice:A|B|C`` (each choice a YAML value)."""
    m = _RANGE_RE.fullmatch(str(text).strip())
    if not m:
        raise ConfigError(f"{what} {name}={text}: expected float:LOW:HIGH[:log], int:LOW:HIGH[:STEP] or "
                          "choice:A|B|C")
    kind, rest = m.groups()
    try:
        if kind == "choice":
            return Range(type="choice", choices=[yaml.safe_load(c) for c in rest.split("|") if c.strip()])
        parts = rest.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"{what} {name}={text}: give LOW:HIGH and optionally :log or :STEP")
        low, high = float(parts[0]), float(parts[1])
        extra = parts[2] if len(parts) == 3 else None
        if extra == "log":
            return Range(type=kind, low=low, high=high, log=True)
        return Range(type=kind, low=low, high=high, step=float(extra) if extra else None)
    except ValidationError as exc:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise ConfigError(f"{what} {name}={text}: {msg}") from None
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{what} {name}={text}: {exc}") from None


class TuneConfig(_Strict):
    data: dict = Field(default_factory=lambda: {"recipe": "synthetic"})
    model: str
    #: start from the model's benchmark preset for the dataset (params and train), when the dataset has one
    use_preset: bool = True
    params: dict = Field(default_factory=dict)  # fixed model parameters
    train: dict = Field(default_factory=dict)  # fixed training options
    param_ranges: dict[str, Range] = Field(default_factory=dict)
    train_ranges: dict[str, Range] = Field(default_factory=dict)
    objectives: list[Literal["auc", "logloss", "ne", "flops", "params"]] = Field(default_factory=lambda: ["auc"],
                                                                                 min_length=1)
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    startup: int = Field(default=8, ge=0)  # random trials before TPE models the results
    pruner: Literal["median", "none"] = "median"
    prune_warmup_epochs: int = Field(default=2, ge=1)
    prune_startup: int = Field(default=5, ge=1)
    budget: Budget = Field(default_factory=lambda: Budget(trials=20))
    seed: int = 0
    workers: int = Field(default=1, ge=1)
    batch: int | None = Field(default=None, ge=1)  # trials asked per round (default: workers)
    threads_per_task: int | None = Field(default=None, ge=1)
    ray_address: str | None = None

    @model_validator(mode="after")
    def _check(self) -> TuneConfig:
        if not (self.param_ranges or self.train_ranges):
            raise ValueError("nothing to tune: give at least one range (param_ranges / train_ranges, or --param / "
                             "--opt on the command line)")
        if len(set(self.objectives)) != len(self.objectives):
            raise ValueError(f"objectives: {self.objectives} lists one twice")
        if self.objectives[0] not in QUALITY:
            raise ValueError(f"objectives: the first objective must be a quality metric ({', '.join(QUALITY)}), "
                             f"not '{self.objectives[0]}'")
        if self.sampler == "nsga2" and len(self.objectives) < 2:
            raise ValueError("sampler nsga2 is multi-objective: give two or more objectives (e.g. auc and flops)")
        bad = sorted(set(self.train_ranges) - set(TrainConfig.model_fields))
        if bad:
            raise ValueError(f"train_ranges: {', '.join(bad)} is not a training option")
        both = sorted(set(self.param_ranges) & set(self.params)) + sorted(set(self.train_ranges) & set(self.train))
        if both:
            raise ValueError(f"{', '.join(both)}: both fixed and tuned; keep one")
        if self.budget.trials is None and self.budget.minutes is None:
            raise ValueError("give a budget (trials or minutes)")
        return self

    @classmethod
    def parse(cls, obj: dict, origin: str = "tune config") -> TuneConfig:
        try:
            cfg = cls.model_validate(obj)
            DataSpec.model_validate(cfg.data)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid tune config:\n{format_validation_error(exc, obj)}") from None
        preset = preset_for(str(cfg.data.get("recipe") or ""), cfg.model) if cfg.use_preset else None
        # a zoo model, or a row label of the dataset's presets (e.g. mos-din: model mos with backbone din)
        model_class(preset["model"] if preset and preset["row"] else cfg.model)  # unknown -> error listing the zoo
        return cfg

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")

    @property
    def quality(self) -> str:
        return self.objectives[0]


def _minimised(name: str, res: dict) -> float:
    if name == "flops":
        return float(res["flops"])
    if name == "params":
        return float(res["params"])
    v = float(res["metrics"].get(name, math.nan))
    return 1.0 - v if name == "auc" else v


class Tuner:
    """One tune in progress (see the module docstring)."""

    def __init__(self, cfg: TuneConfig, out: Path, store: TrialStore, executor, *, cache_dir=None, progress=True):
        self.cfg, self.out, self.store, self.executor = cfg, out, store, executor
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.progress = progress
        self.t_start = time.monotonic()
        self.elapsed_before = float(store.get_meta("elapsed_seconds", 0.0))
        preset = preset_for(str(cfg.data.get("recipe") or ""), cfg.model) if cfg.use_preset else None
        self.model = preset["model"] if preset else cfg.model
        self.base_params = {**(preset["params"] if preset else {}), **cfg.params}
        self.base_train = {**(preset["train"] if preset else {}), **cfg.train, "monitor": cfg.quality}
        self.dists = {f"params.{k}": r.distribution() for k, r in cfg.param_ranges.items()}
        self.dists.update({f"train.{k}": r.distribution() for k, r in cfg.train_ranges.items()})

    # -- budget ------------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.elapsed_before + time.monotonic() - self.t_start

    def trials_done(self) -> list:
        return [t for t in self.store.trials() if t.strategy == "tune"]

    def trials_left(self) -> int | None:
        b = self.cfg.budget
        return None if b.trials is None else b.trials - len(self.trials_done())

    def budget_left(self) -> bool:
        left = self.trials_left()
        if left is not None and left <= 0:
            return False
        m = self.cfg.budget.minutes
        return not m or self.elapsed() < 60 * m

    # -- candidates --------------------------------------------------------------------------------------------
    def candidate(self, sampled: dict) -> tuple[dict, dict]:
        """``(model params, train config)`` of a sampled parameter dict."""
        params, train = dict(self.base_params), dict(self.base_train)
        for name, v in sampled.items():
            section, key = name.split(".", 1)
            rng = (self.cfg.param_ranges if section == "params" else self.cfg.train_ranges)[key]
            (params if section == "params" else train)[key] = rng.value(v)
        return params, train

    def check_ranges(self) -> None:
        """Build a run config at each range's low end and high end (first and last choice) so that a parameter
        the model does not take, or a value it refuses, is an error before any training."""
        for end in (0, -1):
            sampled = {}
            for name, dist in self.dists.items():
                if hasattr(dist, "choices"):
                    sampled[name] = dist.choices[end]
                else:
                    sampled[name] = dist.low if end == 0 else dist.high
            params, train = self.candidate(sampled)
            where = "tune ranges (" + ("low ends / first choices" if end == 0 else "high ends / last choices") + ")"
            RunConfig.parse({"data": self.cfg.data, "model": self.model, "params": params, "train": train}, where)
            try:
                validate_params(self.model, params)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None

    def prune_rule(self) -> dict | None:
        if self.cfg.pruner == "none":
            return None
        done = [t for t in self.trials_done() if not t.extra.get("pruned_at")]
        if len(done) < self.cfg.prune_startup:
            return None
        metric = self.cfg.quality
        per_epoch: dict[int, list[float]] = {}
        for t in done:
            for h in t.extra.get("history", []):
                if h.get(metric) is not None:
                    per_epoch.setdefault(int(h["epoch"]), []).append(float(h[metric]))
        thresholds = {str(e): statistics.median(v) for e, v in per_epoch.items()
                      if e >= self.cfg.prune_warmup_epochs and len(v) >= self.cfg.prune_startup}
        return {"metric": metric, "thresholds": thresholds} if thresholds else None

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        batch = self.cfg.batch or self.cfg.workers
        bar = tqdm(desc=f"tune {self.cfg.model}", total=self.cfg.budget.trials, initial=len(self.trials_done()),
                   disable=not self.progress, dynamic_ncols=True)
        failures = 0
        while self.budget_left():
            left = self.trials_left()
            k = batch if left is None else min(batch, left)
            asked = []
            for _ in range(k):
                number, sampled = self.store.ask(self.dists, strategy="tune", key_prefix="tune")
                params, train = self.candidate(sampled)
                self.store.describe(number, arch={"zoo": self.model, "params": params}, hparams=train)
                asked.append((number, params, train))
            prune = self.prune_rule()
            tasks = [{"key": f"tune-{n}", "model": self.model, "params": p, "data": self.cfg.data,
                      "train": {**t, "quiet": True}, "cache_dir": self.cache_dir,
                      **({"prune": prune} if prune else {})} for n, p, t in asked]
            results = self.executor.map(evaluate_task, tasks)
            for (number, _, _), res in zip(asked, results):
                if is_failure(res):
                    self.store.fail(number, res.error)
                    failures += 1
                    if failures >= 10:
                        raise RankcraftError(f"tune stopped: {failures} trials failed; the last error: {res.error}")
                    continue
                failures = 0
                values = [_minimised(o, res) for o in self.cfg.objectives]
                self.store.complete(number, values=values, flops=res["flops"], metrics=res["metrics"],
                                    params=res["params"], timings=res["timings"],
                                    extra={"best_epoch": res["best_epoch"], "steps": res["steps"],
                                           "history": res["history"], "pruned_at": res.get("pruned_at")})
                bar.update(1)
                if self.progress:
                    tag = f" (pruned at epoch {res['pruned_at']})" if res.get("pruned_at") else ""
                    tqdm.write(f"trial {number}: " + ", ".join(f"{o} {v:.5g}" for o, v in
                                                                 zip(self.objective_names, values)) + tag)
            self.store.set_meta("elapsed_seconds", self.elapsed())
        bar.close()

    @property
    def objective_names(self) -> list[str]:
        return [OBJECTIVES[o] for o in self.cfg.objectives]

    # -- report ------------------------------------------------------------------------------------------------
    def report(self) -> dict:
        trials = self.trials_done()
        names = self.objective_names
        rep: dict = {"model": self.cfg.model, "objectives": names, "sampler": self.cfg.sampler,
                     "trials": len(trials), "pruned": sum(1 for t in trials if t.extra.get("pruned_at")),
                     "failed": sum(1 for t in self.store.trials(status="failed") if t.strategy == "tune"),
                     "elapsed_minutes": self.elapsed() / 60, "best": None, "front": []}
        if trials:
            # pruned trials stopped early: their values are not comparable with the others'
            full = [t for t in trials if not t.extra.get("pruned_at")] or trials
            pts = [t.values for t in full]
            best = min(full, key=lambda t: t.values[0])
            rep["best"] = self._row(best)
            atomic_write_json(self.out / "best.json", {"data": self.cfg.data, "model": self.model,
                                                       "params": best.arch.get("params", {}), "train": {
                                                           k: v for k, v in best.hparams.items() if k != "quiet"}})
            if len(names) > 1:
                front = pareto_front_nd(pts)
                ref = default_reference(pts)
                rep["front"] = [self._row(full[int(i)]) for i in front]
                rep["hypervolume"] = hypervolume_nd(pts, ref)
                rep["reference_point"] = list(ref)
        atomic_write_json(self.out / "report.json", rep)
        lines = [f"# Tune report: {self.cfg.model}", "",
                 f"- trials: {rep['trials']} (pruned {rep['pruned']}, failed {rep['failed']}), "
                 f"{rep['elapsed_minutes']:.1f} min, sampler {self.cfg.sampler}, pruner {self.cfg.pruner}",
                 f"- objectives (minimised, on validation): {', '.join(names)}"]
        if rep["best"]:
            b = rep["best"]
            lines += ["", f"Best by {names[0]}: trial {b['number']} — " +
                      ", ".join(f"{k} {v:.5g}" for k, v in b["values"].items()),
                      "", "```yaml", yaml.safe_dump({"params": b["params"], "train": b["tuned_train"]},
                                                     sort_keys=True).strip(), "```",
                      "", f"Retrain: `rankcraft train --config {self.out / 'best.json'}`"]
        if rep["front"]:
            lines += ["", f"## Pareto front ({len(rep['front'])} trials, hypervolume {rep['hypervolume']:.6g})", "",
                      "| trial | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for r in rep["front"]:
                lines.append(f"| {r['number']} | " + " | ".join(f"{v:.5g}" for v in r["values"].values()) + " |")
        atomic_write_text(self.out / "report.md", "\n".join(lines) + "\n")
        return rep

    def _row(self, t) -> dict:
        tuned = {k.split(".", 1)[1] for k in self.dists if k.startswith("params.")}
        tuned_train = {k.split(".", 1)[1] for k in self.dists if k.startswith("train.")}
        return {"number": t.number, "values": dict(zip(self.objective_names, t.values)),
                "auc": t.metrics.get("auc"), "flops": t.flops,
                "params": {k: v for k, v in t.arch.get("params", {}).items() if k in tuned},
                "tuned_train": {k: v for k, v in t.hparams.items() if k in tuned_train},
                "pruned_at": t.extra.get("pruned_at")}


def make_sampler(cfg: TuneConfig):
    import optuna

    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if cfg.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=cfg.seed)
    return optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup, multivariate=True)


def run_tune(cfg: TuneConfig | dict, out: str | Path, *, resume: bool = False, storage: str | None = None,
             cache_dir: str | Path | None = None, progress: bool = True, changes: dict | None = None) -> dict:
    """Run (or, with ``resume``, continue) a tune into directory ``out``; returns the report dict. A resumed tune
    keeps its saved config; ``changes`` may replace its ``budget`` only."""
    out = Path(out)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        if not resume:
            raise ConfigError(f"{out}: holds a tune already; pass --resume to continue it or choose another --out")
        saved = TuneConfig.parse(read_json(cfg_path, "tune config"), str(cfg_path))
        if changes:
            bad = sorted(set(changes) - set(RESUME_CHANGES))
            if bad:
                raise ConfigError(f"{out}: a resumed tune cannot change {', '.join(bad)} (only budget); start a "
                                  "new tune with another --out")
            saved = TuneConfig.parse({**saved.to_dict(), **changes}, f"{out}: resumed tune")
        cfg = saved
    elif resume:
        raise ConfigError(f"{out}: no tune to resume (config.json is missing)")
    elif isinstance(cfg, dict):
        cfg = TuneConfig.parse(cfg)
    out.mkdir(parents=True, exist_ok=True)
    store = TrialStore(storage or (out / "trials.db"), study="tune", objectives=len(cfg.objectives),
                       sampler=make_sampler(cfg))
    threads = cfg.threads_per_task or max(1, (os.cpu_count() or 1) // cfg.workers)
    with store, make_executor(cfg.workers, ray_address=cfg.ray_address, threads_per_task=threads) as executor:
        tuner = Tuner(cfg, out, store, executor, cache_dir=cache_dir, progress=progress)
        tuner.check_ranges()
        atomic_write_json(cfg_path, cfg.to_dict())
        interrupted = store.recover()
        if interrupted and progress:
            print(f"resuming: {interrupted} interrupted trial(s) will be re-run")
        tuner.run()
        return tuner.report()


__all__ = ["OBJECTIVES", "Range", "TuneConfig", "Tuner", "make_sampler", "parse_range", "run_tune"]
