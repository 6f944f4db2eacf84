"""The HTTP scoring server: scores match the artifact and `predict`, client mistakes are named 4xx, 1,000 hostile
requests cause no 5xx, reload swaps the model under load, and the load tester reports."""

from __future__ import annotations

import http.client
import json
import random
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="serving needs the extra rankcraft[serve]")
pytest.importorskip("uvicorn", reason="serving needs the extra rankcraft[serve]")

from rankcraft.serving.artifact import Artifact  # noqa: E402
from rankcraft.serving.export import export_run  # noqa: E402
from rankcraft.serving.loadtest import example_request, run_loadtest  # noqa: E402
from rankcraft.serving.server import ScoringService, build_app  # noqa: E402
from rankcraft.training.run import RunConfig, train  # noqa: E402

TRAIN = {"epochs": 1, "max_steps": 5, "batch_size": 256, "quiet": True, "checkpoint_seconds": 0}
MULTI = {"type": "multitask", "tasks": [{"name": "ctr", "label": "click"}, {"name": "ctcvr", "label": "purchase"}]}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    out = {}
    for name, cfg in (("single", {"data": {"recipe": "synthetic", "rows": 2000}, "model": "deepfm"}),
                      ("multi", {"data": {"recipe": "funnel", "options": {"rows": 2000}}, "model": "esmm",
                                 "objective": MULTI})):
        train(RunConfig.parse({**cfg, "train": TRAIN}), out=root / name, cache_dir=root / "cache")
        out[name] = export_run(root / name, root / f"{name}-art")
    return out


class Server:
    def __init__(self, artifact, **kw):
        import uvicorn

        self.service = ScoringService(artifact, **kw)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(build_app(self.service), log_level="error", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)

    def request(self, method, path, body=None, headers=None, raw: bytes | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        conn.request(method, path, data, headers if headers is not None else {"Content-Type": "application/json"})
        r = conn.getresponse()
        text = r.read()
        conn.close()
        try:
            return r.status, json.loads(text)
        except ValueError:
            return r.status, text.decode(errors="replace")

    def stop(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server(artifacts):
    s = Server(artifacts["single"], max_candidates=1000)
    yield s
    s.stop()


def test_scores_match_the_artifact_and_broadcast_user_features(server, artifacts):
    art = Artifact(artifacts["single"])
    body = example_request(art.encoders, 20, seed=1)
    status, out = server.request("POST", "/v1/score", body)
    assert status == 200 and len(out["scores"]) == 20
    rows = [{**body["user"], **c} for c in body["candidates"]]
    want = art.score_rows(rows)["score"]
    assert np.allclose(out["scores"], want, atol=1e-6)
    # a value in the context block applies to every candidate; a candidate's own value wins
    cols = art.raw_columns
    ctx_col = cols[0]
    body2 = {"user": {}, "context": {ctx_col: "zzz-unseen"},
             "candidates": [{c: v for c, v in cand.items() if c != ctx_col} for cand in body["candidates"][:3]]}
    body2["user"] = {k: v for k, v in body["user"].items() if k != ctx_col}
    status, out2 = server.request("POST", "/v1/score", body2)
    assert status == 200
    rows2 = [{**body2["user"], ctx_col: "zzz-unseen", **c} for c in body2["candidates"]]
    assert np.allclose(out2["scores"], art.score_rows(rows2)["score"], atol=1e-6)


def test_multi_head_scores_are_keyed_by_head(artifacts):
    s = Server(artifacts["multi"])
    try:
        art = Artifact(artifacts["multi"])
        status, out = s.request("POST", "/v1/score", example_request(art.encoders, 5))
        assert status == 200 and set(out["scores"]) == {"ctr", "ctcvr"} and len(out["scores"]["ctr"]) == 5
    finally:
        s.stop()


@pytest.mark.parametrize("case, status, field", [
    ("not json", 400, "body"),
    ("wrong content type", 415, "content-type"),
    ("missing feature", 422, None),
    ("wrong type", 422, "candidates[0]"),
    ("too many", 413, "candidates"),
    ("nan", 400, "body"),
    ("candidates not a list", 422, "candidates"),
])
def test_client_mistakes_are_named_4xx(server, artifacts, case, status, field):
    art = Artifact(artifacts["single"])
    good = example_request(art.encoders, 2)
    col = art.raw_columns[-1]
    if case == "not json":
        got = server.request("POST", "/v1/score", raw=b'{"candidates": [')
    elif case == "wrong content type":
        got = server.request("POST", "/v1/score", raw=json.dumps(good).encode(), headers={"Content-Type": "text/plain"})
    elif case == "missing feature":
        bad = {"user": {}, "candidates": [{c: v for c, v in {**good["user"], **good["candidates"][0]}.items()
                                           if c != col}]}
        got = server.request("POST", "/v1/score", bad)
        assert got[1]["field"] == col and f"feature '{col}' is missing" in got[1]["error"]
    elif case == "wrong type":
        bad = {"user": good["user"], "candidates": [{**good["candidates"][0], col: {"a": 1}}]}
        got = server.request("POST", "/v1/score", bad)
        field = f"candidates[0].{col}"
    elif case == "too many":
        got = server.request("POST", "/v1/score", {"user": good["user"], "candidates": good["candidates"] * 5001})
    elif case == "nan":
        got = server.request("POST", "/v1/score", raw=b'{"candidates": [{"x": NaN}]}')
    else:
        got = server.request("POST", "/v1/score", {"candidates": {"a": 1}})
    assert got[0] == status, got
    assert "error" in got[1]
    if field is not None:
        assert got[1].get("field") == field


def _hostile(rng: random.Random, good: dict) -> tuple[bytes, dict]:
    headers = {"Content-Type": "application/json"}
    kind = rng.randrange(14)
    cand = dict(good["candidates"][0])
    col = rng.choice(list(cand) or ["x"])
    if kind == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))), headers
    if kind == 1:
        return ("[" * rng.randrange(1000, 100_000)).encode(), headers
    if kind == 2:
        return json.dumps({"candidates": [{col: "x" * rng.randrange(10_001, 200_000)}]}).encode(), headers
    if kind == 3:
        return json.dumps({"candidates": [cand] * 10_000}).encode(), headers
    if kind == 4:
        return json.dumps({"candidates": [{**cand, col: rng.choice([[], [1, 2], {"a": None}, True, -1e308])}]}).encode(), headers
    if kind == 5:
        return b'{"candidates": [{"%s": Infinity}]}' % col.encode(), headers
    if kind == 6:
        return json.dumps(rng.choice([None, 1, "x", [], [1], {"candidates": None}, {"candidates": -5}])).encode(), headers
    if kind == 7:
        return json.dumps({"user": rng.choice([[], 3, "u"]), "candidates": [cand]}).encode(), headers
    if kind == 8:
        return json.dumps({"candidates": [{**cand, col: rng.randrange(-10**30, 10**30)}]}).encode(), headers
    if kind == 9:
        return json.dumps({"candidates": [], "extra": 1}).encode(), headers
    if kind == 10:
        return json.dumps(good).encode(), {"Content-Type": rng.choice(["text/plain", "", "application/xml"])}
    if kind == 11:
        return json.dumps({"candidates": [{**cand, col: "\u0000\ud800".encode("utf-8", "surrogatepass").decode(
            "utf-8", "replace")}]}).encode(), headers
    if kind == 12:
        return json.dumps({"candidates": [{**cand, col: -rng.random() * 1e6}]}).encode(), headers
    return json.dumps({"candidates": [cand] * rng.randrange(1, 5), "context": {col: None}}).encode(), headers


def test_fuzz_a_thousand_hostile_requests_gives_no_5xx(server, artifacts):
    art = Artifact(artifacts["single"])
    good = example_request(art.encoders, 3)
    rng = random.Random(7)
    statuses: dict[int, int] = {}
    for i in range(1000):
        raw, headers = _hostile(rng, good)
        status, _ = server.request("POST", "/v1/score", raw=raw, headers=headers)
        statuses[status] = statuses.get(status, 0) + 1
        if i % 100 == 0:  # the server keeps answering valid requests
            assert server.request("POST", "/v1/score", good)[0] == 200
    assert not [s for s in statuses if s >= 500], statuses
    assert server.request("POST", "/v1/score", good)[0] == 200
    assert server.request("GET", "/healthz")[0] == 200


def test_reload_swaps_the_model_without_failing_requests(artifacts):
    s = Server(artifacts["single"])
    try:
        art = Artifact(artifacts["single"])
        body = example_request(art.encoders, 50)
        failures = []
        stop = threading.Event()

        def hammer():
            while not stop.is_set():
                st, _ = s.request("POST", "/v1/score", body)
                if st != 200:
                    failures.append(st)

        t = threading.Thread(target=hammer)
        t.start()
        for _ in range(5):
            st, out = s.request("POST", "/admin/reload", {})
            assert st == 200 and out["status"] == "reloaded"
        st, out = s.request("POST", "/admin/reload", {"artifact": "/nonexistent"})
        assert st == 422 and "previous model keeps serving" in out["error"]
        stop.set()
        t.join()
        assert not failures
        metrics = s.request("GET", "/metrics")[1]
        assert 'rankcraft_score_latency_seconds_bucket{le="+Inf"}' in metrics and "rankcraft_model_info" in metrics
    finally:
        s.stop()


def test_loadtest_reports_latency_and_throughput(server, artifacts):
    art = Artifact(artifacts["single"])
    res = run_loadtest(f"http://127.0.0.1:{server.port}/v1/score", example_request(art.encoders, 100), clients=2,
                       requests=40, warmup=1)
    assert res["ok"] == 40 and not res["errors"] and res["latency_ms"]["p50"] > 0 and res["requests_per_s"] > 0
    from rankcraft.errors import ConfigError

    with pytest.raises(ConfigError, match="localhost only"):
        run_loadtest("http://example.com/v1/score", {}, requests=1)
