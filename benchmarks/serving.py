"""Serving benchmark: latency and throughput of `rankcraft serve` for exported Frappe_x1 models.

    python benchmarks/serving.py --runs RUN_FINALMLP RUN_DCNV2 --out benchmarks/results/serving

For every run: export it (ONNX), then for each server configuration (1 worker process with 1 ONNX Runtime thread;
2 worker processes with 1 thread each) start `rankcraft serve` on a free local port and run `rankcraft loadtest`
twice: 1 client (p50/p99 latency of 1 user × 100 candidates) and 8 concurrent clients (sustained requests/s, p99).
Client and server share this machine's cores, so the client's own CPU time is part of every number.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from rankcraft.serving.export import export_run
from rankcraft.serving.loadtest import load_body, run_loadtest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--requests-1", type=int, default=2000)
    ap.add_argument("--requests-8", type=int, default=4000)
    ap.add_argument("--out", default="benchmarks/results/serving")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for run in args.runs:
        art = export_run(run, out / "artifacts" / Path(run).name)
        model = json.loads((art / "manifest.json").read_text())["model"]
        body = load_body(None, str(art), args.candidates)
        for workers in (1, 2):
            port = _free_port()
            proc = subprocess.Popen([sys.executable, "-m", "rankcraft.cli.main", "serve", str(art), "--port",
                                     str(port), "--workers", str(workers), "--threads", "1"],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
            try:
                _wait(port)
                url = f"http://127.0.0.1:{port}/v1/score"
                one = run_loadtest(url, body, clients=1, requests=args.requests_1, warmup=50)
                eight = run_loadtest(url, body, clients=8, requests=args.requests_8, warmup=10)
            finally:
                proc.terminate()
                proc.wait(30)
            row = {"model": model, "run": run, "workers": workers, "threads": 1, "candidates": args.candidates,
                   "c1_p50_ms": one["latency_ms"]["p50"], "c1_p99_ms": one["latency_ms"]["p99"],
                   "c1_rps": one["requests_per_s"], "c8_rps": eight["requests_per_s"],
                   "c8_p50_ms": eight["latency_ms"]["p50"], "c8_p99_ms": eight["latency_ms"]["p99"],
                   "errors": {**one["errors"], **eight["errors"]}}
            rows.append(row)
            print(row, flush=True)
    load = os.getloadavg()
    result = {"command": "python benchmarks/serving.py " + " ".join(sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores; load average at the end {load[0]:.2f}",
              "rows": rows}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    lines = ["# Serving benchmark", "", f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", "",
             "| model | server processes × ORT threads | 1 client p50 ms | 1 client p99 ms | 8 clients requests/s | "
             "8 clients p99 ms | errors |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['workers']} × 1 | {r['c1_p50_ms']:.2f} | {r['c1_p99_ms']:.2f} | "
                     f"{r['c8_rps']:.0f} | {r['c8_p99_ms']:.2f} | {sum(r['errors'].values())} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
