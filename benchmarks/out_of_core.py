"""Out-of-core training vs the in-memory loader: peak resident memory and training rows/s on one synthetic Parquet.

    .venv/bin/python benchmarks/out_of_core.py --data-dir /tmp/rankcraft-ooc --out benchmarks/results/out_of_core

1. **Data** (skipped when ``--data-dir`` already holds files made with the same settings): ``train.parquet`` with
   ``--rows`` rows (default 20,000,000), generated in 1M-row chunks by a seeded generator and written with
   ``pyarrow.parquet.ParquetWriter`` one row group per chunk; ``train_head.parquet``, its first ``--inmem-rows``
   rows (the same rows, written alongside); ``valid.parquet`` (200,000 rows from the same generator, other
   streams). 14 categorical columns (int64 ids, power-law frequencies, vocabularies 4 … 30,000), 4 numeric columns
   and a ``label`` drawn from a planted logit (per-id weights, three rank-4 pairwise interactions, two numeric
   slopes; about 20% positives). The files are never committed: they go under ``--data-dir`` (default /tmp).
2. **Out-of-core** (a fresh subprocess): :func:`~rankcraft.data.out_of_core.prepare_out_of_core` — encoders fitted on
   the first ``--fit-rows`` rows, the shard cache built from the whole file (timed separately; the cache is deleted
   first unless ``--reuse-cache``) — then one epoch of the model over all rows through the real ``Trainer``.
3. **In-memory** (a fresh subprocess, run once before and once after step 2; the reference rows/s is the mean of
   the two, so that a change in the machine's load moves it too): the same encoders (fitted on the same prefix), the first ``--inmem-rows`` rows
   read and encoded by :func:`~rankcraft.data.dataset.encode_file` into a ``ColumnData``, one epoch of the same model
   with the same settings.

Each child reports its own peak resident set size, ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` — the child's
whole life (imports, preparation and training), not the parent's — and the training loop's rows/s
(``FitResult.train_rows_per_s``: rows over the seconds of the epoch's loop, validation excluded). Writes
``results.json`` and ``results.md`` in ``--out`` and prints progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

VOCABS = [4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000, 10_000, 20_000, 30_000]
N_NUMERIC = 4
CHUNK = 1_000_000
VALID_ROWS = 200_000
PAIRS = [(0, 5), (3, 9), (7, 12)]
TARGET_RSS_GB = 2.5
TARGET_RATIO = 0.8


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_gb() -> float:
    """Current resident set size (GB) from /proc/self/statm."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


# ------------------------------------------------------------------------------------------------ data
def schema_dict() -> dict:
    feats = [{"name": f"c{i}", "type": "categorical"} for i in range(len(VOCABS))]
    feats += [{"name": f"n{j}", "type": "numeric", "transform": "standardize"} for j in range(N_NUMERIC)]
    return {"labels": ["label"], "features": feats}


class Generator:
    """Chunk ``k`` of the data is a pure function of (seed, k); the planted model is a function of the seed."""

    def __init__(self, seed: int):
        self.seed = seed
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
        self.w = [rng.normal(0, 0.5, v) for v in VOCABS]
        self.u = {p: (rng.normal(0, 0.5, (VOCABS[p[0]], 4)), rng.normal(0, 0.5, (VOCABS[p[1]], 4))) for p in PAIRS}
        self.slopes = np.array([0.6, -0.4, 0.0, 0.0])
        self.bias = -2.2

    def chunk(self, k: int, n: int):
        import pyarrow as pa

        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(1, k)))
        ids = [np.minimum((v * rng.random(n) ** 3).astype(np.int64), v - 1) for v in VOCABS]  # power law
        nums = rng.normal(0, 1, (n, N_NUMERIC)).astype(np.float32)
        z = self.bias + sum(w[i] for w, i in zip(self.w, ids)) + nums @ self.slopes
        for (a, b), (ua, ub) in self.u.items():
            z += (ua[ids[a]] * ub[ids[b]]).sum(1)
        y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int8)
        cols = {"label": pa.array(y)}
        cols.update({f"c{i}": pa.array(x) for i, x in enumerate(ids)})
        cols.update({f"n{j}": pa.array(nums[:, j]) for j in range(N_NUMERIC)})
        return pa.table(cols)


def generate(data_dir: Path, rows: int, head_rows: int, seed: int) -> dict:
    import pyarrow.parquet as pq

    spec = {"rows": rows, "head_rows": head_rows, "valid_rows": VALID_ROWS, "seed": seed, "chunk": CHUNK,
            "vocabs": VOCABS, "numeric": N_NUMERIC, "generator": 1}
    stamp = data_dir / "data.json"
    files = {n: data_dir / f"{n}.parquet" for n in ("train", "train_head", "valid")}
    if stamp.exists() and json.loads(stamp.read_text()) == spec and all(p.exists() for p in files.values()):
        log(f"data: reusing {data_dir} (same settings)")
        return {"spec": spec, "files": {k: str(v) for k, v in files.items()}, "generated_s": None}
    data_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    gen = Generator(seed)
    t0 = time.perf_counter()
    schema = gen.chunk(0, 1).schema
    with pq.ParquetWriter(files["train"], schema) as train, pq.ParquetWriter(files["train_head"], schema) as head:
        done, k = 0, 0
        while done < rows:
            n = min(CHUNK, rows - done)
            t = gen.chunk(k, n)
            train.write_table(t, row_group_size=n)
            if done < head_rows:
                head.write_table(t.slice(0, head_rows - done), row_group_size=n)
            done += n
            k += 1
            log(f"data: {done:,}/{rows:,} rows ({done / (time.perf_counter() - t0):,.0f} rows/s)")
    with pq.ParquetWriter(files["valid"], schema) as valid:
        for j in range(0, VALID_ROWS, CHUNK):
            valid.write_table(gen.chunk(10_000_000 + j // CHUNK, min(CHUNK, VALID_ROWS - j)))
    took = time.perf_counter() - t0
    stamp.write_text(json.dumps(spec))
    log(f"data: written in {took:.0f} s; train.parquet {files['train'].stat().st_size / 1e9:.2f} GB")
    return {"spec": spec, "files": {k: str(v) for k, v in files.items()}, "generated_s": round(took, 1)}


# ------------------------------------------------------------------------------------------------ children
def model_and_config(args, features):
    import torch

    from rankcraft.models.catalog import build_model
    from rankcraft.training.trainer import TrainConfig

    torch.manual_seed(args.seed)
    params = {"hidden_units": [int(h) for h in args.hidden.split(",")], "embedding_dim": args.embedding_dim}
    model = build_model(args.model, features, params)
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, threads=args.threads, quiet=True, checkpoint_seconds=0,
                      lr_schedule="constant", seed=args.seed)
    return model, cfg, params


def train_one_epoch(args, features, train, valid, label: str) -> dict:
    from rankcraft.training.trainer import Trainer

    model, cfg, params = model_and_config(args, features)
    n_batches = train.num_batches(cfg.batch_size)
    every = max(1, n_batches // 20)
    t0 = time.perf_counter()
    train_rss = [rss_gb()]

    def on_step(step: int) -> None:
        if step % every == 0 or step == n_batches:
            train_rss.append(rss_gb())
            rows = min(step * cfg.batch_size, len(train))
            log(f"{label}: step {step:,}/{n_batches:,}, {rows / (time.perf_counter() - t0):,.0f} rows/s, "
                f"RSS {train_rss[-1]:.2f} GB")

    res = Trainer(model, cfg, on_step=on_step).fit(train, valid)
    last = res.history[-1]
    return {"model": args.model, "params": params, "batch_size": cfg.batch_size, "threads": cfg.threads,
            "train_rows": len(train), "steps": res.steps, "train_seconds": round(res.train_seconds, 2),
            "train_rows_per_s": round(res.train_rows_per_s), "valid_auc": round(last["auc"], 5),
            "valid_logloss": round(last["logloss"], 5),
            "max_sampled_rss_during_training_gb": round(max(train_rss), 3),
            "model_params": sum(p.numel() for p in model.parameters())}


def child_out_of_core(args, files: dict) -> dict:
    from rankcraft.data.dataset import DataSource
    from rankcraft.data.out_of_core import prepare_out_of_core
    from rankcraft.data.schema import Schema

    source = DataSource(name="ooc_bench", schema=Schema.model_validate(schema_dict()),
                        files={"train": files["train"], "valid": files["valid"]})
    t0 = time.perf_counter()

    def on_rows(n: int) -> None:
        if n % 2_000_000 < args.batch_rows:
            log(f"out-of-core: encoded {n:,} rows ({n / (time.perf_counter() - t0):,.0f} rows/s), "
                f"RSS {rss_gb():.2f} GB")

    prep = prepare_out_of_core(source, Path(args.data_dir) / "cache", fit_rows=args.fit_rows,
                               rows_per_shard=args.rows_per_shard, buffer_shards=args.buffer_shards,
                               batch_rows=args.batch_rows, progress=False, on_rows=on_rows)
    prep_s = time.perf_counter() - t0
    train = prep.splits["train"]
    cache_bytes = sum(p.stat().st_size for p in train.directory.rglob("*.npy"))
    log(f"out-of-core: prepared in {prep_s:.0f} s ({'reused' if prep.from_cache else 'built'}): {train!r}, "
        f"{cache_bytes / 1e9:.2f} GB of shards; peak RSS so far {peak_rss_gb():.2f} GB")
    peak_after_prepare = peak_rss_gb()
    out = train_one_epoch(args, prep.features, train, prep.splits["valid"], "out-of-core")
    out.update(prepare_seconds=round(prep_s, 1), cache_reused=prep.from_cache, shards=train.num_shards,
               rows_per_shard=args.rows_per_shard, buffer_shards=train.buffer_shards, row_bytes=train.row_bytes,
               cache_gb=round(cache_bytes / 1e9, 3), buffer_bound_gb=round(train.buffer_bytes(args.batch_size) / 1e9, 3),
               peak_buffered_shards=train.peak_buffered_shards, fit_rows=args.fit_rows,
               peak_rss_after_prepare_gb=round(peak_after_prepare, 3))
    return out


def child_in_memory(args, files: dict) -> dict:
    from rankcraft.data.dataset import encode_file
    from rankcraft.data.out_of_core import fit_encoders_on_prefix
    from rankcraft.data.schema import Schema

    schema = Schema.model_validate(schema_dict())
    t0 = time.perf_counter()
    enc = fit_encoders_on_prefix(files["train"], schema, rows=args.fit_rows)
    train, raw = encode_file(enc, files["train_head"])
    del raw
    valid, raw = encode_file(enc, files["valid"])
    del raw
    load_s = time.perf_counter() - t0
    log(f"in-memory: {len(train):,} rows loaded and encoded in {load_s:.0f} s; RSS {rss_gb():.2f} GB")
    out = train_one_epoch(args, enc.feature_set(), train, valid, "in-memory")
    out.update(load_seconds=round(load_s, 1), fit_rows=args.fit_rows)
    return out


def run_child(kind: str, args, argv: list[str], files: dict) -> dict:
    out = Path(args.data_dir) / f"result-{kind}.json"
    out.unlink(missing_ok=True)
    load_before = os.getloadavg()
    cmd = [sys.executable, __file__, *argv, "--child", kind, "--child-out", str(out)]
    log(f"{kind}: starting a fresh subprocess")
    t0 = time.perf_counter()
    env = dict(os.environ)  # the child imports the rankcraft next to this script
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    subprocess.run(cmd, check=True, env=env)
    res = json.loads(out.read_text())
    res.update(wall_seconds=round(time.perf_counter() - t0, 1), load_avg_before=[round(x, 2) for x in load_before],
               load_avg_after=[round(x, 2) for x in os.getloadavg()])
    return res


# ------------------------------------------------------------------------------------------------ report
def machine() -> dict:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return {"cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(mem, 1), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform()}


def markdown(res: dict) -> str:
    o, m, m2 = res["out_of_core"], res["in_memory"], res["in_memory_after"]
    t = res["targets"]
    yes = {True: "**met**", False: "**not met**"}
    lines = [
        "# Out-of-core training vs the in-memory loader",
        "",
        f"Command: `{res['command']}`",
        "",
        (f"Data: synthetic Parquet, {res['data']['spec']['rows']:,} training rows ({res['data']['train_gb']:.2f} GB), "
        f"{len(VOCABS)} categorical + {N_NUMERIC} numeric columns, seed {res['data']['spec']['seed']}; "
        f"validation file {VALID_ROWS:,} rows."),
        (f"Model: `{o['model']}` {json.dumps(o['params'])}, {o['model_params']:,} parameters, batch {o['batch_size']}, "
        f"{o['threads']} thread(s), Adam, one epoch."),
        (f"Machine: {res['machine']['cpus']} CPUs ({res['machine']['cpu_model']}), {res['machine']['memory_gb']} GB, "
        f"torch {res['machine']['torch']}. {res['machine_note']}"),
        "",
        ("| loader | training rows | training rows/s | train s | peak RSS of the child (GB) | valid AUC | "
        "preparation s |"),
        "|---|---|---|---|---|---|---|",
        (f"| out-of-core (shards) | {o['train_rows']:,} | {o['train_rows_per_s']:,} | {o['train_seconds']:.0f} | "
        f"{o['peak_rss_gb']:.2f} | {o['valid_auc']:.4f} | {o['prepare_seconds']:.0f} (fit + shard build"
        f"{', cache reused' if o['cache_reused'] else ''}) |"),
        *(f"| in-memory (ColumnData), {when} | {r['train_rows']:,} | {r['train_rows_per_s']:,} | "
          f"{r['train_seconds']:.0f} | {r['peak_rss_gb']:.2f} | {r['valid_auc']:.4f} | {r['load_seconds']:.0f} "
          "(fit + read + encode) |" for when, r in (("run before", m), ("run after", m2))),
        "",
        f"- rows/s ratio out-of-core / in-memory (mean of the two in-memory runs, "
        f"{res['in_memory_rows_per_s_mean']:,} rows/s): **{res['ratio']:.3f}** (target ≥ {TARGET_RATIO}): "
        f"{yes[t['ratio_met']]}; against each in-memory run: "
        + ", ".join(f"{x:.3f}" for x in res["ratio_to_each_in_memory_run"]),
        f"- out-of-core peak RSS: **{o['peak_rss_gb']:.2f} GB** (target ≤ {TARGET_RSS_GB} GB): {yes[t['rss_met']]}",
        (f"- shards: {o['shards']} × {o['rows_per_shard']:,} rows, {o['row_bytes']} bytes/row, {o['cache_gb']:.2f} GB on "
        f"disk; buffer_shards {o['buffer_shards']} (peak held {o['peak_buffered_shards']}), buffer bound "
        f"{o['buffer_bound_gb']:.2f} GB; encoders fitted on the first {o['fit_rows']:,} rows"),
        (f"- peak RSS of the out-of-core child after preparation: {o['peak_rss_after_prepare_gb']:.2f} GB; "
        f"largest RSS sampled during its training epoch: {o['max_sampled_rss_during_training_gb']:.2f} GB"),
        (f"- load average (1, 5, 15 min) before/after each child: in-memory {m['load_avg_before']} / "
        f"{m['load_avg_after']}, out-of-core {o['load_avg_before']} / {o['load_avg_after']}, in-memory "
        f"{m2['load_avg_before']} / {m2['load_avg_after']}"),
        "",
        ("Peak RSS is `resource.getrusage(RUSAGE_SELF).ru_maxrss` measured inside each child process (its whole life: "
        "imports, preparation, training), each child started fresh."),
        "",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default="/tmp/rankcraft-ooc", help="where the Parquet files and the shard cache go")
    ap.add_argument("--out", default="benchmarks/results/out_of_core")
    ap.add_argument("--rows", type=int, default=20_000_000)
    ap.add_argument("--inmem-rows", type=int, default=4_000_000)
    ap.add_argument("--fit-rows", type=int, default=1_000_000)
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--hidden", default="128,64")
    ap.add_argument("--embedding-dim", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rows-per-shard", type=int, default=262_144)
    ap.add_argument("--buffer-shards", type=int, default=8)
    ap.add_argument("--batch-rows", type=int, default=65_536)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reuse-cache", action="store_true", help="keep a shard cache from an earlier run")
    ap.add_argument("--note", default="", help="a sentence about the machine's load, copied into the results")
    ap.add_argument("--child", choices=["ooc", "inmem"], help=argparse.SUPPRESS)
    ap.add_argument("--child-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    files = {n: str(Path(args.data_dir) / f"{n}.parquet") for n in ("train", "train_head", "valid")}
    if args.child:
        res = child_out_of_core(args, files) if args.child == "ooc" else child_in_memory(args, files)
        res["peak_rss_gb"] = round(peak_rss_gb(), 3)
        log(f"{args.child}: peak RSS of this child {res['peak_rss_gb']:.2f} GB")
        Path(args.child_out).write_text(json.dumps(res))
        return 0
    argv = list(sys.argv[1:] if argv is None else argv)
    command = ".venv/bin/python benchmarks/out_of_core.py " + " ".join(argv)
    data = generate(Path(args.data_dir), args.rows, args.inmem_rows, args.seed)
    data["train_gb"] = round(Path(files["train"]).stat().st_size / 1e9, 3)
    if not args.reuse_cache:
        shutil.rmtree(Path(args.data_dir) / "cache", ignore_errors=True)
    # in-memory before and after the out-of-core run, so that a change in the machine's load between the runs
    # moves the reference too; the reference rows/s is the mean of the two
    inmem = [run_child("inmem", args, argv, files)]
    ooc = run_child("ooc", args, argv, files)
    inmem.append(run_child("inmem", args, argv, files))
    reference = float(np.mean([r["train_rows_per_s"] for r in inmem]))
    ratio = ooc["train_rows_per_s"] / reference
    res = {"command": command, "machine": machine(),
           "machine_note": args.note or "Other jobs may share this machine; see the load averages.",
           "data": data, "out_of_core": ooc, "in_memory": inmem[0], "in_memory_after": inmem[1],
           "in_memory_rows_per_s_mean": round(reference), "ratio": round(ratio, 4),
           "ratio_to_each_in_memory_run": [round(ooc["train_rows_per_s"] / r["train_rows_per_s"], 4) for r in inmem],
           "targets": {"peak_rss_gb_max": TARGET_RSS_GB, "ratio_min": TARGET_RATIO,
                       "rss_met": ooc["peak_rss_gb"] <= TARGET_RSS_GB, "ratio_met": ratio >= TARGET_RATIO}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.md").write_text(markdown(res))
    log(f"ratio {ratio:.3f}, out-of-core peak RSS {ooc['peak_rss_gb']:.2f} GB; wrote {out}/results.json and "
        "results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
