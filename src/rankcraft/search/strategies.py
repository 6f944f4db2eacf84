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

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rankcraft.models.arch.cost import arch_flops
from rankcraft.models.arch.format import Arch
from rankcraft.search.context import arch_key
from rankcraft.search.dnas import DnasSupernet
from rankcraft.search.supernet import Supernet
from rankcraft.training.checkpoint import load_checkpoint, save_checkpoint
from rankcraft.training.metrics import auc, entropy


def _rng(ctx, *tag) -> random.Random:
    return random.Random(repr((ctx.cfg.seed, ctx.cfg.strategy) + tag))


# --------------------------------------------------------------------------------------------- random / evolution
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


def run_evolution(ctx) -> None:
    e = ctx.cfg.evolution
    aging_evolution(ctx, ctx.evaluate, population=e.population, sample=e.sample, limit=ctx.budget_left,
                    tag="evo", seeds=ctx.seed_archs())


# --------------------------------------------------------------------------------------------- weight sharing
def _train_batches(ctx, batch_size: int, seed: int):
    """Endless shuffled training batches (epoch after epoch), deterministic in ``seed``."""
    train = ctx.data.splits["train"]
    epoch = 0
    while True:
        yield from train.batches(batch_size, shuffle=True, seed=seed, epoch=epoch)
        epoch += 1


def _skip(it, n: int):
    for _ in range(n):
        next(it)
    return it


def _score_batches(ctx, n: int, batch_size: int) -> list[dict]:
    valid = ctx.data.splits["valid"]
    out = []
    for b in valid.batches(batch_size):
        out.append(b)
        if len(out) >= n:
            break
    return out


def _inherited_metrics(model_fn, batches: list[dict]) -> dict:
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


def _train_loop(ctx, model, params_groups, step_fn, *, steps: int, ckpt_path, every: int, desc: str,
                time_share: float, seed: int, batch_size: int, extra_state=None):
    """Shared resumable training loop for the supernets. ``step_fn(batch, step) -> loss``."""
    opts = [torch.optim.Adam(ps, lr=lr) for ps, lr in params_groups]
    start = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path)
        model.load_state_dict(state["model"])
        for o, s in zip(opts, state["optimizers"]):
            o.load_state_dict(s)
        start = int(state["step"])
    if start >= steps:
        return opts
    torch.manual_seed(seed + start)
    it = _skip(_train_batches(ctx, batch_size, seed), start)
    bar = tqdm(total=steps, initial=start, desc=desc, disable=not ctx.progress, unit="step", dynamic_ncols=True)
    model.train()
    losses = []
    for step in range(start, steps):
        if ctx.cfg.budget.minutes and ctx.time_fraction() >= time_share:
            tqdm.write(f"{desc}: stopping at step {step} ({time_share:.0%} of the time budget used)")
            break
        loss = step_fn(next(it), step, opts)
        losses.append(loss)
        bar.update(1)
        if (step + 1) % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        if (step + 1) % every == 0 and step + 1 < steps:
            save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
                                        "step": step + 1})
            ctx.save_elapsed()
    bar.close()
    # the training phase is over (all steps, or stopped by the time budget): a resume moves on
    save_checkpoint(ckpt_path, {"model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
                                "step": steps, "trained_steps": start + len(losses)})
    ctx.save_elapsed()
    return opts


def run_oneshot(ctx) -> None:
    cfg = ctx.cfg.oneshot
    bs = cfg.batch_size or int(ctx.cfg.train.get("batch_size", 4096))
    torch.manual_seed(ctx.cfg.seed)
    net = Supernet(ctx.data.features, ctx.space, ctx.cfg.embedding_dim)

    def step_fn(batch, step, opts):
        rng = _rng(ctx, "path", step)
        p_largest = max(0.0, 1.0 - step / (cfg.warmup * cfg.steps)) if cfg.warmup > 0 else 0.0
        arch = ctx.space.largest(rng) if rng.random() < p_largest else ctx.space.sample(rng)
        loss = F.binary_cross_entropy_with_logits(net(batch, arch), batch["label"])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        for o in opts:
            o.step()
        return loss.item()

    _train_loop(ctx, net, [(list(net.parameters()), cfg.lr)], step_fn, steps=cfg.steps,
                ckpt_path=ctx.out / "supernet.pt", every=cfg.checkpoint_every, desc="supernet",
                time_share=0.5, seed=ctx.cfg.seed, batch_size=bs)
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
                metrics = _inherited_metrics(lambda b, a=a: net(b, a), score_batches)
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


def run_dnas(ctx) -> None:
    cfg = ctx.cfg.dnas
    bs = cfg.batch_size or int(ctx.cfg.train.get("batch_size", 4096))
    n = len(cfg.lambdas)
    for k, lam in enumerate(cfg.lambdas):
        meta_key = f"dnas_derived_{lam!r}"
        derived = ctx.store.get_meta(meta_key)
        if derived is None:
            torch.manual_seed(ctx.cfg.seed)
            net = DnasSupernet(ctx.data.features, ctx.space, ctx.cfg.embedding_dim, tau=cfg.tau)
            freeze = int(cfg.warmup * cfg.steps)

            def step_fn(batch, step, opts, net=net, lam=lam, freeze=freeze):
                logits, cost = net(batch)
                loss = F.binary_cross_entropy_with_logits(logits, batch["label"]) + lam * cost
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.weight_parameters(), 10.0)
                opts[0].step()
                if step >= freeze:
                    opts[1].step()
                return loss.item()

            _train_loop(ctx, net, [(net.weight_parameters(), cfg.lr), (net.arch_parameters(), cfg.alpha_lr)],
                        step_fn, steps=cfg.steps, ckpt_path=ctx.out / f"dnas-{lam!r}.pt",
                        every=cfg.checkpoint_every, desc=f"dnas λ={lam}", time_share=0.8 * (k + 1) / n,
                        seed=ctx.cfg.seed, batch_size=bs)
            derived = {"arch": net.derive().to_dict(), "expected_flops": net.expected_flops()}
            ctx.store.set_meta(meta_key, derived)
        ctx.evaluate([Arch.model_validate(derived["arch"])],
                     extra=[{"lambda": lam, "expected_flops": derived["expected_flops"]}], count=False)


STRATEGIES = {"random": run_random, "evolution": run_evolution, "oneshot": run_oneshot, "dnas": run_dnas}
