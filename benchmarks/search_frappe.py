"""Architecture-search benchmark on Frappe_x1: every strategy with a time budget, each strategy's best architecture
retrained from scratch with the zoo benchmark's recipe, compared with the best zoo model.

    python benchmarks/search_frappe.py --data-dir ../shared/data/frappe_x1 --budget 15m \
        --out benchmarks/results/search_frappe_x1

Steps (each skipped when its output already exists, so an interrupted benchmark continues where it stopped):

1. ``rankcraft search --config benchmarks/search/frappe_x1.yaml --strategy S --budget B`` per strategy
   (search directories under ``OUT/runs/S``; a killed search is resumed with ``--resume``);
2. ``rankcraft train --arch OUT/runs/S/best.json --config benchmarks/search/frappe_x1_retrain.yaml`` (seed 2021);
3. the overall best architecture (by step 2's validation AUC) also with seeds 1 and 2;
4. ``OUT/results.md`` / ``results.json``: the table, with the zoo reference row read from the zoo benchmark
   (``benchmarks/results/frappe_x1_targets/results.json``), and each strategy's front plot copied to ``OUT``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = ["random", "evolution", "oneshot", "dnas"]


def sh(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def rankcraft(*args: str) -> list[str]:
    return [sys.executable, "-m", "rankcraft.cli.main", *args]


def search(strategy: str, args) -> Path:
    d = args.out / "runs" / strategy
    if (d / "report.json").exists():
        return d
    cmd = rankcraft("search", "--config", str(args.config), "--data-dir", args.data_dir,
                    "--strategy", strategy, "--budget", args.budget, "--out", str(d), "--quiet")
    if (d / "config.json").exists():
        cmd = rankcraft("search", "--out", str(d), "--resume", "--quiet")
    sh(cmd)
    return d


def retrain(arch: Path, seed: int, run: Path, data_dir: str) -> dict:
    if not (run / "report.json").exists():
        resume = ["--resume"] if (run / "last.pt").exists() else []
        sh(rankcraft("train", "--arch", str(arch), "--config", str(HERE / "search" / "frappe_x1_retrain.yaml"),
                     "--dataset", "frappe_x1", "--data-dir", data_dir, "--seed", str(seed), "--out", str(run),
                     "--quiet", *resume) if not resume else
           rankcraft("train", "--out", str(run), "--resume", "--quiet"))
    return json.loads((run / "report.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(HERE.parent.parent / "shared" / "data" / "frappe_x1"))
    p.add_argument("--budget", default="15m", help="search budget per strategy (the issue allows up to 30m)")
    p.add_argument("--config", type=Path, default=HERE / "search" / "frappe_x1.yaml",
                   help="search config (space, fidelity, objective, seeds)")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--out", type=Path, default=HERE / "results" / "search_frappe_x1")
    p.add_argument("--zoo-results", type=Path, default=HERE / "results" / "frappe_x1_targets" / "results.json")
    args = p.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    rows = []
    for s in strategies:
        d = search(s, args)
        report = json.loads((d / "report.json").read_text())
        best = json.loads((d / "best.json").read_text())
        r = retrain(d / "best.json", 2021, args.out / "runs" / f"{s}-retrain-2021", args.data_dir)
        shutil.copyfile(d / "front.png", args.out / f"front_{s}.png")
        rows.append({"strategy": s, "trials": report["trials"], "search_minutes": report["elapsed_minutes"],
                     "hypervolume": report["hypervolume"], "hypervolume_zoo": report["hypervolume_zoo"],
                     "lowfi_auc": best["metrics"]["auc"], "lowfi_logloss": best["metrics"]["logloss"],
                     "auc": [r["valid"]["auc"]], "logloss": [r["valid"]["logloss"]], "flops": r["flops_per_example"],
                     "params": r["params"], "best_epoch": [r["best_epoch"]], "arch": str(d / "best.json"),
                     "zoo_lowfi": report["zoo"]})
    top = max(rows, key=lambda x: x["auc"][0])
    for seed in (1, 2):
        r = retrain(Path(top["arch"]), seed, args.out / "runs" / f"{top['strategy']}-retrain-{seed}", args.data_dir)
        top["auc"].append(r["valid"]["auc"])
        top["logloss"].append(r["valid"]["logloss"])
        top["best_epoch"].append(r["best_epoch"])
    zoo = json.loads(args.zoo_results.read_text()) if args.zoo_results.exists() else None
    write_tables(rows, zoo, args)


def _rel(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _mean(xs: list[float]) -> str:
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f} ({len(xs)} seeds)"


def write_tables(rows: list[dict], zoo: dict | None, args) -> None:
    from rankcraft.api import read_config_yaml

    train = read_config_yaml(args.config).get("train", {})
    fidelity = (f"{train['epochs']} epochs" + (" with early stopping" if train.get("early_stopping_patience") else "")
                if "epochs" in train else "the config's fidelity")
    lines = ["# Architecture search on Frappe_x1", "",
             (f"Search config `{_rel(args.config)}`, budget {args.budget} per strategy on the 2-core CPU machine; "
              f"candidates trained standalone for {fidelity}; the best of each search retrained from scratch with "
              "the zoo benchmark's recipe (`benchmarks/search/frappe_x1_retrain.yaml`, early stopping on validation "
              "AUC)."),
             "", ("| strategy | trials | search min | hypervolume (zoo refs) | low-fi AUC | retrained valid AUC | "
             "valid logloss | FLOPs/example | params |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['strategy']} | {r['trials']} | {r['search_minutes']:.1f} | {r['hypervolume']:.4g} "
                     f"({r['hypervolume_zoo']:.4g}) | {r['lowfi_auc']:.4f} | {_mean(r['auc'])} | "
                     f"{_mean(r['logloss'])} | {r['flops']:,.0f} | {r['params']:,} |")
    best_zoo = None
    if zoo:
        name, m = max(zoo["models"].items(), key=lambda kv: kv[1]["valid_auc_mean"])
        best_zoo = {"model": name, "auc": [r["valid_auc"] for r in m["runs"]],
                    "logloss": [r["valid_logloss"] for r in m["runs"]], "flops": m["flops_per_example"],
                    "params": m["params_count"]}
        lines += ["", (f"Best zoo model (`{args.zoo_results.parent.name}`): **{name}**, valid AUC "
                  f"{_mean(best_zoo['auc'])}, logloss {_mean(best_zoo['logloss'])}, "
                  f"{best_zoo['flops']:,.0f} FLOPs/example, {best_zoo['params']:,} params."), ""]
        for r in rows:
            auc = statistics.mean(r["auc"])
            zoo_auc = statistics.mean(best_zoo["auc"])
            ok = auc >= zoo_auc and r["flops"] <= best_zoo["flops"]
            lines.append(f"- {r['strategy']}: AUC {auc:.4f} vs {zoo_auc:.4f} ({auc - zoo_auc:+.4f}), FLOPs "
                         f"{r['flops']:,.0f} vs {best_zoo['flops']:,.0f} ({r['flops'] / best_zoo['flops']:.2f}x): "
                         f"target {'MET' if ok else 'NOT met'}")
    cfg_arg = "" if args.config == HERE / "search" / "frappe_x1.yaml" else f" --config {_rel(args.config)}"
    lines += ["", "Produced by:", (f"- `python benchmarks/search_frappe.py --data-dir {args.data_dir}{cfg_arg} "
              f"--strategies {','.join(r['strategy'] for r in rows)} --budget {args.budget} --out {_rel(args.out)}`")]
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "results.json").write_text(json.dumps({"rows": rows, "best_zoo": best_zoo}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
