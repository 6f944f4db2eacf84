"""Behaviour histories of ml-100k-seq: built only from strictly earlier events (no leakage), truncated, aligned."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from conftest import shared

from rankcraft.data.catalog import get_source
from rankcraft.data.dataset import prepare
from rankcraft.data.recipes import add_histories, load_ml100k_table


def _table(events):
    """events: (user, item, rating, ts, genres)"""
    cols = {"user": [], "item": [], "rating": [], "genres": []}
    ts = []
    for u, i, r, t, g in events:
        cols["user"].append(str(u))
        cols["item"].append(str(i))
        cols["rating"].append(str(r))
        cols["genres"].append(g)
        ts.append(t)
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), np.array(ts, dtype=np.int64)


def test_histories_hold_only_strictly_earlier_events_in_time_order():
    events = [  # deliberately not in time order; user 1 has two events in the same second (t=300)
        (1, 10, 5, 300, "Drama"), (1, 11, 3, 100, "Comedy|Drama"), (1, 12, 4, 200, ""),
        (1, 13, 1, 300, "Action"), (1, 14, 2, 400, "War"), (2, 10, 4, 50, "Drama"), (2, 15, 5, 60, "Horror"),
    ]
    table, ts = _table(events)
    out = add_histories(table, ts, max_len=2).to_pydict()
    hist = dict(zip(zip(out["user"], out["item"]), zip(out["hist_items"], out["hist_ts"], out["hist_ratings"],
                                                        out["hist_genres"])))
    assert hist[("1", "11")] == ("", "", "", "")  # first event: empty history
    assert hist[("1", "12")] == ("11", "100", "3", "Comedy")
    # same-second events never see each other; the window keeps the last 2 earlier events, oldest first
    assert hist[("1", "10")] == ("11^12", "100^200", "3^4", "Comedy^")
    assert hist[("1", "13")] == ("11^12", "100^200", "3^4", "Comedy^")
    assert hist[("1", "14")][0] in ("10^13", "13^10") and hist[("1", "14")][1] == "300^300"
    assert hist[("2", "15")] == ("10", "50", "4", "Drama")  # other users' events never appear
    assert out["genre1"][0] == "Drama" and out["genre1"][2] == ""


def test_real_ml100k_histories_never_leak():
    d = shared("ml-100k")
    table, ts = load_ml100k_table(d)
    out = add_histories(table, ts, max_len=50).to_pydict()
    for i in range(0, len(ts), 97):  # a spread-out sample of ~1,000 impressions
        h_ts = [int(x) for x in out["hist_ts"][i].split("^") if x]
        h_items = out["hist_items"][i].split("^") if out["hist_items"][i] else []
        assert all(t < ts[i] for t in h_ts), i
        assert out["item"][i] not in h_items, i  # the target interaction is never in its own history
        assert h_ts == sorted(h_ts) and len(h_ts) == len(h_items) == len(out["hist_ratings"][i].split("^")
                                                                          if h_items else [])
        assert len(h_items) <= 50


def test_prepared_sequences_are_left_padded_and_aligned():
    d = shared("ml-100k")
    data = prepare(get_source("ml-100k-seq", str(d)))
    cols = data.splits["valid"].columns
    items, genres, ratings, hts = (cols["hist_items"], cols["hist_genres"], cols["hist_ratings"],
                                   cols["hist_items__ts"])
    mask = items != 0
    # left padding: once an event starts, every later slot is an event (most recent last)
    assert bool((mask.int().diff(dim=1) >= 0).all())
    assert bool(((ratings != 0) == mask).all()) and bool(((hts != 0) == mask).all())
    assert bool((genres[~mask] == 0).all())
    assert hts.dtype.is_floating_point and hts.dtype.itemsize == 8
    assert {"hist_items", "hist_genres", "hist_ratings"} <= {f.name for f in data.features.sequences}

