"""Search strategies behind one interface: ``run(ctx: SearchContext) -> None``.

Every strategy proposes architectures of ``ctx.space`` and leaves its evaluations in ``ctx.store``; the driver
builds the front, the report and ``best.json`` from the store afterwards. All randomness comes from
``random.Random`` seeded by ``(config seed, strategy, round)``, so a resumed search replays the same proposals and
finds their results in the store.

* ``random`` — uniform samples, each trained standalone at the search fidelity.
* ``evolution`` — regularized (aging) evolution (Real et al. 2019): a population of the most recent
  ``population`` candidates; each child mutates the best of ``sample`` random members; the oldest dies. The
  population can start from human designs (``evolution.seeds``: zoo models as architectures).
* ``oneshot`` — NASRec-style: a weight-sharing :class:`~rankcraft.search.supernet.Supernet` trained with path
  sampling (largest-path warm-up first), candidates scored with inherited weights on fixed validation batches,
  aging evolution over those scores, the ``top_k`` retrained from scratch.
* ``dnas`` — :class:`~rankcraft.search.dnas.DnasSupernet` trained per penalty weight ``λ``, the argmax
  architecture derived and retrained from scratch.
"""

from __future__ import annotations

import math
import random
from collections import deque

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rankcraft.models.arch.cost import arch_flops
from rankcraft.models.arch.format import Arch
from rankcraft.models.output import DEFAULT_HEAD, ModelOutput
from rankcraft.search.config import DnasConfig, EvolutionConfig, OneShotConfig
from rankcraft.search.context import arch_key
from rankcraft.search.dnas import DnasSupernet
from rankcraft.search.registry import register_strategy
from rankcraft.search.supernet import Supernet
from rankcraft.training.loops import StepLoop
from rankcraft.training.metrics import auc, entropy
from rankcraft.training.trainer import SeparateOptimizer, TrainConfig, Trainer


def _rng(ctx, *tag) -> random.Random:
    return random.Random(repr((ctx.cfg.seed, ctx.cfg.strategy) + tag))


# --------------------------------------------------------------------------------------------- random / evolution
@register_strategy("random", help="uniform samples of the space, each trained standalone")
def run_random(ctx) -> None:
    rnd = 0
    while ctx.budget_left():
        rng = _rng(ctx, "round", rnd)
        ctx.evaluate([ctx.sample(rng) for _ in range(ctx.cfg.batch)])
        rnd += 1


def aging_evolution(ctx, score_fn, *, population: int, sample: int, limit, tag: str,
                    seeds: list[Arch] = ()) -> None:
    """Regularized evolution with batched proposals. ``score_fn(list[Arch]) -> list[float]`` (lower is better);
    ``limit()`` says whether to continue. ``seeds`` (e.g. human designs) enter the population first; the rest of
    the initial population is sampled. Proposals respect the search's FLOPs cap (``ctx.sample``/``ctx.mutate``)."""
    pop: deque[tuple[Arch, float]] = deque()
    pending = list(seeds)[:population]
    rnd = 0
    while limit() and len(pop) < population:
        rng = _rng(ctx, tag, "init", rnd)
        k = min(ctx.cfg.batch, population - len(pop))
        archs, pending = pending[:k], pending[k:]
        archs += [ctx.sample(rng) for _ in range(k - len(archs))]
        for a, s in zip(archs, score_fn(archs)):
            if math.isfinite(s):
                pop.append((a, s))
        rnd += 1
        if rnd > 50 * population:  # every candidate failing: give up rather than loop forever
            return
    rnd = 0
    while limit() and pop:
        rng = _rng(ctx, tag, "gen", rnd)
        children = []
        for _ in range(ctx.cfg.batch):
            contenders = rng.sample(list(pop), min(sample, len(pop)))
            parent = min(contenders, key=lambda x: x[1])[0]
            children.append(ctx.mutate(parent, rng))
        for a, s in zip(children, score_fn(children)):
            if math.isfinite(s):
                pop.append((a, s))
                if len(pop) > population:
                    pop.popleft()
        rnd += 1


def _check_seeds(ctx) -> None:
    ctx.seed_archs()  # unsupported seeds fail here, before any training


@register_strategy("evolution", help="regularized (aging) evolution, optionally seeded with zoo designs",
                   options=EvolutionConfig, prepare=_check_seeds)
def run_evolution(ctx) -> None:
    e = ctx.cfg.options("evolution")
    aging_evolution(ctx, ctx.evaluate, population=e.population, sample=e.sample, limit=ctx.budget_left,
                    tag="evo", seeds=ctx.seed_archs())


# --------------------------------------------------------------------------------------------- weight sharing
def _score_batches(ctx, n: int, batch_size: int) -> list[dict]:
    valid = ctx.data.splits["valid"]
    out = []
    for b in valid.batches(batch_size):
        out.append(b)
        if len(out) >= n:
            break
    return out


def inherited_metrics(model_fn, batches: list[dict]) -> dict:
    """Logloss, NE and (when both classes occur) AUC of ``model_fn`` on the fixed scoring batches (one forward
    pass per batch)."""

    with torch.no_grad():
        logits = torch.cat([model_fn(b).float() for b in batches])
    y = torch.cat([b["label"] for b in batches])
    ll = F.binary_cross_entropy_with_logits(logits, y, reduction="sum").item() / max(len(y), 1)
    out = {"logloss": ll, "ne": _ne(ll, batches)}
    yn = y.numpy()
    if 0 < yn.sum() < len(yn):
        out["auc"] = auc(yn, logits.numpy())
    return out


def _ne(logloss: float, batches: list[dict]) -> float:
    """Normalised entropy: the logloss over the entropy of the batches' base rate (training.metrics)."""

    return logloss / entropy(float(torch.cat([b["label"] for b in batches]).double().mean()))


class PathSampled(nn.Module):
    """The supernet with the path of the current step: ``forward(batch) = net(batch, arch)`` (``arch`` is set
    before every step by the one-shot strategy)."""

    def __init__(self, net: Supernet):
        super().__init__()
        self.net = net
        self.arch: Arch | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(batch, self.arch)


class _CostPenalised(nn.Module):
    """The DNAS supernet as a model whose auxiliary loss is ``λ · E[FLOPs]`` (the binary objective adds it to the
    cross-entropy: ``L = BCE + λ · cost``)."""

    def __init__(self, net: DnasSupernet, lam: float):
        super().__init__()
        self.net, self.lam = net, lam

    def forward(self, batch: dict[str, torch.Tensor]) -> ModelOutput:
        logits, cost = self.net(batch)
        return ModelOutput({DEFAULT_HEAD: logits}, aux_loss=self.lam * cost)


def train_supernet(ctx, model: nn.Module, *, name: str, steps: int, lr: float, batch_size: int, every: int,
                    time_share: float, before_step=None, separate: list[SeparateOptimizer] = ()) -> None:
    """Train a supernet for ``steps`` Adam steps (gradient norm clipped to 10) through the shared
    :class:`~rankcraft.training.trainer.Trainer` and :class:`~rankcraft.training.loops.StepLoop`, resumable from
    ``<search>/<name>/last.pt``. The phase ends early once the search has used ``time_share`` of a time budget."""
    run_dir = ctx.out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=lr, optimizer="adam", lr_schedule="constant",
                      clip_grad_norm=10.0, max_steps=steps, checkpoint_every=every, checkpoint_seconds=0,
                      seed=ctx.cfg.seed, quiet=not ctx.progress)

    def out_of_time() -> bool:
        if ctx.cfg.budget.minutes and ctx.time_fraction() >= time_share:
            tqdm.write(f"{name}: stopping ({time_share:.0%} of the time budget used)")
            return True
        return False

    def on_step(done: int) -> None:
        if done % every == 0:
            ctx.save_elapsed()

    trainer = Trainer(model, cfg, run_dir, on_step=on_step, before_step=before_step, stop_when=out_of_time,
                      separate=separate)
    trainer.run(StepLoop(ctx.data.splits["train"], steps), resume=(run_dir / "last.pt").exists())
    ctx.save_elapsed()


@register_strategy("oneshot", help="weight-sharing supernet, candidates scored with inherited weights, top-k "
                   "retrained", options=OneShotConfig, trains_supernet=True)
def run_oneshot(ctx) -> None:
    cfg = ctx.cfg.options("oneshot")
    bs = cfg.batch_size or int(ctx.cfg.train.get("batch_size", 4096))
    torch.manual_seed(ctx.cfg.seed)
    net = Supernet(ctx.data.features, ctx.space, ctx.cfg.embedding_dim)

    model = PathSampled(net)

    def pick_path(step: int) -> None:
        """Largest-path warm-up: the largest path with probability 1 - step / (warmup · steps), else a sample."""
        rng = _rng(ctx, "path", step)
        p_largest = max(0.0, 1.0 - step / (cfg.warmup * cfg.steps)) if cfg.warmup > 0 else 0.0
        model.arch = ctx.space.largest(rng) if rng.random() < p_largest else ctx.space.sample(rng)

    train_supernet(ctx, model, name="supernet", steps=cfg.steps, lr=cfg.lr, batch_size=bs,
                    every=cfg.checkpoint_every, time_share=0.5, before_step=pick_path)
    net.eval()
    net.use_batch_stats(ctx.space.config.norm == "batch")
    score_batches = _score_batches(ctx, cfg.score_batches, bs)
    features, d = ctx.data.features, ctx.cfg.embedding_dim
    scored = {"n": 0}
    bar = tqdm(total=cfg.candidates, desc="scoring (inherited weights)", disable=not ctx.progress,
               dynamic_ncols=True)

    def score(archs: list[Arch]) -> list[float]:
        out = []
        for a in archs:
            key = arch_key(a, "supernet")
            rec = ctx.store.get(key)
            if rec is None:
                metrics = inherited_metrics(lambda b, a=a: net(b, a), score_batches)
                obj = ctx.objective(metrics)
                if math.isfinite(obj):
                    ctx.store.record(key, arch=a.to_dict(), objective=obj, flops=arch_flops(a, features, d),
                                     metrics=metrics, fidelity={"tag": "supernet"}, strategy="oneshot")
                out.append(obj)
            else:
                out.append(ctx.objective(rec.metrics))
            scored["n"] += 1
            bar.update(1)
        return out

    def limit() -> bool:
        return scored["n"] < cfg.candidates and (not ctx.cfg.budget.minutes or ctx.time_fraction() < 0.75)

    aging_evolution(ctx, score, population=cfg.population, sample=cfg.sample, limit=limit, tag="oneshot")
    bar.close()
    ctx.save_elapsed()
    ranked = sorted((t for t in ctx.store.trials() if t.strategy == "oneshot" and t.fidelity.get("tag") == "supernet"),
                    key=lambda t: ctx.objective(t.metrics))
    top = [Arch.model_validate(t.arch) for t in ranked[: cfg.top_k]]
    ctx.evaluate(top, extra=[{"supernet_rank": r + 1, "supernet_score": ctx.objective(t.metrics)}
                             for r, t in enumerate(ranked[: cfg.top_k])], count=False)


def _note_dnas_cap(ctx) -> None:
    if ctx.cfg.max_flops is not None:
        ctx.note("dnas controls cost through dnas.lambdas; max_flops does not constrain its derived architectures")


@register_strategy("dnas", help="differentiable search with a FLOPs penalty per lambda, derived architectures "
                   "retrained", options=DnasConfig, trains_supernet=True, prepare=_note_dnas_cap)
def run_dnas(ctx) -> None:
    cfg = ctx.cfg.options("dnas")
    bs = cfg.batch_size or int(ctx.cfg.train.get("batch_size", 4096))
    n = len(cfg.lambdas)
    for k, lam in enumerate(cfg.lambdas):
        meta_key = f"dnas_derived_{lam!r}"
        derived = ctx.store.get_meta(meta_key)
        if derived is None:
            torch.manual_seed(ctx.cfg.seed)
            net = DnasSupernet(ctx.data.features, ctx.space, ctx.cfg.embedding_dim, tau=cfg.tau)
            freeze = int(cfg.warmup * cfg.steps)  # α is trained from this step on
            train_supernet(ctx, _CostPenalised(net, lam), name=f"dnas-{lam!r}", steps=cfg.steps, lr=cfg.lr,
                            batch_size=bs, every=cfg.checkpoint_every, time_share=0.8 * (k + 1) / n,
                            separate=[SeparateOptimizer(net.arch_parameters(), cfg.alpha_lr, freeze)])
            derived = {"arch": net.derive().to_dict(), "expected_flops": net.expected_flops()}
            ctx.store.set_meta(meta_key, derived)
        ctx.evaluate([Arch.model_validate(derived["arch"])],
                     extra=[{"lambda": lam, "expected_flops": derived["expected_flops"]}], count=False)

