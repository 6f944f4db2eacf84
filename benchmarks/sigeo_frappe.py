"""SiGeo and the zero-cost proxies against full-fidelity quality on the tabular benchmark (wave2-specs §7 (d)).

    python benchmarks/sigeo_frappe.py --table benchmarks/results/nas_table_frappe/table.json.gz \
        --out benchmarks/results/sigeo_frappe

* Candidates: the table's rows that have the ``full`` fidelity (ground truth: their validation logloss with the zoo
  recipe; the low-fidelity logloss is reported as a second truth).
* One supernet of the table's space (embedding 10, seed 0) per warm-up level: trained on 0%, 1%, 5%, 10% and 100%
  of one epoch of Frappe_x1 train (batch 512, Adam 1e-3, largest path with a probability decaying over the first
  25% of the steps, then uniform paths). 100% is the one-shot reference.
* Per level and candidate: SiGeo (coefficients (1, 50, 1) with warm-up, (1, 1, 0) without; z-scored components),
  ZiCo, the Fisher–Rao term, the loss, the gradient norm, SynFlow (all over every trainable parameter; SiGeo and
  ZiCo also over the head only, the official RecSys scope), each from the same 4 fixed training batches of 512 with
  an SGD step (lr 0.04) between them; and the one-shot score: inherited-weight validation logloss on 8 fixed
  validation batches of 512. Parameter count, FLOPs and a random score are the trivial baselines.
* Kendall τ and Spearman ρ between each score (oriented so that higher = predicted better) and the negated truth,
  with 95% bootstrap intervals (1,000 resamples of the candidates).
* Cost: wall seconds and examples through a forward+backward pass (warm-up steps × 512 + candidates × 4 × 512 for
  the gradient proxies; warm-up + candidates × 8 × 512 forward-only, counted as one third, for inherited scores).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scipy.stats import kendalltau, spearmanr  # noqa: E402

from rankcraft.data.spec import prepare_spec  # noqa: E402
from rankcraft.models.arch.cost import arch_flops  # noqa: E402
from rankcraft.search.sigeo import SiGeoConfig, fixed_batches, score_candidates  # noqa: E402
from rankcraft.search.space import SearchSpace  # noqa: E402
from rankcraft.search.strategies import inherited_metrics  # noqa: E402
from rankcraft.search.supernet import Supernet  # noqa: E402
from rankcraft.search.tabular import Table, live_hash  # noqa: E402

LEVELS = (0.0, 0.01, 0.05, 0.10, 1.0)


def warm_supernet(data, space: SearchSpace, fraction: float, *, batch: int = 512, lr: float = 1e-3,
                  largest: float = 0.25, seed: int = 0) -> tuple[Supernet, int, float]:
    torch.manual_seed(seed)
    net = Supernet(data.features, space, 10)
    train = data.splits["train"]
    steps = int(round(fraction * train.num_batches(batch)))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    net.train()
    for step, b in enumerate(train.batches(batch, shuffle=True, seed=seed, epoch=0)):
        if step >= steps:
            break
        rng = random.Random(repr((seed, "path", step)))
        p = max(0.0, 1.0 - step / (largest * steps)) if largest > 0 else 0.0
        arch = space.largest(rng) if rng.random() < p else space.sample(rng)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(b, arch), b["label"])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
    return net, steps, time.perf_counter() - t0


def corr(score: np.ndarray, truth: np.ndarray, n_boot: int = 1000) -> dict:
    """τ and ρ between ``score`` (higher = better) and ``-truth`` (lower truth = better), with bootstrap CIs."""
    ok = np.isfinite(score) & np.isfinite(truth)
    s, t = score[ok], -truth[ok]
    rng = np.random.default_rng(0)
    taus, rhos = [], []
    for _ in range(n_boot):
        i = rng.integers(0, len(s), len(s))
        taus.append(kendalltau(s[i], t[i]).statistic)
        rhos.append(spearmanr(s[i], t[i]).statistic)
    return {"tau": float(kendalltau(s, t).statistic), "tau_ci": [float(np.nanquantile(taus, q)) for q in (0.025, 0.975)],
            "rho": float(spearmanr(s, t).statistic), "rho_ci": [float(np.nanquantile(rhos, q)) for q in (0.025, 0.975)],
            "n": int(ok.sum())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="benchmarks/results/nas_table_frappe/table.json.gz")
    ap.add_argument("--out", default="benchmarks/results/sigeo_frappe")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--levels", default=",".join(str(x) for x in LEVELS), help="warm-up fractions of one epoch")
    ap.add_argument("--limit", type=int, default=None, help="score only the first N candidates (a smoke test)")
    ap.add_argument("--n", type=int, default=100, help="candidates: the table's first N rows (those that get the "
                    "full fidelity; rows without it yet are scored and left out of the full-fidelity correlations)")
    ap.add_argument("--from-scores", action="store_true", help="reuse OUT/scores.json (the proxies do not depend "
                    "on the truth) and only recompute the correlations, e.g. after more table rows finished")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Table.load(args.table)
    idx = list(range(min(args.n, len(table))))[: args.limit]
    archs = [table.archs[i] for i in idx]
    truth_full = np.array([table.rows[i]["full"]["logloss"] if table.rows[i].get("full") else np.nan for i in idx])
    truth_low = np.array([table.rows[i]["low"]["logloss"] for i in idx])
    data = prepare_spec({"recipe": "frappe_x1", **({"data_dir": args.data_dir} if args.data_dir else {})})
    space = SearchSpace(table.space)
    train_batches = fixed_batches(data.splits["train"], 4, 512, seed=7)
    valid_batches = fixed_batches(data.splits["valid"], 8, 512, seed=7)
    trivial = {"params": np.array([float(table.rows[i]["params"]) for i in idx]),
               "flops": np.array([arch_flops(a, data.features, 10) for a in archs]),
               "random": np.random.default_rng(0).random(len(idx))}
    results: dict = {"candidates": len(idx), "with_full": int(np.isfinite(truth_full).sum()), "levels": {},
                     "trivial": {}}
    for name, v in trivial.items():
        results["trivial"][name] = {"vs_full": corr(v, truth_full), "vs_low": corr(v, truth_low)}
    levels = [float(x) for x in args.levels.split(",")]
    scores_path = out / "scores.json"
    saved = json.loads(scores_path.read_text()) if args.from_scores else {}
    for level in levels:
        if str(level) in saved:
            entry = saved[str(level)]
            scores = entry.pop("scores")
        else:
            net, steps, warm_s = warm_supernet(data, space, level)
            t0 = time.perf_counter()
            scores = {}
            for scope in ("all", "last"):
                opts = SiGeoConfig(warmup=level, scope=scope)
                raw = score_candidates(net, archs, train_batches, opts, with_synflow=scope == "all")
                for key in (("sigeo", "zico", "fr", "loss", "gradnorm", "synflow") if scope == "all"
                            else ("sigeo", "zico")):
                    name = key if scope == "all" else f"{key} (head only)"
                    sign = -1.0 if key == "loss" else 1.0
                    scores[name] = [sign * r[key] for r in raw]
                if scope == "all":
                    grad_s = time.perf_counter() - t0
            t1 = time.perf_counter()
            net.eval()
            with torch.no_grad():
                scores["one-shot (inherited logloss)"] = [
                    -inherited_metrics(lambda b, a=a: net(b, a), valid_batches)["logloss"] for a in archs]
            inh_s = time.perf_counter() - t1
            entry = {"warmup_steps": steps, "warmup_seconds": warm_s, "gradient_proxy_seconds": grad_s,
                     "inherited_seconds": inh_s, "examples_gradient_proxies": steps * 512 + len(archs) * 4 * 512,
                     "examples_inherited": steps * 512 + len(archs) * 8 * 512 / 3}
            saved[str(level)] = {**entry, "scores": scores, "archs": [live_hash(a) for a in archs]}
            scores_path.write_text(json.dumps(saved))
        per = {}
        for name, v in scores.items():
            v = np.array(v, dtype=float)
            per[name] = {"vs_full": corr(v, truth_full), "vs_low": corr(v, truth_low)}
        results["levels"][str(level)] = {**{k: v for k, v in entry.items() if k != "archs"}, "proxies": per}
        print(f"level {level:.0%}: {entry['warmup_steps']} warm-up steps, proxies {entry['gradient_proxy_seconds']:.0f} s; "
              + ", ".join(f"{k} τ {v['vs_full']['tau']:+.3f}" for k, v in per.items()), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    one_shot = results["levels"].get("1.0") or results["levels"][str(levels[-1])]
    n_full = int(np.isfinite(truth_full).sum())
    lines = [f"# SiGeo and zero-cost proxies on the Frappe_x1 table ({n_full} architectures with full-fidelity "
             "logloss)", "",
             "Kendall τ with the full-fidelity validation logloss (higher = the score ranks like the truth), 95% "
             "bootstrap interval; cost relative to one-shot scoring (1 epoch of supernet training + inherited-"
             "weight scores), in examples through forward+backward.", "",
             "| warm-up | SiGeo | ZiCo | FR | loss | grad-norm | SynFlow | SiGeo (head) | ZiCo (head) | one-shot score "
             "| SiGeo cost / one-shot cost |", "|---|" + "---|" * 10]
    for level, r in results["levels"].items():
        p = r["proxies"]
        cells = [f"{p[k]['vs_full']['tau']:+.3f} [{p[k]['vs_full']['tau_ci'][0]:+.2f}, "
                 f"{p[k]['vs_full']['tau_ci'][1]:+.2f}]"
                 for k in ("sigeo", "zico", "fr", "loss", "gradnorm", "synflow", "sigeo (head only)",
                           "zico (head only)", "one-shot (inherited logloss)")]
        ratio = r["examples_gradient_proxies"] / one_shot["examples_inherited"]
        lines.append(f"| {float(level):.0%} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    lines += ["", "Trivial baselines: " + ", ".join(f"{k} τ {v['vs_full']['tau']:+.3f}"
                                                    for k, v in results["trivial"].items()), ""]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
