"""The ``events`` recipe: event log → strictly-earlier histories, targets, sampled negatives, time split."""

from __future__ import annotations

import gzip
from collections import defaultdict

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from conftest import shared

from rankcraft import api
from rankcraft.data.catalog import RECIPES, get_source
from rankcraft.data.dataset import prepare
from rankcraft.data.events import write_rows
from rankcraft.data.spec import DataSpec
from rankcraft.errors import ConfigError, DataError


def make_log(path, *, n_users=12, n_items=40, n_events=400, seed=0, n_times=60):
    """A random log with many same-time ties; every item has a fixed category (item id mod 5)."""
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n_events)
    items = rng.integers(0, n_items, n_events)
    times = rng.integers(0, n_times, n_events) * 10 + 1_500_000_000
    kinds = rng.choice(["pv", "buy"], n_events, p=[0.7, 0.3])
    table = pa.table({"user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
                      "cat": [f"c{i % 5}" for i in items], "timestamp": times.tolist(), "kind": kinds.tolist()})
    pacsv.write_csv(table, path)
    return table.to_pylist()


def rows_of(src) -> dict[str, list[dict]]:
    return {k: v.table.to_pylist() for k, v in src.loader().items()}


def test_registered():
    assert "events" in RECIPES


def test_histories_are_strictly_earlier_and_most_recent_last(tmp_path):
    events = make_log(tmp_path / "log.csv")
    by_user = defaultdict(list)
    for k, e in enumerate(events):
        by_user[e["user_id"]].append((e["timestamp"], k, e["item_id"]))
    for v in by_user.values():
        v.sort()
    parts = rows_of(get_source("events", str(tmp_path / "log.csv"), max_len=4, negatives=2, category="cat"))
    n_pos = 0
    for rows in parts.values():
        for r in rows:
            t = int(r["time"])
            earlier = [(ts, it) for ts, _, it in by_user[r["user"]] if ts < t]
            want = earlier[-4:]
            assert r["hist_items"] == [it for _, it in want]
            assert r["hist_ts"] == [str(ts) for ts, _ in want]
            assert r["hist_categories"] == [f"c{int(it[1:]) % 5}" for it in r["hist_items"]]
            assert r["category"] == f"c{int(r['item'][1:]) % 5}"
            if r["label"] == "1":
                n_pos += 1
                assert (t, r["item"]) in {(ts, it) for ts, _, it in by_user[r["user"]]}
    assert n_pos == len(events)


def test_negatives_follow_their_positive_and_were_never_seen_by_then(tmp_path):
    events = make_log(tmp_path / "log.csv")
    seen = defaultdict(list)  # user -> [(time, item)]
    for e in events:
        seen[e["user_id"]].append((e["timestamp"], e["item_id"]))
    parts = rows_of(get_source("events", str(tmp_path / "log.csv"), negatives=3))
    all_items = {e["item_id"] for e in events}
    for rows in parts.values():
        assert len(rows) % 4 == 0
        for j in range(0, len(rows), 4):
            pos, negs = rows[j], rows[j + 1:j + 4]
            assert pos["label"] == "1" and all(n["label"] == "0" for n in negs)
            t = int(pos["time"])
            before = {it for ts, it in seen[pos["user"]] if ts <= t}
            for n in negs:
                assert (n["user"], n["time"], n["hist_items"]) == (pos["user"], pos["time"], pos["hist_items"])
                assert n["item"] in all_items and n["item"] not in before


def test_deterministic_per_seed(tmp_path):
    make_log(tmp_path / "log.csv")
    a = rows_of(get_source("events", str(tmp_path / "log.csv"), seed=3))
    b = rows_of(get_source("events", str(tmp_path / "log.csv"), seed=3))
    c = rows_of(get_source("events", str(tmp_path / "log.csv"), seed=4))
    assert a == b
    negs = lambda p: [r["item"] for r in p["train"] if r["label"] == "0"]  # noqa: E731
    assert negs(a) != negs(c)


def test_time_split_by_quantiles(tmp_path):
    events = make_log(tmp_path / "log.csv", n_events=500)
    parts = rows_of(get_source("events", str(tmp_path / "log.csv"), negatives=1, fractions=[0.7, 0.2, 0.1]))
    pos = {k: [int(r["time"]) for r in v if r["label"] == "1"] for k, v in parts.items()}
    assert [len(pos[k]) for k in ("train", "valid", "test")] == [350, 100, 50]
    assert max(pos["train"]) <= min(pos["valid"]) and max(pos["valid"]) <= min(pos["test"])
    assert sum(map(len, pos.values())) == len(events)


def test_popularity_sampling_draws_training_items_in_proportion(tmp_path):
    # one hugely popular training item: popularity sampling picks it far more often than uniform sampling
    rows = [{"user": f"u{u}", "item": "hot" if k % 2 else f"i{k}", "time": k} for k in range(200) for u in [k % 9]]
    rows += [{"user": "late", "item": f"new{k}", "time": 1000 + k} for k in range(50)]
    pacsv.write_csv(pa.Table.from_pylist(rows), tmp_path / "log.csv")
    pop = rows_of(get_source("events", str(tmp_path / "log.csv"), sampling="popularity", negatives=2))
    uni = rows_of(get_source("events", str(tmp_path / "log.csv"), sampling="uniform", negatives=2))
    train_items = {r["item"] for r in pop["train"] if r["label"] == "1"}
    pop_negs = [r["item"] for p in pop.values() for r in p if r["label"] == "0"]
    uni_negs = [r["item"] for p in uni.values() for r in p if r["label"] == "0"]
    assert set(pop_negs) <= train_items  # items never seen in training are never drawn
    assert any(i.startswith("new") for i in uni_negs)
    assert pop_negs.count("hot") > 5 * max(1, uni_negs.count("hot"))


def test_event_type_filter_and_min_history(tmp_path):
    events = make_log(tmp_path / "log.csv")
    buys = [e for e in events if e["kind"] == "buy"]
    parts = rows_of(get_source("events", str(tmp_path / "log.csv"), event_column="kind", event_types=["buy"],
                               negatives=0))
    rows = [r for p in parts.values() for r in p]
    assert len(rows) == len(buys) and {r["item"] for r in rows} <= {e["item_id"] for e in buys}
    hist = {i for r in rows for i in r["hist_items"]}
    assert hist <= {e["item_id"] for e in buys}
    parts = rows_of(get_source("events", str(tmp_path / "log.csv"), min_history=3, negatives=0))
    assert all(len(r["hist_items"]) >= 3 for p in parts.values() for r in p)
    with pytest.raises(DataError, match="no event has a type in"):
        get_source("events", str(tmp_path / "log.csv"), event_column="kind", event_types=["cart"]).loader()


def test_prepare_encodes_left_padded_histories(tmp_path):
    path = tmp_path / "log.csv.gz"  # compressed, and the columns found by their common spellings
    path.write_bytes(gzip.compress(b"user_id,item_id,timestamp\n"
                                   b"u1,a,1\nu1,b,2\nu1,c,3\nu2,a,1\nu2,c,2\nu1,d,4\nu2,b,5\nu1,e,6\nu2,d,7\nu1,b,8\n"))
    spec = DataSpec.model_validate({"recipe": "events", "data_dir": str(path),
                                    "options": {"max_len": 3, "negatives": 1, "seed": 1}})
    data = prepare(spec.source(), cache_dir=tmp_path / "cache")
    assert {f.name for f in data.features.sequences} == {"hist_items"}
    assert data.features["hist_items"].has_timestamps and data.features.has_group
    raw = spec.source().loader()["train"].table.to_pylist()
    enc = data.splits["train"].columns
    item_vocab = data.encoders.vocab(data.encoders.schema.features[1])
    for r, h, ts in zip(raw, enc["hist_items"].numpy(), enc["hist_items__ts"].numpy()):
        want = item_vocab.encode(pa.array(r["hist_items"], pa.string())).tolist()
        assert h.tolist() == [0] * (3 - len(want)) + want  # left-padded, most recent in the last slot
        assert ts.tolist()[3 - len(want):] == [float(x) for x in r["hist_ts"]]


def test_iso_times_and_parquet(tmp_path):
    t = pa.table({"uid": ["a", "a", "b", "a", "b"], "product_id": ["x", "y", "x", "z", "y"],
                  "event_time": ["2024-01-01 10:00:00", "2024-01-01T11:00:00", "2024-01-02", "2024-01-03 00:00:00",
                                 "2024-01-04 09:30:00"]})
    import pyarrow.parquet as pq

    pq.write_table(t, tmp_path / "log.parquet")
    parts = rows_of(get_source("events", None, path=str(tmp_path / "log.parquet"), negatives=0))
    rows = [r for p in parts.values() for r in p]
    last_a = [r for r in rows if r["user"] == "a"][-1]
    assert last_a["item"] == "z" and last_a["hist_items"] == ["x", "y"]
    assert last_a["hist_ts"] == ["1704103200", "1704106800"]


def test_errors_are_one_line_and_named(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("who,what,when\nu,a,1\n")
    with pytest.raises(DataError, match=r"no user column .* name it with the option `user: COLUMN`"):
        get_source("events", str(p))
    with pytest.raises(DataError, match="the item column 'nope' is not in the file"):
        get_source("events", str(p), user="who", item="nope", time="when")
    p.write_text("user,item,time\nu,a,1\nu,b,2\nu,c,yesterday\n")
    with pytest.raises(DataError) as ei:
        get_source("events", str(p)).loader()
    assert ei.value.line == 4 and ei.value.column == "time" and "'yesterday'" in str(ei.value)
    p.write_text("user,item,time\nu,a,1\n,b,2\nu,c,3\n")
    with pytest.raises(DataError) as ei:
        get_source("events", str(p)).loader()
    assert ei.value.line == 3 and ei.value.column == "user"
    with pytest.raises(ConfigError, match="sampling must be one of"):
        get_source("events", str(p), sampling="zipf")
    with pytest.raises(ConfigError, match="fractions"):
        get_source("events", str(p), fractions=[0.9, 0.5])
    with pytest.raises(ConfigError, match="data.options"):
        DataSpec.model_validate({"recipe": "events", "data_dir": str(p), "options": {"negative": 2}}).source()
    with pytest.raises(DataError, match="not found"):
        get_source("events", str(tmp_path / "nope.csv"))


def test_headerless_file_with_column_names(tmp_path):
    p = tmp_path / "log.csv"
    p.write_text("1,10,7,pv,100\n1,11,7,buy,200\n2,10,7,pv,150\n1,12,8,pv,300\n")
    src = get_source("events", str(p), column_names=["user", "item", "category", "behavior", "time"],
                     category="category", negatives=0)
    rows = [r for part in rows_of(src).values() for r in part]
    assert [r["item"] for r in rows] == ["10", "10", "11", "12"]
    assert rows[-1]["hist_items"] == ["10", "11"] and rows[-1]["hist_categories"] == ["7", "7"]


def test_taobao_user_behavior_purchases(tmp_path):
    path = shared("taobao-userbehavior-84k", "UserBehavior.csv")
    src = get_source("events", str(path), column_names=["user", "item", "category", "behavior", "time"],
                     category="category", event_column="behavior", event_types=["buy"], negatives=1)
    parts = src.loader()
    assert sum(p.num_rows for p in parts.values()) == 2 * 1750  # 1,750 purchases, one negative each
    train_t = [int(x) for x in parts["train"].table.column("time").to_pylist()]
    valid_t = [int(x) for x in parts["valid"].table.column("time").to_pylist()]
    assert max(train_t) <= min(valid_t)


def test_written_rows_evaluate_like_the_runs_test_split(tmp_path):
    make_log(tmp_path / "log.csv", n_events=600)
    opts = {"category": "cat", "max_len": 5, "negatives": 1}
    res = api.train({"data": {"recipe": "events", "data_dir": str(tmp_path / "log.csv"), "options": opts},
                     "model": "din", "train": {"epochs": 1, "batch_size": 64, "max_steps": 3, "quiet": True}},
                    out=tmp_path / "run", cache_dir=tmp_path / "cache")
    paths = write_rows(tmp_path / "rows", str(tmp_path / "log.csv"), **opts)
    m = api.evaluate(tmp_path / "run", paths["test"])
    assert m["auc"] == pytest.approx(res.report["test"]["auc"], abs=1e-6)
    scores = api.predict(tmp_path / "run", paths["test"])
    assert len(scores) == res.data.splits["test"].num_rows
