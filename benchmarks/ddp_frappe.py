"""Data-parallel check on Frappe_x1: the same model, seed and total batch trained by 1 and by N processes.

    python benchmarks/ddp_frappe.py --model deepfm --epochs 3 --workers 2 --out benchmarks/results/ddp_frappe

Each configuration is a `rankcraft train` run (the model's Frappe_x1 preset, a fixed number of epochs so that both
see the same number of steps); the script records validation AUC / logloss after the last epoch and the best one,
training rows/s and wall time, into ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=2021)
    ap.add_argument("--patience", type=int, help="early-stopping patience (default: --epochs, i.e. none)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default="../shared/data/frappe_x1")
    ap.add_argument("--cache-dir", default=".rankcraft_cache")
    ap.add_argument("--out", default="benchmarks/results/ddp_frappe")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for workers in (1, args.workers):
        run = out / f"run-w{workers}"
        shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-m", "rankcraft.cli.main", "train", "--dataset", "frappe_x1", "--data-dir",
               args.data_dir, "--model", args.model, "--epochs", str(args.epochs), "--seed", str(args.seed),
               "--opt", f"early_stopping_patience={args.patience or args.epochs}", "--quiet", "--out", str(run),
               "--cache-dir", args.cache_dir] + (["--workers", str(workers)] if workers > 1 else [])
        t0 = time.time()
        subprocess.run(cmd, check=True, env={**os.environ})
        wall = time.time() - t0
        report = json.loads((run / "report.json").read_text())
        hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        rows.append({"workers": workers, "final_auc": hist[-1]["auc"], "final_logloss": hist[-1]["logloss"],
                     "best_auc": report["valid"]["auc"], "best_epoch": report["best_epoch"],
                     "train_rows_per_s": report["train_rows_per_s"], "train_seconds": report["train_seconds"],
                     "wall_seconds": round(wall, 1), "steps": report["steps"],
                     "per_epoch_auc": [h["auc"] for h in hist]})
        print(rows[-1], flush=True)
        for p in ("best.pt", "last.pt"):
            (run / p).unlink(missing_ok=True)  # keep the small files only
    result = {"command": "python benchmarks/ddp_frappe.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores", "runs": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Data-parallel check: {args.model} on Frappe_x1, at most {args.epochs} epochs, seed {args.seed}", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             "| processes | steps | valid AUC, last epoch | logloss, last epoch | best AUC (epoch) | train rows/s | "
             "train s | wall s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workers']} | {r['steps']} | {r['final_auc']:.5f} | {r['final_logloss']:.5f} | "
                     f"{r['best_auc']:.5f} ({r['best_epoch']}) | {r['train_rows_per_s']:,.0f} | "
                     f"{r['train_seconds']:.0f} | {r['wall_seconds']:.0f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
