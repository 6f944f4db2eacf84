"""A bounded load test for the scoring server (``rankcraft loadtest URL``): localhost only.

``clients`` threads, each with one keep-alive HTTP connection, send ``requests`` requests in total (split among
them) of one user × ``candidates`` candidates, each waiting for its answer before sending the next (closed loop).
The test stops after ``requests`` requests or ``max_seconds``, whichever comes first, and reports latency
percentiles (p50/p95/p99, milliseconds), throughput (requests/s and candidates/s over the wall time) and errors
(non-200 answers and connection failures).

The request body is built from an artifact's encoders (``example_request``): real vocabulary values for the
categorical features (so the scores are not all OOV), 0 for numbers, two values for lists.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from rankcraft.data.encoders import Encoders
from rankcraft.errors import ConfigError

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def example_request(encoders: Encoders, candidates: int, *, seed: int = 0,
                    user_features: tuple[str, ...] = ()) -> dict:
    """A request with ``candidates`` candidates whose raw values are drawn from the fitted vocabularies; features
    of ``source: user`` (or named in ``user_features``) go to the ``user`` block once."""
    rng = random.Random(seed)
    schema = encoders.schema
    label_cols = set(schema.label_columns)
    specs = {f.raw_column: f for f in schema.features}

    def value(col: str) -> str:
        spec = specs.get(col)
        if spec is None:
            return "0"
        state = encoders.state.get(spec.name, {})
        vocab = (state.get("vocab") or {}).get("values") or []
        if spec.type == "numeric":
            return "0"
        pick = [rng.choice(vocab) for _ in range(2)] if vocab else ["x", "y"]
        return spec.separator.join(pick) if spec.type in ("multi_categorical", "sequence") else pick[0]

    cols = [c for c in schema.required_columns() if c not in label_cols]
    user_cols = [c for c in cols if (c in specs and specs[c].source == "user") or c in user_features]
    user = {c: value(c) for c in user_cols}
    cands = [{c: value(c) for c in cols if c not in user_cols} for _ in range(candidates)]
    return {"user": user, "candidates": cands}


def run_loadtest(url: str, body: dict, *, clients: int = 1, requests: int = 200, max_seconds: float = 60.0,
                 warmup: int = 5) -> dict:
    """Send ``requests`` POSTs of ``body`` to ``url`` from ``clients`` concurrent clients; return the summary."""
    u = urlparse(url)
    if u.hostname not in LOCAL_HOSTS:
        raise ConfigError(f"loadtest targets localhost only, not '{u.hostname}'")
    if clients < 1 or requests < 1 or max_seconds <= 0:
        raise ConfigError("clients, requests and max_seconds must be positive")
    path = u.path if u.path and u.path != "/" else "/v1/score"
    payload = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    counter = {"left": requests}
    deadline = time.monotonic() + max_seconds

    def connect():
        return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=30)

    def client() -> None:
        conn = connect()
        for _ in range(warmup):  # not counted
            try:
                conn.request("POST", path, payload, headers)
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = connect()
        while True:
            with lock:
                if counter["left"] <= 0 or time.monotonic() > deadline:
                    break
                counter["left"] -= 1
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, payload, headers)
                resp = conn.getresponse()
                resp.read()
                status = resp.status
            except (OSError, http.client.HTTPException) as exc:
                status = type(exc).__name__
                conn.close()
                conn = connect()
            dt = time.perf_counter() - t0
            with lock:
                if status == 200:
                    latencies.append(dt)
                else:
                    errors[str(status)] = errors.get(str(status), 0) + 1
        conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    done = len(latencies) + sum(errors.values())
    n_cand = len(body.get("candidates", []))
    return {
        "url": url, "clients": clients, "requests": done, "ok": len(latencies), "errors": errors,
        "candidates_per_request": n_cand, "wall_seconds": round(wall, 3),
        "requests_per_s": round(len(latencies) / wall, 1) if wall > 0 else None,
        "candidates_per_s": round(len(latencies) * n_cand / wall, 1) if wall > 0 else None,
        "latency_ms": {q: round(float(np.percentile(lat, int(q[1:]))), 3) if len(lat) else None
                       for q in ("p50", "p95", "p99")},
        "stopped_by_time": done < requests,
    }


def load_body(payload: str | None, artifact: str | None, candidates: int) -> dict:
    if payload:
        return json.loads(Path(payload).read_text())
    if artifact:
        return example_request(Encoders.from_json((Path(artifact) / "encoders.json").read_text()), candidates)
    raise ConfigError("loadtest needs --payload FILE (a request body) or --artifact DIR (to build one)")
