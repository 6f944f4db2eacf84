"""Predictor + reinforcement-learning search (wave2-specs §6; the method of "AutoML for Large Capacity Modeling of
Meta's Ranking Systems", reconstructed where its text is not readable — every such choice is an option of
:class:`PredictorRLConfig`, documented in ``docs/search.md``).

The loop, over a pool of candidate architectures (:meth:`SearchContext.pool`: a table's architectures, or
``pool_size`` uniform samples of the space within the FLOPs cap):

1. ``warmup`` uniformly chosen candidates are trained (the predictor's first data);
2. each round, an ensemble of ``models`` MLPs ``[D, 50, 50, 1]`` is fitted on the completed trials with a pairwise
   margin-ranking loss (or MSE) on the z-scored objective — or on a learning-curve-extrapolated label (``label:
   trend``): the objective plus the slope of the training loss over the last quarter of the curve times
   ``trend_steps`` more steps;
3. a REINFORCE policy — independent categoricals over the decisions of :func:`~rankcraft.search.encoding.decisions`,
   restricted (renormalised) to the unseen pool — is optimised on the ensemble's mean prediction with reward
   ``R = −(1 − α)·z(pred) − α·z(log10 FLOPs)`` (Adam, ``rl_samples`` samples per step, an EMA baseline, an
   entropy bonus);
4. the policy's ``round_size`` most probable unseen candidates are trained, ``explore`` of them replaced by
   uniformly chosen unseen ones; repeat until the budget is spent.

FLOPs are computed analytically (:func:`~rankcraft.models.arch.cost.arch_flops`), so the predictor has one quality
head rather than the paper's (quality, FLOPs) multi-task heads. Every random choice is seeded by
``(search seed, round)``, so a resumed search replays its proposals and finds their results in the store.
"""

from __future__ import annotations

import contextlib
import math
import random
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from rankcraft.errors import RankcraftError
from rankcraft.models.arch.format import Arch
from rankcraft.search.context import arch_key
from rankcraft.search.encoding import FeatureEncoder, decisions
from rankcraft.search.registry import register_strategy


class PredictorRLConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup: int = Field(default=10, ge=2)  # uniformly chosen first trials
    round_size: int = Field(default=5, ge=1)  # trials proposed per round
    models: int = Field(default=10, ge=1)  # ensemble members
    hidden: list[int] = Field(default_factory=lambda: [50, 50])
    loss: Literal["pairwise", "mse"] = "pairwise"
    margin: float = Field(default=0.001, ge=0)  # of the margin-ranking loss, on z-scored targets
    fit_epochs: int = Field(default=300, ge=1)
    fit_lr: float = Field(default=0.01, gt=0)
    bootstrap: bool = True  # each member fitted on a bootstrap resample of the trials
    flops_feature: bool = False  # log10 FLOPs as an input of the predictor
    label: Literal["final", "trend"] = "final"
    trend_steps: int | None = Field(default=None, ge=1)  # Δl of the trend label (default: the steps trained)
    alpha: float = Field(default=0.0, ge=0, le=1)  # weight of the FLOPs term of the reward
    rl_steps: int = Field(default=2000, ge=1)
    rl_samples: int = Field(default=64, ge=1)
    rl_lr: float = Field(default=0.05, gt=0)
    baseline_decay: float = Field(default=0.9, ge=0, lt=1)
    entropy: float = Field(default=1e-3, ge=0)
    explore: float = Field(default=0.2, ge=0, le=1)  # fraction of each round proposed uniformly at random


# ------------------------------------------------------------------------------------------------ labels
def curve_label(value: float, history: list[dict], horizon: int | None = None, tail: float = 0.25) -> float:
    """``value + m·Δl``: ``m`` the least-squares slope (per step) of the training-loss curve over its last
    ``tail`` fraction (the per-epoch ``loss_curve`` points of a trial's history, placed at the middle step of the
    run they average), ``Δl`` = ``horizon`` more steps (default: as many as were trained). Without a usable curve
    (fewer than two tail points) the value itself."""
    xs, ys = [], []
    start = 0
    for h in history:
        pts = h.get("loss_curve") or []
        steps = int(h.get("steps", 0)) - start
        if not pts or steps <= 0:
            continue
        width = steps / len(pts)
        xs += [start + (k + 0.5) * width for k in range(len(pts))]
        ys += list(pts)
        start = int(h["steps"])
    if len(xs) < 2:
        return value
    k = max(2, int(math.ceil(tail * len(xs))))
    x, y = np.asarray(xs[-k:]), np.asarray(ys[-k:])
    m = float(np.polyfit(x, y, 1)[0])
    return value + m * (horizon if horizon is not None else start)


def _z(v: np.ndarray) -> np.ndarray:
    sd = float(v.std())
    return (v - v.mean()) / (sd if sd > 0 else 1.0)


# ------------------------------------------------------------------------------------------------ predictor
class RankingPredictor:
    """An ensemble of MLPs scoring feature vectors; higher score = worse (larger) objective.

    ``fit(X [n, D], y [n])`` fits each member on all ordered pairs of its (bootstrap) sample with the margin
    ranking loss ``max(0, −sign(y_i − y_j)·(s_i − s_j) + margin)`` (``loss="pairwise"``) or on ``MSE(s, z(y))``;
    full-batch Adam. The members are trained together as one batched network (weights ``[M, in, out]``), each
    with its own initialisation (``nn.Linear``'s, seeded per member) and sample. ``predict(X)`` is the mean of
    the members' z-scored scores."""

    def __init__(self, *, models: int = 10, hidden: list[int] = (50, 50), loss: str = "pairwise",
                 margin: float = 0.001, epochs: int = 300, lr: float = 0.01, bootstrap: bool = True, seed: int = 0):
        self.n_models, self.hidden, self.loss, self.margin = models, list(hidden), loss, margin
        self.epochs, self.lr, self.bootstrap, self.seed = epochs, lr, bootstrap, seed
        self.weights: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _init(self, d: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        widths = [d, *self.hidden, 1]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            ws, bs = [], []
            for m in range(self.n_models):
                torch.manual_seed(self.seed * 1000 + m * 31 + len(layers))
                lin = nn.Linear(a, b)
                ws.append(lin.weight.detach().t())
                bs.append(lin.bias.detach())
            layers.append((torch.stack(ws).requires_grad_(), torch.stack(bs).unsqueeze(1).requires_grad_()))
        return layers

    def _forward(self, x: torch.Tensor, layers) -> torch.Tensor:
        """``x [M, n, D]`` → scores ``[M, n]``."""
        h = x
        for k, (w, b) in enumerate(layers):
            h = torch.baddbmm(b, h, w)
            if k < len(layers) - 1:
                h = torch.relu(h)
        return h.squeeze(-1)

    def fit(self, x: np.ndarray, y: np.ndarray) -> RankingPredictor:
        x_t = torch.as_tensor(x, dtype=torch.float32)
        y_z = torch.as_tensor(_z(np.asarray(y, dtype=float)), dtype=torch.float32)
        n = len(y_z)
        if n < 2:
            raise ValueError("the predictor needs at least two trials")
        g = torch.Generator().manual_seed(self.seed)
        idx = (torch.randint(0, n, (self.n_models, n), generator=g) if self.bootstrap
               else torch.arange(n).expand(self.n_models, n))
        xb, yb = x_t[idx], y_z[idx]  # [M, n, D], [M, n]
        layers = self._init(x_t.shape[1])
        opt = torch.optim.Adam([p for layer in layers for p in layer], lr=self.lr)
        i, j = torch.triu_indices(n, n, offset=1)
        sign = torch.sign(yb[:, i] - yb[:, j])  # [M, pairs]; 0 for ties (bootstrap duplicates): left out
        used = (sign != 0).float()
        for _ in range(self.epochs):
            s = self._forward(xb, layers)
            if self.loss == "pairwise":
                per = torch.relu(-sign * (s[:, i] - s[:, j]) + self.margin) * used
                loss = (per.sum(1) / used.sum(1).clamp(min=1)).sum()
            else:
                loss = ((s - yb) ** 2).mean(1).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.weights = [(w.detach(), b.detach()) for w, b in layers]
        return self

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        x_t = torch.as_tensor(x, dtype=torch.float32)
        s = self._forward(x_t.expand(self.n_models, *x_t.shape), self.weights)  # [M, n]
        return torch.stack([_z_t(row) for row in s]).mean(0).numpy()


def _z_t(s: torch.Tensor) -> torch.Tensor:
    sd = s.std()
    return (s - s.mean()) / (sd if sd > 0 else 1.0)


# ------------------------------------------------------------------------------------------------ policy
def reinforce_on_pool(onehot: np.ndarray, reward: np.ndarray, *, steps: int, samples: int, lr: float,
                      baseline_decay: float, entropy: float, seed: int) -> np.ndarray:
    """REINFORCE over a pool: the policy is independent categoricals over decisions, ``p(c) ∝ exp(onehot[c]·θ)``
    renormalised over the pool's rows ``c``; each step samples ``samples`` rows, and ascends
    ``(R − b)·∇log p + entropy·∇H`` with an EMA baseline ``b``. Returns the final logits ``onehot·θ`` ``[P]``."""
    g = torch.Generator().manual_seed(seed)
    m = torch.as_tensor(onehot, dtype=torch.float32)
    r = torch.as_tensor(reward, dtype=torch.float32)
    theta = torch.zeros(m.shape[1], requires_grad=True)
    opt = torch.optim.Adam([theta], lr=lr)
    baseline = None
    for _ in range(steps):
        logits = m @ theta
        logp = torch.log_softmax(logits, 0)
        idx = torch.multinomial(logp.exp().detach(), samples, replacement=True, generator=g)
        rs = r[idx]
        mean_r = float(rs.mean())
        baseline = mean_r if baseline is None else baseline_decay * baseline + (1 - baseline_decay) * mean_r
        ent = -(logp.exp() * logp).sum()
        loss = -((rs - baseline) * logp[idx]).mean() - entropy * ent
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return (m @ theta).numpy()


# ------------------------------------------------------------------------------------------------ strategy
def _labels(ctx, trials, opts: PredictorRLConfig) -> np.ndarray:
    ys = []
    for t in trials:
        y = ctx.objective(t.metrics)
        if opts.label == "trend":
            y = curve_label(y, t.extra.get("history", []), opts.trend_steps)
        ys.append(y)
    return np.asarray(ys, dtype=float)


@contextlib.contextmanager
def one_thread():
    """Torch on one thread for the block: the predictor and the policy are tiny tensors, for which several
    threads only add synchronisation (and, next to busy training workers, oversubscription that made each Adam
    step take milliseconds)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def propose(ctx, opts: PredictorRLConfig, evaluated: list[Arch], rnd: int) -> list[Arch]:
    """One round's proposals: fit the predictor on the completed trials among ``evaluated`` (this search's
    candidates so far, in order: a resumed search replays the same rounds), optimise the policy on it, return the
    most probable unseen candidates (and the exploration picks)."""
    with one_thread():
        return _propose(ctx, opts, evaluated, rnd)


def _propose(ctx, opts: PredictorRLConfig, evaluated: list[Arch], rnd: int) -> list[Arch]:
    pool = ctx.pool()
    seen = {a.live_key() for a in evaluated}
    by_key = {t.key: t for t in ctx.store.trials()}  # one read of the store per round
    found = [by_key.get(arch_key(a, "standalone")) for a in evaluated]
    trials = [t for t in found if t is not None and math.isfinite(ctx.objective(t.metrics))]
    if len(trials) < 2:
        raise RankcraftError(f"predictor_rl: only {len(trials)} of the {len(evaluated)} warm-up candidates "
                             "trained successfully; the predictor needs at least two")
    rng = random.Random(repr((ctx.cfg.seed, "predictor_rl", rnd)))
    unseen = [i for i, a in enumerate(pool) if a.live_key() not in seen]
    if not unseen:
        return []
    k = min(opts.round_size, len(unseen))
    n_explore = int(round(opts.explore * k))
    enc = FeatureEncoder(with_flops=opts.flops_feature)
    dec = ctx.pool_decisions()
    flops = [ctx.flops(a) for a in pool] if opts.flops_feature or opts.alpha > 0 else None
    enc.fit(dec, flops)
    archs = [Arch.model_validate(t.arch) for t in trials]
    x_tr = enc.transform([decisions(a) for a in archs], [t.flops for t in trials] if opts.flops_feature else None)
    pred = RankingPredictor(models=opts.models, hidden=opts.hidden, loss=opts.loss, margin=opts.margin,
                            epochs=opts.fit_epochs, lr=opts.fit_lr, bootstrap=opts.bootstrap,
                            seed=ctx.cfg.seed * 7919 + rnd)
    pred.fit(x_tr, _labels(ctx, trials, opts))
    sub_dec = [dec[i] for i in unseen]
    x_pool = enc.transform(sub_dec, [flops[i] for i in unseen] if opts.flops_feature else None)
    reward = -(1 - opts.alpha) * _z(pred.predict(x_pool))
    if opts.alpha > 0:
        reward = reward - opts.alpha * _z(np.log10(np.maximum([flops[i] for i in unseen], 1.0)))
    onehot = x_pool[:, :len(enc.columns)]
    logits = reinforce_on_pool(onehot, reward, steps=opts.rl_steps, samples=opts.rl_samples, lr=opts.rl_lr,
                               baseline_decay=opts.baseline_decay, entropy=opts.entropy,
                               seed=ctx.cfg.seed * 104729 + rnd)
    order = np.argsort(-logits, kind="stable")
    chosen = [unseen[int(i)] for i in order[: k - n_explore]]
    rest = [i for i in unseen if i not in set(chosen)]
    chosen += rng.sample(rest, min(n_explore, len(rest)))
    return [pool[i] for i in chosen]


@register_strategy("predictor_rl", help="a ranking-predictor ensemble and a REINFORCE policy on it propose each "
                   "round's candidates (~100 trials)", options=PredictorRLConfig)
def run_predictor_rl(ctx) -> None:
    opts: PredictorRLConfig = ctx.cfg.options("predictor_rl")
    pool = ctx.pool()
    if opts.label == "trend" and ctx.cfg.objective not in ("logloss", "ne"):
        ctx.note("predictor_rl.label 'trend' extrapolates a loss curve; with the auc objective the final value is "
                 "used")
        opts = opts.model_copy(update={"label": "final"})
    rng = random.Random(repr((ctx.cfg.seed, "predictor_rl", "warmup")))
    first = rng.sample(pool, min(opts.warmup, len(pool)))
    for start in range(0, len(first), ctx.cfg.batch):
        if not ctx.budget_left():
            return
        ctx.evaluate(first[start:start + ctx.cfg.batch])
    evaluated = list(first)
    rnd = 0
    while ctx.budget_left():
        proposals = propose(ctx, opts, evaluated, rnd)
        if not proposals:
            ctx.note("predictor_rl: every candidate of the pool has been evaluated")
            return
        ctx.evaluate(proposals)
        evaluated += proposals
        rnd += 1


__all__ = ["PredictorRLConfig", "RankingPredictor", "curve_label", "propose", "reinforce_on_pool"]
