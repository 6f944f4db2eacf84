"""Search strategies compared over many repeats on the tabular benchmark (``benchmarks/nas_table.py``), and the
predictor's ablations.

    python benchmarks/searchers_on_table.py --table benchmarks/results/nas_table_frappe/table.json.gz \
        --repeats 30 --budget 100 --out benchmarks/results/searchers_on_table

1. **Regret.** Each strategy (random, regularised evolution, Optuna TPE, predictor + RL; default options) runs
   ``--repeats`` times (search seeds 0..R-1) with ``--budget`` trials against the table at the ``low`` fidelity
   (``rankcraft search --table``: lookups, proposals restricted to the table's architectures), 5 proposals per
   round. Regret after t trials = best validation logloss found in the first t trials − the best logloss of the
   whole table. Reported: the mean and a 95% bootstrap interval (2,000 resamples of the repeats) at 25, 50, 100.
2. **Predictor ablations** (on the table, no search): Kendall τ between the predictor's scores and the low-fidelity
   logloss on held-out rows, over 20 random 100-train / 50-test splits, for the pairwise and MSE losses and for 1
   and 10 ensemble members; and the rank agreement (Kendall τ with the full-fidelity logloss, on the rows that have
   it) of three labels: the low-fidelity logloss, the curve-extrapolated label, and (for reference) the rows'
   low-fidelity AUC.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scipy.stats import kendalltau  # noqa: E402

from rankcraft.search.encoding import FeatureEncoder, decisions  # noqa: E402
from rankcraft.search.predictor_rl import RankingPredictor, curve_label, one_thread  # noqa: E402
from rankcraft.search.runner import run_search  # noqa: E402
from rankcraft.search.store import TrialStore  # noqa: E402
from rankcraft.search.tabular import Table  # noqa: E402

STRATEGIES = ["random", "evolution", "tpe", "predictor_rl"]
CHECKPOINTS = (25, 50, 100)


def one_search(table_path: str, strategy: str, seed: int, budget: int, data: dict) -> list[float]:
    """The logloss of each trial in order (one search)."""
    # a RAM disk where there is one: the trial store's commits need no disk flushes for a throw-away search
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        url = f"sqlite:///{tmp}/trials.db"
        run_search({"data": data, "space": "small", "strategy": strategy, "budget": {"trials": budget},
                    "table": {"path": table_path, "fidelity": "low"}, "zoo": [], "seed": seed, "batch": 5},
                   Path(tmp) / "s", progress=False, storage=url)
        with TrialStore(url, create=False) as st:
            trials = sorted((t for t in st.trials() if t.strategy == strategy), key=lambda t: t.number)
            return [t.metrics["logloss"] for t in trials]


def bootstrap_ci(x: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n, len(x)), replace=True).mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def ablations(table: Table) -> dict:
    rows = table.rows
    dec = [decisions(a) for a in table.archs]
    enc = FeatureEncoder().fit(dec)
    x = enc.transform(dec)
    y = np.array([r["low"]["logloss"] for r in rows])
    out: dict = {"predictor_tau": {}}
    for name, kw in {"pairwise, 10 models": {"loss": "pairwise", "models": 10},
                     "pairwise, 1 model": {"loss": "pairwise", "models": 1},
                     "mse, 10 models": {"loss": "mse", "models": 10},
                     "mse, 1 model": {"loss": "mse", "models": 1}}.items():
        taus = []
        for split in range(20):
            rng = np.random.default_rng(split)
            idx = rng.permutation(len(rows))
            tr, te = idx[:100], idx[100:150]
            with one_thread():
                p = RankingPredictor(seed=split, **kw).fit(x[tr], y[tr])
                taus.append(kendalltau(p.predict(x[te]), y[te]).statistic)
        out["predictor_tau"][name] = {"mean": float(np.mean(taus)), "sd": float(np.std(taus)), "splits": 20}
    full = [i for i, r in enumerate(rows) if r.get("full")]
    if len(full) >= 10:
        truth = np.array([rows[i]["full"]["logloss"] for i in full])
        low = np.array([rows[i]["low"]["logloss"] for i in full])
        trend = np.array([curve_label(rows[i]["low"]["logloss"], rows[i]["low"]["history"]) for i in full])
        low_auc = np.array([-rows[i]["low"]["auc"] for i in full])
        out["label_tau_vs_full"] = {"rows": len(full),
                                    "low-fidelity logloss": float(kendalltau(low, truth).statistic),
                                    "curve-extrapolated label": float(kendalltau(trend, truth).statistic),
                                    "low-fidelity 1-AUC": float(kendalltau(low_auc, truth).statistic)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--table", default="benchmarks/results/nas_table_frappe/table.json.gz")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--budget", type=int, default=100)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/searchers_on_table")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = Table.load(args.table)
    best = min(r["low"]["logloss"] for r in table.rows)
    data = {"recipe": "frappe_x1", **({"data_dir": args.data_dir} if args.data_dir else {})}
    raw_path = out / "trajectories.json"
    raw = json.loads(raw_path.read_text()) if raw_path.exists() else {}
    t0 = time.time()
    for strategy in args.strategies.split(","):
        runs = raw.setdefault(strategy, {})
        for seed in range(args.repeats):
            if str(seed) in runs:
                continue
            t = time.time()
            runs[str(seed)] = one_search(args.table, strategy, seed, args.budget, data)
            raw_path.write_text(json.dumps(raw))
            print(f"{strategy} seed {seed}: best {min(runs[str(seed)]):.5f} ({time.time() - t:.0f} s)", flush=True)
    summary: dict = {"table": args.table, "table_rows": len(table), "table_best_logloss": best,
                     "repeats": args.repeats, "budget": args.budget, "regret": {}}
    for strategy, runs in raw.items():
        traj = np.array([np.minimum.accumulate(runs[str(s)]) for s in range(args.repeats)]) - best
        summary["regret"][strategy] = {
            str(c): {"mean": float(traj[:, c - 1].mean()), "ci95": bootstrap_ci(traj[:, c - 1]),
                     "found_optimum": int((traj[:, c - 1] <= 0).sum())}
            for c in CHECKPOINTS if c <= traj.shape[1]}
    summary["ablations"] = ablations(table)
    summary["minutes"] = (time.time() - t0) / 60
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    lines = [f"# Search strategies on the tabular benchmark ({len(table)} architectures, low fidelity)", "",
             f"Regret = best validation logloss found − the table's best ({best:.5f}); mean over {args.repeats} "
             "repeats, 95% bootstrap interval; 'opt' = repeats that found the table's best.", "",
             "| strategy | " + " | ".join(f"after {c}" for c in CHECKPOINTS) + " |", "|---|" + "---|" * len(CHECKPOINTS)]
    for strategy, reg in summary["regret"].items():
        cells = [f"{reg[str(c)]['mean']:.5f} [{reg[str(c)]['ci95'][0]:.5f}, {reg[str(c)]['ci95'][1]:.5f}] "
                 f"(opt {reg[str(c)]['found_optimum']})" for c in CHECKPOINTS if str(c) in reg]
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    ab = summary["ablations"]
    lines += ["", "## Predictor: Kendall τ on held-out rows (20 random 100/50 splits of the table)", "",
              "| predictor | τ mean | sd |", "|---|---|---|"]
    for name, v in ab["predictor_tau"].items():
        lines.append(f"| {name} | {v['mean']:.3f} | {v['sd']:.3f} |")
    if "label_tau_vs_full" in ab:
        lab = ab["label_tau_vs_full"]
        lines += ["", f"## Low-fidelity labels against full-fidelity logloss (Kendall τ, {lab['rows']} rows)", "",
                  "| label | τ |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in lab.items() if k != "rows"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
