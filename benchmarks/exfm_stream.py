"""ExFM on a stream: a foundation model (FM) on both domains, the DAS at staleness δ, vertical models (VMs) per domain.

    python benchmarks/exfm_stream.py --dataset drifting-stream --out benchmarks/results/exfm_drift
    python benchmarks/exfm_stream.py --dataset ml-1m-u3k --out benchmarks/results/exfm_ml1m

Per seed:

1. **Partitions.** ``drifting-stream``: 20 daily chunks of 10k rows (3% positives, drift, domains A/B; encoders
   fitted on the first chunk, then frozen). ``ml-1m-u3k``: all 487,650 ratings in time order (the recipe's time
   split concatenated) cut into 20 equal chunks; domain A = items whose first genre is Drama or Romance, B the
   rest (encoders fitted on the first 80% in time, the recipe's training split).
2. **FM**: DCN (embedding 32, [256, 256]) on both domains, one pass per chunk, a snapshot after each
   (``training/das.py``).
3. **DAS** for every δ: chunk t is scored once by the snapshot after chunk t − δ.
4. **VMs** (SharedBottom, embedding 8, bottom [64], towers [16], heads ``score`` and ``distill``; the same network
   for every variant), one per domain, one pass per chunk, each chunk evaluated before training on it:
   V0 no KD; V1 single-head KD (w = 1); V2 auxiliary head (w = 1); V3 V2 + gradient scaling β and label scaling α;
   V4 V2 + student adapter.
5. **Metrics**: progressive NE and AUC of the serving head over chunks 7 … 20 (every δ has a teacher there), per
   domain, averaged over seeds; for ``drifting-stream`` the oracle NE (the true probabilities) is the floor.

Writes ``OUT/results.json``, ``OUT/results.md`` and ``OUT/ne_vs_delta.png``; every finished VM run is kept in
``OUT/vm/…json`` and skipped on a rerun (FM snapshots and DAS files too).
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
import pyarrow as pa
import torch

from rankcraft.data.spec import prepare_spec, prepare_stream_spec
from rankcraft.models.catalog import build_model
from rankcraft.training.das import (
    AnnotatedPartition,
    MemoryPartition,
    annotate,
    train_snapshots,
    with_teacher_label,
)
from rankcraft.training.loops import StreamLoop
from rankcraft.training.objectives import build_objective
from rankcraft.training.profile import flops_per_example, slice_batch
from rankcraft.training.trainer import TrainConfig, Trainer

FIRST_SCORED = 6  # chunks 7..20 (0-based 6..19) are scored for every δ ≤ 6
FM_PARAMS = {"embedding_dim": 32, "hidden_units": [256, 256], "num_cross_layers": 3}
VM_PARAMS = {"embedding_dim": 8, "bottom_units": [64], "tower_units": [16], "tasks": ["score", "distill"]}


def variants(beta: float, alpha: float) -> dict[str, tuple[dict, dict]]:
    """name → (VM params update, objective)."""
    base = {"type": "distill", "label": "label", "teacher": "fm"}
    return {
        "V0-none": ({}, {**base, "mode": "none"}),
        "V1-single": ({}, {**base, "mode": "single"}),
        "V2-aux": ({}, {**base, "mode": "aux"}),
        "V3-aux-gs-ls": ({"tower_grad_scale": {"distill": beta}}, {**base, "mode": "aux", "label_scale": alpha}),
        "V4-aux-sa": ({}, {**base, "mode": "aux", "adapter": True}),
    }


def load_partitions(dataset: str, chunks: int, seed: int):
    """``(features, partitions, domain masks per partition {A, B}, oracle probabilities per partition or None)``"""
    if dataset == "drifting-stream":
        s = prepare_stream_spec({"recipe": "drifting-stream", "options": {"seed": seed, "chunks": chunks},
                                 "partitions": {"unit": "day", "fit_on": 1}})
        parts = s.partitions
        dom_id = int(s.encoders.vocab(s.encoders.schema.features[0]).encode(pa.array(["A"], pa.string()))[0])
        masks, oracle = [], []
        for p in parts:
            c = p.data().columns
            a = c["cat"][:, 0].numpy() == dom_id
            masks.append({"A": a, "B": ~a})
            oracle.append(1 / (1 + np.exp(-c["label/true_logit"].numpy().astype(np.float64))))
        return s.features, parts, masks, oracle
    d = prepare_spec({"recipe": dataset})
    import torch as _t

    from rankcraft.data.dataset import ColumnData

    allc = {k: _t.cat([d.splits[s].columns[k] for s in ("train", "valid", "test")]) for k in
            d.splits["train"].columns}
    whole = ColumnData(allc)
    n = len(whole)
    edges = np.linspace(0, n, chunks + 1).astype(int)
    parts = [MemoryPartition(f"chunk{i + 1:02d}", whole.subset(_t.arange(edges[i], edges[i + 1])))
             for i in range(chunks)]
    genres = next(f for f in d.encoders.schema.features if f.name == "genres")
    ids = d.encoders.vocab(genres).encode(pa.array(["Drama", "Romance"], pa.string()))
    masks = []
    for p in parts:
        first = multi_first(p.data().columns, "genres")
        a = np.isin(first, np.asarray(ids).ravel())
        masks.append({"A": a, "B": ~a})
    return d.features, parts, masks, None


def multi_first(columns: dict, name: str) -> np.ndarray:
    """The first id of the multi-categorical feature ``name`` per row (its column ``[N, L]``; 0 where empty)."""
    m = columns[name].numpy()
    nz = m != 0
    return np.where(nz.any(1), m[np.arange(len(m)), nz.argmax(1)], 0)


def ne_of(p: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    r = y.mean()
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)) / -(r * np.log(r) + (1 - r) * np.log(1 - r)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="drifting-stream", choices=["drifting-stream", "ml-1m-u3k"])
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--deltas", default="1,3,6")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--beta", type=float, default=5.0)
    ap.add_argument("--alpha", type=float, default=None, help="label scaling (default 1 on ml-1m-u3k, 5 on the "
                    "3%%-positive drifting stream)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    alpha = args.alpha if args.alpha is not None else (5.0 if args.dataset == "drifting-stream" else 1.0)
    deltas = [int(x) for x in args.deltas.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "dataset": args.dataset, "alpha": alpha, "beta": args.beta,
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
               "runs": {}}
    var = variants(args.beta, alpha)
    for seed in seeds:
        feats, parts, masks, oracle = load_partitions(args.dataset, args.chunks, seed)
        sdir = args.out / f"seed{seed}"

        def fm():
            torch.manual_seed(seed)
            return build_model("dcnv2", feats, FM_PARAMS)

        fm_cfg = TrainConfig(batch_size=1024, lr=1e-3, seed=seed, quiet=True)
        t0 = time.perf_counter()
        snaps = train_snapshots(fm(), parts, fm_cfg, sdir / "fm",
                                objective=build_objective({"type": "binary", "label": "label"}, feats))
        fm_model = fm()
        batch = slice_batch(parts[0].data().columns, 512)
        results["fm_flops"] = flops_per_example(fm_model, batch)
        print(f"seed {seed}: FM snapshots ready ({time.perf_counter() - t0:.0f} s)", flush=True)
        vfeats = with_teacher_label(feats)
        for delta in deltas:
            teach = annotate(fm, snaps, parts, delta, sdir / "fm")
            for dom in ("A", "B"):
                vm_parts = [AnnotatedPartition(p.key, p, t, np.flatnonzero(m[dom]))
                            for p, t, m in zip(parts, teach, masks)]
                for name, (pupd, obj) in var.items():
                    path = args.out / "vm" / f"seed{seed}-d{delta}-{dom}-{name}.json"
                    if path.exists():
                        r = json.loads(path.read_text())
                    else:
                        torch.manual_seed(seed)
                        vm = build_model("sharedbottom", vfeats, {**VM_PARAMS, **pupd})
                        objective = build_objective(obj, vfeats)
                        fit = Trainer(vm, TrainConfig(batch_size=256, lr=1e-3, seed=seed, quiet=True),
                                      objective=objective).run(StreamLoop(vm_parts))
                        hist = [h for h in fit.history if h["index"] >= FIRST_SCORED]
                        w = np.array([h["rows"] for h in hist], dtype=float)
                        r = {k: float(np.average([h[k] for h in hist], weights=w)) for k in ("ne", "auc", "logloss")}
                        r["vm_flops"] = flops_per_example(vm, slice_batch(vm_parts[0].data().columns, 512))
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.write_text(json.dumps(r))
                    results["runs"][f"{seed}/{delta}/{dom}/{name}"] = r
                    print(f"seed {seed} δ={delta} domain {dom} {name}: NE {r['ne']:.4f} AUC {r['auc']:.4f}",
                          flush=True)
                if oracle is not None:
                    ne_o = [ne_of(o[m[dom]], p.data().columns["label"].numpy()[m[dom]])
                            for o, p, m in list(zip(oracle, parts, masks))[FIRST_SCORED:]]
                    rows = [int(m[dom].sum()) for m in masks[FIRST_SCORED:]]
                    results["runs"][f"{seed}/{delta}/{dom}/oracle"] = {"ne": float(np.average(ne_o, weights=rows))}
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    summarise(results, args.out, deltas, seeds, list(var) + (["oracle"] if args.dataset == "drifting-stream" else []))
    return 0


def summarise(results: dict, out: Path, deltas, seeds, names) -> None:
    agg = {}
    for d in deltas:
        for dom in ("A", "B"):
            for n in names:
                for metric in ("ne", "auc"):
                    vals = [results["runs"][f"{s}/{d}/{dom}/{n}"].get(metric) for s in seeds]
                    vals = [v for v in vals if v is not None]
                    if vals:
                        agg[f"{d}/{dom}/{n}/{metric}"] = (statistics.fmean(vals),
                                                          statistics.stdev(vals) if len(vals) > 1 else 0.0)
    results["mean"] = {k: list(v) for k, v in agg.items()}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [f"# ExFM on {results['dataset']} (progressive NE / AUC over chunks 7-20, mean ± std over seeds "
             f"{', '.join(map(str, seeds))}; α = {results['alpha']}, β = {results['beta']})", "",
             "| δ | domain | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for d in deltas:
        for dom in ("A", "B"):
            cells = []
            for n in names:
                ne = agg.get(f"{d}/{dom}/{n}/ne")
                auc = agg.get(f"{d}/{dom}/{n}/auc")
                cells.append(f"{ne[0]:.4f} ± {ne[1]:.4f}" + (f" / {auc[0]:.4f}" if auc else "") if ne else "—")
            lines.append(f"| {d} | {dom} | " + " | ".join(cells) + " |")
    lines += ["", f"FM FLOPs/example {results.get('fm_flops', 0):,.0f}; VM FLOPs/example "
              f"{next(iter(results['runs'].values())).get('vm_flops', 0):,.0f} (the same for every variant: the FM "
              "never runs at serving time).", "", f"Produced by: `{results['command']}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, dom in zip(axes, ("A", "B")):
            for n in names:
                ys = [agg.get(f"{d}/{dom}/{n}/ne", (np.nan,))[0] for d in deltas]
                ax.plot(deltas, ys, marker="o", label=n)
            ax.set_title(f"domain {dom}")
            ax.set_xlabel("FM staleness δ (chunks)")
            ax.set_ylabel("progressive NE")
        axes[0].legend()
        fig.tight_layout()
        fig.savefig(out / "ne_vs_delta.png", dpi=110)
    except ImportError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
