"""The ``events`` recipe: any event log → DIN-style training rows (behaviour history, target, sampled negatives).

Input: one CSV/TSV/Parquet file (optionally gzip/zstd-compressed; see :mod:`rankcraft.data.readers`) with one row
per event and at least a user, an item and a time column; optionally an item category, more item side columns, and
an event-type column to keep only some events (e.g. purchases). Times are numbers (e.g. unix seconds, kept in the
file's units) or ISO-8601 date-times (converted to unix seconds).

Output rows (the ``events`` recipe's schema, :func:`events_schema`):

* one **positive** (label 1) per kept event ``(u, i, t)``: ``user``, ``time`` (``t``; not a feature), the target
  ``item`` and its side columns (``category`` and each of ``side_columns``), and the **history**: the items of
  ``u``'s events *strictly earlier* than ``t`` (events at the same time as the target, the target itself and
  anything later never leak), oldest first, the most recent ``max_len`` of them (``hist_items``), their times
  (``hist_ts``) and categories (``hist_categories``), as the ``sequence`` feature type expects (most recent last);
* ``negatives`` **negatives** (label 0) per positive: the same user and history, a sampled item the user had not
  interacted with at time ``t`` (no event of ``u`` with that item at or before ``t``), with its side columns.
  ``sampling: uniform`` draws items uniformly from every item of the log; ``sampling: popularity`` draws them in
  proportion to their number of events in the training split (items never seen in training are never drawn).
  Draws are seeded by ``seed``. In the rare case that a user has interacted with every candidate item, that
  positive gets fewer negatives.

An item's side columns are taken from its first event in time order, for targets and history items alike, so
positives and negatives are described the same way. The log is first filtered to ``event_types`` (when given);
histories, exclusions and candidates all come from the filtered log.

Split (documented choice): positives are sorted by (time, user, item, file order) and cut by count at the
``fractions`` quantiles (default 80/10/10 → train/valid/test), so every validation event is at or after every
training event; each negative goes with its positive. Histories may reach into earlier splits (they are the past).

Options (``data.options`` in a run config; every one has a default): ``path`` (the file; default: the recipe's
``data_dir``), ``user``/``item``/``time`` (column names; by default the first of a few common spellings, e.g.
``user_id``, ``item_id``, ``timestamp``), ``category``, ``side_columns``, ``event_column`` + ``event_types``,
``column_names`` (for a headerless file), ``delimiter`` (default: guessed from the first line), ``max_len`` (50),
``negatives`` (1), ``sampling`` (``uniform``), ``fractions`` ([0.8, 0.1, 0.1]), ``min_history`` (0: also keep
events without any earlier event), ``seed`` (0).

Everything is column-wise numpy/pyarrow; the only Python loop runs over the (rare) negatives that rejection
sampling could not place after a few rounds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankcraft.data.dataset import DataSource
from rankcraft.data.encoders import _bad_float_rows, parse_floats
from rankcraft.data.readers import (
    PARQUET_SUFFIXES,
    RawTable,
    available_columns,
    data_suffix,
    read_table,
    sniff_delimiter,
)
from rankcraft.data.registry import find_data_dir, recipe
from rankcraft.data.schema import RESERVED_NAMES, FeatureSpec, Schema
from rankcraft.errors import ConfigError, DataError

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
SAMPLING = ("uniform", "popularity")
# column spellings tried (case-insensitively, in this order) when an option does not name the column
ALIASES = {
    "user": ("user", "user_id", "userid", "uid", "customer_id", "visitor_id", "visitorid", "session_id"),
    "item": ("item", "item_id", "itemid", "iid", "product_id", "productid", "movie_id", "movieid", "article_id"),
    "time": ("time", "timestamp", "ts", "event_time", "datetime", "date", "unix_time"),
}
OUTPUT_COLUMNS = ("label", "user", "time", "item", "category", "hist_items", "hist_ts", "hist_categories")
_REJECTION_ROUNDS = 20


def events_schema(*, category: bool = False, side_columns: tuple[str, ...] = (), max_len: int = 50) -> Schema:
    """The schema of the recipe's rows: user, item [, category, side columns] and the item [, category] history."""
    feats = [FeatureSpec(name="user", type="categorical", source="user"),
             FeatureSpec(name="item", type="categorical", source="item")]
    if category:
        feats.append(FeatureSpec(name="category", type="categorical", source="item"))
    feats += [FeatureSpec(name=c, type="categorical", source="item") for c in side_columns]
    feats.append(FeatureSpec(name="hist_items", type="sequence", source="user", max_len=max_len,
                             share_vocab_with="item", timestamp_column="hist_ts"))
    if category:
        feats.append(FeatureSpec(name="hist_categories", type="sequence", source="user", max_len=max_len,
                                 share_vocab_with="category"))
    return Schema(labels=["label"], features=feats, user_column="user")


# ------------------------------------------------------------------------------------------------ options
def _check_options(max_len, negatives, sampling, fractions, min_history, side_columns) -> tuple[float, float, float]:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"events recipe: {msg}")

    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise bad(f"max_len must be a positive integer, not {max_len!r}")
    if not isinstance(negatives, int) or isinstance(negatives, bool) or negatives < 0:
        raise bad(f"negatives must be an integer >= 0, not {negatives!r}")
    if not isinstance(min_history, int) or isinstance(min_history, bool) or min_history < 0:
        raise bad(f"min_history must be an integer >= 0, not {min_history!r}")
    if sampling not in SAMPLING:
        raise bad(f"sampling must be one of {list(SAMPLING)}, not {sampling!r}")
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        raise bad(f"fractions must be 2 or 3 numbers (train, valid[, test]), not {fractions!r}") from None
    if len(fr) == 2:
        fr.append(1.0 - sum(fr))
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise bad(f"fractions must be 2 or 3 non-negative numbers (train > 0) that sum to 1, not {fractions!r}")
    clash = sorted(set(side_columns) & (set(OUTPUT_COLUMNS) | RESERVED_NAMES))
    if clash or any(c.startswith("hist_") or c.endswith("__ts") for c in side_columns):
        raise bad(f"side_columns may not use the names {sorted(set(OUTPUT_COLUMNS))} or 'hist_*': {side_columns}")
    return fr[0], fr[1], fr[2]


def _event_file(data_dir: str | os.PathLike | None, path: str | os.PathLike | None) -> Path:
    """The log file: ``path``, else ``data_dir`` if it is a file, else the one ``events.*`` file in it."""
    if path is not None:
        return Path(path)
    d = find_data_dir("events", data_dir)
    if d.is_file():
        return d
    hits = sorted(q for q in d.iterdir() if q.is_file() and q.name.split(".")[0] == "events")
    if len(hits) != 1:
        raise DataError("events recipe: give the event log file itself (--data-dir FILE or data.options.path); "
                        f"found {len(hits)} 'events.*' file(s) in the directory", path=str(d))
    return hits[0]


def _resolve(role: str, given: str | None, names: list[str], path: str) -> str:
    if given is not None:
        if given not in names:
            raise DataError(f"events recipe: the {role} column '{given}' is not in the file; it has columns {names}",
                            path=path, column=given)
        return given
    lower = {n.lower(): n for n in names}
    for alias in ALIASES[role]:
        if alias in lower:
            return lower[alias]
    raise DataError(f"events recipe: no {role} column (tried {list(ALIASES[role])}); the file has columns {names}; "
                    f"name it with the option `{role}: COLUMN` (data.options in a run config)", path=path)


# ------------------------------------------------------------------------------------------------ parsing
def _column(raw: RawTable, name: str) -> pa.Array:
    col = raw.table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _parse_times(raw: RawTable, name: str) -> np.ndarray:
    """Numbers as they are, or ISO-8601 date-times (naive = UTC, or with a zone offset) as unix seconds; a missing
    or unparseable time is a :class:`DataError` at its line."""
    values = pc.utf8_trim_whitespace(_column(raw, name))
    empty = np.flatnonzero(pc.equal(values, "").to_numpy(zero_copy_only=False))
    if len(empty):
        raise raw.error(int(empty[0]), name, "time is missing")
    x = parse_floats(values)
    if x is not None:
        return x
    for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
        try:
            return pc.cast(pc.cast(values, typ), pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    # slow path, errors only: the first cell that is neither a number nor a date-time
    bad = sorted(set(_bad_float_rows(values)))
    enc = pc.dictionary_encode(values)
    ok_codes = set()
    for code, v in enumerate(enc.dictionary.to_pylist()):
        for typ in (pa.timestamp("us"), pa.timestamp("us", tz="UTC")):
            try:
                pc.cast(pa.array([v]), typ)
                ok_codes.add(code)
                break
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                pass
    idx = enc.indices.to_numpy(zero_copy_only=False)
    row = next((r for r in bad if idx[r] not in ok_codes), bad[0] if bad else 0)
    raise raw.error(row, name, f"time {values[row].as_py()!r} is not a number or an ISO-8601 date-time (one "
                               "format per column)")


def _codes(values: pa.Array) -> tuple[np.ndarray, pa.Array]:
    enc = pc.dictionary_encode(values)
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def _group_starts(*keys: np.ndarray) -> np.ndarray:
    """For rows sorted by ``keys``: the index of the first row of each row's run of equal keys."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    new = np.zeros(n, dtype=bool)
    new[0] = True
    for k in keys:
        new[1:] |= k[1:] != k[:-1]
    return np.maximum.accumulate(np.where(new, np.arange(n), 0))


def _ranges(lo: np.ndarray, length: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(lo[r], lo[r] + length[r])`` over r, without a Python loop."""
    total = int(length.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.cumsum(length) - length
    return np.repeat(lo - starts, length) + np.arange(total, dtype=np.int64)


def _list_array(values: pa.Array, lengths: np.ndarray) -> pa.Array:
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    if offsets[-1] < 2**31 - 1:
        return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), values)
    return pa.LargeListArray.from_arrays(pa.array(offsets.astype(np.int64)), values)


def _time_strings(t: np.ndarray) -> pa.Array:
    if len(t) and np.all(t == np.round(t)) and np.abs(t).max() < 2**62:
        return pa.array(t.astype(np.int64)).cast(pa.string())
    return pa.array(t).cast(pa.string())


# ------------------------------------------------------------------------------------------------ sampling
class _Exclusions:
    """(user, item) pairs with the time of their first event: an item is excluded for (u, t) if u had an event
    with it at or before t."""

    def __init__(self, users: np.ndarray, items: np.ndarray, times: np.ndarray, n_items: int):
        self.n_items = n_items
        key = users * n_items + items
        order = np.lexsort((times, key))
        self.keys, first = np.unique(key[order], return_index=True)
        self.first_time = times[order][first]

    def seen(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        if len(self.keys) == 0:
            return np.zeros(len(users), dtype=bool)
        key = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return (self.keys[pos] == key) & (self.first_time[pos] <= times)

    def seen_items(self, user: int, time: float) -> np.ndarray:
        lo, hi = np.searchsorted(self.keys, [user * self.n_items, (user + 1) * self.n_items])
        return (self.keys[lo:hi] - user * self.n_items)[self.first_time[lo:hi] <= time]


def sample_negatives(users: np.ndarray, times: np.ndarray, k: int, excl: _Exclusions, weights: np.ndarray | None,
                     rng: np.random.Generator) -> np.ndarray:
    """``k`` items per (user, time) — uniform (``weights=None``) or proportional to ``weights`` — that the user had
    no event with at or before that time; ``-1`` where no such item exists. Returns ``int64 [len(users), k]``."""
    n, n_items = len(users), excl.n_items
    if weights is not None:
        cdf = np.cumsum(weights, dtype=np.float64)
        cdf /= cdf[-1]

    def draw(size: int) -> np.ndarray:
        if weights is None:
            return rng.integers(0, n_items, size=size)
        return np.minimum(np.searchsorted(cdf, rng.random(size), side="right"), n_items - 1)

    u = np.repeat(users, k)
    t = np.repeat(times, k)
    cand = draw(n * k)
    bad = np.flatnonzero(excl.seen(u, cand, t))
    for _ in range(_REJECTION_ROUNDS):
        if len(bad) == 0:
            break
        cand[bad] = draw(len(bad))
        bad = bad[excl.seen(u[bad], cand[bad], t[bad])]
    for j in bad:  # rare: users who interacted with (nearly) every candidate item
        w = np.ones(n_items) if weights is None else weights.astype(np.float64).copy()
        w[excl.seen_items(int(u[j]), float(t[j]))] = 0
        cand[j] = rng.choice(n_items, p=w / w.sum()) if w.sum() > 0 else -1
    return cand.reshape(n, k)


# ------------------------------------------------------------------------------------------------ the rows
def build_event_rows(raw: RawTable, *, user: str, item: str, time: str, category: str | None = None,
                     side_columns: tuple[str, ...] = (), event_column: str | None = None,
                     event_types: list[str] | None = None, max_len: int = 50, negatives: int = 1,
                     sampling: str = "uniform", fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
                     min_history: int = 0, seed: int = 0) -> dict[str, pa.Table]:
    """The recipe's rows (see the module docstring) from an event table, as ``{"train", "valid", "test"}`` tables
    of strings (histories as ``list<string>``). A missing user/item/time or an unparseable time is a
    :class:`DataError` at its line (checked before the event-type filter)."""
    times = _parse_times(raw, time)
    for role, name in (("user", user), ("item", item)):
        empty = np.flatnonzero(pc.equal(pc.utf8_trim_whitespace(_column(raw, name)), "").to_numpy(
            zero_copy_only=False))
        if len(empty):
            raise raw.error(int(empty[0]), name, f"{role} is missing")
    if event_types is not None:
        ev = pc.utf8_trim_whitespace(_column(raw, event_column))
        keep = pc.is_in(ev, value_set=pa.array(event_types, pa.string()))
        if not pc.any(keep).as_py():
            present = pc.unique(ev).to_pylist()[:10]
            raise DataError(f"events recipe: no event has a type in {event_types}; the column has e.g. {present}",
                            path=raw.path, column=event_column)
        times = times[keep.to_numpy(zero_copy_only=False)]
        raw = RawTable(raw.table.filter(keep), raw.path, 0, "memory")
    u_all, user_names = _codes(_column(raw, user))
    i_all, item_names = _codes(_column(raw, item))
    n_items = len(item_names)

    # item side columns: the value at the item's first event in time order
    side = ([category] if category else []) + list(side_columns)
    by_time = np.lexsort((np.arange(len(times)), times))
    _, first_idx = np.unique(i_all[by_time], return_index=True)
    first_row = pa.array(by_time[first_idx])
    item_side = {c: _column(raw, c).take(first_row) for c in side}

    # events by (user, time, file order): the history of event p is [lo[p], hi[p]) of this order
    order = np.lexsort((np.arange(len(times)), times, u_all))
    su, st, si = u_all[order], times[order], i_all[order]
    user_start = _group_starts(su)
    hi = _group_starts(su, st)  # first event of the same (user, time): everything before it is strictly earlier
    lo = np.maximum(user_start, hi - max_len)
    earlier = hi - user_start

    # positives kept, in split order: by (time, user, item, file order)
    kept = np.flatnonzero(earlier >= min_history)
    if len(kept) < 3:
        raise DataError(f"events recipe: only {len(kept)} event(s) with at least {min_history} earlier event(s); "
                        "need at least 3", path=raw.path)
    kept = kept[np.lexsort((order[kept], si[kept], su[kept], st[kept]))]
    n = len(kept)
    cut_a, cut_b = int(round(n * fractions[0])), int(round(n * (fractions[0] + fractions[1])))

    # negatives
    weights = None
    if sampling == "popularity":
        weights = np.bincount(si[kept[:cut_a]], minlength=n_items).astype(np.float64)
    rng = np.random.default_rng(seed)
    excl = _Exclusions(u_all, i_all, times, n_items)
    neg = sample_negatives(su[kept], st[kept], negatives, excl, weights, rng) if negatives else np.zeros((n, 0))

    # rows: each positive followed by its negatives; drop negatives that could not be drawn
    per = 1 + negatives
    pos_of_row = np.repeat(kept, per)
    target = np.concatenate([si[kept][:, None], neg.astype(np.int64)], axis=1).reshape(-1)
    is_neg = np.tile(np.arange(per) > 0, n)
    split_of_row = np.repeat(np.searchsorted([cut_a, cut_b], np.arange(n), side="right"), per)
    ok = target >= 0
    pos_of_row, target, is_neg, split_of_row = pos_of_row[ok], target[ok], is_neg[ok], split_of_row[ok]

    lengths = (hi - lo)[pos_of_row]
    flat = order[_ranges(lo[pos_of_row], lengths)]  # history events as rows of the input table
    t_target = pa.array(target)
    cols: dict[str, pa.Array] = {
        "label": pc.if_else(pa.array(is_neg), "0", "1"),
        "user": user_names.take(pa.array(su[pos_of_row])),
        "time": _time_strings(st[pos_of_row]),
        "item": item_names.take(t_target),
    }
    if category:
        cols["category"] = item_side[category].take(t_target)
    for c in side_columns:
        cols[c] = item_side[c].take(t_target)
    cols["hist_items"] = _list_array(item_names.take(pa.array(i_all[flat])), lengths)
    cols["hist_ts"] = _list_array(_time_strings(times[flat]), lengths)
    if category:
        cols["hist_categories"] = _list_array(item_side[category].take(pa.array(i_all[flat])), lengths)
    table = pa.table({k: (pc.cast(v, pa.string()) if not pa.types.is_list(v.type)
                          and not pa.types.is_large_list(v.type) else v) for k, v in cols.items()})
    bounds = np.searchsorted(split_of_row, [0, 1, 2, 3], side="left")
    return {s: table.slice(int(bounds[j]), int(bounds[j + 1] - bounds[j]))
            for j, s in enumerate(("train", "valid", "test"))}


@recipe("events", "any event log (user, item, time[, category]) → earlier-items history, target, k sampled "
                  "negatives; time split 80/10/10 (--data-dir FILE)")
def events_source(data_dir: str | None = None, *, path: str | None = None, user: str | None = None,
                  item: str | None = None, time: str | None = None, category: str | None = None,
                  side_columns: list[str] | tuple[str, ...] = (), event_column: str | None = None,
                  event_types: list | str | None = None, column_names: list[str] | None = None,
                  delimiter: str | None = None, max_len: int = 50, negatives: int = 1, sampling: str = "uniform",
                  fractions: list[float] | tuple[float, ...] = DEFAULT_FRACTIONS, min_history: int = 0,
                  seed: int = 0) -> DataSource:
    """The ``events`` recipe (see the module docstring for the rows, the split and every option)."""
    side_columns = tuple([side_columns] if isinstance(side_columns, str) else side_columns)
    fr = _check_options(max_len, negatives, sampling, fractions, min_history, side_columns)
    if event_types is not None and event_column is None:
        raise ConfigError("events recipe: event_types needs event_column (the column holding the event type)")
    types = None if event_types is None else [str(v) for v in ([event_types] if isinstance(event_types, str)
                                                               else event_types)]
    file = _event_file(data_dir, path)
    text = data_suffix(file) not in PARQUET_SUFFIXES
    delim = delimiter or (sniff_delimiter(file) if text else ",")
    names = available_columns(file, delimiter=delim, column_names=column_names)
    cols = {"user": _resolve("user", user, names, str(file)), "item": _resolve("item", item, names, str(file)),
            "time": _resolve("time", time, names, str(file))}
    extra = ([category] if category else []) + list(side_columns) + ([event_column] if event_column else [])
    for c in extra:
        if c not in names:
            raise DataError(f"events recipe: column '{c}' is not in the file; it has columns {names}",
                            path=str(file), column=c)
    needed = list(dict.fromkeys(list(cols.values()) + extra))
    options = dict(cols, category=category, side_columns=side_columns, max_len=max_len, negatives=negatives,
                   sampling=sampling, fractions=fr, min_history=min_history, seed=seed)

    def load() -> dict[str, RawTable]:
        raw = read_table(file, needed, delimiter=delim, column_names=column_names)
        parts = build_event_rows(raw, user=cols["user"], item=cols["item"], time=cols["time"], category=category,
                                 side_columns=side_columns, event_column=event_column, event_types=types,
                                 max_len=max_len, negatives=negatives, sampling=sampling, fractions=fr,
                                 min_history=min_history, seed=seed)
        return {k: RawTable(v, str(file), 0, "memory") for k, v in parts.items()}

    version = "1:" + ",".join(f"{k}={v}" for k, v in sorted(options.items())) + \
        f",events={event_column}:{types},names={column_names},delim={delim!r}"
    schema = events_schema(category=category is not None, side_columns=side_columns, max_len=max_len)
    return DataSource(name="events", schema=schema, loader=load, inputs=[str(file)], seed=seed, version=version)


def write_rows(directory: str | os.PathLike, data_dir: str | None = None, **options) -> dict[str, str]:
    """Write the recipe's rows (same options as the recipe) as ``train``/``valid``/``test`` Parquet files in
    ``directory`` (histories as Parquet lists), e.g. to ``rankcraft evaluate`` or ``predict`` a run trained on the
    recipe with its own test rows. Returns split → path."""
    import pyarrow.parquet as pq

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split, raw in events_source(data_dir, **options).loader().items():
        paths[split] = str(out / f"{split}.parquet")
        pq.write_table(raw.table, paths[split])
    return paths
