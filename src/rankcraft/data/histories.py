"""Behaviour histories built column-wise: each event's window of the same user's strictly earlier events.

:func:`earlier_windows` sorts the events by (user, time, position) and gives every event the window of sorted
positions ``[start, stop)`` that holds its user's last ``max_len`` events with a timestamp strictly smaller than its
own (events in the same second never see each other, nor the event itself, nor anything later).
:func:`join_windows` turns a token column and those windows into separated strings (``"a^b^c"``, oldest first), the
cell format of ``sequence`` features. Both are numpy plus one byte slice per row, with no Python loop over a window's
events: histories of 200 events for MovieLens-1M's 487,650 ratings take a few seconds.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def earlier_windows(users: np.ndarray, ts: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(order, start, stop)``: ``order`` sorts the events by (user, timestamp, original position); for sorted
    position ``p`` the events ``order[start[p]:stop[p]]`` are the last ``max_len`` events of the same user with a
    timestamp strictly smaller than ``ts[order[p]]``, oldest first (ties among them in original position order)."""
    users = np.asarray(users)
    ts = np.asarray(ts)
    n = len(ts)
    order = np.lexsort((np.arange(n), ts, users))
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return order, empty, empty
    u, t = users[order], ts[order]
    pos = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = u[1:] != u[:-1]
    new_block = new_user.copy()  # a new (user, timestamp) block
    new_block[1:] |= t[1:] != t[:-1]
    user_start = np.maximum.accumulate(np.where(new_user, pos, 0))
    stop = np.maximum.accumulate(np.where(new_block, pos, 0))  # first event of the same (user, second)
    start = np.maximum(user_start, stop - max_len)
    return order, start, stop


def join_windows(tokens: list[str], start: np.ndarray, stop: np.ndarray, sep: str = "^") -> pa.Array:
    """``sep.join(tokens[start[p]:stop[p]])`` for every ``p``, as a string array (``large_string`` past 2 GiB).

    The tokens are joined once into one UTF-8 buffer; each window is one byte slice of it, and the slices are
    concatenated straight into the Arrow array's data buffer (no per-row ``str`` objects to convert)."""
    bsep = sep.encode()
    encoded = [tok.encode() for tok in tokens]
    big = bsep.join(encoded) + bsep
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum(np.fromiter((len(tok) + len(bsep) for tok in encoded), dtype=np.int64, count=len(encoded)),
              out=offsets[1:])
    a = offsets[np.asarray(start, dtype=np.int64)]
    b = np.maximum(offsets[np.asarray(stop, dtype=np.int64)] - len(bsep), a)  # an empty window: a == b
    data = b"".join([big[i:j] for i, j in zip(a.tolist(), b.tolist())])
    out_offsets = np.zeros(len(a) + 1, dtype=np.int64)
    np.cumsum(b - a, out=out_offsets[1:])
    if out_offsets[-1] < 2**31:
        return pa.StringArray.from_buffers(len(a), pa.py_buffer(out_offsets.astype(np.int32)), pa.py_buffer(data))
    return pa.LargeStringArray.from_buffers(len(a), pa.py_buffer(out_offsets), pa.py_buffer(data))


def history_columns(users: np.ndarray, ts: np.ndarray, tokens: dict[str, list[str]], max_len: int, *,
                    sep: str = "^", rows: np.ndarray | None = None) -> dict[str, pa.Array]:
    """For every event (or only the events ``rows``, in that order), each column of ``tokens`` (name → one token
    per event, in event order) joined over the event's window of strictly earlier events of its user."""
    order, start, stop = earlier_windows(users, ts, max_len)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    where = inverse if rows is None else inverse[np.asarray(rows, dtype=np.int64)]
    out = {}
    for name, col in tokens.items():
        sorted_tokens = [col[j] for j in order.tolist()]
        out[name] = join_windows(sorted_tokens, start[where], stop[where], sep)
    return out
