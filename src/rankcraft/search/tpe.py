"""Optuna TPE over the categorical decisions of the pool's architectures.

Each decision of :func:`~rankcraft.search.encoding.decisions` is a categorical parameter whose choices are the
values the pool holds. Every round asks TPE for ``batch`` configurations; each is mapped to the unevaluated pool
member with the fewest differing decisions (ties broken by a seeded RNG), trained, and told to TPE as that
member's decisions and objective (the asked trial itself is discarded as failed, so TPE learns only from
configurations that were really evaluated). The study lives in memory and is rebuilt by replay on resume, like
the other strategies' decisions (seeded by the search seed).
"""

from __future__ import annotations

import math
import random

from pydantic import BaseModel, ConfigDict, Field

from rankcraft.search.encoding import hamming
from rankcraft.search.registry import register_strategy


class TpeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    startup: int = Field(default=10, ge=1)  # random trials before TPE models the results
    multivariate: bool = True
    candidates: int = Field(default=24, ge=1)  # TPE's n_ei_candidates


@register_strategy("tpe", help="Optuna TPE over the architectures' categorical decisions, mapped to the nearest "
                   "pool member", options=TpeConfig)
def run_tpe(ctx) -> None:
    import optuna

    opts: TpeConfig = ctx.cfg.options("tpe")
    pool, dec = ctx.pool(), ctx.pool_decisions()
    keys = sorted({k for d in dec for k in d})
    dists = {k: optuna.distributions.CategoricalDistribution(sorted({d.get(k, "-") for d in dec})) for k in keys}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = optuna.samplers.TPESampler(seed=ctx.cfg.seed, n_startup_trials=opts.startup,
                                         multivariate=opts.multivariate, n_ei_candidates=opts.candidates)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    seen: set[int] = set()
    rnd = 0
    while ctx.budget_left() and len(seen) < len(pool):
        rng = random.Random(repr((ctx.cfg.seed, "tpe", rnd)))
        picks = []
        for _ in range(ctx.cfg.batch):
            trial = study.ask(dists)
            target = trial.params
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            free = [i for i in range(len(pool)) if i not in seen and i not in picks]
            if not free:
                break
            dist = {i: hamming(target, dec[i]) for i in free}
            best = min(dist.values())
            picks.append(rng.choice([i for i, d in dist.items() if d == best]))
        if not picks:
            break
        values = ctx.evaluate([pool[i] for i in picks])
        for i, v in zip(picks, values):
            seen.add(i)
            if math.isfinite(v):
                study.add_trial(optuna.trial.create_trial(params={k: dec[i].get(k, "-") for k in keys},
                                                          distributions=dists, value=float(v)))
        rnd += 1



__all__ = ["TpeConfig", "run_tpe"]
