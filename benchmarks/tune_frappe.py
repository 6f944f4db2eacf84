"""`rankcraft tune` of a zoo model on Frappe_x1 with a time budget, its best configuration retrained over 3 seeds,
compared with the model's BARS preset over the same seeds.

    python benchmarks/tune_frappe.py --model dcnv2 --budget 30m --out benchmarks/results/tune_dcnv2_frappe

1. ``rankcraft tune`` (TPE, median pruning, the BARS recipe as the starting point; resumed if the directory holds
   a tune) over the ranges below, **selecting on a seeded 10% slice of the training rows**
   (``--valid-from-train 0.1``): the tune never sees the BARS validation split that the comparison is reported on
   (the test split is held back by the data's owners);
2. ``rankcraft train --config OUT/tune/best.json --dataset frappe_x1 --seed S`` for S = 2021, 1, 2 (the plain
   recipe: all training rows, early stopping on the validation split exactly as the preset's runs; skipped when
   done);
3. the preset's runs: read from ``--preset-results`` (a ``rankcraft bench`` results.json with the same seeds), or
   trained here when it lacks the model;
4. ``OUT/results.md`` / ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEEDS = (2021, 1, 2)
RANGES = {
    "dcnv2": ["--param", "dropout=float:0.0:0.5", "--param", "num_cross_layers=int:1:6",
              "--param", "hidden_units=choice:[400,400,400]|[256,256,256]|[800,800]|[400,400]",
              "--opt", "lr=float:3e-4:3e-3:log", "--opt", "embedding_l2=float:1e-3:0.2:log"],
}


def rankcraft(*args: str) -> list[str]:
    return [sys.executable, "-m", "rankcraft.cli.main", *args]


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="dcnv2", choices=sorted(RANGES))
    ap.add_argument("--budget", default="30m")
    ap.add_argument("--workers", default="1")
    ap.add_argument("--valid-from-train", default="0.1", help="the training slice the tune selects on")
    ap.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "frappe_x1"))
    ap.add_argument("--preset-results", type=Path, default=HERE / "results" / "frappe_x1_recheck3" / "results.json")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "tune_dcnv2_frappe")
    args = ap.parse_args()
    tune_dir = args.out / "tune"
    if not (tune_dir / "report.json").exists():
        if (tune_dir / "config.json").exists():
            sh(rankcraft("tune", "--out", str(tune_dir), "--resume", "--quiet"))
        else:
            sh(rankcraft("tune", "--dataset", "frappe_x1", "--data-dir", args.data_dir, "--model", args.model,
                         "--valid-from-train", args.valid_from_train,
                         *RANGES[args.model], "--budget", args.budget, "--workers", args.workers,
                         "--out", str(tune_dir)))
    tuned = []
    for seed in SEEDS:
        run = args.out / "runs" / f"tuned-{seed}"
        if not (run / "report.json").exists():
            sh(rankcraft("train", "--config", str(tune_dir / "best.json"), "--dataset", "frappe_x1",
                         "--data-dir", args.data_dir,
                         "--seed", str(seed), "--out", str(run), "--quiet",
                         *(["--resume"] if (run / "last.pt").exists() else [])))
        tuned.append(json.loads((run / "report.json").read_text()))
    preset = None
    if args.preset_results.exists():
        m = json.loads(args.preset_results.read_text())["models"].get(args.model)
        if m and sorted(r["seed"] for r in m["runs"]) == sorted(SEEDS):
            preset = [r["valid_auc"] for r in m["runs"]]
    if preset is None:
        preset = []
        for seed in SEEDS:
            run = args.out / "runs" / f"preset-{seed}"
            if not (run / "report.json").exists():
                sh(rankcraft("train", "--dataset", "frappe_x1", "--data-dir", args.data_dir, "--model", args.model,
                             "--seed", str(seed), "--out", str(run), "--quiet"))
            preset.append(json.loads((run / "report.json").read_text())["valid"]["auc"])
    tune = json.loads((tune_dir / "report.json").read_text())
    aucs = [r["valid"]["auc"] for r in tuned]
    res = {"model": args.model, "budget": args.budget, "tune": tune, "tuned_auc": aucs, "preset_auc": preset,
           "tuned_flops": tuned[0]["flops_per_example"]}
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    fmt = lambda xs: f"{statistics.mean(xs):.5f} ± {statistics.stdev(xs):.5f}"  # noqa: E731
    lines = [f"# `rankcraft tune` of {args.model} on Frappe_x1 ({args.budget})", "",
             f"The tune selected on a seeded {args.valid_from_train} slice of the training rows; the table reports "
             "the BARS validation split, which the tune never saw.", "",
             f"{tune['trials']} trials ({tune['pruned']} pruned) in {tune['elapsed_minutes']:.1f} min; best "
             f"trial {tune['best']['number']}: {tune['best']['params']} {tune['best']['tuned_train']}", "",
             "| configuration | valid AUC, seeds 2021/1/2 | mean ± sd |", "|---|---|---|",
             f"| BARS preset | {' / '.join(f'{a:.5f}' for a in preset)} | {fmt(preset)} |",
             f"| tuned | {' / '.join(f'{a:.5f}' for a in aucs)} | {fmt(aucs)} |"]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
