"""The HTTP scoring server (``rankcraft serve``): Starlette on uvicorn, scoring an exported ONNX artifact.

Endpoints:

* ``POST /v1/score`` — ``{"user": {feature: value}, "context": {...}, "candidates": [{...}, ...]}`` →
  ``{"scores": [p1, ...]}`` for a one-head model, ``{"scores": {"head": [p1, ...]}}`` for several heads; one score
  per candidate, in request order. A raw column is looked up in the candidate, then ``context``, then ``user``
  (user and context values apply to every candidate). Values are raw, as in the training files (numbers or
  strings; a multi-valued feature as its separator-joined text; ``null`` = missing). A feature missing
  everywhere is an error; an unseen category scores as OOV.
* ``GET /healthz`` — ``{"status": "ok", "model": ..., "heads": [...]}``.
* ``GET /metrics`` — Prometheus text: requests by status, a latency histogram, candidates scored, and the model
  version (per worker process).
* ``POST /admin/reload`` (from localhost only; optional ``{"artifact": DIR}``) or ``SIGHUP`` — load the artifact
  again (or another one) and swap it in; requests in flight finish on the artifact they started with.

Client mistakes are 4xx with ``{"error": message, "field": name}``: malformed JSON (400), wrong content type (415),
a body over ``max_body_bytes`` or more than ``max_candidates`` candidates (413), wrong types, missing features or
bad values (422). A 5xx means a fault of the server itself.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pyarrow as pa

from rankcraft.errors import ConfigError, DataError, RankcraftError
from rankcraft.serving.artifact import Artifact

LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
MAX_TEXT = 10_000  # characters of one raw value


class ClientError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


class Metrics:
    """Prometheus counters and a latency histogram (thread-safe)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.candidates = 0

    def observe(self, path: str, status: int, seconds: float, candidates: int = 0) -> None:
        with self.lock:
            self.requests[(path, status)] = self.requests.get((path, status), 0) + 1
            if path == "/v1/score":
                i = next((j for j, b in enumerate(LATENCY_BUCKETS) if seconds <= b), len(LATENCY_BUCKETS))
                self.buckets[i] += 1
                self.latency_sum += seconds
                self.latency_count += 1
                self.candidates += candidates

    def render(self, version: str) -> str:
        with self.lock:
            lines = ["# HELP rankcraft_requests_total HTTP requests by path and status.",
                     "# TYPE rankcraft_requests_total counter"]
            for (path, status), n in sorted(self.requests.items()):
                lines.append(f'rankcraft_requests_total{{path="{path}",status="{status}"}} {n}')
            lines += ["# HELP rankcraft_score_latency_seconds Latency of POST /v1/score.",
                      "# TYPE rankcraft_score_latency_seconds histogram"]
            acc = 0
            for b, n in zip(LATENCY_BUCKETS, self.buckets):
                acc += n
                lines.append(f'rankcraft_score_latency_seconds_bucket{{le="{b}"}} {acc}')
            lines.append(f'rankcraft_score_latency_seconds_bucket{{le="+Inf"}} {acc + self.buckets[-1]}')
            lines.append(f"rankcraft_score_latency_seconds_sum {self.latency_sum}")
            lines.append(f"rankcraft_score_latency_seconds_count {self.latency_count}")
            lines += ["# TYPE rankcraft_candidates_scored_total counter",
                      f"rankcraft_candidates_scored_total {self.candidates}",
                      "# TYPE rankcraft_model_info gauge",
                      f'rankcraft_model_info{{version="{_label(version)}"}} 1']
        return "\n".join(lines) + "\n"


def _label(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


class ScoringService:
    """The request logic, independent of the HTTP stack (so it can be tested and reused)."""

    def __init__(self, artifact: str | Path, *, max_candidates: int = 1000, threads: int = 1):
        self.path = Path(artifact)
        self.threads = threads
        self.max_candidates = max_candidates
        self.artifact = Artifact(self.path, threads=threads)
        self.metrics = Metrics()
        self._reload_lock = threading.Lock()

    def reload(self, path: str | Path | None = None) -> Artifact:
        """Load the artifact (again, or another one) and swap it in atomically."""
        with self._reload_lock:
            new = Artifact(Path(path) if path else self.path, threads=self.threads)
            self.artifact = new  # one reference swap: in-flight requests keep the one they hold
            if path:
                self.path = Path(path)
            return new

    def parse(self, payload: object, art: Artifact) -> tuple[pa.Table, pa.Table | None]:
        """The request as (a table with one row per candidate, a one-row table of the shared values or None)."""
        if not isinstance(payload, dict):
            raise ClientError(422, "the body must be a JSON object with 'candidates'", "body")
        unknown = [k for k in payload if k not in ("user", "context", "candidates", "window")]
        if unknown:
            raise ClientError(422, f"unknown key '{unknown[0]}' (expected user, context, candidates, window)",
                              unknown[0])
        cands = payload.get("candidates")
        if not isinstance(cands, list):
            raise ClientError(422, "'candidates' must be a list of objects", "candidates")
        if not cands:
            raise ClientError(422, "'candidates' is empty", "candidates")
        if len(cands) > self.max_candidates:
            raise ClientError(413, f"{len(cands)} candidates; at most {self.max_candidates} per request",
                              "candidates")
        shared: dict[str, str | None] = {}
        for part in ("user", "context"):  # context overrides user
            block = payload.get(part)
            if block is None:
                continue
            if not isinstance(block, dict):
                raise ClientError(422, f"'{part}' must be an object of feature values", part)
            for k, v in block.items():
                shared[k] = _raw(v, f"{part}.{k}")
        for i, cand in enumerate(cands):
            if not isinstance(cand, dict):
                raise ClientError(422, f"candidates[{i}] must be an object", f"candidates[{i}]")
        columns: dict[str, pa.Array] = {}
        once: dict[str, pa.Array] = {}
        for c in art.raw_columns:  # column by column; a user/context value no candidate overrides is encoded once
            if c in shared and not any(c in cand for cand in cands):
                v = shared[c]
                once[c] = pa.array(["" if v is None else v], pa.string())
                continue
            vals = []
            for i, cand in enumerate(cands):
                if c in cand:
                    v = _raw(cand[c], f"candidates[{i}].{c}")
                elif c in shared:
                    v = shared[c]
                else:
                    raise ClientError(422, f"feature '{c}' is missing (give it in the candidate, context or user)",
                                      c if i == 0 else f"candidates[{i}].{c}")
                vals.append("" if v is None else v)
            columns[c] = pa.array(vals, pa.string())
        rows = pa.table(columns) if columns else pa.table({"__rows": pa.array([""] * len(cands), pa.string())})
        return rows, (pa.table(once) if once else None)

    @staticmethod
    def windows_of(payload: dict) -> list[str] | None:
        """Each candidate's attribution window (its own ``window``, else the request's), or None when the request
        asks for none."""
        default = payload.get("window")
        cands = payload["candidates"]
        if default is None and not any("window" in c for c in cands):
            return None
        out = []
        for i, c in enumerate(cands):
            w = c.get("window", default)
            if not isinstance(w, str) or not w.strip():
                where = f"candidates[{i}].window" if "window" in c else "window"
                raise ClientError(422, "every candidate needs a window such as \"3d\" once one is given "
                                  f"(in the candidate or at the top level); got {w!r}", where)
            out.append(w)
        return out

    def score(self, payload: object) -> tuple[dict, int]:
        art = self.artifact  # this request's artifact, whatever a reload does meanwhile
        windows = None
        if isinstance(payload, dict) and isinstance(payload.get("candidates"), list) and \
                all(isinstance(c, dict) for c in payload["candidates"]):
            windows = self.windows_of(payload)
            if windows is not None:  # the window is a request option, not a feature
                payload = {**payload, "candidates": [{k: v for k, v in c.items() if k != "window"}
                                                     for c in payload["candidates"]]}
                payload.pop("window", None)
        table, shared = self.parse(payload, art)
        try:
            columns = art.encode(table, shared=shared)
            scores = art.score_columns(columns)
        except DataError as exc:
            raise ClientError(422, str(exc).removeprefix("<request>: "), getattr(exc, "column", None)) from None
        out = {h: [_finite(x) for x in v.tolist()] for h, v in scores.items()}
        body = {"scores": out[art.heads[0]] if len(art.heads) == 1 else out, "model": art.manifest["model"]}
        if windows is not None:
            try:
                p = art.score_windows(columns, scores, windows)
            except ConfigError as exc:
                raise ClientError(422, str(exc), "window") from None
            body["window_scores"] = [_finite(x) for x in p.tolist()]
        return body, table.num_rows


def _raw(v: object, field: str) -> str | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ClientError(422, f"'{field}' is {v}; values must be finite numbers or strings", field)
        return repr(v)
    if isinstance(v, str):
        if len(v) > MAX_TEXT:
            raise ClientError(413, f"'{field}' is {len(v):,} characters long; at most {MAX_TEXT:,}", field)
        return v
    raise ClientError(422, f"'{field}' must be a number, a string or null, not {type(v).__name__}", field)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


# ------------------------------------------------------------------------------------------------- HTTP
def build_app(service: ScoringService, *, max_body_bytes: int = 4 * 1024 * 1024):
    """The Starlette application around ``service``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    def error(status: int, message: str, field: str | None = None) -> JSONResponse:
        return JSONResponse({"error": message, **({"field": field} if field else {})}, status_code=status)

    async def score(request: Request):
        t0 = time.perf_counter()
        n = 0
        status = 200
        try:
            ctype = request.headers.get("content-type", "")
            if not ctype.split(";")[0].strip().lower() == "application/json":
                raise ClientError(415, f"content type must be application/json, not '{ctype[:60]}'", "content-type")
            length = request.headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
                raise ClientError(413, f"the body is over {max_body_bytes:,} bytes", "body")
            body = b""
            async for chunk in request.stream():
                body += chunk
                if len(body) > max_body_bytes:
                    raise ClientError(413, f"the body is over {max_body_bytes:,} bytes", "body")
            try:
                payload = json.loads(body, parse_constant=_reject_constant)
            except RecursionError:
                raise ClientError(400, "malformed JSON: nested too deeply", "body") from None
            except (ValueError, UnicodeDecodeError) as exc:
                raise ClientError(400, f"malformed JSON: {str(exc)[:200]}", "body") from None
            result, n = service.score(payload)
            response = JSONResponse(result)
        except ClientError as exc:
            status = exc.status
            response = error(exc.status, exc.message, exc.field)
        except RecursionError:
            status = 400
            response = error(400, "the request is nested too deeply", "body")
        except Exception as exc:  # a fault of ours: 500 with the type, never the traceback
            status = 500
            response = error(500, f"internal error ({type(exc).__name__})")
        service.metrics.observe("/v1/score", status, time.perf_counter() - t0, n)
        return response

    async def healthz(request: Request):
        art = service.artifact
        service.metrics.observe("/healthz", 200, 0.0)
        return JSONResponse({"status": "ok", "model": art.manifest["model"], "heads": art.heads,
                             "version": art.version, "pid": os.getpid()})

    async def metrics(request: Request):
        return PlainTextResponse(service.metrics.render(service.artifact.version),
                                 media_type="text/plain; version=0.0.4")

    async def reload(request: Request):
        host = request.client.host if request.client else ""
        if host not in ("127.0.0.1", "::1", "localhost", "testclient"):
            return error(403, "reload is allowed from localhost only")
        try:
            body = await request.body()
            doc = json.loads(body) if body.strip() else {}
            path = doc.get("artifact") if isinstance(doc, dict) else None
            art = service.reload(path)
        except (ValueError, RankcraftError) as exc:
            return error(422, f"reload failed, the previous model keeps serving: {exc}", "artifact")
        return JSONResponse({"status": "reloaded", "version": art.version})

    async def not_found(request: Request, exc):
        return error(404, f"no such endpoint: {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc):
        return error(405, f"method {request.method} is not allowed on {request.url.path}")

    return Starlette(routes=[Route("/v1/score", score, methods=["POST"]), Route("/healthz", healthz),
                             Route("/metrics", metrics), Route("/admin/reload", reload, methods=["POST"])],
                     exception_handlers={404: not_found, 405: not_allowed})


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def app_from_env():
    """uvicorn factory for worker processes: the artifact and options come from ``RANKCRAFT_SERVE_*``."""
    service = ScoringService(os.environ["RANKCRAFT_SERVE_ARTIFACT"],
                             max_candidates=int(os.environ.get("RANKCRAFT_SERVE_MAX_CANDIDATES", "1000")),
                             threads=int(os.environ.get("RANKCRAFT_SERVE_THREADS", "1")))
    if hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, lambda *_: service.reload())
    return build_app(service)


def resolve_artifact(path: str | Path) -> Path:
    """An artifact directory as given, or a run directory exported to ``RUN/export`` first (once)."""
    p = Path(path)
    if (p / "manifest.json").exists():
        return p
    if (p / "config.json").exists() and (p / "best.pt").exists():
        target = p / "export"
        if not (target / "manifest.json").exists():
            from rankcraft.serving.export import export_run

            export_run(p, target)
        return target
    raise ConfigError(f"{p}: neither an exported artifact (manifest.json) nor a finished run directory")


def serve(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, threads: int = 1,
          max_candidates: int = 1000, log_level: str = "warning") -> None:
    """Run the server until interrupted (``workers`` processes share the port)."""
    try:
        import uvicorn
    except ImportError:
        raise ConfigError("rankcraft serve needs the serving stack: pip install 'rankcraft[serve]'") from None
    art = resolve_artifact(path)
    Artifact(art)  # fail here, with a clear message, rather than in every worker
    os.environ.update(RANKCRAFT_SERVE_ARTIFACT=str(art.resolve()), RANKCRAFT_SERVE_THREADS=str(threads),
                      RANKCRAFT_SERVE_MAX_CANDIDATES=str(max_candidates))
    uvicorn.run("rankcraft.serving.server:app_from_env", factory=True, host=host, port=port, workers=workers,
                log_level=log_level, access_log=False,
                http="rankcraft.serving.http_protocol:NoDelayHTTPProtocol")


__all__ = ["ScoringService", "build_app", "serve", "resolve_artifact"]
