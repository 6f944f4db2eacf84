"""Fitted feature encoders: raw string columns → numeric arrays, vectorised with pyarrow/numpy.

Fitting uses the training split only. The fitted state is plain JSON (``Encoders.to_json``) — never pickle — and is
saved beside the processed cache and in every run directory, so inference encodes new files exactly as training did.

Id conventions (see :class:`rankcraft.data.schema.FeatureSpec`): 0 = padding/missing, 1 = OOV, 2.. = vocabulary.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankcraft.data.delays import delay_label_values
from rankcraft.data.features import FeatureInfo, FeatureSet, label_key
from rankcraft.data.readers import RawTable
from rankcraft.data.schema import FeatureSpec, LabelSpec, Schema
from rankcraft.errors import DataError

PAD, OOV, FIRST_ID = 0, 1, 2

# Preparation warns (see :func:`vocabulary_warnings`) when more than this share of a categorical / multi-valued /
# sequence feature's validation tokens are out of vocabulary, or when more than LIST_LIKE_WARN_SHARE of its most
# frequent training values look like lists under another separator. Splits with fewer than OOV_MIN_TOKENS tokens
# are too small to judge.
OOV_WARN_RATE = 0.5
LIST_LIKE_WARN_SHARE = 0.5
OOV_MIN_TOKENS = 20
_VALUES_CHECKED = 10_000  # the most frequent vocabulary values inspected for list-like shapes
_SEPARATORS = (",", ";", "|", "^", "\t")


# ---------------------------------------------------------------------------------------------- parsing helpers
def _column(raw: RawTable, name: str) -> pa.Array:
    col = raw.table.column(name)
    return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col


def _bad_float_rows(values: pa.Array) -> list[int]:
    """Rows whose non-empty cell Arrow cannot cast to float64 (the same rule as :func:`parse_floats`).

    Slow path, used only after a fast cast failed: each *distinct* value is tried on its own.
    """
    enc = pc.dictionary_encode(pc.utf8_trim_whitespace(values))
    bad_codes = []
    for code, v in enumerate(enc.dictionary.to_pylist()):
        if v is None or v == "":
            continue
        try:
            pc.cast(pa.array([v], pa.string()), pa.float64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            bad_codes.append(code)
    if not bad_codes:
        return []
    idx = enc.indices.to_numpy(zero_copy_only=False)
    return np.flatnonzero(np.isin(idx, bad_codes)).tolist()


def _lenient_floats(values: pa.Array) -> tuple[np.ndarray, list[int]]:
    """Like :func:`parse_floats` but unparseable cells become NaN; returns (floats, bad rows)."""
    x = parse_floats(values)
    if x is not None:
        return x, []
    bad = _bad_float_rows(values)
    mask = np.zeros(len(values), dtype=bool)
    mask[bad] = True
    cleaned = pc.if_else(pa.array(mask), pa.scalar("", pa.string()), values)
    x = parse_floats(cleaned)
    return x, bad


def parse_floats(values: pa.Array) -> np.ndarray | None:
    """Strings → float64 with NaN for empty cells; ``None`` if some cell is not a number."""
    stripped = pc.utf8_trim_whitespace(values)
    nulled = pc.if_else(pc.equal(stripped, ""), pa.scalar(None, pa.string()), stripped)
    try:
        out = pc.cast(nulled, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return out.to_numpy(zero_copy_only=False)


_QUOTES = "'\""


def _is_list_type(t: pa.DataType) -> bool:
    return pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)


def _check_not_list(raw: RawTable, spec: FeatureSpec) -> None:
    """A list-typed column (e.g. Parquet ``list<...>``) given as a single-valued feature is a one-line error."""
    if spec.type in ("multi_categorical", "sequence"):
        return
    typ = raw.table.schema.field(spec.raw_column).type
    if _is_list_type(typ):
        raise DataError(f"is a list column ({typ}) but feature '{spec.name}' is {spec.type}; a list column needs "
                        "`type: multi_categorical` or `type: sequence`", path=raw.path, column=spec.raw_column)


def _split_cells(values: pa.Array, sep: str) -> tuple[pa.Array, np.ndarray | None]:
    """Split string cells into lists: a cell in list syntax (``[a, b]``, ``['a', 'b']``, ``[]`` as pandas writes
    lists) is split on commas inside its brackets, with whitespace and quotes stripped from every value; any other
    cell is split on ``sep``. Returns (lists, per-row mask of list-syntax cells or ``None`` if there are none)."""
    trimmed = pc.utf8_trim_whitespace(values)
    bracketed = pc.and_(pc.starts_with(trimmed, "["), pc.ends_with(trimmed, "]"))
    if not pc.any(bracketed).as_py():
        return pc.split_pattern(values, sep), None
    inner = pc.utf8_slice_codeunits(trimmed, 1, -1)
    lists = pc.if_else(bracketed, pc.split_pattern(inner, ","), pc.split_pattern(values, sep))
    return lists, bracketed.to_numpy(zero_copy_only=False)


def _split_lists(values: pa.Array, sep: str) -> tuple[pa.Array, np.ndarray]:
    """Split separated cells (or take list cells, e.g. Parquet ``list<...>``, as they are); returns (flat non-empty
    values, row of each). Cells in list syntax are accepted whatever ``sep`` is (see :func:`_split_cells`)."""
    bracketed = None
    if _is_list_type(values.type):
        lists = values if values.type.value_type == pa.string() else pc.cast(values, pa.list_(pa.string()))
    else:
        lists, bracketed = _split_cells(values, sep)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    rows = np.repeat(np.arange(len(values), dtype=np.int64), lengths)
    if bracketed is not None:  # strip blanks and quotes from the values of list-syntax cells only
        from_list = pa.array(bracketed[rows])
        cleaned = pc.utf8_trim(pc.utf8_trim_whitespace(flat), characters=_QUOTES)
        flat = pc.if_else(from_list, cleaned, flat)
    flat = pc.fill_null(flat, "")
    keep = pc.not_equal(flat, "")
    flat = flat.filter(keep)
    rows = rows[keep.to_numpy(zero_copy_only=False)]
    return flat, rows


def _pad_lists(ids: np.ndarray, rows: np.ndarray, n_rows: int, max_len: int, *, keep_last: bool,
               dtype=np.int64) -> np.ndarray:
    """Scatter a ragged list (``ids`` grouped by ``rows``, rows ascending) into a padded ``[n_rows, max_len]``.

    ``keep_last=False``: keep the first ``max_len`` values, right-padded. ``keep_last=True``: keep the last
    ``max_len`` values, left-padded (most recent value in the last column).
    """
    out = np.zeros((n_rows, max_len), dtype=dtype)
    if len(ids) == 0:
        return out
    lengths = np.bincount(rows, minlength=n_rows)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pos = np.arange(len(ids)) - starts[rows]
    if keep_last:
        from_end = lengths[rows] - 1 - pos
        sel = from_end < max_len
        out[rows[sel], max_len - 1 - from_end[sel]] = ids[sel]
    else:
        sel = pos < max_len
        out[rows[sel], pos[sel]] = ids[sel]
    return out


# ---------------------------------------------------------------------------------------------- vocabularies
@dataclass
class Vocabulary:
    """Value → id mapping (or stable hashing) for categorical values."""

    values: list[str] | None = None
    hash_buckets: int | None = None

    @property
    def size(self) -> int:
        if self.hash_buckets is not None:
            return FIRST_ID + self.hash_buckets
        return FIRST_ID + len(self.values or [])

    @classmethod
    def fit(cls, values: pa.Array, min_count: int, hash_buckets: int | None) -> "Vocabulary":
        if hash_buckets is not None:
            return cls(hash_buckets=hash_buckets)
        counts = pc.value_counts(values.filter(pc.not_equal(values, "")))
        vals = counts.field("values").to_pylist()
        cnts = counts.field("counts").to_numpy()
        kept = [(v, int(c)) for v, c in zip(vals, cnts) if c >= min_count]
        kept.sort(key=lambda vc: (-vc[1], vc[0]))  # deterministic: by frequency, then value
        return cls(values=[v for v, _ in kept])

    def encode(self, values: pa.Array) -> np.ndarray:
        """Strings → int64 ids (``""`` → 0, unknown → 1)."""
        n = len(values)
        if n == 0:
            return np.zeros(0, dtype=np.int64)
        empty = pc.equal(values, "").to_numpy(zero_copy_only=False)
        if self.hash_buckets is not None:
            enc = pc.dictionary_encode(values)
            uniq = enc.dictionary.to_pylist()
            codes = np.array([FIRST_ID + zlib.crc32(u.encode()) % self.hash_buckets for u in uniq], dtype=np.int64)
            ids = codes[enc.indices.to_numpy(zero_copy_only=False)]
        else:
            if getattr(self, "_arrow_values", None) is None:  # built once per vocabulary, not per call
                self._arrow_values = pa.array(self.values or [], pa.string())
            idx = pc.index_in(values, value_set=self._arrow_values)
            ids = pc.fill_null(pc.add(idx, FIRST_ID), OOV).to_numpy(zero_copy_only=False).astype(np.int64)
        ids[empty] = PAD
        return ids

    def to_dict(self) -> dict:
        return {"values": self.values, "hash_buckets": self.hash_buckets}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        return cls(values=d.get("values"), hash_buckets=d.get("hash_buckets"))


# ---------------------------------------------------------------------------------------------- the encoder set
class Encoders:
    """All fitted encoders of a schema.

    ``state[name]`` holds, per feature: ``vocab`` (categorical, multi-valued, sequence), ``mean``/``std``
    (standardize) or ``boundaries`` (bucketize).
    """

    def __init__(self, schema: Schema, state: dict[str, dict]):
        self.schema = schema
        self.state = state

    # ------------------------------------------------------------------ validation
    def validate(self, raw: RawTable) -> RawTable:
        """Check labels ∈ {0, 1} and numeric cells; raise (or, with ``on_error: skip``, drop and count) bad rows."""
        return validate_table(raw, self.schema)

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(cls, raw: RawTable, schema: Schema) -> "Encoders":
        state: dict[str, dict] = {}
        for spec in schema.features:
            if spec.share_vocab_with is not None:
                continue
            col = _column(raw, spec.raw_column)
            if spec.type == "categorical":
                state[spec.name] = {"vocab": Vocabulary.fit(col, spec.min_count, spec.hash_buckets).to_dict()}
            elif spec.type in ("multi_categorical", "sequence"):
                flat, _ = _split_lists(col, spec.separator)
                state[spec.name] = {"vocab": Vocabulary.fit(flat, spec.min_count, spec.hash_buckets).to_dict()}
            else:
                x = _numeric_values(raw, spec)
                st: dict = {}
                if spec.transform == "standardize":
                    mean = float(np.mean(x)) if len(x) else 0.0
                    std = float(np.std(x)) if len(x) else 1.0
                    st = {"mean": mean, "std": std if std > 0 else 1.0}
                elif spec.transform == "bucketize":
                    qs = np.quantile(x, np.linspace(0, 1, spec.buckets + 1)[1:-1]) if len(x) else np.array([])
                    st = {"boundaries": sorted(set(float(q) for q in qs))}
                state[spec.name] = st
        return cls(schema, state)

    # ------------------------------------------------------------------ transform
    def vocab(self, spec: FeatureSpec) -> Vocabulary:
        owner = spec.share_vocab_with or spec.name
        return Vocabulary.from_dict(self.state[owner]["vocab"])

    def transform(self, raw: RawTable, *, labels: bool = True,
                  shared: RawTable | None = None) -> dict[str, np.ndarray]:
        """Encode a validated table into column arrays (see :mod:`rankcraft.data.features` for the layout).
        ``labels=False`` encodes the features only (scoring input needs no labels).

        ``shared``: a validated one-row table of columns that are the same for every row (a scoring request's user
        and context values). A feature whose raw column is there is encoded once, from that row, and broadcast
        over the ``raw.num_rows`` rows; the result equals encoding the value repeated in every row."""
        n = raw.num_rows
        out: dict[str, np.ndarray] = {}
        if shared is not None and shared.num_rows != 1:
            raise ValueError("the shared table must have exactly one row")
        shared_cols = set(shared.table.column_names) if shared is not None else set()

        def source(column: str) -> RawTable:
            return shared if column in shared_cols else raw  # type: ignore[return-value]

        def rows(arr: np.ndarray, column: str) -> np.ndarray:
            return np.repeat(arr, n, axis=0) if column in shared_cols else arr

        if labels:
            first = None
            for spec in self.schema.labels:
                values, problems = labels_of(raw, spec)
                if problems:  # validate_table ran first, so this only happens for unvalidated tables
                    row, column, why = problems[0]
                    raise raw.error(row, column, why)
                for name, y in values.items():
                    out[label_key(name)] = y.astype(np.float32)
                    if first is None and spec.outputs[name] != "weight":
                        first = out[label_key(name)]
            if first is not None:
                out["label"] = first
        cats, nums = [], []
        for spec in self.schema.features:
            src, rc = source(spec.raw_column), spec.raw_column
            if spec.type == "categorical":
                cats.append(rows(self.vocab(spec).encode(_column(src, rc)), rc))
            elif spec.type == "numeric":
                x = _numeric_values(src, spec)
                if spec.transform == "bucketize":
                    cats.append(rows(FIRST_ID + np.searchsorted(self.state[spec.name]["boundaries"], x,
                                                                side="right"), rc))
                else:
                    nums.append(rows(self._numeric_transform(spec, x).astype(np.float32), rc))
            else:
                flat, lrows = _split_lists(_column(src, rc), spec.separator)
                ids = self.vocab(spec).encode(flat)
                keep_last = spec.type == "sequence"
                out[spec.name] = rows(_pad_lists(ids, lrows, src.num_rows, spec.max_len, keep_last=keep_last), rc)
                if spec.type == "sequence" and spec.timestamp_column:
                    tc = spec.timestamp_column
                    if (tc in shared_cols) != (rc in shared_cols):
                        raise DataError(f"'{rc}' and its timestamps '{tc}' must come from the same place (both "
                                        "per row or both shared)", path=raw.path, column=tc)
                    tflat, trows = _split_lists(_column(src, tc), spec.separator)
                    ts = parse_floats(tflat)
                    if ts is None or len(ts) != len(ids) or not np.array_equal(trows, lrows):
                        raise _timestamp_error(src, spec, lrows, tflat, trows, src.num_rows)
                    # float64: unix seconds (~1e9) would lose ~1 minute of resolution in float32
                    out[spec.name + "__ts"] = rows(_pad_lists(np.nan_to_num(ts), lrows, src.num_rows, spec.max_len,
                                                              keep_last=True, dtype=np.float64), rc)
        out["cat"] = (np.stack(cats, axis=1) if cats else np.zeros((n, 0))).astype(np.int64)
        out["num"] = (np.stack(nums, axis=1) if nums else np.zeros((n, 0))).astype(np.float32)
        if self.schema.user_column:
            uc = self.schema.user_column
            out["group"] = rows(pc.dictionary_encode(_column(source(uc), uc)).indices.to_numpy(
                zero_copy_only=False).astype(np.int64), uc)
        return out

    def _numeric_transform(self, spec: FeatureSpec, x: np.ndarray) -> np.ndarray:
        if spec.transform == "log":
            return np.log1p(np.maximum(x, 0.0))
        if spec.transform == "standardize":
            st = self.state[spec.name]
            return (x - st["mean"]) / st["std"]
        return x

    # ------------------------------------------------------------------ metadata
    def feature_set(self) -> FeatureSet:
        infos = []
        for spec in self.schema.features:
            kind = spec.type
            vocab_size = 0
            if spec.type == "numeric" and spec.transform == "bucketize":
                kind = "categorical"
                vocab_size = FIRST_ID + len(self.state[spec.name]["boundaries"]) + 1
            elif spec.type != "numeric":
                vocab_size = self.vocab(spec).size
            infos.append(FeatureInfo(
                name=spec.name, kind=kind, source=spec.source, vocab_size=vocab_size,
                max_len=spec.max_len if spec.type in ("multi_categorical", "sequence") else 1,
                embedding_table=spec.share_vocab_with or spec.name,
                has_timestamps=spec.timestamp_column is not None))
        return FeatureSet(features=tuple(infos), labels=tuple(self.schema.label_names),
                          label_kinds=self.schema.label_kinds,
                          has_group=self.schema.user_column is not None)

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> str:
        return json.dumps({"schema": self.schema.model_dump(mode="json"), "state": self.state}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Encoders":
        d = json.loads(text)
        return cls(Schema.model_validate(d["schema"]), d["state"])


# ---------------------------------------------------------------------------------------------- validation
def _timestamp_error(raw: RawTable, spec: FeatureSpec, rows: np.ndarray, tflat: pa.Array, trows: np.ndarray,
                     n: int) -> DataError:
    """Error at the first row whose timestamps do not pair one-to-one with its ids (or do not parse)."""
    counts_ids = np.bincount(rows, minlength=n)
    counts_ts = np.bincount(trows, minlength=n)
    diff = np.flatnonzero(counts_ids != counts_ts)
    bad_ts = _bad_float_rows(tflat)
    candidates = []
    if len(diff):
        candidates.append((int(diff[0]), f"timestamps do not pair with ids: {counts_ts[diff[0]]} timestamp(s) "
                                         f"for {counts_ids[diff[0]]} id(s) of sequence '{spec.name}'"))
    if bad_ts:
        candidates.append((int(trows[bad_ts[0]]), "timestamp is not a number"))
    row, why = min(candidates) if candidates else (0, "timestamps do not match the sequence ids")
    return raw.error(row, spec.timestamp_column, why)


def _numeric_values(raw: RawTable, spec: FeatureSpec) -> np.ndarray:
    x = parse_floats(_column(raw, spec.raw_column))
    if x is None:  # validate_table ran first, so this only happens for unvalidated tables
        bad = _bad_float_rows(_column(raw, spec.raw_column))
        raise raw.error(bad[0], spec.raw_column, "not a number")
    x = x.copy()
    x[~np.isfinite(x)] = spec.fill_value
    return x


_KIND_RULE = {
    "binary": ("must be 0 or 1", lambda y: (y == 0) | (y == 1)),
    "soft": ("must be a probability in [0, 1]", lambda y: (y >= 0) & (y <= 1)),
    "regression": ("must be a finite number", np.isfinite),
    "weight": ("must be a non-negative number", lambda y: np.isfinite(y) & (y >= 0)),
}


def label_values(raw: RawTable, spec: LabelSpec) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The label's values (float64, after ``map``/``threshold``) and every row whose value does not fit the
    label's kind (unparseable, missing, unmapped or out of range), in row order. Bad rows hold NaN."""
    col = _column(raw, spec.raw_column)
    problems: list[tuple[int, str]] = []
    if spec.map is not None:
        keys = list(spec.map)
        idx = pc.index_in(pc.utf8_trim_whitespace(col), value_set=pa.array(keys, pa.string()))
        missing = pc.is_null(idx).to_numpy(zero_copy_only=False)
        table = np.array([spec.map[k] for k in keys] + [np.nan], dtype=np.float64)
        y = table[pc.fill_null(idx, len(keys)).to_numpy(zero_copy_only=False)]
        bad = np.flatnonzero(missing)
        if len(bad):
            vals = col.take(pa.array(bad)).to_pylist()
            problems += [(int(i), f"label value {v!r} is not in the label's map (keys: {', '.join(keys)})"
                          if v is not None and v.strip() else "label is missing") for i, v in zip(bad, vals)]
    else:
        y, unparseable = _lenient_floats(col)
        problems += [(i, "label is not a number") for i in unparseable]
        if spec.threshold is not None:
            y = np.where(np.isfinite(y), (y >= spec.threshold).astype(np.float64), np.nan)
    known = {i for i, _ in problems}
    what, rule = _KIND_RULE[spec.kind]
    with np.errstate(invalid="ignore"):
        out_of_range = [int(i) for i in np.flatnonzero(~rule(y)) if int(i) not in known]
    if out_of_range:
        vals = col.take(pa.array(out_of_range)).to_pylist()
        name = "label" if spec.kind == "binary" else f"{spec.kind} label"
        problems += [(i, f"{name} {what}, found {v!r}" if v is not None and v.strip() else "label is missing")
                     for i, v in zip(out_of_range, vals)]
    if problems:
        y = y.copy()
        y[[i for i, _ in problems]] = np.nan
    return y, sorted(problems)


def labels_of(raw: RawTable, spec: LabelSpec) -> tuple[dict[str, np.ndarray], list[tuple[int, str, str]]]:
    """The label columns ``spec`` produces (name → float64 values; a delay label derives several, see
    :mod:`rankcraft.data.delays`) and every bad row as ``(row, column, reason)``."""
    if spec.kind == "delay":
        return delay_label_values(raw, spec)
    y, problems = label_values(raw, spec)
    return {spec.name: y}, [(r, spec.raw_column, why) for r, why in problems]


def validate_table(raw: RawTable, schema: Schema, *, labels: bool = True, partial: bool = False) -> RawTable:
    """Find bad labels and unparseable numbers. ``on_error: raise`` → :class:`DataError` at the first bad cell
    (file, line, column); ``skip`` → the rows are dropped and recorded in ``raw.skipped``. ``partial``: check only
    the features whose raw column the table has (a scoring request's shared user/context block)."""
    problems: list[tuple[int, str, str]] = []  # (row, column, reason)
    for spec in schema.labels if labels else []:
        problems += labels_of(raw, spec)[1]
        if problems and schema.on_error == "raise":
            break
    for spec in schema.features:
        if partial and spec.raw_column not in raw.table.column_names:
            continue
        _check_not_list(raw, spec)
        if spec.type != "numeric":
            continue
        col = _column(raw, spec.raw_column)
        if parse_floats(col) is None:
            problems += [(r, spec.raw_column, "not a number") for r in _bad_float_rows(col)]
    if not problems:
        return raw
    if schema.on_error == "raise":
        row, column, why = min(problems)
        raise raw.error(row, column, why)
    bad_rows = sorted({r for r, _, _ in problems})
    reasons = {}
    for r, c, why in problems:
        reasons.setdefault(r, f"column '{c}': {why}")
    keep = np.ones(raw.num_rows, dtype=bool)
    keep[bad_rows] = False
    return raw.filter_rows(pa.array(keep), [(r, reasons[r]) for r in bad_rows])


# ---------------------------------------------------------------------------------------------- vocabulary checks
def _shown(sep: str) -> str:
    return "\\t" if sep == "\t" else sep


def _list_like(spec: FeatureSpec, values: list[str]) -> str:
    """Why the (most frequent) vocabulary values of ``spec`` look like lists it does not split, or ``""``."""
    if not values:
        return ""
    arr = pa.array(values[:_VALUES_CHECKED], pa.string())
    n = len(arr)
    trimmed = pc.utf8_trim_whitespace(arr)

    def share(mask: pa.Array) -> float:
        return pc.sum(pc.cast(mask, pa.int64())).as_py() / n

    bracket = pc.or_(pc.or_(pc.starts_with(trimmed, "["), pc.ends_with(trimmed, "]")),
                     pc.or_(pc.match_substring_regex(trimmed, "^['\"]"), pc.match_substring_regex(trimmed, "['\"]$")))
    if share(bracket) > LIST_LIKE_WARN_SHARE:
        if spec.type == "categorical":
            return ("its values look like lists in '[a, b]' syntax: declare it `type: multi_categorical` (or "
                    "`sequence`), which splits them")
        return ("its values look like pieces of lists in '[a, b]' syntax (brackets or quotes left after splitting "
                f"on '{_shown(spec.separator)}')")
    if spec.type == "categorical":
        return ""
    for sep in _SEPARATORS:
        if sep != spec.separator and share(pc.match_substring(arr, sep)) > LIST_LIKE_WARN_SHARE:
            return (f"its values look like lists separated by '{_shown(sep)}' but its separator is "
                    f"'{_shown(spec.separator)}' (set `separator: \"{_shown(sep)}\"`)")
    return ""


def vocabulary_warnings(encoders: Encoders, valid: dict[str, np.ndarray]) -> list[str]:
    """Warnings about categorical, multi-valued and sequence features after fitting (on train) and encoding the
    validation split ``valid`` (the arrays of :meth:`Encoders.transform`).

    A feature is reported when more than :data:`OOV_WARN_RATE` of its non-empty validation tokens are out of
    vocabulary (id 1; judged only with at least :data:`OOV_MIN_TOKENS` tokens; hashed features have no OOV), or when
    its most frequent training values look like lists its separator does not split (values containing another
    common separator, or left-over ``[``/``]``/quotes), each message naming the feature, the rate and the likely
    cause. Returns one line per warning.
    """
    out = []
    cat_index = 0
    for spec in encoders.schema.features:
        if spec.type == "numeric":
            if spec.transform == "bucketize":
                cat_index += 1
            continue
        if spec.type == "categorical":
            ids = valid["cat"][:, cat_index] if "cat" in valid and valid["cat"].shape[1] > cat_index else None
            cat_index += 1
        else:
            ids = valid.get(spec.name)
        vocab = encoders.vocab(spec)
        if vocab.hash_buckets is not None:
            continue
        list_like = _list_like(spec, vocab.values or [])
        where = f"feature '{spec.name}' (column '{spec.raw_column}')"
        tokens = int(np.count_nonzero(ids)) if ids is not None else 0
        rate = float(np.count_nonzero(ids == OOV)) / tokens if tokens else 0.0
        if tokens >= OOV_MIN_TOKENS and rate > OOV_WARN_RATE:
            if list_like:
                cause = list_like
            elif not vocab.values:
                cause = "the training split has no values for it"
            elif spec.type == "categorical":
                cause = ("values first seen after the training period (e.g. new users or items in a time split), "
                         "different formats or ids between the files")
            else:
                cause = "different formats or ids between the files, or a wrong separator"
            if spec.min_count > 1 and vocab.values is not None:
                cause += f", or min_count {spec.min_count} too high"
            out.append(f"{where}: {rate:.0%} of its {tokens:,} validation values are out of vocabulary (not seen in "
                       f"training); likely cause: {cause}")
        elif list_like:
            out.append(f"{where}: {list_like}")
    return out


def describe_skips(raw: RawTable, limit: int = 5) -> str:
    """One paragraph summarising skipped rows, for the end-of-run report."""
    if not raw.skipped:
        return ""
    first = "; ".join(f"line {ln}: {why}" if ln else why for ln, why in raw.skipped[:limit])
    more = "" if len(raw.skipped) <= limit else f" (+{len(raw.skipped) - limit} more)"
    return f"{raw.path}: skipped {len(raw.skipped)} bad row(s): {first}{more}"

