"""Sequence models at equal tuning budget, then 3 seeds on the time-ordered test split; a history-length study.

    python benchmarks/sequence_scale.py --dataset ml-1m-u3k-seq --trials 8 \
        --out benchmarks/results/sequence_scale_ml1m
    python benchmarks/sequence_scale.py --dataset ml-100k-seq --data-dir ../shared/data/ml-100k --trials 8 \
        --out benchmarks/results/sequence_scale_ml100k

For every row (a preset row of the dataset: ``din``, ``transformer``, ``interformer``, ``mos-din``,
``mos-transformer``, their dense-MoE counterparts ``moe-din`` / ``moe-transformer``, and ``dnn`` as the
non-sequence reference):

1. ``rankcraft tune`` with the same budget for every row (``--trials`` trials, TPE after ``--startup`` random ones,
   median pruning, two trials at a time with one thread each) over the shared ranges below plus the row's own
   (MoS: the number of themes), **selecting on the recipe's validation split** (time-ordered: every validation
   rating is after every training rating);
2. the best configuration retrained with seeds 1, 2, 3 and judged on the **test split** (after the validation
   split in time; never used for any choice);
   With ``--tune-train-rows N`` the trials train on a fixed N-row subsample of the training split (a documented
   low fidelity for the larger ml-1m-u3k-seq; every row gets the same);
3. ``--lengths``: the tuned configurations of ``--length-rows`` retrained (seed 1) with histories of each length
   (data option ``max_len``), test AUC and FLOPs per example.

Every step is skipped when its output exists, so a killed run continues where it stopped. Results:
``OUT/results.md`` and ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
DEFAULT_DIRS = {"ml-1m-u3k-seq": SHARED / "ml-1m-u3k", "ml-100k-seq": SHARED / "ml-100k"}
ROWS = ["din", "transformer", "interformer", "mos-din", "mos-transformer", "moe-din", "moe-transformer", "dnn"]
SHARED_RANGES = ["--opt", "lr=float:3e-4:3e-3:log", "--param", "dropout=float:0.0:0.4",
                 "--param", "embedding_dim=choice:8|16|32"]
ROW_RANGES = {"mos-din": ["--param", "num_themes=choice:2|4|8"],
              "mos-transformer": ["--param", "num_themes=choice:2|4|8"],
              "moe-din": ["--param", "num_themes=choice:2|4|8"],
              "moe-transformer": ["--param", "num_themes=choice:2|4|8"]}
SEEDS = (1, 2, 3)


def rankcraft(*args: str) -> list[str]:
    return [sys.executable, "-m", "rankcraft.cli.main", *args]


def sh(cmd: list[str], log: Path | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if log is None:
        subprocess.run(cmd, check=True, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    if r.returncode:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}; see {log}")


def train_runs(jobs: list[tuple[Path, list[str]]], parallel: int) -> None:
    """Train runs ``(run_dir, args)`` that have no report yet, ``parallel`` at a time (one thread each)."""
    todo = [(run, a) for run, a in jobs if not (run / "report.json").exists()]

    def one(job):
        run, a = job
        resume = ["--resume"] if (run / "last.pt").exists() else []
        cmd = rankcraft("train", "--out", str(run), "--quiet", "--threads", "1", *(resume or a))
        sh(cmd, run.parent / f"{run.name}.log")

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, todo))


def summary(reports: list[dict]) -> dict:
    def ms(xs):
        return {"mean": statistics.mean(xs), "sd": statistics.stdev(xs) if len(xs) > 1 else 0.0, "runs": xs}

    return {"test_auc": ms([r["test"]["auc"] for r in reports]),
            "test_logloss": ms([r["test"]["logloss"] for r in reports]),
            "valid_auc": ms([r["valid"]["auc"] for r in reports]),
            "flops": reports[0]["flops_per_example"], "params": reports[0]["params"],
            "rows_per_s": statistics.mean(r["train_rows_per_s"] for r in reports),
            "epochs": [r.get("best_epoch") for r in reports]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m-u3k-seq", choices=sorted(DEFAULT_DIRS))
    ap.add_argument("--data-dir")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--trials", type=int, default=8, help="tuning budget of every row (trials)")
    ap.add_argument("--startup", type=int, default=4, help="random trials before TPE")
    ap.add_argument("--tune-train-rows", type=int, help="tune at low fidelity: each trial trains on this many "
                    "training rows (a fixed seeded subsample, data.train_rows); the seeds then train on all rows")
    ap.add_argument("--parallel", type=int, default=2, help="trainings at a time (one thread each)")
    ap.add_argument("--lengths", default="20,50,100,200")
    ap.add_argument("--length-rows", default="din,interformer,mos-din,moe-din")
    ap.add_argument("--skip-lengths", action="store_true")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    data_dir = str(args.data_dir or DEFAULT_DIRS[args.dataset])
    data = ["--dataset", args.dataset, "--data-dir", data_dir]
    rows = args.rows.split(",")
    args.out.mkdir(parents=True, exist_ok=True)

    # 1. equal-budget tuning on validation
    for row in rows:
        tdir = args.out / "tune" / row
        if (tdir / "report.json").exists():
            continue
        if (tdir / "config.json").exists() and (tdir / "trials.db").exists():
            sh(rankcraft("tune", "--out", str(tdir), "--resume", "--quiet"))
        else:  # a fresh checkout keeps finished tunes' reports, not an unfinished tune's (git-ignored) store
            for f in tdir.glob("*"):
                f.unlink()
            sh(rankcraft("tune", *data, "--model", row, *SHARED_RANGES, *ROW_RANGES.get(row, []),
                         "--budget", str(args.trials), "--set", f"startup={args.startup}",
                         *(["--set", f"data.train_rows={args.tune_train_rows}"] if args.tune_train_rows else []),
                         "--workers", str(args.parallel), "--threads-per-task", "1", "--seed", "0",
                         "--out", str(tdir), "--quiet"))

    # 2. three seeds of each tuned configuration, judged on test
    jobs = [(args.out / "runs" / f"{row}-{s}",
             ["--config", str(args.out / "tune" / row / "best.json"), *data, "--seed", str(s)])
            for row in rows for s in SEEDS]
    train_runs(jobs, args.parallel)
    results: dict = {"dataset": args.dataset, "trials_per_row": args.trials, "rows": {}, "lengths": {}}
    for row in rows:
        tune = json.loads((args.out / "tune" / row / "report.json").read_text())
        reports = [json.loads((args.out / "runs" / f"{row}-{s}" / "report.json").read_text()) for s in SEEDS]
        results["rows"][row] = {"tuned": {**tune["best"]["params"], **tune["best"]["tuned_train"]},
                                "tune_trials": tune["trials"], "tune_pruned": tune["pruned"],
                                "tune_valid_auc": 1 - tune["best"]["values"]["1-auc"], **summary(reports)}

    # 3. history length study (seed 1)
    if not args.skip_lengths:
        lrows = [r for r in args.length_rows.split(",") if r in rows]
        lengths = [int(x) for x in args.lengths.split(",")]
        jobs = [(args.out / "lengths" / f"{row}-L{n}",
                 ["--config", str(args.out / "tune" / row / "best.json"), *data, "--data-option", f"max_len={n}",
                  "--seed", "1"]) for n in lengths for row in lrows]
        # long histories take several GB per process (docs/datasets.md): those run one at a time
        train_runs([j for j in jobs if int(j[0].name.rsplit("-L", 1)[1]) < 100], args.parallel)
        train_runs([j for j in jobs if int(j[0].name.rsplit("-L", 1)[1]) >= 100], 1)
        for row in lrows:
            results["lengths"][row] = {}
            for n in lengths:
                r = json.loads((args.out / "lengths" / f"{row}-L{n}" / "report.json").read_text())
                results["lengths"][row][n] = {"test_auc": r["test"]["auc"], "flops": r["flops_per_example"],
                                              "rows_per_s": r["train_rows_per_s"]}
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    (args.out / "results.md").write_text(to_markdown(results, args))
    print(to_markdown(results, args))


def to_markdown(res: dict, args) -> str:
    f = lambda s: f"{s['mean']:.4f} ± {s['sd']:.4f}"  # noqa: E731
    lines = [f"Dataset: {res['dataset']}; every row tuned with {res['trials_per_row']} trials on validation, then "
             "3 seeds (1, 2, 3) of the tuned configuration on the time-ordered test split.", "",
             "| row | test AUC | test logloss | valid AUC | FLOPs/example | params | train rows/s | tuned |",
             "|---|---|---|---|---|---|---|---|"]
    for row, r in sorted(res["rows"].items(), key=lambda kv: -kv[1]["test_auc"]["mean"]):
        tuned = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["tuned"].items())
        lines.append(f"| {row} | {f(r['test_auc'])} | {f(r['test_logloss'])} | {f(r['valid_auc'])} | "
                     f"{r['flops']:,.0f} | {r['params']:,} | {r['rows_per_s']:,.0f} | {tuned} |")
    if res["lengths"]:
        lengths = sorted({int(n) for v in res["lengths"].values() for n in v})
        lines += ["", "History length (seed 1, tuned configurations): test AUC / FLOPs per example", "",
                  "| row | " + " | ".join(f"L={n}" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
        for row, v in res["lengths"].items():
            lines.append(f"| {row} | " + " | ".join(f"{v[n]['test_auc']:.4f} / {v[n]['flops']:,.0f}"
                                                   for n in lengths) + " |")
    lines += ["", "Produced by:", f"- `python benchmarks/sequence_scale.py {' '.join(sys.argv[1:])}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
