"""The search report: Pareto front, hypervolume, best candidate, zoo comparison (``report.md``/``report.json``,
``front.png``, ``best.json``)."""

from __future__ import annotations

import math

import numpy as np

from rankcraft.files import atomic_write_json, atomic_write_text
from rankcraft.search.context import SearchContext
from rankcraft.search.pareto import (
    default_reference,
    hypervolume_2d,
    pareto_front,
    plot_front,
)


def _fmt(x, spec=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def write_report(ctx: SearchContext) -> dict:
    """Front, hypervolume, plot, ``best.json`` and ``report.md``/``report.json`` from the store."""
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
