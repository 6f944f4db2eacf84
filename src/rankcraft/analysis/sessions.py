"""Session-hopping analysis (the empirical pattern behind MoS): are interests stable within sessions, do they jump
across sessions, and do they come back after a few sessions?

Input: per-user event lists ``(timestamp, categories)`` — built from the raw ML-100K files (every rating, genres as
an ordered tuple in u.item's genre order), from any event table, or from a prepared dataset's histories (see
:func:`analyze_sessions`). Each user's events are ordered by time (ties keep the input order) and cut into sessions
by the time-gap rule: a new session starts when ``t_j − t_{j−1} > gap_seconds``.

Statistics (all plain means over the counted pairs / sessions):

* **Consecutive-event similarity** of events ``(j−1, j)`` of one user, split into *within-session* pairs and
  *across-session* pairs (``j`` opens a new session): ``jaccard = |C_{j−1} ∩ C_j| / |C_{j−1} ∪ C_j|`` (0 when
  both sets are empty) and ``first_equal = [first(C_{j−1}) = first(C_j)]`` (the first genre, as ``genre1`` in
  ``ml-100k-seq``). A *random-pair* reference pairs every event with a uniformly drawn other event of the same user
  (seeded).
* **Themes across sessions.** A session's theme is its dominant category (most frequent over its events' category
  sets; ties → the one seen first in the session); its category set is the union of its events' sets.

  - ``return_rate[k]`` (k = 1..K) = P(theme of session s ∈ categories of session s+k), over all s with s+k present;
  - ``shuffled_return_rate[k]``: the same statistic after randomly permuting each user's sessions (mean over
    ``n_shuffles`` seeded permutations) — the level expected if session order carried no information, with the
    same users, sessions and pair counts; ``baseline`` is its mean over k;
  - ``first_return[k]`` = P(the theme first reappears exactly k sessions later), over sessions followed by at least
    K sessions (no censoring); ``no_return`` = P(not within K);
  - ``hop_rate`` = P(theme of s ∉ categories of s+1) (the interest jumps), and ``return_after_hop`` =
    P(theme of s reappears in some s+k, 2 ≤ k ≤ K | it is absent from s+1), over uncensored sessions.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa


@dataclass
class EventLog:
    """Events of many users: ``user[i]``, ``ts[i]`` (seconds) and ``cats[i]`` (tuple of categories, in order)."""

    user: np.ndarray
    ts: np.ndarray
    cats: list[tuple]

    def __len__(self) -> int:
        return len(self.ts)

    def per_user(self) -> list[tuple[np.ndarray, list[tuple]]]:
        """``[(ts, cats)]`` per user, each sorted by time (stable: ties keep the input order)."""
        users = np.asarray(self.user)
        _, uid = np.unique(users, return_inverse=True)
        order = np.lexsort((np.arange(len(users)), np.asarray(self.ts, dtype=np.float64), uid))
        bounds = np.flatnonzero(np.diff(uid[order])) + 1
        out = []
        for grp in np.split(order, bounds) if len(order) else []:
            out.append((np.asarray(self.ts, dtype=np.float64)[grp], [self.cats[i] for i in grp]))
        return out


# ---------------------------------------------------------------------------------------------- event sources
def events_from_table(table: pa.Table | Mapping, *, user_column: str = "user", ts_column: str = "timestamp",
                      category_column: str = "genres", separator: str = "|") -> EventLog:
    """An event table (pyarrow or a mapping of equal-length columns): one row per event; the category cell is a
    ``separator``-joined string (or already a list/tuple/set)."""
    cols = table.to_pydict() if isinstance(table, pa.Table) else dict(table)
    users = np.asarray([str(u) for u in cols[user_column]])
    ts = np.asarray([float(t) for t in cols[ts_column]], dtype=np.float64)
    cats = []
    for c in cols[category_column]:
        if c is None:
            cats.append(())
        elif isinstance(c, str):
            cats.append(tuple(x for x in c.split(separator) if x))
        else:
            cats.append(tuple(sorted(c)) if isinstance(c, (set, frozenset)) else tuple(c))
    return EventLog(users, ts, cats)


def events_from_ml100k(data_dir: str | os.PathLike) -> EventLog:
    """Every rating of ML-100K (u.data joined with u.item), genres as a tuple in u.item's genre order."""
    from rankcraft.data.recipes import load_ml100k_table

    table, ts = load_ml100k_table(Path(data_dir))
    log = events_from_table(table.select(["user", "genres"]).append_column("timestamp", pa.array(ts)))
    return log


def events_from_ml1m(data_dir: str | os.PathLike) -> EventLog:
    """Every rating of ml-1m-u3k (ratings.dat.gz joined with movies.dat), genres as ``|``-joined strings: the
    complete time-stamped histories, not the truncated ones of the prepared sequences."""
    from rankcraft.data.movielens1m import load_ml1m_table

    table, _ = load_ml1m_table(Path(data_dir))
    return events_from_table(table.select(["user", "timestamp", "genres"]))


def events_from_prepared(data, *, splits: Sequence[str] | None = None, sequence: str | None = None,
                         category_sequence: str | None = None) -> EventLog:
    """Per-user event lists from a :class:`~rankcraft.data.dataset.PreparedData`'s histories.

    ``sequence`` (default: the first sequence with timestamps) gives the events' times; ``category_sequence``
    (default: another sequence of the same length, e.g. ``hist_genres``; else the item ids themselves) their
    category. For each user (the ``group`` column) the row whose history ends latest (then: the longest) is used,
    so a user's events are the last ``max_len`` events before their latest impression in the split — histories
    are truncated, so prefer raw event logs where they exist. ``splits`` defaults to ``["train"]``: the ``group``
    ids are encoded per split, so a user present in several given splits is counted once per split.
    """
    feats = data.features
    seqs = feats.sequences
    timed = [f for f in seqs if f.has_timestamps]
    main = feats[sequence] if sequence else (timed[0] if timed else None)
    if main is None or not main.has_timestamps:
        raise ValueError("session analysis needs a sequence feature with timestamps")
    if category_sequence is None:
        side = [f for f in seqs if f.name != main.name and f.max_len == main.max_len]
        category_sequence = side[0].name if side else main.name
    users_all, ts_all, cats_all, real_all = [], [], [], []
    for split in (splits or ["train"]):
        cols = data.splits[split].columns
        if "group" not in cols:
            raise ValueError("session analysis of prepared data needs a user column (group)")
        ids = cols[main.name].numpy()
        users_all.append(np.char.add(f"{split}:", cols["group"].numpy().astype(str)))
        ts_all.append(cols[main.name + "__ts"].numpy())
        cats_all.append(cols[category_sequence].numpy())
        real_all.append(ids != 0)
    users, ts = np.unique(np.concatenate(users_all), return_inverse=True)[1], np.concatenate(ts_all)
    cats, real = np.concatenate(cats_all), np.concatenate(real_all)
    last_ts = np.where(real, ts, -np.inf).max(1)
    order = np.lexsort((real.sum(1), last_ts, users))            # per user, the best row last
    last_of_user = np.r_[np.flatnonzero(np.diff(users[order])), len(order) - 1] if len(order) else []
    out_u, out_t, out_c = [], [], []
    for r in order[last_of_user]:
        for t, c in zip(ts[r][real[r]], cats[r][real[r]]):
            out_u.append(str(users[r]))
            out_t.append(float(t))
            out_c.append((int(c),) if c != 0 else ())
    return EventLog(np.asarray(out_u), np.asarray(out_t, dtype=np.float64), out_c)


# ---------------------------------------------------------------------------------------------- statistics
def _jaccard(a: tuple, b: tuple) -> float:
    sa, sb = set(a), set(b)
    union = sa | sb
    return len(sa & sb) / len(union) if union else 0.0


def _first_equal(a: tuple, b: tuple) -> float:
    return float(bool(a) and bool(b) and a[0] == b[0])


def _dominant(cats: list[tuple]):
    counts: Counter = Counter()
    first_seen: dict = {}
    for c in cats:
        for x in c:
            counts[x] += 1
            first_seen.setdefault(x, len(first_seen))
    if not counts:
        return None
    return min(counts, key=lambda x: (-counts[x], first_seen[x]))


def session_statistics(log: EventLog, *, gap_seconds: float = 86_400.0, max_k: int = 10, seed: int = 0,
                       n_shuffles: int = 20) -> dict:
    """The statistics of the module docstring for an :class:`EventLog`."""
    rng = np.random.default_rng(seed)
    within_j, within_f, across_j, across_f, rand_j, rand_f = [], [], [], [], [], []
    sess_lens: list[int] = []
    sess_per_user: list[int] = []
    ret_hits = np.zeros(max_k + 1)
    ret_n = np.zeros(max_k + 1)
    first = np.zeros(max_k + 2)       # index k = first return at lag k; index max_k+1 = none within K
    shuf_hits = np.zeros(max_k + 1)
    hop_n = hop_hits = 0
    rah_n = rah_hits = 0
    for ts, cats in log.per_user():
        n = len(ts)
        new = np.zeros(n, dtype=bool)
        if n > 1:
            new[1:] = np.diff(ts) > gap_seconds
        sid = np.cumsum(new)
        for j in range(1, n):
            jac, feq = _jaccard(cats[j - 1], cats[j]), _first_equal(cats[j - 1], cats[j])
            if new[j]:
                across_j.append(jac)
                across_f.append(feq)
            else:
                within_j.append(jac)
                within_f.append(feq)
        if n > 1:
            other = rng.integers(0, n - 1, size=n)
            other = other + (other >= np.arange(n))      # uniform over the other events
            for j in range(n):
                rand_j.append(_jaccard(cats[j], cats[other[j]]))
                rand_f.append(_first_equal(cats[j], cats[other[j]]))
        # sessions
        S = int(sid[-1]) + 1 if n else 0
        starts = np.r_[0, np.flatnonzero(new)] if n else np.zeros(0, dtype=int)
        ends = np.r_[starts[1:], n] if n else starts
        sess_cats = [cats[a:b] for a, b in zip(starts, ends)]
        sess_lens += [int(b - a) for a, b in zip(starts, ends)]
        sess_per_user.append(S)
        theme = [_dominant(c) for c in sess_cats]
        sets = [set().union(*[set(x) for x in c]) for c in sess_cats]
        # mem[s, o]: theme of session s occurs in session o; has[s]: session s has a theme
        mem = np.array([[theme[a] is not None and theme[a] in sets[b] for b in range(S)] for a in range(S)],
                       dtype=bool).reshape(S, S)
        has = np.array([t is not None for t in theme], dtype=bool)
        for k in range(1, min(max_k, S - 1) + 1):
            i = np.arange(S - k)
            ret_n[k] += has[i].sum()
            ret_hits[k] += mem[i, i + k].sum()
            for _ in range(n_shuffles):
                perm = rng.permutation(S)
                shuf_hits[k] += (mem[perm[i], perm[i + k]] & has[perm[i]]).sum() / n_shuffles
        for s in range(S):
            if theme[s] is None:
                continue
            if s + max_k < S:                              # uncensored window
                lag = next((k for k in range(1, max_k + 1) if theme[s] in sets[s + k]), max_k + 1)
                first[lag] += 1
                if theme[s] not in sets[s + 1]:
                    rah_n += 1
                    rah_hits += any(theme[s] in sets[s + k] for k in range(2, max_k + 1))
            if s + 1 < S:
                hop_n += 1
                hop_hits += theme[s] not in sets[s + 1]

    def mean(x):
        return float(np.mean(x)) if len(x) else float("nan")

    n_first = first.sum()
    return {
        "gap_seconds": float(gap_seconds),
        "max_k": int(max_k),
        "users": len(sess_per_user),
        "events": int(len(log)),
        "sessions": int(sum(sess_per_user)),
        "sessions_per_user": mean(sess_per_user),
        "mean_session_length": mean(sess_lens),
        "median_session_length": float(np.median(sess_lens)) if sess_lens else float("nan"),
        "within": {"pairs": len(within_j), "jaccard": mean(within_j), "first_equal": mean(within_f)},
        "across": {"pairs": len(across_j), "jaccard": mean(across_j), "first_equal": mean(across_f)},
        "random_pair": {"pairs": len(rand_j), "jaccard": mean(rand_j), "first_equal": mean(rand_f)},
        "return_rate": {k: (float(ret_hits[k] / ret_n[k]) if ret_n[k] else float("nan"))
                        for k in range(1, max_k + 1)},
        "return_pairs": {k: int(ret_n[k]) for k in range(1, max_k + 1)},
        "shuffled_return_rate": {k: (float(shuf_hits[k] / ret_n[k]) if ret_n[k] else float("nan"))
                                 for k in range(1, max_k + 1)},
        "baseline": float(np.nanmean([shuf_hits[k] / ret_n[k] for k in range(1, max_k + 1) if ret_n[k]]))
        if ret_n[1:].any() else float("nan"),
        "first_return": {k: (float(first[k] / n_first) if n_first else float("nan")) for k in range(1, max_k + 1)},
        "no_return": float(first[max_k + 1] / n_first) if n_first else float("nan"),
        "uncensored_sessions": int(n_first),
        "hop_rate": float(hop_hits / hop_n) if hop_n else float("nan"),
        "return_after_hop": float(rah_hits / rah_n) if rah_n else float("nan"),
    }


def format_session_report(r: dict) -> str:
    """A plain-text table of :func:`session_statistics`' result."""
    lines = [f"session gap > {r['gap_seconds']:g} s: {r['users']} users, {r['events']} events, "
             f"{r['sessions']} sessions ({r['sessions_per_user']:.2f} per user, mean length {r['mean_session_length']:.2f}, median "
             f"{r['median_session_length']:g})",
             "",
             f"{'consecutive events':<22}{'pairs':>10}{'jaccard':>10}{'first genre =':>15}"]
    for key, label in (("within", "within session"), ("across", "across sessions"),
                       ("random_pair", "random pair (same user)")):
        d = r[key]
        lines.append(f"{label:<22}{d['pairs']:>10}{d['jaccard']:>10.4f}{d['first_equal']:>15.4f}")
    lines += ["", f"{'k':>3}{'return_rate':>13}{'shuffled':>10}{'pairs':>9}{'first_return':>14}"]
    for k in range(1, r["max_k"] + 1):
        lines.append(f"{k:>3}{r['return_rate'][k]:>13.4f}{r['shuffled_return_rate'][k]:>10.4f}"
                     f"{r['return_pairs'][k]:>9}{r['first_return'][k]:>14.4f}")
    lines += [f"shuffled-order baseline (mean over k): {r['baseline']:.4f}",
              f"no return within {r['max_k']} sessions: {r['no_return']:.4f} "
              f"(over {r['uncensored_sessions']} uncensored sessions)",
              f"hop rate (theme absent from the next session): {r['hop_rate']:.4f}; "
              f"returns within 2..{r['max_k']} after a hop: {r['return_after_hop']:.4f}"]
    return "\n".join(lines)


def plot_session_report(r: dict, out_png: str | os.PathLike, title: str = "") -> Path:
    """Three panels — consecutive-event similarity, return rate by lag, first-return distribution — to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    keys = [("within", "within"), ("across", "across"), ("random_pair", "random pair")]
    x = np.arange(2)
    for i, (key, label) in enumerate(keys):
        axes[0].bar(x + (i - 1) * 0.27, [r[key]["jaccard"], r[key]["first_equal"]], width=0.27, label=label)
    axes[0].set_xticks(x, ["Jaccard", "first genre equal"])
    axes[0].set_title("consecutive events")
    axes[0].legend()
    ks = list(range(1, r["max_k"] + 1))
    axes[1].plot(ks, [r["return_rate"][k] for k in ks], marker="o", label="theme of s in s+k")
    axes[1].plot(ks, [r["shuffled_return_rate"][k] for k in ks], ls="--", color="grey",
                 label="sessions shuffled")
    axes[1].set_xlabel("k (sessions later)")
    axes[1].set_title("theme return rate")
    axes[1].legend()
    axes[2].bar(ks, [r["first_return"][k] for k in ks])
    axes[2].set_xlabel("first return after k sessions")
    axes[2].set_title(f"first return (none within {r['max_k']}: {r['no_return']:.2f})")
    fig.suptitle(title or f"session hopping (gap > {r['gap_seconds']:g} s)")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------------------------- entry point
def _to_log(data_or_table, *, data_dir, splits, sequence, category_sequence, user_column, ts_column,
            category_column, separator) -> EventLog:
    from rankcraft.data.dataset import DataSource, PreparedData, prepare

    obj = data_or_table
    if isinstance(obj, EventLog):
        return obj
    if isinstance(obj, (pa.Table, Mapping)):
        return events_from_table(obj, user_column=user_column, ts_column=ts_column,
                                 category_column=category_column, separator=separator)
    if isinstance(obj, PreparedData):
        return events_from_prepared(obj, splits=splits, sequence=sequence, category_sequence=category_sequence)
    if isinstance(obj, DataSource):
        raw_dirs = {Path(p).parent for p in obj.inputs if Path(p).name == "u.data"}
        if raw_dirs:  # an ML-100K recipe: use the untruncated raw log
            return events_from_ml100k(raw_dirs.pop())
        raw_dirs = {Path(p).parent for p in obj.inputs if Path(p).name == "ratings.dat.gz"}
        if raw_dirs:  # an ml-1m-u3k recipe: likewise
            return events_from_ml1m(raw_dirs.pop())
        return events_from_prepared(prepare(obj), splits=splits, sequence=sequence,
                                    category_sequence=category_sequence)
    if isinstance(obj, (str, os.PathLike)):
        p = Path(obj)
        if p.is_dir() and (p / "u.data").exists():
            return events_from_ml100k(p)
        if p.is_dir() and (p / "ratings.dat.gz").exists():
            return events_from_ml1m(p)
        if p.is_file():
            from rankcraft.data.readers import read_table

            raw = read_table(str(p), [user_column, ts_column, category_column],
                             delimiter="\t" if p.suffix.lower() == ".tsv" else ",")
            return events_from_table(raw.table, user_column=user_column, ts_column=ts_column,
                                     category_column=category_column, separator=separator)
        from rankcraft.data.catalog import get_source

        return _to_log(get_source(str(obj), data_dir), data_dir=data_dir, splits=splits, sequence=sequence,
                       category_sequence=category_sequence, user_column=user_column, ts_column=ts_column,
                       category_column=category_column, separator=separator)
    raise TypeError(f"cannot analyse sessions of {type(obj).__name__}")


def analyze_sessions(data_or_table, *, gap_seconds: float = 86_400.0, max_k: int = 10,
                     out_png: str | os.PathLike | None = None, data_dir: str | None = None,
                     splits: Sequence[str] | None = None, sequence: str | None = None,
                     category_sequence: str | None = None, user_column: str = "user",
                     ts_column: str = "timestamp", category_column: str = "genres", separator: str = "|",
                     seed: int = 0, n_shuffles: int = 20, verbose: bool = False, title: str = "") -> dict:
    """Session-hopping statistics of a dataset; returns the dict of :func:`session_statistics` (plus ``png``).

    ``data_or_table`` may be: an ML-100K directory (``u.data``/``u.item``: the full rating log is used) or an
    ml-1m-u3k directory (``ratings.dat.gz``); a recipe name (``ml-100k`` / ``ml-100k-seq`` / ``ml-1m-u3k`` /
    ``ml-1m-u3k-seq`` read the raw log from ``data_dir``; other recipes are prepared and their histories used); a :class:`~rankcraft.data.dataset.DataSource` or
    :class:`~rankcraft.data.dataset.PreparedData` (histories, see :func:`events_from_prepared`); a CSV/Parquet
    event file, a ``pyarrow.Table`` or a mapping of columns (``user_column``, ``ts_column``, ``category_column``
    with ``separator``-joined categories); or an :class:`EventLog`. ``verbose`` prints the table;
    ``out_png`` writes the plot.
    """
    log = _to_log(data_or_table, data_dir=data_dir, splits=splits, sequence=sequence,
                  category_sequence=category_sequence, user_column=user_column, ts_column=ts_column,
                  category_column=category_column, separator=separator)
    result = session_statistics(log, gap_seconds=gap_seconds, max_k=max_k, seed=seed, n_shuffles=n_shuffles)
    if verbose:
        print(format_session_report(result))
    if out_png is not None:
        result["png"] = str(plot_session_report(result, out_png, title))
    return result
