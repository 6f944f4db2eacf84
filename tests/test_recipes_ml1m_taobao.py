"""The ml-1m-u3k, ml-1m-u3k-seq and taobao-userbehavior recipes, and the column-wise history builder.

Tiny synthetic files (written to tmp_path) pin the recipes' logic; the tests on the real files in
``../shared/data`` skip when it is absent.
"""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pytest

from rankcraft.data.catalog import RECIPES, get_source
from rankcraft.data.dataset import prepare
from rankcraft.data.histories import earlier_windows, history_columns, join_windows
from rankcraft.data.movielens1m import load_ml1m_table
from rankcraft.data.recipes import add_histories, load_ml100k_table
from rankcraft.data.taobao import FIRST_DAY, LABELS, read_behaviour
from rankcraft.errors import ConfigError, DataError

DAY = 86400
NEW_RECIPES = ("ml-1m-u3k", "ml-1m-u3k-seq", "taobao-userbehavior")


def test_recipes_are_registered():
    assert set(NEW_RECIPES) <= set(RECIPES)
    for name in NEW_RECIPES:
        assert RECIPES[name][1]  # a help line for `rankcraft datasets`


# ----------------------------------------------------------------------------------------- history builder
def _reference_add_histories(table: pa.Table, ts: np.ndarray, max_len: int) -> pa.Table:
    """ml-100k-seq's original per-row implementation of add_histories, kept as the reference."""
    users = np.array(table.column("user").to_pylist(), dtype=np.int64)
    items = table.column("item").to_pylist()
    genres = table.column("genres").to_pylist()
    ratings = table.column("rating").to_pylist()
    genre1 = [g.split("|")[0] if g else "" for g in genres]
    order = np.lexsort((np.arange(len(ts)), ts, users))
    hist_items, hist_ts, hist_genres, hist_ratings = ([""] * len(ts) for _ in range(4))
    bounds = np.flatnonzero(np.diff(users[order])) + 1
    for grp in np.split(order, bounds):
        t = ts[grp]
        earlier = np.searchsorted(t, t, side="left")
        its, gs, rs = [items[j] for j in grp], [genre1[j] for j in grp], [ratings[j] for j in grp]
        tss = [str(x) for x in t]
        for pos, j in enumerate(grp):
            k = int(earlier[pos])
            lo = max(0, k - max_len)
            hist_items[j] = "^".join(its[lo:k])
            hist_ts[j] = "^".join(tss[lo:k])
            hist_genres[j] = "^".join(gs[lo:k])
            hist_ratings[j] = "^".join(rs[lo:k])
    return (table.append_column("genre1", pa.array(genre1, pa.string()))
            .append_column("hist_items", pa.array(hist_items, pa.string()))
            .append_column("hist_ts", pa.array(hist_ts, pa.string()))
            .append_column("hist_genres", pa.array(hist_genres, pa.string()))
            .append_column("hist_ratings", pa.array(hist_ratings, pa.string())))


def _random_ratings(n: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.integers(1, 12, n)
    ts = rng.integers(0, n // 3, n)  # many same-second events
    genres = np.array(["", "Drama", "Comedy|Drama", "Horror", "Sci-Fi|War|Crime", "Café"])[rng.integers(0, 6, n)]
    table = pa.table({"user": [str(u) for u in users], "item": [str(i) for i in rng.integers(1, 40, n)],
                      "rating": [str(r) for r in rng.integers(1, 6, n)], "genres": list(genres)})
    return table, ts.astype(np.int64)


@pytest.mark.parametrize("max_len", [1, 3, 50])
def test_add_histories_is_byte_identical_to_the_per_row_reference(max_len):
    table, ts = _random_ratings(600, seed=max_len)
    new, ref = add_histories(table, ts, max_len), _reference_add_histories(table, ts, max_len)
    assert new.schema == ref.schema
    assert new.equals(ref)


def test_ml100k_seq_histories_unchanged_on_the_real_data(shared_data):
    table, ts = load_ml100k_table(shared_data("ml-100k"))
    assert add_histories(table, ts, 50).equals(_reference_add_histories(table, ts, 50))


def test_earlier_windows_exclude_same_second_and_the_event_itself():
    users = np.array([1, 1, 1, 1, 2, 1])
    ts = np.array([100, 300, 300, 200, 100, 400])
    order, start, stop = earlier_windows(users, ts, max_len=2)
    assert order.tolist() == [0, 3, 1, 2, 5, 4]  # by user, time, position
    window = {int(order[p]): order[start[p]:stop[p]].tolist() for p in range(len(order))}
    assert window == {0: [], 3: [0], 1: [0, 3], 2: [0, 3], 5: [1, 2], 4: []}


def test_join_windows_and_history_rows():
    out = join_windows(["a", "", "é", "d"], np.array([0, 0, 1, 2, 3]), np.array([0, 2, 3, 4, 3]))
    assert out.type == pa.string() and out.to_pylist() == ["", "a^", "^é", "é^d", ""]
    cols = history_columns(np.array([5, 5, 5]), np.array([3, 1, 2]), {"h": ["x", "y", "z"]}, 5, rows=np.array([0, 2]))
    assert cols["h"].to_pylist() == ["y^z", "y"]


# ----------------------------------------------------------------------------------------- ml-1m-u3k (synthetic)
def _fake_ml1m(d, ratings: list[tuple]) -> None:
    d.mkdir()
    (d / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::98107-2117\n3::M::25::15::55117\n")
    (d / "movies.dat").write_bytes("10::Misérables, Les (1995)::Drama|Musical\n"
                                   "20::Star Wars: Episode IV - A New Hope (1977)::Action|Sci-Fi\n"
                                   "30::No Year Here::Comedy\n".encode("latin-1"))
    with gzip.open(d / "ratings.dat.gz", "wt", encoding="latin-1") as fh:
        fh.writelines("::".join(map(str, r)) + "\n" for r in ratings)


# (user, item, rating, timestamp): user 1 rates 10 and 20 in the same second (500)
RATINGS = [(1, 10, 5, 500), (1, 20, 3, 500), (1, 30, 4, 900), (1, 10, 2, 100), (2, 20, 4, 300), (2, 30, 1, 700),
           (3, 10, 5, 200), (3, 20, 3, 600), (2, 10, 4, 800), (3, 30, 5, 1000)]


def test_ml1m_table_labels_and_side_information(tmp_path):
    _fake_ml1m(tmp_path / "ml", RATINGS)
    table, ts = load_ml1m_table(tmp_path / "ml")
    rows = table.to_pylist()
    assert ts.tolist() == [r[3] for r in RATINGS]
    assert [r["label"] for r in rows] == ["1" if r[2] >= 4 else "0" for r in RATINGS]  # rating >= 4
    assert rows[0]["genres"] == "Drama|Musical" and rows[0]["release_year"] == "1995"
    assert rows[1]["release_year"] == "1977" and rows[2]["release_year"] == ""  # ':' in a title is fine
    assert (rows[4]["gender"], rows[4]["age"], rows[4]["occupation"], rows[4]["zip_prefix"]) == ("M", "56", "16", "981")
    assert table.schema.field("timestamp").type == pa.int64()


def test_ml1m_recipe_time_split(tmp_path):
    _fake_ml1m(tmp_path / "ml", RATINGS)
    src = get_source("ml-1m-u3k", data_dir=str(tmp_path / "ml"))
    assert src.time_column == "timestamp"
    assert sorted(src.inputs) == sorted(str(tmp_path / "ml" / f) for f in ("ratings.dat.gz", "users.dat",
                                                                          "movies.dat"))
    parts = src.load_raw()
    got = {k: list(zip(v.table.column("timestamp").to_pylist(), v.table.column("user").to_pylist(),
                       v.table.column("item").to_pylist())) for k, v in parts.items()}
    assert got["train"] == [(100, "1", "10"), (200, "3", "10"), (300, "2", "20"), (500, "1", "10"),
                            (500, "1", "20"), (600, "3", "20"), (700, "2", "30"), (800, "2", "10")]
    assert got["valid"] == [(900, "1", "30")] and got["test"] == [(1000, "3", "30")]
    assert all(v.table.schema.field("timestamp").type == pa.int64() for v in parts.values())
    # fractions are an option, and part of the cache key
    other = get_source("ml-1m-u3k", data_dir=str(tmp_path / "ml"), fractions=[0.6, 0.2, 0.2])
    assert {k: v.num_rows for k, v in other.load_raw().items()} == {"train": 6, "valid": 2, "test": 2}
    assert other.fingerprint() != src.fingerprint()
    for bad in ([0.5, 0.6, 0.1], [0, 0.5, 0.5], "abc"):
        with pytest.raises(ConfigError, match="fractions"):
            get_source("ml-1m-u3k", data_dir=str(tmp_path / "ml"), fractions=bad)


def test_ml1m_seq_histories_are_strictly_earlier(tmp_path):
    _fake_ml1m(tmp_path / "ml", RATINGS)
    src = get_source("ml-1m-u3k-seq", data_dir=str(tmp_path / "ml"), max_len=2)
    assert src.time_column == "timestamp" and "max_len=2" in src.version
    assert get_source("ml-1m-u3k-seq", data_dir=str(tmp_path / "ml")).schema.features[-1].max_len == 50
    rows = [r for t in src.load_raw().values() for r in t.table.to_pylist()]
    hist = {(r["user"], r["timestamp"], r["item"]): (r["hist_items"], r["hist_ts"], r["hist_ratings"],
                                                      r["hist_genres"]) for r in rows}
    assert hist[("1", 100, "10")] == ("", "", "", "")
    # the two ratings of second 500 never see each other; both see only the rating at 100
    assert hist[("1", 500, "10")] == ("10", "100", "2", "Drama")
    assert hist[("1", 500, "20")] == ("10", "100", "2", "Drama")
    # at 900: the last 2 earlier ratings (the same-second pair, in file order), oldest first
    assert hist[("1", 900, "30")] == ("10^20", "500^500", "5^3", "Drama^Action")
    assert hist[("3", 1000, "30")] == ("10^20", "200^600", "5^3", "Drama^Action")  # other users never leak
    assert {r["genre1"] for r in rows if r["item"] == "20"} == {"Action"}
    data = prepare(src, cache_dir=tmp_path / "cache", progress=False)
    assert data.splits["train"].columns["hist_items"].shape == (8, 2)


@pytest.mark.parametrize("line, column, needle", [
    ((1, 10, 6, 300), "rating", "1..5"),
    ((9, 10, 4, 300), "user", "'9'"),
    ((1, 77, 4, 300), "item", "'77'"),
    ((1, 10, 4, "x"), "timestamp", "whole number"),
    ((1, 10, 4), None, "4 '::'-separated"),
])
def test_ml1m_bad_ratings(tmp_path, line, column, needle):
    _fake_ml1m(tmp_path / "ml", [(1, 10, 5, 100), line])
    with pytest.raises(DataError) as ei:
        load_ml1m_table(tmp_path / "ml")
    assert ei.value.line == 2 and ei.value.column == column and needle in str(ei.value)
    assert ei.value.path == str(tmp_path / "ml" / "ratings.dat.gz")


def test_ml1m_missing_file_is_named(tmp_path):
    _fake_ml1m(tmp_path / "ml", RATINGS)
    (tmp_path / "ml" / "movies.dat").unlink()
    for name in ("ml-1m-u3k", "ml-1m-u3k-seq"):
        with pytest.raises(DataError, match="movies.dat not found") as ei:
            get_source(name, data_dir=str(tmp_path / "ml"))
        assert ei.value.path == str(tmp_path / "ml" / "movies.dat")


# ----------------------------------------------------------------------------------------- taobao (synthetic)
H = 3600
# (user, item, category, behaviour, timestamp); FIRST_DAY is 2017-11-25 00:00 in Beijing time (a Saturday)
EVENTS = [
    (1, 10, 100, "pv", FIRST_DAY + 9 * H),            # impression: day 1, 09:00 Beijing
    (1, 10, 100, "pv", FIRST_DAY + 10 * H),           # a second view of the pair that day: no new row
    (1, 10, 100, "cart", FIRST_DAY + 11 * H),         # later the same day → engaged, cart
    (1, 10, 100, "buy", FIRST_DAY + 12 * H),          # → buy
    (1, 11, 101, "fav", FIRST_DAY + 8 * H),           # before the day's first view of item 11: not a label
    (1, 11, 101, "pv", FIRST_DAY + 9 * H),            # same second as the impression of item 10
    (1, 12, 101, "pv", FIRST_DAY + 23 * H),           # day 1, 23:00; its buy is the next day: not a label
    (1, 12, 101, "buy", FIRST_DAY + DAY + H),
    (1, 12, 101, "pv", FIRST_DAY + DAY + 1 * H - 60),  # day 2, 00:59 Beijing (still day 1 in UTC)
    (2, 10, 100, "pv", FIRST_DAY + 8 * DAY + 5 * H),  # day 9
    (2, 10, 100, "fav", FIRST_DAY + 8 * DAY + 5 * H),  # same second as the view: counts
    (2, 13, 102, "pv", FIRST_DAY - 1),                # 2017-11-24 23:59:59 Beijing: dropped
    (2, 13, 102, "pv", FIRST_DAY + 9 * DAY),          # 2017-12-04 00:00 Beijing: dropped
    (2, 14, 103, "pv", FIRST_DAY + 7 * DAY + 2 * H),  # day 8
    (2, 15, 103, "pv", FIRST_DAY),                    # first second of day 1: kept
]


def _fake_taobao(d, events=EVENTS):
    d.mkdir()
    (d / "UserBehavior.csv").write_text("".join(",".join(map(str, e)) + "\n" for e in events))
    return d


def _rows(src) -> dict[str, list[dict]]:
    return {k: v.table.to_pylist() for k, v in src.load_raw().items()}


def test_taobao_rows_labels_and_day_split(tmp_path):
    d = _fake_taobao(tmp_path / "tb")
    src = get_source("taobao-userbehavior", data_dir=str(d), split_days=[1, 1, 7])
    assert src.time_column == "timestamp" and src.schema.label_names == ["engaged"]
    parts = _rows(src)
    key = {k: [(r["user"], r["item"], r["date"]) for r in rows] for k, rows in parts.items()}
    assert key["train"] == [("2", "15", "2017-11-25"), ("1", "10", "2017-11-25"), ("1", "11", "2017-11-25"),
                            ("1", "12", "2017-11-25")]
    assert key["valid"] == [("1", "12", "2017-11-26")]  # a Beijing day, not a UTC day
    assert key["test"] == [("2", "14", "2017-12-02"), ("2", "10", "2017-12-03")]
    rows = {(r["user"], r["item"], r["date"]): r for rs in parts.values() for r in rs}
    first = rows[("1", "10", "2017-11-25")]
    assert first["timestamp"] == FIRST_DAY + 9 * H and first["hour"] == "9" and first["weekday"] == "Sat"
    assert [first[x] for x in LABELS] == ["1", "1", "0", "1"]  # engaged, cart, fav, buy
    assert [rows[("1", "11", "2017-11-25")][x] for x in LABELS] == ["0"] * 4  # fav before the view
    assert [rows[("1", "12", "2017-11-25")][x] for x in LABELS] == ["0"] * 4  # buy on the next day
    assert [rows[("2", "10", "2017-12-03")][x] for x in LABELS] == ["1", "0", "1", "0"]  # same second counts
    assert rows[("1", "12", "2017-11-26")]["hour"] == "0" and rows[("2", "10", "2017-12-03")]["weekday"] == "Sun"
    assert all(v.table.schema.field("timestamp").type == pa.int64() for v in src.load_raw().values())


def test_taobao_histories_hold_strictly_earlier_views(tmp_path):
    src = get_source("taobao-userbehavior", data_dir=str(_fake_taobao(tmp_path / "tb")), max_len=2)
    rows = {(r["user"], r["item"], r["date"]): r for rs in _rows(src).values() for r in rs}
    hist = {k: (r["hist_items"], r["hist_categories"], r["hist_ts"]) for k, r in rows.items()}
    assert hist[("1", "10", "2017-11-25")] == ("", "", "")  # item 11's view in the same second is excluded
    assert hist[("1", "11", "2017-11-25")] == ("", "", "")
    # views only (never cart/fav/buy), repeated views included, the last max_len = 2
    # views only (never cart/fav/buy), repeated views included, the last max_len = 2; the two 09:00 views (items 10
    # and 11) tie and keep their file order
    assert hist[("1", "12", "2017-11-25")] == ("11^10", "101^100", f"{FIRST_DAY + 9 * H}^{FIRST_DAY + 10 * H}")
    assert hist[("1", "12", "2017-11-26")][0] == "10^12"
    assert hist[("1", "12", "2017-11-26")][1] == "100^101"
    assert hist[("1", "12", "2017-11-26")][2] == f"{FIRST_DAY + 10 * H}^{FIRST_DAY + 23 * H}"
    assert hist[("2", "10", "2017-12-03")][0] == "15^14"  # the dropped out-of-range views never appear


def test_taobao_out_of_range_rows_are_dropped_and_counted(tmp_path):
    d = _fake_taobao(tmp_path / "tb")
    events, dropped = read_behaviour(d / "UserBehavior.csv")
    assert [ln for ln, _ in dropped] == [12, 13] and "outside 2017-11-25..2017-12-03" in dropped[0][1]
    assert len(events["timestamp"]) == len(EVENTS) - 2
    src = get_source("taobao-userbehavior", data_dir=str(d))
    raw = src.load_raw()
    assert [ln for ln, _ in raw["train"].skipped] == [12, 13]
    assert not raw["valid"].skipped and not raw["test"].skipped
    data = prepare(src, cache_dir=tmp_path / "cache", progress=False)
    assert len(data.skipped) == 1 and "skipped 2" in data.skipped[0]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 5, "valid": 1, "test": 1}  # days 7/1/1


def test_taobao_label_options(tmp_path):
    d = str(_fake_taobao(tmp_path / "tb"))
    assert get_source("taobao-userbehavior", data_dir=d, label="buy").schema.label_names == ["buy"]
    multi = get_source("taobao-userbehavior", data_dir=d, labels="all")
    assert multi.schema.label_names == list(LABELS)
    assert get_source("taobao-userbehavior", data_dir=d, labels=["buy", "cart"]).schema.label_names == ["buy", "cart"]
    assert multi.fingerprint() != get_source("taobao-userbehavior", data_dir=d).fingerprint()


@pytest.mark.parametrize("bad", [{"label": "click"}, {"labels": ["buy", "buy"]}, {"label": "buy", "labels": "all"},
                                 {"max_len": 0}, {"split_days": [7, 1]}, {"split_days": [0, 1, 8]},
                                 {"split_days": [7, 1, 2]}, {"split_days": [6.5, 1.5, 1]}])
def test_taobao_bad_options(tmp_path, bad):
    with pytest.raises(ConfigError, match="taobao-userbehavior recipe"):
        get_source("taobao-userbehavior", data_dir=str(_fake_taobao(tmp_path / "tb")), **bad)


@pytest.mark.parametrize("line, column, needle", [
    ("1,10,100,click,1511600000", "behavior_type", "'click'"),
    ("1,10,100,pv,", "timestamp", "empty"),
])
def test_taobao_bad_file(tmp_path, line, column, needle):
    d = tmp_path / "tb"
    d.mkdir()
    (d / "UserBehavior.csv").write_text(f"1,10,100,pv,{FIRST_DAY}\n{line}\n")
    with pytest.raises(DataError) as ei:
        read_behaviour(d / "UserBehavior.csv")
    assert ei.value.line == 2 and ei.value.column == column and needle in str(ei.value)


# ----------------------------------------------------------------------------------------- the real files
def test_real_ml1m(shared_data, tmp_path):
    d = shared_data("ml-1m-u3k")
    src = get_source("ml-1m-u3k", data_dir=str(d))
    raw = src.load_raw()
    assert {k: v.num_rows for k, v in raw.items()} == {"train": 390_120, "valid": 48_765, "test": 48_765}
    ts = {k: v.table.column("timestamp").to_numpy() for k, v in raw.items()}
    assert all(t.dtype == np.int64 for t in ts.values())
    assert ts["valid"].min() >= ts["train"].max() and ts["test"].min() >= ts["valid"].max()
    labels = np.concatenate([np.array(v.table.column("label").to_pylist(), dtype=int) for v in raw.values()])
    assert len(labels) == 487_650 and abs(labels.mean() - 0.5724) < 0.001
    data = prepare(src, cache_dir=tmp_path, progress=False)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 390_120, "valid": 48_765, "test": 48_765}
    fs = data.features
    assert fs["genres"].max_len == 6 and fs["genres"].vocab_size == 2 + 18 and fs["age"].vocab_size == 2 + 7
    assert prepare(src, cache_dir=tmp_path, progress=False).from_cache


def test_real_ml1m_histories_of_200(shared_data):
    table, ts = load_ml1m_table(shared_data("ml-1m-u3k"))
    out = add_histories(table, ts, 200)
    hist = out.column("hist_items").to_pylist()
    hist_ts = out.column("hist_ts").to_pylist()
    users = np.array(table.column("user").to_pylist(), dtype=np.int64)
    items = table.column("item").to_pylist()
    assert max(h.count("^") + 1 for h in hist if h) == 200
    for j in np.random.default_rng(0).choice(len(ts), 300, replace=False):  # brute force on a sample
        mine = np.flatnonzero((users == users[j]) & (ts < ts[j]))
        mine = mine[np.lexsort((mine, ts[mine]))][-200:]
        assert hist[j] == "^".join(items[k] for k in mine)
        assert hist_ts[j] == "^".join(str(ts[k]) for k in mine)


def test_real_taobao(shared_data, tmp_path):
    d = shared_data("taobao-userbehavior-84k")
    src = get_source("taobao-userbehavior", data_dir=str(d), labels="all")
    raw = src.load_raw()
    assert len(raw["train"].skipped) == 35
    assert {k: v.num_rows for k, v in raw.items()} == {"train": 47_813, "valid": 8_966, "test": 8_794}
    dates = {k: set(v.table.column("date").to_pylist()) for k, v in raw.items()}
    assert dates["valid"] == {"2017-12-02"} and dates["test"] == {"2017-12-03"} and len(dates["train"]) == 7
    ts = {k: v.table.column("timestamp").to_numpy() for k, v in raw.items()}
    assert ts["valid"].min() >= ts["train"].max() and ts["test"].min() >= ts["valid"].max()
    rate = {lab: np.mean([r == "1" for v in raw.values() for r in v.table.column(lab).to_pylist()])
            for lab in LABELS}
    assert 0.015 < rate["engaged"] < 0.03 and rate["buy"] < rate["engaged"]
    data = prepare(src, cache_dir=tmp_path, progress=False)
    assert data.features.labels == LABELS and len(data.skipped) == 1


def test_session_analysis_reads_the_complete_ml1m_log(tmp_path):
    """`rankcraft analyze sessions --dataset ml-1m-u3k(-seq)` uses every rating, not the truncated histories."""
    from rankcraft.analysis.sessions import analyze_sessions, events_from_ml1m

    _fake_ml1m(tmp_path / "ml", RATINGS)
    log = events_from_ml1m(tmp_path / "ml")
    direct = analyze_sessions(log, gap_seconds=250, max_k=2)
    assert direct["events"] == len(RATINGS) and direct["users"] == 3
    for name in ("ml-1m-u3k", "ml-1m-u3k-seq"):  # the recipes, and the directory itself, give the same log
        via_recipe = analyze_sessions(name, data_dir=str(tmp_path / "ml"), gap_seconds=250, max_k=2)
        assert via_recipe == direct
    assert analyze_sessions(tmp_path / "ml", gap_seconds=250, max_k=2) == direct
    # gaps > 250 s start a session: user 1 at 100 | 500, 500 | 900; user 2 at 300 | 700, 800; user 3 at
    # 200 | 600 | 1000
    assert direct["sessions"] == 3 + 2 + 3
