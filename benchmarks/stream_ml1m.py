"""Stream benchmark: progressive validation on weekly partitions of a time-stamped recipe (default ``ml-1m-u3k``).

Three ways to keep a model current, each judged on every week *before* it trains on that week:

(a) incremental — one pass per week in time order (``rankcraft train --partition-by week``);
(b) frozen — trained on the first ``--freeze-after`` weeks, then only evaluated (``stream.freeze_after``);
(c) retrained from scratch — at a few checkpoints ``t``, an ordinary epoch run on weeks ``0..t-1`` (the last of
    them held out for early stopping), evaluated on week ``t``.

The encoders of all three are fitted on the first ``--fit-on`` weeks and frozen (same vocabulary everywhere).

    python benchmarks/stream_ml1m.py --out benchmarks/results/stream_ml1m

writes ``results.json``, ``results.md`` and ``progressive.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from rankcraft.data.spec import prepare_stream_spec
from rankcraft.models.catalog import build_model
from rankcraft.training.objectives import default_objective
from rankcraft.training.run import RunConfig, train
from rankcraft.training.trainer import TrainConfig, Trainer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m-u3k")
    ap.add_argument("--data-dir")
    ap.add_argument("--unit", default="week")
    ap.add_argument("--fit-on", type=int, default=4)
    ap.add_argument("--freeze-after", type=int, default=4)
    ap.add_argument("--retrain-at", default="8,16,24,32", help="partition indices t for (c)")
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=10, help="(c): the most epochs of a retraining run")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache-dir", default=".rankcraft_cache")
    ap.add_argument("--out", default="benchmarks/results/stream_ml1m")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"recipe": args.dataset, "data_dir": args.data_dir,
            "partitions": {"unit": args.unit, "fit_on": args.fit_on}}
    train_cfg = {"batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "threads": args.threads,
                 "quiet": True, "checkpoint_seconds": 0}
    t0 = time.time()
    runs = {}
    for name, stream in (("incremental", {}), ("frozen", {"freeze_after": args.freeze_after})):
        cfg = RunConfig.parse({"data": data, "model": args.model, "train": train_cfg, "stream": stream})
        res = train(cfg, cache_dir=args.cache_dir)
        runs[name] = res.fit.history
        print(f"{name}: progressive {res.fit.best_metrics}  ({time.time() - t0:.0f}s)", flush=True)
    stream = prepare_stream_spec(data, args.cache_dir)
    keys = stream.keys()
    retrain = {}
    for t in [int(x) for x in args.retrain_at.split(",") if x]:
        if not 2 <= t < len(keys):
            continue
        torch.manual_seed(args.seed)
        model = build_model(args.model, stream.features, {})
        cfg = TrainConfig(**{**train_cfg, "epochs": args.epochs, "lr_schedule": "plateau",
                             "early_stopping_patience": 2})
        trainer = Trainer(model, cfg, objective=default_objective())
        fit = trainer.fit(stream.concat(t - 1), stream.partitions[t - 1].data())
        m = trainer.evaluate(stream.partitions[t].data())
        retrain[t] = {"partition": keys[t], "auc": m.get("auc"), "logloss": m.get("logloss"),
                      "rows": len(stream.partitions[t].data()), "epochs": fit.best_epoch,
                      "train_rows": len(stream.concat(t - 1))}
        print(f"retrain@{t} ({keys[t]}): {retrain[t]}  ({time.time() - t0:.0f}s)", flush=True)
    result = {"command": "python benchmarks/stream_ml1m.py " + " ".join(
                  f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, 2-core VM",
              "seconds": round(time.time() - t0, 1), "keys": keys, "fit_on": keys[:args.fit_on],
              "rows": [p.rows for p in stream.partitions], "incremental": runs["incremental"],
              "frozen": runs["frozen"], "retrain": retrain}
    (out / "results.json").write_text(json.dumps(result, indent=1, default=float))
    write_markdown(result, out / "results.md", args)
    plot(result, out / "progressive.png", args)


def _avg(hist, lo, hi, key):
    pairs = [(h[key], h["rows"]) for h in hist[lo:hi] if h.get(key) is not None]
    return sum(v * r for v, r in pairs) / sum(r for _, r in pairs) if pairs else None


def write_markdown(r: dict, path: Path, args) -> None:
    inc, fro, keys = r["incremental"], r["frozen"], r["keys"]
    n = len(keys)
    lines = [f"# Stream benchmark: {args.dataset}, {args.unit}ly partitions, model {args.model}", "",
             f"Command: `{r['command']}`  ", f"Machine: {r['machine']}; wall time {r['seconds']} s.  ",
             f"Encoders fitted on the first {args.fit_on} partitions ({', '.join(r['fit_on'])}) and frozen. "
             f"{n} partitions, {sum(r['rows']):,} rows.", "",
             "Row-weighted progressive metrics (each partition scored before training on it), partitions "
             f"{args.freeze_after + 1}..{n} (after the frozen model's last training partition):", "",
             "| way | AUC | logloss |", "|---|---|---|"]
    for name, h in (("(a) incremental", inc), (f"(b) frozen after {args.freeze_after}", fro)):
        lines.append(f"| {name} | {_avg(h, args.freeze_after, n, 'auc'):.4f} | "
                     f"{_avg(h, args.freeze_after, n, 'logloss'):.4f} |")
    lines += ["", "Retraining from scratch at checkpoints (c) vs the incremental and frozen models on the same "
              "partition:", "", "| t | partition | rows | (c) retrain AUC / logloss | (a) incremental | (b) frozen |",
              "|---|---|---|---|---|---|"]
    for t, c in r["retrain"].items():
        t = int(t)
        lines.append(f"| {t} | {c['partition']} | {c['rows']:,} | {c['auc']:.4f} / {c['logloss']:.4f} | "
                     f"{inc[t]['auc']:.4f} / {inc[t]['logloss']:.4f} | {fro[t]['auc']:.4f} / "
                     f"{fro[t]['logloss']:.4f} |")
    lines += ["", "Per partition (progressive AUC; `-` = not evaluated):", "",
              "| # | partition | rows | (a) AUC | (a) logloss | (b) AUC | (b) logloss |", "|---|---|---|---|---|---|---|"]
    for i, (a, b) in enumerate(zip(inc, fro)):
        def f(x):
            return "-" if x is None else f"{x:.4f}"
        lines.append(f"| {i} | {a['partition']} | {a['rows']:,} | {f(a.get('auc'))} | {f(a.get('logloss'))} | "
                     f"{f(b.get('auc'))} | {f(b.get('logloss'))} |")
    path.write_text("\n".join(lines) + "\n")


def plot(r: dict, path: Path, args) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, key in zip(axes, ("auc", "logloss")):
        for name, h in (("incremental", r["incremental"]), (f"frozen after {args.freeze_after}", r["frozen"])):
            ax.plot(range(len(h)), [np.nan if x.get(key) is None else x[key] for x in h], label=name)
        ts = [int(t) for t in r["retrain"]]
        ax.plot(ts, [c[key] for c in r["retrain"].values()], "o", label="retrained from scratch")
        ax.set_xlabel(f"partition ({args.unit})")
        ax.set_title(f"progressive {key}")
        ax.legend(fontsize=8)
    fig.suptitle(f"{args.model} on {args.dataset}, {args.unit}ly stream")
    fig.tight_layout()
    fig.savefig(path)


if __name__ == "__main__":
    main()
