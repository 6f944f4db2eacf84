"""Training-light proxies that score subnets of a one-shot supernet, and the SiGeo "sub-one-shot" strategy
(wave2-specs §7; SiGeo, arXiv 2311.13169, with the official NasRec-SiGeo code read for the steps; the
reconstruction choices are options, documented in ``docs/search.md``).

For a subnet ``a`` of a supernet with weights ``θ``, :func:`subnet_gradients` runs ``N`` (default 4) fixed training
batches through the subnet — an SGD step between batches unless ``step=False`` — and keeps the per-batch
gradients ``g_n`` of every parameter in scope, the weights at the last batch and the last batch's loss; the
supernet is restored afterwards. From these (``m`` ranges over leaf modules, ``ω`` over a module's parameter
entries; entries whose gradient has zero standard deviation over the batches — e.g. slices of the supernet that
the subnet does not use — are left out):

* ``zico   = Σ_m log Σ_{ω∈m, σ_ω>0} mean_n|g_{n,ω}| / σ_n(g_{n,ω})``                    (ZiCo; higher = better)
* ``fr     = log((Σ_ω θ_ω ḡ_ω)² + 1e-10)``, ``ḡ = Σ_n g_n``              (Fisher–Rao norm estimate; higher = better)
* ``loss   = L(B_N)``                                                              (lower = better)
* ``gradnorm = log ‖Σ_n g_n‖₂``                                                    (higher = better)
* ``synflow = log Σ_ω θ_ω ∂R/∂θ_ω`` with every weight replaced by ``|θ|`` and ``R`` the summed logits of one batch
  in eval mode, double precision (SynFlow adapted to embedding inputs: the ids of a real batch pick the rows)
* ``sigeo  = λ1·z(zico) + λ2·z(fr) − λ3·z(loss)`` with ``z`` the z-score across the candidates of one scoring
  run (``normalise: none`` mixes the raw values, as the official code does); the paper's ``(λ1, λ2, λ3)`` is
  ``(1, 50, 1)`` with warm-up and ``(1, 1, 0)`` without.

Scope ``all`` uses every trainable parameter (grouped per leaf module); ``last`` only the head, as the official
RecSys code's default (``finetune_whole_supernet 0``). The official code's first-nonzero-index bug is not
reproduced (all entries with a nonzero deviation count).
"""

from __future__ import annotations

import math
import random
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from rankcraft.models.arch.format import Arch
from rankcraft.search.registry import register_strategy
from rankcraft.search.strategies import PathSampled, train_supernet
from rankcraft.search.supernet import Supernet

PROXIES = ("sigeo", "zico", "fr", "loss", "gradnorm", "synflow")


class SiGeoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    warmup: float = Field(default=0.1, ge=0, le=1)  # fraction of one epoch the supernet is trained on
    warmup_batch_size: int = Field(default=512, ge=1)
    warmup_lr: float = Field(default=1e-3, gt=0)
    largest_path: float = Field(default=0.25, ge=0, le=1)  # warm-up fraction with decaying largest-path sampling
    score_batches: int = Field(default=4, ge=2)
    score_batch_size: int = Field(default=512, ge=1)
    score_lr: float = Field(default=0.04, gt=0)
    step_between: bool = True
    clip: float = Field(default=5.0, gt=0)
    scope: Literal["all", "last"] = "all"
    #: (λ1, λ2, λ3); default: (1, 50, 1) with warm-up, (1, 1, 0) without
    coefficients: list[float] | None = Field(default=None, min_length=3, max_length=3)
    normalise: Literal["z", "none"] = "z"
    candidates: int = Field(default=200, ge=1)  # pool candidates scored
    top_k: int = Field(default=5, ge=1)  # best scored candidates retrained standalone


def default_coefficients(warmup: float) -> tuple[float, float, float]:
    return (1.0, 50.0, 1.0) if warmup > 0 else (1.0, 1.0, 0.0)


def _scope(net: Supernet, scope: str) -> list[tuple[str, torch.nn.Parameter]]:
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    if scope == "last":
        return [(n, p) for n, p in named if n.startswith("head_")]
    return named


def subnet_gradients(net: Supernet, arch: Arch, batches: list[dict], *, lr: float = 0.04, step: bool = True,
                     clip: float = 5.0, scope: str = "all") -> dict:
    """``{"grads": {name: [N, *shape]}, "theta": {name: tensor}, "loss": float}`` of subnet ``arch`` over
    ``batches`` (an SGD step with gradient clipping between batches when ``step``); ``net`` is restored."""
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    params = _scope(net, scope)
    grads: dict[str, list[torch.Tensor]] = {n: [] for n, _ in params}
    theta: dict[str, torch.Tensor] = {}
    opt = torch.optim.SGD([p for _, p in params], lr=lr)
    was_training = net.training
    net.train()
    loss_v = math.nan
    try:
        for k, b in enumerate(batches):
            opt.zero_grad(set_to_none=False)
            loss = F.binary_cross_entropy_with_logits(net(b, arch).float(), b["label"].float())
            loss.backward()
            loss_v = float(loss.detach())
            for n, p in params:
                grads[n].append(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
            if k == len(batches) - 1:
                theta = {n: p.detach().clone() for n, p in params}
            if step and k < len(batches) - 1:
                torch.nn.utils.clip_grad_norm_([p for _, p in params], clip)
                opt.step()
    finally:
        net.load_state_dict(saved)
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    return {"grads": {n: torch.stack(g) for n, g in grads.items()}, "theta": theta, "loss": loss_v}


def _module_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def gradient_proxies(g: dict) -> dict[str, float]:
    """``zico``, ``fr``, ``loss`` and ``gradnorm`` of one :func:`subnet_gradients` result."""
    per_module: dict[str, float] = {}
    dot = 0.0
    total_sq = 0.0
    for name, gs in g["grads"].items():
        gs = gs.double()
        sd = gs.std(dim=0, unbiased=False)
        mask = sd > 0
        if mask.any():
            ratio = (gs.abs().mean(dim=0)[mask] / sd[mask]).sum().item()
            per_module[_module_of(name)] = per_module.get(_module_of(name), 0.0) + ratio
        gsum = gs.sum(dim=0)
        dot += float((g["theta"][name].double() * gsum).sum())
        total_sq += float((gsum ** 2).sum())
    zico = sum(math.log(v) for v in per_module.values() if v > 0)
    return {"zico": zico, "fr": math.log(dot * dot + 1e-10), "loss": g["loss"],
            "gradnorm": 0.5 * math.log(total_sq + 1e-30)}


def synflow(net: Supernet, arch: Arch, batch: dict) -> float:
    """SynFlow of subnet ``arch``: ``log Σ θ·∂R/∂θ`` with ``|θ|`` weights, ``R`` the summed logits of ``batch``
    in eval mode, in double precision; ``net`` is restored."""
    saved = {k: v.detach().clone() for k, v in net.state_dict().items()}
    was_training = net.training
    net.double().eval()
    try:
        with torch.no_grad():
            for p in net.parameters():
                p.abs_()
        b = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
        net.zero_grad(set_to_none=True)
        r = net(b, arch).sum()
        r.backward()
        s = sum(float((p.detach() * p.grad).sum()) for p in net.parameters() if p.grad is not None)
    finally:
        net.float()
        net.load_state_dict(saved)
        net.zero_grad(set_to_none=True)
        net.train(was_training)
    return math.log(s) if s > 0 else -math.inf


def _zscore(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    ok = np.isfinite(v)
    out = np.zeros_like(v)
    if ok.sum() > 1 and v[ok].std() > 0:
        out[ok] = (v[ok] - v[ok].mean()) / v[ok].std()
    out[~ok] = -np.inf
    return out


def sigeo_scores(raw: list[dict], coefficients: tuple[float, float, float], normalise: str = "z") -> np.ndarray:
    """``λ1·zico + λ2·fr − λ3·loss`` per candidate (higher = better), over z-scored components by default."""
    l1, l2, l3 = coefficients
    comp = {k: np.array([r[k] for r in raw], dtype=float) for k in ("zico", "fr", "loss")}
    if normalise == "z":
        comp = {k: _zscore(v) for k, v in comp.items()}
    return l1 * comp["zico"] + l2 * comp["fr"] - l3 * comp["loss"]


def fixed_batches(split, n: int, batch_size: int, seed: int) -> list[dict]:
    """``n`` batches of a split in a seeded shuffled order (the same for every candidate)."""
    out = []
    for b in split.batches(batch_size, shuffle=True, seed=seed, epoch=0):
        out.append(b)
        if len(out) >= n:
            break
    return out


def score_candidates(net: Supernet, archs: list[Arch], batches: list[dict], opts: SiGeoConfig, *,
                     with_synflow: bool = False, progress=None) -> list[dict]:
    """Every gradient proxy (and ``synflow``) per candidate, plus the combined ``sigeo`` score."""
    raw = []
    for a in archs:
        g = subnet_gradients(net, a, batches, lr=opts.score_lr, step=opts.step_between, clip=opts.clip,
                             scope=opts.scope)
        r = gradient_proxies(g)
        if with_synflow:
            r["synflow"] = synflow(net, a, batches[0])
        raw.append(r)
        if progress is not None:
            progress()
    coef = tuple(opts.coefficients) if opts.coefficients else default_coefficients(opts.warmup)
    for r, s in zip(raw, sigeo_scores(raw, coef, opts.normalise)):
        r["sigeo"] = float(s)
    return raw


@register_strategy("sigeo", help="sub-one-shot: a briefly warmed supernet scores candidates with the SiGeo proxy; "
                   "the top-k are retrained", options=SiGeoConfig, trains_supernet=True)
def run_sigeo(ctx) -> None:
    opts: SiGeoConfig = ctx.cfg.options("sigeo")
    meta_key = "sigeo_scores"
    scored = ctx.store.get_meta(meta_key)
    if scored is None:
        torch.manual_seed(ctx.cfg.seed)
        net = Supernet(ctx.data.features, ctx.space, ctx.cfg.embedding_dim)
        model = PathSampled(net)
        train = ctx.data.splits["train"]
        steps = int(round(opts.warmup * train.num_batches(opts.warmup_batch_size)))
        if steps > 0:
            def pick_path(step: int) -> None:
                rng = random.Random(repr((ctx.cfg.seed, "sigeo", "path", step)))
                p = max(0.0, 1.0 - step / (opts.largest_path * steps)) if opts.largest_path > 0 else 0.0
                model.arch = ctx.space.largest(rng) if rng.random() < p else ctx.space.sample(rng)

            train_supernet(ctx, model, name="sigeo-supernet", steps=steps, lr=opts.warmup_lr,
                           batch_size=opts.warmup_batch_size, every=max(1, steps // 4), time_share=0.5,
                           before_step=pick_path)
        rng = random.Random(repr((ctx.cfg.seed, "sigeo", "candidates")))
        pool = ctx.pool()
        archs = rng.sample(pool, min(opts.candidates, len(pool)))
        batches = fixed_batches(train, opts.score_batches, opts.score_batch_size, ctx.cfg.seed)
        bar = tqdm(total=len(archs), desc="SiGeo scoring", disable=not ctx.progress, dynamic_ncols=True)
        raw = score_candidates(net, archs, batches, opts, progress=lambda: bar.update(1))
        bar.close()
        scored = [{"arch": a.to_dict(), **r} for a, r in zip(archs, raw)]
        ctx.store.set_meta(meta_key, scored)
        ctx.save_elapsed()
    ranked = sorted(scored, key=lambda r: -r["sigeo"])[: opts.top_k]
    ctx.evaluate([Arch.model_validate(r["arch"]) for r in ranked],
                 extra=[{"sigeo_rank": k + 1, "sigeo": r["sigeo"]} for k, r in enumerate(ranked)], count=False)


__all__ = ["PROXIES", "SiGeoConfig", "default_coefficients", "fixed_batches", "gradient_proxies", "score_candidates",
           "sigeo_scores", "subnet_gradients", "synflow"]
