"""``taobao-userbehavior``: impressions with same-day engagement labels, reconstructed from Taobao's behaviour log.

Input: ``UserBehavior.csv`` in the data directory (``$RANKCRAFT_DATA_DIR/taobao-userbehavior-84k`` or
``../shared/data/taobao-userbehavior-84k`` by default; a path to the file itself also works): no header, one event
a line, ``user_id,item_id,category_id,behavior_type,timestamp`` (unix seconds), ``behavior_type`` one of ``pv``
(page view), ``cart``, ``fav``, ``buy``. The shared copy has 84,475 events of 815 users.

The log has no impressions and no clicks, so the rows are a **reconstruction** (documented choice):

* **Days** are calendar days in Beijing time (UTC+8), the data set's own time zone: the nine days 2017-11-25 ..
  2017-12-03. Events outside them are dropped and counted: they are reported as skipped rows of the ``train``
  split (file line and reason; 35 rows in the shared copy, from 2017-09-11 to 2017-11-24), and
  :func:`read_behaviour` returns them (file line, reason).
* **Rows**: one per (user, item, day) with at least one ``pv``; the first ``pv`` of the pair that day (earliest
  second, then file order) is the *impression*, and its time is the row's ``timestamp`` (int64 unix seconds, kept
  in every split, not a feature; ``time_column="timestamp"``) and ``date`` (the Beijing date, ``YYYY-MM-DD``, also
  not a feature), so a stream run can use one partition per day.
* **Features**: ``user``; ``item`` and its ``category`` (that of the impression event); context ``hour`` (0-23) and
  ``weekday`` (``Mon`` .. ``Sun``) of the impression in Beijing time; and the user's viewing history: the items
  (``hist_items``), their categories (``hist_categories``) and times (``hist_ts``) of the user's last ``max_len``
  ``pv`` events *strictly earlier* than the impression (same-second views excluded, so the impression itself
  never leaks), oldest first. Every kept ``pv`` counts (repeated views of one item included); histories reach back
  across days and splits (they are the past) but never before 2017-11-25.
* **Labels** (binary, ``"0"``/``"1"``), from the same user's events on the same item on the same Beijing day at or
  after the impression's second: ``cart``, ``fav``, ``buy`` (an event of that type) and ``engaged`` (any of the
  three). Engagement before the day's first view, on another day, or without any view that day is not counted
  (in the shared copy most (user, item, day) triples with a cart/fav/buy have no view that day: the log is not a
  funnel).
  About 2.1 % of the rows are ``engaged``, 1.2 % ``buy``, 0.7 % ``cart``, 0.2 % ``fav``.
* **Split** by Beijing day: ``split_days`` = (7, 1, 1) by default, i.e. days 1-7 (2017-11-25 .. 12-01) ``train``,
  day 8 (12-02) ``valid``, day 9 (12-03) ``test``; within a split rows are in (timestamp, user, item) order.

Options: ``label`` (the schema's one label, default ``engaged``) or ``labels`` (``all`` or a list: a multi-label
schema, which needs an objective with one task per label); ``max_len`` (50); ``split_days`` (three non-negative
integers, train > 0, summing to 9).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from rankcraft.data.dataset import DataSource
from rankcraft.data.histories import history_columns
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import find_data_dir, recipe
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.errors import ConfigError, DataError

NAME = "taobao-userbehavior"
DIR_NAME = "taobao-userbehavior-84k"
FILE = "UserBehavior.csv"
COLUMNS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
BEHAVIOURS = ("pv", "cart", "fav", "buy")
LABELS = ("engaged", "cart", "fav", "buy")
UTC_OFFSET = 8 * 3600  # Beijing time
FIRST_DAY = 1_511_539_200  # 2017-11-25 00:00 UTC+8, in unix seconds
N_DAYS = 9  # 2017-11-25 .. 2017-12-03
DEFAULT_SPLIT_DAYS = (7, 1, 1)
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


def taobao_schema(labels: list[str] | tuple[str, ...] = ("engaged",), max_len: int = 50) -> Schema:
    feats = [
        FeatureSpec(name="user", type="categorical", source="user"),
        FeatureSpec(name="item", type="categorical", source="item"),
        FeatureSpec(name="category", type="categorical", source="item"),
        FeatureSpec(name="hour", type="categorical", source="context"),
        FeatureSpec(name="weekday", type="categorical", source="context"),
        FeatureSpec(name="hist_items", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="item", timestamp_column="hist_ts"),
        FeatureSpec(name="hist_categories", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="category"),
    ]
    return Schema(labels=list(labels), features=feats, user_column="user")


def read_behaviour(path: str | Path) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """The events of 2017-11-25 .. 2017-12-03 (UTC+8) as numpy columns (``user``, ``item``, ``category``,
    ``behavior`` (index into :data:`BEHAVIOURS`), ``timestamp``, ``line``: 1-based file line), in file order, and
    ``(line, reason)`` of every event dropped for its timestamp."""
    try:
        raw = pacsv.read_csv(str(path), read_options=pacsv.ReadOptions(column_names=COLUMNS),
                             parse_options=pacsv.ParseOptions(ignore_empty_lines=False),
                             convert_options=pacsv.ConvertOptions(
                                 column_types={c: pa.string() if c == "behavior_type" else pa.int64()
                                               for c in COLUMNS}))
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{NAME}: cannot read the file: {exc}", path=str(path)) from None
    for c in COLUMNS:
        if raw.column(c).null_count:
            row = int(np.flatnonzero(raw.column(c).is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError("empty value", path=str(path), line=row + 1, column=c)
    behaviour = pc.index_in(raw.column("behavior_type"), pa.array(BEHAVIOURS))
    if behaviour.null_count:
        row = int(np.flatnonzero(behaviour.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"behavior_type must be one of {list(BEHAVIOURS)}, found "
                        f"{raw.column('behavior_type')[row].as_py()!r}", path=str(path), line=row + 1,
                        column="behavior_type")
    out = {"user": raw.column("user_id").to_numpy(), "item": raw.column("item_id").to_numpy(),
           "category": raw.column("category_id").to_numpy(), "timestamp": raw.column("timestamp").to_numpy(),
           "behavior": behaviour.to_numpy().astype(np.int64)}
    out["line"] = np.arange(1, raw.num_rows + 1, dtype=np.int64)
    ts = out["timestamp"]
    inside = (ts >= FIRST_DAY) & (ts < FIRST_DAY + N_DAYS * 86400)
    local = np.datetime_as_string((ts[~inside] + UTC_OFFSET).astype("datetime64[s]"), unit="m")
    dropped = [(int(ln), f"timestamp {int(t)} ({when.replace('T', ' ')} UTC+8) is outside 2017-11-25..2017-12-03")
               for ln, t, when in zip(out["line"][~inside], ts[~inside], local)]
    return {k: v[inside] for k, v in out.items()}, dropped


def build_impressions(ev: dict[str, np.ndarray], max_len: int) -> pa.Table:
    """One row per (user, item, day) with a view (see the module docstring), in file order of the impressions."""
    ts = ev["timestamp"]
    day = (ts - FIRST_DAY) // 86400
    groups = np.unique(np.stack([ev["user"], ev["item"], day], axis=1), axis=0, return_inverse=True)[1].ravel()
    is_pv = ev["behavior"] == 0
    pv = np.flatnonzero(is_pv)
    order = pv[np.lexsort((ev["line"][pv], ts[pv], groups[pv]))]  # views by (group, time, file line)
    first = order[np.r_[True, groups[order][1:] != groups[order][:-1]]]  # first view of each viewed group
    first = np.sort(first)  # impressions in file order
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    impression_ts = np.full(n_groups, np.iinfo(np.int64).max)
    impression_ts[groups[first]] = ts[first]
    row_of_group = np.full(n_groups, -1)
    row_of_group[groups[first]] = np.arange(len(first))
    labels = {name: np.zeros(len(first), dtype=bool) for name in LABELS}
    after = ~is_pv & (ts >= impression_ts[groups])  # engagement at or after the day's first view of the item
    for b, name in enumerate(BEHAVIOURS[1:], 1):
        hit = row_of_group[groups[after & (ev["behavior"] == b)]]
        labels[name][hit] = True
        labels["engaged"][hit] = True
    # histories: every kept view, rows = the impressions (themselves views)
    position_in_pv = np.searchsorted(pv, first)
    hist = history_columns(ev["user"][pv], ts[pv], {
        "hist_items": [str(x) for x in ev["item"][pv].tolist()],
        "hist_categories": [str(x) for x in ev["category"][pv].tolist()],
        "hist_ts": [str(x) for x in ts[pv].tolist()],
    }, max_len, rows=position_in_pv)
    local = ts[first] + UTC_OFFSET
    days_since_epoch = local // 86400
    table = {name: pa.array(np.where(y, "1", "0"), pa.string()) for name, y in labels.items()}
    table.update({
        "user": pc.cast(pa.array(ev["user"][first]), pa.string()),
        "item": pc.cast(pa.array(ev["item"][first]), pa.string()),
        "category": pc.cast(pa.array(ev["category"][first]), pa.string()),
        "hour": pc.cast(pa.array((local % 86400) // 3600), pa.string()),
        "weekday": pa.array(np.array(WEEKDAYS)[(days_since_epoch + 3) % 7], pa.string()),  # 1970-01-01: Thu
        "date": pa.array(np.datetime_as_string(days_since_epoch.astype("datetime64[D]")), pa.string()),
        "day": pa.array(day[first] + 1, pa.int64()),
        "timestamp": pa.array(ts[first], pa.int64()),
    })
    table.update(hist)
    return pa.table(table)


def split_by_day(table: pa.Table, split_days: tuple[int, int, int]) -> dict[str, pa.Table]:
    """Days ``1..a`` → train, the next ``b`` → valid, the last ``c`` → test; rows by (timestamp, user, item)."""
    a, b, _ = split_days
    day = table.column("day").to_numpy()
    ts = table.column("timestamp").to_numpy()
    users = table.column("user").to_numpy(zero_copy_only=False).astype(np.int64)
    items = table.column("item").to_numpy(zero_copy_only=False).astype(np.int64)
    order = np.lexsort((items, users, ts))
    out = {}
    for name, lo, hi in (("train", 1, a), ("valid", a + 1, a + b), ("test", a + b + 1, N_DAYS)):
        rows = order[(day[order] >= lo) & (day[order] <= hi)]
        out[name] = table.take(pa.array(rows)).drop_columns(["day"])
    return out


def _check_options(label, labels, max_len, split_days) -> tuple[list[str], tuple[int, int, int]]:
    def bad(msg: str) -> ConfigError:
        return ConfigError(f"{NAME} recipe: {msg}")

    if label is not None and labels is not None:
        raise bad("give 'label' (one label) or 'labels' (several), not both")
    if labels is None:
        chosen = [label or "engaged"]
    elif labels == "all":
        chosen = list(LABELS)
    else:
        chosen = [labels] if isinstance(labels, str) else list(labels)
        if not chosen or len(set(chosen)) != len(chosen):
            raise bad(f"labels must be 'all' or a list of distinct labels, not {labels!r}")
    unknown = [x for x in chosen if x not in LABELS]
    if unknown:
        raise bad(f"unknown label(s) {unknown}; choose from {list(LABELS)} (or labels: all)")
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise bad(f"max_len must be a positive integer, not {max_len!r}")
    try:
        sd = tuple(int(x) for x in split_days)
        ok = len(sd) == 3 and sd == tuple(split_days) and min(sd) >= 0 and sd[0] > 0 and sum(sd) == N_DAYS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise bad(f"split_days must be three whole numbers of days (train > 0) summing to {N_DAYS}, "
                  f"not {split_days!r}")
    return chosen, sd


def _log_file(data_dir: str | None, recipe_name: str) -> Path:
    """``UserBehavior.csv`` in the data directory (or the path itself); a missing file is a DataError."""
    d = find_data_dir(DIR_NAME, data_dir)
    path = d / FILE if d.is_dir() else d
    if not path.is_file():
        raise DataError(f"{recipe_name}: {FILE} not found", path=str(path))
    return path


@recipe(NAME, "Taobao UserBehavior (84k events): first daily view = impression, same-day cart/fav/buy labels, "
              "viewing history, split by Beijing day 7/1/1")
def taobao_source(data_dir: str | None = None, *, label: str | None = None, labels: str | list[str] | None = None,
                  max_len: int = 50, split_days=DEFAULT_SPLIT_DAYS) -> DataSource:
    chosen, sd = _check_options(label, labels, max_len, split_days)
    path = _log_file(data_dir, NAME)

    def load() -> dict[str, RawTable]:
        events, dropped = read_behaviour(path)
        parts = split_by_day(build_impressions(events, max_len), sd)
        return {split: RawTable(t, str(path), 0, "memory", skipped=list(dropped) if split == "train" else [])
                for split, t in parts.items()}

    return DataSource(name=NAME, schema=taobao_schema(chosen, max_len), loader=load, inputs=[str(path)],
                      version=f"1:labels={','.join(chosen)}:max_len={max_len}:split_days={','.join(map(str, sd))}",
                      time_column="timestamp", utc_offset_hours=8.0)


# ------------------------------------------------------------------------------------------------ view → buy delays
CONV_NAME = "taobao-conversions"
CONV_WINDOWS = ("1h", "1d", "3d")


def build_view_to_buy(ev: dict[str, np.ndarray]) -> pa.Table:
    """One row per (user, item) with a view: the first view is the "click" (``click_time``, and the Beijing
    ``day`` index of it); ``conversion_time`` is the first ``buy`` of the pair at or after that view (empty if
    none; a buy before the first view is not a conversion of it). Rows in (click_time, user, item) order."""
    t = pa.table({"user": ev["user"], "item": ev["item"], "category": ev["category"],
                  "behavior": ev["behavior"], "ts": ev["timestamp"]})
    views = t.filter(pc.equal(t.column("behavior"), BEHAVIOURS.index("pv")))
    first = views.group_by(["user", "item"], use_threads=False).aggregate([("ts", "min"), ("category", "first")])
    buys = t.filter(pc.equal(t.column("behavior"), BEHAVIOURS.index("buy"))).select(["user", "item", "ts"])
    joined = buys.join(first.select(["user", "item", "ts_min"]), ["user", "item"])
    after = joined.filter(pc.greater_equal(joined.column("ts"), joined.column("ts_min")))
    conv = after.group_by(["user", "item"]).aggregate([("ts", "min")]).rename_columns(["user", "item", "conv"])
    rows = first.join(conv, ["user", "item"], join_type="left outer").sort_by(
        [("ts_min", "ascending"), ("user", "ascending"), ("item", "ascending")])
    click = rows.column("ts_min").to_numpy()
    local = click + UTC_OFFSET
    conv_t = rows.column("conv")
    return pa.table({
        "user": pc.cast(rows.column("user"), pa.string()),
        "item": pc.cast(rows.column("item"), pa.string()),
        "category": pc.cast(rows.column("category_first"), pa.string()),
        "hour": pa.array(((local // 3600) % 24).astype(np.int64)).cast(pa.string()),
        "weekday": pa.array(np.array(WEEKDAYS)[((local // 86400) + 3) % 7]),  # 1970-01-01 was a Thursday
        "click_time": pa.array(click).cast(pa.string()),
        "conversion_time": pc.fill_null(pc.cast(conv_t, pa.string()), ""),
        "timestamp": pa.array(click),
        "day": pa.array((click - FIRST_DAY) // 86400 + 1),
    })


def conversions_schema(windows=CONV_WINDOWS) -> Schema:
    from rankcraft.data.schema import LabelSpec

    label = LabelSpec(name="buy", kind="delay", column="conversion_time", click_time="click_time",
                      windows=list(windows), observed_at=float(FIRST_DAY + N_DAYS * 86400))
    feats = [FeatureSpec(name="user", type="categorical", source="user"),
             FeatureSpec(name="item", type="categorical", source="item", min_count=2),
             FeatureSpec(name="category", type="categorical", source="item"),
             FeatureSpec(name="hour", type="categorical", source="context"),
             FeatureSpec(name="weekday", type="categorical", source="context")]
    return Schema(labels=[label], features=feats)


@recipe(CONV_NAME, "Taobao UserBehavior view → buy delays: first view of a (user, item) = click, first later buy "
                   "= conversion; delay labels 1h/1d/3d with maturity, split by Beijing day 7/1/1")
def taobao_conversions_source(data_dir: str | None = None, *, windows=CONV_WINDOWS,
                              split_days=DEFAULT_SPLIT_DAYS) -> DataSource:
    """The delayed-conversion view of the same log (docs/windows.md): every split keeps ``click_time`` /
    ``conversion_time`` (unix seconds) for the ``buy`` label of kind ``delay``, observed at the end of the log
    (2017-12-04 00:00 Beijing time) for every split: a click's 3d window is mature only if it is three days older
    than that, so the validation and test days have immature long windows. 715 conversions in the training days of
    the shared copy (delays 36 s to 8.9 days)."""
    _, sd = _check_options(None, None, 50, split_days)
    path = _log_file(data_dir, CONV_NAME)

    def load() -> dict[str, RawTable]:
        events, dropped = read_behaviour(path)
        parts = split_by_day(build_view_to_buy(events), sd)
        return {split: RawTable(t, str(path), 0, "memory", skipped=list(dropped) if split == "train" else [])
                for split, t in parts.items()}

    return DataSource(name=CONV_NAME, schema=conversions_schema(windows), loader=load, inputs=[str(path)],
                      version=f"1:windows={','.join(map(str, windows))}:split_days={','.join(map(str, sd))}",
                      time_column="click_time", utc_offset_hours=8.0)
