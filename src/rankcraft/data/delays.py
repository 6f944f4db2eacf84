"""Delayed-conversion labels: fixed-window labels with label maturity, derived from click and conversion times.

A label of kind ``delay`` (see :class:`~rankcraft.data.schema.LabelSpec`) reads, per row, the click time ``c``
(``click_time``) and either the conversion time ``v`` (``column``; empty = no conversion observed) or the delay
``v − c`` itself (``column`` with ``delay_unit``). With the observation time ``o`` (``observed_at``: a time, or
``latest`` = the latest click or conversion time of the table, the moment the log was cut), a conversion is
*observed* iff it happened at or before ``o``. For every window ``T`` of ``windows`` it derives

* ``<name>_<T>`` (binary): ``1[conversion observed and v − c ≤ T]``;
* ``<name>_<T>_mature`` (weight): ``1[o − c ≥ T]`` — the row's ``T``-window label is final. A head for window
  ``T`` trains with this as its per-row weight, so no row teaches a ``T``-window head before ``T`` has elapsed
  (the label would still say "no conversion" for a conversion yet to come: label leakage in reverse);

and, for delayed-feedback models (Chapelle 2014), ``<name>_observed`` (binary: a conversion observed by ``o``)
and ``<name>_elapsed_days`` (regression: the delay in days if observed, else the time elapsed since the click,
``o − c``, in days).

Times are unix seconds or ISO date/times (``2017-11-25T13:05:00``); durations are ``<number><unit>`` with unit
``s``, ``m``, ``h`` or ``d`` (``1d``, ``36h``). Every bad cell is a row problem naming the column: a missing or
unparseable click time, an unparseable conversion time or delay, a conversion before its click (negative delay).
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankcraft.data.readers import RawTable

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_NUMBER_RE = re.compile(r"^\s*-?\d+(\.\d*)?([eE][-+]?\d+)?\s*$")


def parse_duration(text: str | float | int) -> float:
    """``"1d"`` → 86400.0 seconds; a bare number is days. Zero, negative or malformed: ValueError."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text) * UNITS["d"]
    else:
        m = _DURATION_RE.match(str(text))
        if not m:
            raise ValueError(f"window {text!r}: expected a duration such as 1d, 36h, 90m or 3600s")
        seconds = float(m.group(1)) * UNITS[m.group(2)]
    if not seconds > 0:
        raise ValueError(f"window {text!r} must be longer than zero")
    return seconds


def window_suffix(text: str | float | int) -> str:
    """The label-name suffix of a window as written (``1d`` → ``1d``; ``1.5d`` → ``1p5d``; a bare 3 → ``3d``)."""
    s = f"{text}d" if isinstance(text, (int, float)) else str(text).strip()
    return s.replace(".", "p")


def _times(raw: RawTable, column: str, what: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``column`` as float64 seconds (NaN where blank) and the rows whose cell is not a time."""
    if column not in raw.table.column_names:
        raise raw.error(0, column, f"the {what} column '{column}' is not in the data (columns: "
                        f"{', '.join(raw.table.column_names)})")
    col = raw.table.column(column)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64), []
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type):
        t = col.cast(pa.timestamp("s")).cast(pa.int64()).to_numpy(zero_copy_only=False)
        return np.asarray(t, dtype=np.float64), []
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    blank = pc.or_(pc.is_null(text), pc.equal(text, "")).to_numpy(zero_copy_only=False)
    out = np.full(len(text), np.nan)
    numeric = pc.match_substring_regex(text, _NUMBER_RE.pattern).fill_null(False).to_numpy(zero_copy_only=False)
    if numeric.any():
        idx = np.flatnonzero(numeric)
        out[idx] = pc.cast(text.take(pa.array(idx)), pa.float64()).to_numpy(zero_copy_only=False)
    problems = []
    rest = np.flatnonzero(~numeric & ~blank)
    if len(rest):
        values = text.take(pa.array(rest))
        try:
            parsed = pc.cast(pc.replace_substring(values, " ", "T"), pa.timestamp("s"))
            out[rest] = parsed.cast(pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            for i, v in zip(rest, values.to_pylist()):  # slow path, only when some cell is bad
                try:
                    out[i] = float(np.datetime64(v.rstrip("Z").replace(" ", "T"), "s").astype(np.int64))
                except ValueError:
                    problems.append((int(i), f"{what} {v!r} is not a time (unix seconds or an ISO date/time)"))
    return out, problems


def _numbers(raw: RawTable, column: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """``column`` as float64 (NaN where blank) and the rows whose cell is not a number."""
    if column not in raw.table.column_names:
        raise raw.error(0, column, f"the delay column '{column}' is not in the data")
    col = raw.table.column(column)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
        return col.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64), []
    text = pc.utf8_trim_whitespace(col.cast(pa.string()))
    blank = pc.or_(pc.is_null(text), pc.equal(text, "")).to_numpy(zero_copy_only=False)
    numeric = pc.match_substring_regex(text, _NUMBER_RE.pattern).fill_null(False).to_numpy(zero_copy_only=False)
    out = np.full(len(text), np.nan)
    idx = np.flatnonzero(numeric)
    if len(idx):
        out[idx] = pc.cast(text.take(pa.array(idx)), pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~numeric & ~blank)
    vals = text.take(pa.array(bad)).to_pylist() if len(bad) else []
    return out, [(int(i), f"delay {v!r} is not a number") for i, v in zip(bad, vals)]


def observation_time(raw: RawTable, spec, click: np.ndarray, conversion: np.ndarray) -> float:
    """The observation time ``o`` (unix seconds) of ``spec.observed_at`` for this table."""
    at = spec.observed_at
    if at is None or at == "latest":
        both = np.concatenate([click[np.isfinite(click)], conversion[np.isfinite(conversion)]])
        return float(both.max()) if len(both) else 0.0
    if isinstance(at, (int, float)):
        return float(at)
    return float(np.datetime64(str(at).rstrip("Z").replace(" ", "T"), "s").astype(np.int64))


def delay_label_values(raw: RawTable, spec) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """The derived label columns of a ``delay`` label (see the module docstring), float64, and every bad row as
    ``(row, column, reason)``; bad rows hold NaN in every derived column."""
    click, bad_click = _times(raw, spec.click_time, "click time")
    problems = [(r, spec.click_time, why) for r, why in bad_click]
    known = {r for r, _ in bad_click}
    problems += [(int(r), spec.click_time, "click time is missing") for r in np.flatnonzero(np.isnan(click))
                 if int(r) not in known]
    if spec.delay_unit is None:
        conv, bad_conv = _times(raw, spec.raw_column, "conversion time")
        delay = conv - click
    else:
        delay, bad_conv = _numbers(raw, spec.raw_column)
        delay = delay * UNITS[spec.delay_unit]
        conv = click + delay
    problems += [(r, spec.raw_column, why) for r, why in bad_conv]
    with np.errstate(invalid="ignore"):
        negative = np.flatnonzero(delay < 0)
    for r in negative:
        problems.append((int(r), spec.raw_column, "conversion before the click (negative delay)" if
                         spec.delay_unit is None else f"negative delay {delay[r] / UNITS[spec.delay_unit]:g}"))
    o = observation_time(raw, spec, click, conv)
    with np.errstate(invalid="ignore"):
        observed = np.isfinite(delay) & (conv <= o)
        elapsed = o - click
    out: dict[str, np.ndarray] = {}
    for w in spec.windows:
        T = parse_duration(w)
        suffix = window_suffix(w)
        with np.errstate(invalid="ignore"):
            out[f"{spec.name}_{suffix}"] = (observed & (delay <= T)).astype(np.float64)
            out[f"{spec.name}_{suffix}_mature"] = (elapsed >= T).astype(np.float64)
    out[f"{spec.name}_observed"] = observed.astype(np.float64)
    out[f"{spec.name}_elapsed_days"] = np.where(observed, delay, np.maximum(elapsed, 0.0)) / UNITS["d"]
    if problems:
        rows = sorted({r for r, _, _ in problems})
        for v in out.values():
            v[rows] = np.nan
    return out, sorted(problems)


def derived_label_kinds(spec) -> dict[str, str]:
    """Name → kind of the columns a ``delay`` label derives, in order."""
    kinds: dict[str, str] = {}
    for w in spec.windows:
        kinds[f"{spec.name}_{window_suffix(w)}"] = "binary"
        kinds[f"{spec.name}_{window_suffix(w)}_mature"] = "weight"
    kinds[f"{spec.name}_observed"] = "binary"
    kinds[f"{spec.name}_elapsed_days"] = "regression"
    return kinds
