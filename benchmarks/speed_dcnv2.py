"""Training-loop speed of the BARS DCNv2 shape on Frappe_x1, and the measured effect of each speed technique.

DCNv2 (parallel, 4 cross layers, DNN [400, 400, 400] with batch norm and dropout 0.4), embedding_dim 10,
batch 4096, Adam. Each variant trains ``--epochs`` epoch(s) through the real :class:`~rankcraft.training.Trainer`
(seeded shuffle, index-sliced batches, optimizer step — everything but validation is inside the timed loop) and
reports rows/s. ``bare`` times forward+backward+step on one pre-built batch (no data pipeline), for reference.

    .venv/bin/python benchmarks/speed_dcnv2.py --data-dir ../shared/data/frappe_x1 --out benchmarks/results/speed_dcnv2

Writes ``results.json`` and ``results.md`` in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from rankcraft.data.dataset import prepare
from rankcraft.data.catalog import get_source
from rankcraft.models import build_model
from rankcraft.training.trainer import Trainer, TrainConfig

DCNV2 = {"model_structure": "parallel", "num_cross_layers": 4, "hidden_units": [400, 400, 400],
         "batch_norm": True, "dropout": 0.4}


def loop_speed(data, params: dict, train: dict, epochs: int, repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        torch.manual_seed(0)
        model = build_model("dcnv2", data.features, params)
        cfg = TrainConfig(epochs=epochs, batch_size=4096, quiet=True, checkpoint_seconds=0, lr_schedule="constant",
                          early_stopping_patience=100, **train)
        res = Trainer(model, cfg).fit(data.splits["train"], data.splits["valid"])
        best = max(best, res.train_rows_per_s)
    return best


def bare_speed(data, params: dict, bf16: bool, steps: int = 30) -> float:
    torch.manual_seed(0)
    model = build_model("dcnv2", data.features, params)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batch = next(data.splits["train"].batches(4096, shuffle=True))
    def step():
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(batch)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), batch["label"])
        loss.backward()
        opt.step()
    for _ in range(3):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * 4096 / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="benchmarks/results/speed_dcnv2")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=2, help="best of N runs per variant")
    ap.add_argument("--skip-compile", action="store_true")
    args = ap.parse_args(argv)
    data = prepare(get_source("frappe_x1", args.data_dir))
    threads = torch.get_num_threads()
    variants = [
        ("fp32, fused table, Adam (baseline)", DCNV2, {}),
        ("bf16 autocast", DCNV2, {"bf16": True}),
        ("per-feature tables", {**DCNV2, "fused_embedding": False}, {}),
        ("1 thread", DCNV2, {"threads": 1}),
        ("Adagrad", DCNV2, {"optimizer": "adagrad", "lr": 0.01}),
        ("sparse embedding + Adam/SparseAdam", {**DCNV2, "sparse_embedding": True}, {}),
        ("no grad clipping", DCNV2, {"clip_grad_norm": None}),
        ("bf16 + no grad clipping", DCNV2, {"bf16": True, "clip_grad_norm": None}),
    ]
    if not args.skip_compile:
        variants.append(("torch.compile", DCNV2, {"compile": True}))
    rows = []
    for name, params, train in variants:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        try:
            rps = loop_speed(data, params, train, args.epochs, args.repeats)
            err = None
        except Exception as exc:  # e.g. torch.compile without a working C++ toolchain
            rps, err = None, f"{type(exc).__name__}: {str(exc)[:200]}"
        rows.append({"variant": name, "train_rows_per_s": rps, "error": err,
                     "seconds": time.perf_counter() - t0})
        print(f"{name:40s} {rps if rps is None else f'{rps:,.0f}'} rows/s" + (f"  ({err})" if err else ""),
              flush=True)
    torch.set_num_threads(threads)
    bare = {"fp32": bare_speed(data, DCNV2, False), "bf16": bare_speed(data, DCNV2, True)}
    print(f"bare network step: fp32 {bare['fp32']:,.0f} rows/s, bf16 {bare['bf16']:,.0f} rows/s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"command": "python " + " ".join(sys.argv), "threads": threads, "platform": platform.platform(),
           "torch": torch.__version__, "epochs": args.epochs, "variants": rows, "bare_step_rows_per_s": bare}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    base = rows[0]["train_rows_per_s"]
    md = ["| variant | training-loop rows/s | vs baseline |", "|---|---|---|"]
    for r in rows:
        v = r["train_rows_per_s"]
        md.append(f"| {r['variant']} | {'failed: ' + r['error'] if v is None else f'{v:,.0f}'} | "
                  f"{'—' if v is None else f'{v / base:.2f}x'} |")
    md += ["", f"Bare network step (one batch, no data pipeline): fp32 {bare['fp32']:,.0f} rows/s, "
               f"bf16 {bare['bf16']:,.0f} rows/s.", "", f"Command: `{res['command']}`"]
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
