"""Synthetic "session hopping" data: the behavioural pattern MoS is built for, with the themes planted.

Generative story (every choice is a keyword argument of :func:`make_session_hopping`):

* ``T = n_themes`` themes; each owns ``items_per_theme`` items. Every item carries a category (the ``genre1`` /
  ``hist_genres`` value): its theme, or — with probability ``category_noise`` — another uniformly drawn category,
  fixed per item.
* Each user has ``C ∈ core_themes`` favourite themes and ``S ∈ sessions_per_user`` sessions of
  ``session_len`` events. Session 0 draws a favourite theme; every later session **hops** to a theme different from
  the previous session's: with probability ``return_prob`` it returns to a theme last seen two or more sessions
  earlier (recurrence), otherwise it draws a favourite theme (or, with probability ``explore_prob``, any theme).
  Within a session every event is an item of the session's theme (interest is stable within a session).
* Timestamps (unix seconds): within-session gaps uniform in ``within_gap_seconds`` (minutes), between-session gaps
  uniform in ``between_gap_days`` (days, > 1 day), so the 1-day time-gap rule recovers the sessions exactly.
* Impressions: for each session ``s ≥ 1`` of a user, ``impressions_per_session`` impressions at a random point of
  the session (after ``0 .. len−1`` of its events). The history is every earlier event of the user (last
  ``max_len``). The target's theme is the current session's theme with probability ``p_current``, a theme of the
  history with probability ``p_history`` and otherwise uniform; the target item is uniform within that theme.
* Label ~ Bernoulli(p) with p decided by how the target theme relates to the history's sessions:
  ``p_recent`` if it is the theme of the most recent history session, else ``p_recurring`` if it occurs in two or
  more history sessions, else ``p_once`` if it occurs in one, else ``p_absent``.

Rows are sorted by impression time (ties by user); the recipe splits them 80/10/10 in that order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from rankcraft.data.dataset import DataSource
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import recipe
from rankcraft.data.schema import FeatureSpec, Schema

T0 = 1_600_000_000  # first timestamp (unix seconds)


def session_hopping_schema(max_len: int = 50) -> Schema:
    """The ml-100k-seq layout without the user side information: user, item, genre1 and the three histories."""
    feats = [
        FeatureSpec(name="user", type="categorical", source="user"),
        FeatureSpec(name="item", type="categorical", source="item"),
        FeatureSpec(name="genre1", type="categorical", source="item"),
        FeatureSpec(name="hist_items", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="item", timestamp_column="hist_ts"),
        FeatureSpec(name="hist_genres", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="genre1"),
    ]
    return Schema(labels=["label"], features=feats, user_column="user")


@dataclass
class SessionHopping:
    """Generated data: ``table`` (strings), its ``schema``, and ground truth aligned with the table rows:
    ``planted : int64 [N, max_len]`` — the theme of every history position, left-padded like the encoded
    sequence (−1 at padding); ``planted_session : int64 [N, max_len]`` — the user-level session index of every
    history position (−1 at padding); ``target_theme : int64 [N]``; ``item_theme`` / ``item_category`` per item
    index (item ``i`` is the string ``"it{i}"``)."""

    table: pa.Table
    schema: Schema
    planted: np.ndarray
    planted_session: np.ndarray
    target_theme: np.ndarray
    item_theme: np.ndarray
    item_category: np.ndarray


def make_session_hopping(n_users: int = 2000, *, n_themes: int = 8, items_per_theme: int = 40,
                         core_themes: tuple[int, int] = (3, 5), sessions_per_user: tuple[int, int] = (8, 16),
                         session_len: tuple[int, int] = (3, 8), impressions_per_session: int = 1,
                         max_len: int = 50, return_prob: float = 0.5, explore_prob: float = 0.1,
                         category_noise: float = 0.1, within_gap_seconds: tuple[float, float] = (30.0, 1800.0),
                         between_gap_days: tuple[float, float] = (1.5, 10.0), p_current: float = 0.35,
                         p_history: float = 0.25, p_recent: float = 0.85, p_recurring: float = 0.7,
                         p_once: float = 0.3, p_absent: float = 0.05, seed: int = 0) -> SessionHopping:
    """Generate the data set described in the module docstring (ranges are inclusive ``(low, high)``)."""
    if n_themes < 2:
        raise ValueError("n_themes must be >= 2 (sessions hop between themes)")
    if not 2 <= core_themes[0] <= core_themes[1] <= n_themes:
        raise ValueError("core_themes must satisfy 2 <= low <= high <= n_themes")
    rng = np.random.default_rng(seed)
    n_items = n_themes * items_per_theme
    item_theme = np.repeat(np.arange(n_themes), items_per_theme)
    noisy = rng.random(n_items) < category_noise
    other = (item_theme + rng.integers(1, n_themes, n_items)) % n_themes   # a different category, uniformly
    item_category = np.where(noisy, other, item_theme)

    rows_user, rows_item, rows_label, rows_ts, rows_tt = [], [], [], [], []
    rows_hist, rows_hist_ts, rows_hist_theme, rows_hist_sess = [], [], [], []
    for u in range(n_users):
        core = rng.choice(n_themes, size=int(rng.integers(core_themes[0], core_themes[1] + 1)), replace=False)
        n_sess = int(rng.integers(sessions_per_user[0], sessions_per_user[1] + 1))
        themes: list[int] = []
        for s in range(n_sess):
            prev = themes[-1] if themes else -1
            older = sorted({t for t in themes[:-1] if t != prev})
            if older and rng.random() < return_prob:
                th = int(rng.choice(older))
            elif rng.random() < explore_prob:
                th = int(rng.choice([t for t in range(n_themes) if t != prev]))
            else:
                cands = [int(t) for t in core if t != prev]
                th = int(rng.choice(cands))
            themes.append(th)
        # events
        ev_item, ev_ts, ev_sess = [], [], []
        t = float(T0 + rng.uniform(0, 30 * 86_400))
        for s, th in enumerate(themes):
            if s > 0:
                t += rng.uniform(*between_gap_days) * 86_400
            n_ev = int(rng.integers(session_len[0], session_len[1] + 1))
            for e in range(n_ev):
                if e > 0:
                    t += rng.uniform(*within_gap_seconds)
                ev_item.append(th * items_per_theme + int(rng.integers(items_per_theme)))
                ev_ts.append(int(t))
                ev_sess.append(s)
        ev_item_a, ev_ts_a, ev_sess_a = np.array(ev_item), np.array(ev_ts), np.array(ev_sess)
        starts = np.searchsorted(ev_sess_a, np.arange(n_sess))
        ends = np.append(starts[1:], len(ev_item_a))
        for s in range(1, n_sess):
            for _ in range(impressions_per_session):
                k = int(starts[s] + rng.integers(0, ends[s] - starts[s]))   # events before the impression
                lo = max(0, k - max_len)
                h_items, h_ts, h_sess = ev_item_a[lo:k], ev_ts_a[lo:k], ev_sess_a[lo:k]
                h_themes = item_theme[h_items]
                # theme relations over the (truncated) history's sessions
                sess_theme = {int(ss): int(item_theme[it]) for ss, it in zip(h_sess, h_items)}
                counts = np.bincount(np.array(list(sess_theme.values()), dtype=np.int64), minlength=n_themes)
                recent = int(item_theme[h_items[-1]])
                r = rng.random()
                if r < p_current:
                    tt = themes[s]
                elif r < p_current + p_history:
                    tt = int(rng.choice(h_themes))
                else:
                    tt = int(rng.integers(n_themes))
                if tt == recent:
                    p = p_recent
                elif counts[tt] >= 2:
                    p = p_recurring
                elif counts[tt] == 1:
                    p = p_once
                else:
                    p = p_absent
                rows_user.append(u)
                rows_item.append(tt * items_per_theme + int(rng.integers(items_per_theme)))
                rows_label.append(int(rng.random() < p))
                # shown at the start of session s, or one second after the last event of the ongoing session
                rows_ts.append(int(ev_ts_a[k]) if k == starts[s] else int(ev_ts_a[k - 1]) + 1)
                rows_tt.append(tt)
                rows_hist.append(h_items)
                rows_hist_ts.append(h_ts)
                rows_hist_theme.append(h_themes)
                rows_hist_sess.append(h_sess)

    n = len(rows_user)
    order = np.lexsort((np.array(rows_user), np.array(rows_ts)))
    planted = np.full((n, max_len), -1, dtype=np.int64)
    planted_sess = np.full((n, max_len), -1, dtype=np.int64)
    cols: dict[str, list[str]] = {k: [] for k in ("label", "user", "item", "genre1", "hist_items", "hist_ts",
                                                  "hist_genres", "timestamp")}
    for out_row, i in enumerate(order):
        h = rows_hist[i]
        m = len(h)
        if m:
            planted[out_row, max_len - m:] = rows_hist_theme[i]
            planted_sess[out_row, max_len - m:] = rows_hist_sess[i]
        cols["label"].append(str(rows_label[i]))
        cols["user"].append(f"u{rows_user[i]}")
        cols["item"].append(f"it{rows_item[i]}")
        cols["genre1"].append(f"g{item_category[rows_item[i]]}")
        cols["hist_items"].append("^".join(f"it{x}" for x in h))
        cols["hist_ts"].append("^".join(str(x) for x in rows_hist_ts[i]))
        cols["hist_genres"].append("^".join(f"g{item_category[x]}" for x in h))
        cols["timestamp"].append(str(rows_ts[i]))
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
    return SessionHopping(table, session_hopping_schema(max_len), planted, planted_sess,
                          np.array(rows_tt, dtype=np.int64)[order], item_theme, item_category)


def split_rows(n: int, fractions: tuple[float, float] = (0.8, 0.1)) -> dict[str, slice]:
    """Row ranges of the train/valid/test split (in row = time order)."""
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return {"train": slice(0, a), "valid": slice(a, b), "test": slice(b, n)}


def session_hopping_raw(n_users: int = 2000, seed: int = 0, **kwargs) -> tuple[dict[str, RawTable], Schema,
                                                                                dict[str, np.ndarray]]:
    """Train/valid/test :class:`RawTable` s (80/10/10 in time order), the schema and each split's planted themes."""
    data = make_session_hopping(n_users, seed=seed, **kwargs)
    name = f"<session-hopping users={n_users} seed={seed}>"
    parts = split_rows(data.table.num_rows)
    raw = {k: RawTable(data.table.slice(s.start, s.stop - s.start), name, 0, "memory") for k, s in parts.items()}
    return raw, data.schema, {k: data.planted[s] for k, s in parts.items()}


@recipe("session-hopping", "synthetic session-hopping histories with planted themes (no files needed), time split")
def session_hopping_source(data_dir: str | None = None, *, users: int = 2000, seed: int = 0, max_len: int = 50,
                           themes: int = 8) -> DataSource:
    """Recipe: :func:`make_session_hopping` with ``users`` users, ``themes`` themes, histories of ``max_len``."""
    return DataSource(name="session-hopping", schema=session_hopping_schema(max_len),
                      loader=lambda: session_hopping_raw(users, seed=seed, max_len=max_len, n_themes=themes)[0],
                      version=f"1:users={users}:seed={seed}:max_len={max_len}:themes={themes}")
