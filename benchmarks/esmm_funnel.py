"""ESMM claim on the synthetic funnel: CVR estimated over all impressions.

Two models per seed, both trained only on observed labels (never on the truth):

* ``esmm``: ESMM with supervised heads ``ctr`` (label ``click``) and ``ctcvr`` (label ``purchase``) over all
  impressions; its ``cvr`` head is the CVR estimate. Early stopping on the validation mean AUC of its two tasks.
* ``cvr-clicked``: a DNN trained on clicked rows only (label ``conversion`` weighted by ``click``), the
  conventional CVR model. Early stopping on the validation AUC over clicked rows.

Both are scored on the **test** split, over **all** impressions, against the generator's true pCVR ``q``:

* ``logloss_true``: ``−mean(q log p + (1−q) log(1−p))`` (cross-entropy against the true probability; minimised by
  ``p = q``; the entropy floor ``−mean(q log q + (1−q) log(1−q))`` is reported too);
* ``auc_sampled``: AUC of ``p`` against outcomes ``c ~ Bernoulli(q)`` drawn once per impression with a fixed seed
  (the same draw for both models);
* ``pearson``/``spearman`` correlation of ``p`` with ``q``, and ``calibration`` ``mean(p) / mean(q)``.

Usage::

    python benchmarks/esmm_funnel.py --rows 200000 --seeds 2021,1,2 --out benchmarks/results/esmm_funnel
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from rankcraft.data.funnel import funnel_truth
from rankcraft.data.spec import DataSpec, prepare_spec
from rankcraft.training.evaluation import predict_heads
from rankcraft.training.metrics import EPS, auc
from rankcraft.training.run import RunConfig, train

ESMM_OBJECTIVE = {"type": "multitask", "tasks": [{"name": "ctr", "label": "click"},
                                                 {"name": "ctcvr", "label": "purchase"}]}
BASELINE_OBJECTIVE = {"type": "binary", "label": "conversion", "weight_column": "click"}


def cross_entropy(q: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return float(-np.mean(q * np.log(p) + (1 - q) * np.log(1 - p)))


def score(p: np.ndarray, q: np.ndarray, outcomes: np.ndarray) -> dict:
    return {"logloss_true": cross_entropy(q, p), "auc_sampled": auc(outcomes, p),
            "pearson": float(np.corrcoef(p, q)[0, 1]), "spearman": float(spearmanr(p, q).statistic),
            "calibration": float(p.mean() / q.mean())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--seeds", default="2021,1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--out", default="benchmarks/results/esmm_funnel")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(recipe="funnel", options={"rows": args.rows, "seed": args.data_seed})
    data = prepare_spec(spec)
    q = funnel_truth(spec.source(), "test")["cvr"]
    outcomes = (np.random.default_rng(12345).random(len(q)) < q).astype(np.float64)
    floor = cross_entropy(q, q)
    train_cfg = {"epochs": args.epochs, "batch_size": 2048, "lr": 1e-3, "early_stopping_patience": 2,
                 "lr_schedule": "plateau", "quiet": True}
    models = {
        "esmm": ("esmm", {"embedding_dim": 8, "ctr_hidden_units": [128, 64], "cvr_hidden_units": [128, 64]},
                 ESMM_OBJECTIVE, "cvr"),
        "cvr-clicked": ("dnn", {"embedding_dim": 8, "hidden_units": [128, 64]}, BASELINE_OBJECTIVE, "score"),
    }
    results = {"command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "rows": args.rows, "data_seed": args.data_seed, "test_rows": int(len(q)),
               "true_cvr_mean": float(q.mean()), "entropy_floor": floor,
               "machine": {"platform": platform.platform(), "torch": torch.__version__,
                           "threads": torch.get_num_threads()}, "models": {}}
    for name, (model, params, objective, head) in models.items():
        runs = []
        for seed in seeds:
            cfg = RunConfig(data=spec, model=model, params=params, objective=objective,
                            train={**train_cfg, "seed": seed})
            t0 = time.perf_counter()
            res = train(cfg, data=data)
            p = predict_heads(res.model, data.splits["test"], res.objective)[head]
            row = {"seed": seed, **score(p, q, outcomes), "best_epoch": res.report["best_epoch"],
                   "valid": res.report["valid"], "wall_seconds": time.perf_counter() - t0}
            runs.append(row)
            print(f"{name} seed {seed}: logloss vs true CVR {row['logloss_true']:.4f}  "
                  f"AUC {row['auc_sampled']:.4f}  spearman {row['spearman']:.4f}", flush=True)
        agg = {"model": model, "params": params, "objective": objective, "head": head, "runs": runs}
        for k in ("logloss_true", "auc_sampled", "pearson", "spearman", "calibration"):
            vals = [r[k] for r in runs]
            agg[k] = {"mean": statistics.fmean(vals), "std": statistics.pstdev(vals)}
        results["models"][name] = agg
    e, b = results["models"]["esmm"], results["models"]["cvr-clicked"]
    results["claim"] = {
        "esmm_better_logloss_every_seed": all(x["logloss_true"] < y["logloss_true"]
                                              for x, y in zip(e["runs"], b["runs"])),
        "esmm_better_auc_every_seed": all(x["auc_sampled"] > y["auc_sampled"] for x, y in zip(e["runs"], b["runs"])),
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [f"Funnel: {args.rows:,} impressions (data seed {args.data_seed}), test split {len(q):,} impressions, "
             f"mean true CVR {q.mean():.4f}; mean ± std over seeds {args.seeds}", "",
             "| model | logloss vs true CVR | AUC (sampled outcomes) | Spearman | calibration |", "|---|---|---|---|---|"]
    for name, m in results["models"].items():
        lines.append(f"| {name} | {m['logloss_true']['mean']:.4f} ± {m['logloss_true']['std']:.4f} | "
                     f"{m['auc_sampled']['mean']:.4f} ± {m['auc_sampled']['std']:.4f} | "
                     f"{m['spearman']['mean']:.4f} | {m['calibration']['mean']:.3f} |")
    lines += ["", f"Entropy floor (logloss of the true CVR itself): {floor:.4f}", "",
              f"Claim (ESMM better on every seed): logloss {results['claim']['esmm_better_logloss_every_seed']}, "
              f"AUC {results['claim']['esmm_better_auc_every_seed']}", "", f"Produced by: `{results['command']}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
