"""Declarative, validated dataset schema.

A schema says which raw columns are labels and how every feature column is encoded. It can be written as YAML::

    labels: [label]              # or {name, column, kind: binary|soft|regression|weight, threshold, map}
    user_column: user            # optional: groups for GAUC
    delimiter: ","
    features:
      - {name: user, type: categorical, source: user, min_count: 2}
      - {name: price, type: numeric, transform: log, fill_value: 0}
      - {name: genres, type: multi_categorical, separator: "|", max_len: 6, source: item}
      - {name: clicks, type: sequence, separator: "^", max_len: 50, share_vocab_with: item}

or built in Python with the same pydantic models. Unknown keys are errors (a typo never passes silently) and the
file is parsed with ``yaml.safe_load`` — nothing is evaluated.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from rankcraft.config import format_validation_error, read_yaml_file
from rankcraft.data.delays import derived_label_kinds, parse_duration, window_suffix
from rankcraft.errors import ConfigError

FeatureType = Literal["categorical", "numeric", "multi_categorical", "sequence"]
Source = Literal["user", "item", "context"]
NumericTransform = Literal["none", "log", "standardize", "bucketize"]
# keys of the batch dict that features may not use as names (see rankcraft.data.features)
RESERVED_NAMES = frozenset({"label", "labels", "cat", "num", "group"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureSpec(_Strict):
    """One input feature.

    Encoding (fitted on the training split only):

    * ``categorical``: vocabulary of values seen at least ``min_count`` times; ids ``2..V+1``; id 1 is the OOV
      bucket (rare and unseen values), id 0 is padding/missing. With ``hash_buckets=H`` the id is
      ``2 + crc32(value) mod H`` instead (no vocabulary is stored).
    * ``numeric``: missing/empty → ``fill_value``; then ``transform``: ``log`` is ``log1p(max(x, 0))``,
      ``standardize`` is ``(x - mean) / std``, ``bucketize`` maps x to one of ``buckets`` quantile bins and turns
      the feature into a categorical one.
    * ``multi_categorical``: the cell is split on ``separator``; each value is encoded as a categorical; the list is
      truncated to its first ``max_len`` values and right-padded with 0.
    * ``sequence``: like multi_categorical but ordered oldest→newest; the *last* ``max_len`` values are kept and
      left-padded with 0 so the most recent event is always in the last slot. ``timestamp_column`` (optional) holds
      matching timestamps with the same separator.

    ``share_vocab_with`` makes a multi-valued/sequence feature reuse another categorical feature's vocabulary (and,
    in models, its embedding table), e.g. a click sequence of item ids.
    """

    name: str = Field(min_length=1)
    type: FeatureType
    source: Source = "context"
    column: str | None = None
    min_count: int = Field(default=1, ge=1)
    hash_buckets: int | None = Field(default=None, ge=1)
    fill_value: float = 0.0
    transform: NumericTransform = "none"
    buckets: int = Field(default=10, ge=2, le=100_000)
    separator: str = Field(default="|", min_length=1)
    max_len: int = Field(default=20, ge=1, le=100_000)
    share_vocab_with: str | None = None
    timestamp_column: str | None = None

    @property
    def raw_column(self) -> str:
        return self.column or self.name

    @model_validator(mode="after")
    def _check_options(self) -> "FeatureSpec":
        if self.name in RESERVED_NAMES or self.name.endswith("__ts"):
            raise ValueError(f"feature name '{self.name}' is reserved (batch keys: {sorted(RESERVED_NAMES)}, "
                             "'*__ts'); use 'column' to read a raw column of that name")
        if self.type != "numeric" and self.transform != "none":
            raise ValueError(f"feature '{self.name}': 'transform' applies to numeric features only")
        if self.type not in ("multi_categorical", "sequence"):
            if self.share_vocab_with is not None:
                raise ValueError(f"feature '{self.name}': 'share_vocab_with' applies to multi_categorical/sequence")
            if self.timestamp_column is not None:
                raise ValueError(f"feature '{self.name}': 'timestamp_column' applies to sequence features only")
        if self.type == "multi_categorical" and self.timestamp_column is not None:
            raise ValueError(f"feature '{self.name}': 'timestamp_column' applies to sequence features only")
        return self


LabelKind = Literal["binary", "soft", "regression", "weight", "delay"]


class LabelSpec(_Strict):
    """One label column.

    * ``kind``: ``binary`` (0 or 1), ``soft`` (a probability in ``[0, 1]``, e.g. a teacher's score),
      ``regression`` (any finite number) or ``weight`` (a non-negative per-row sample weight).
    * ``column``: the raw column (default: ``name``).
    * ``threshold`` (binary only): the raw value is a number and the label is ``1`` where ``value >= threshold``,
      else ``0`` (e.g. ``rating >= 4``).
    * ``map``: raw value (as written in the file, surrounding spaces ignored) → number, applied before
      validation, e.g. ``{yes: 1, no: 0}``; a value missing from the map is an error naming the cell.

    * ``delay``: delayed conversions (:mod:`rankcraft.data.delays`). ``click_time`` names the click's time column;
      ``column`` holds the conversion time (empty = no conversion observed), or the delay itself when
      ``delay_unit`` (``s``/``m``/``h``/``d``) is given; ``windows`` lists the fixed attribution windows
      (``[1d, 7d]``); ``observed_at`` is when the log was cut (``latest``, the default: the latest time in the
      table; or a unix time / ISO date). It derives the labels ``<name>_<window>`` (binary),
      ``<name>_<window>_mature`` (weight: the window has elapsed), ``<name>_observed`` and
      ``<name>_elapsed_days``; objectives name those.

    A plain string in ``labels`` is shorthand for ``{name: <string>}`` (a binary label).
    """

    name: str = Field(min_length=1)
    column: str | None = None
    kind: LabelKind = "binary"
    threshold: float | None = None
    map: dict[str, float] | None = None
    # kind delay only
    click_time: str | None = None
    delay_unit: Literal["s", "m", "h", "d"] | None = None
    windows: list[str | float] | None = None
    observed_at: str | float | None = None

    @property
    def raw_column(self) -> str:
        return self.column or self.name

    @model_validator(mode="after")
    def _check(self) -> "LabelSpec":
        if "/" in self.name:
            raise ValueError(f"label name '{self.name}' may not contain '/'")
        if self.threshold is not None and self.kind != "binary":
            raise ValueError(f"label '{self.name}': 'threshold' makes a binary label; kind is {self.kind}")
        if self.threshold is not None and self.map is not None:
            raise ValueError(f"label '{self.name}': give 'threshold' or 'map', not both")
        delay_only = [k for k in ("click_time", "delay_unit", "windows", "observed_at") if getattr(self, k) is not None]
        if self.kind != "delay":
            if delay_only:
                raise ValueError(f"label '{self.name}': {', '.join(delay_only)} belong to kind 'delay' labels")
            return self
        if self.threshold is not None or self.map is not None:
            raise ValueError(f"label '{self.name}': a delay label takes no 'threshold' or 'map'")
        if not self.click_time:
            raise ValueError(f"label '{self.name}': a delay label needs 'click_time' (the click's time column)")
        if not self.windows:
            raise ValueError(f"label '{self.name}': a delay label needs 'windows', e.g. [1d, 7d]")
        seconds = [parse_duration(w) for w in self.windows]  # ValueError names a bad window
        if len(set(seconds)) != len(seconds) or len({window_suffix(w) for w in self.windows}) != len(seconds):
            raise ValueError(f"label '{self.name}': windows {self.windows} repeat a window")
        if isinstance(self.observed_at, str) and self.observed_at != "latest":
            try:
                np.datetime64(self.observed_at.rstrip("Z").replace(" ", "T"), "s")
            except ValueError:
                raise ValueError(f"label '{self.name}': observed_at {self.observed_at!r} is not 'latest', a unix "
                                 "time or an ISO date/time") from None
        return self

    @property
    def outputs(self) -> dict[str, str]:
        """The label columns this spec produces, name → kind (a delay label derives several)."""
        if self.kind != "delay":
            return {self.name: self.kind}
        return derived_label_kinds(self)

    @property
    def raw_columns(self) -> list[str]:
        """Every raw column the label reads."""
        return [self.raw_column] + ([self.click_time] if self.click_time else [])


def _label_spec(v: object) -> object:
    return {"name": v} if isinstance(v, str) else v


class Schema(_Strict):
    """Labels, features and file-format options of one dataset."""

    labels: list[Annotated[LabelSpec, BeforeValidator(_label_spec)]] = Field(min_length=1)
    features: list[FeatureSpec] = Field(min_length=1)
    user_column: str | None = None
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    column_names: list[str] | None = None  # for files without a header line
    on_error: Literal["raise", "skip"] = "raise"
    #: a feature whose validation tokens are mostly out of vocabulary, or whose cells look like lists under another
    #: separator, is reported at preparation: ``warn`` (default), ``error`` (stop with the same message), ``off``
    vocabulary_check: Literal["warn", "error", "off"] = "warn"

    @model_validator(mode="after")
    def _check_names(self) -> "Schema":
        names = [f.name for f in self.features]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate feature names: {dup}")
        labels = self.label_names
        dup = sorted({n for n in labels if labels.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate label names: {dup}")
        clash = sorted(set(names) & set(labels))
        if clash:
            raise ValueError(f"features and labels share names: {clash}")
        by_name = {f.name: f for f in self.features}
        for f in self.features:
            if f.share_vocab_with is not None:
                other = by_name.get(f.share_vocab_with)
                if other is None:
                    raise ValueError(f"feature '{f.name}': share_vocab_with names unknown feature "
                                     f"'{f.share_vocab_with}'")
                if other.type != "categorical" or other.share_vocab_with is not None:
                    raise ValueError(f"feature '{f.name}': share_vocab_with must name a categorical feature")
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def label_names(self) -> list[str]:
        """The label columns the data will have (a delay label's derived labels in its place)."""
        return [name for lab in self.labels for name in lab.outputs]

    @property
    def label_kinds(self) -> dict[str, str]:
        return {name: kind for lab in self.labels for name, kind in lab.outputs.items()}

    @property
    def label_columns(self) -> list[str]:
        """The raw columns the labels are read from (no duplicates)."""
        return list(dict.fromkeys(c for lab in self.labels for c in lab.raw_columns))

    def required_columns(self) -> list[str]:
        cols = list(self.label_columns)
        for f in self.features:
            cols.append(f.raw_column)
            if f.timestamp_column:
                cols.append(f.timestamp_column)
        if self.user_column and self.user_column not in cols:
            cols.append(self.user_column)
        seen: set[str] = set()
        return [c for c in cols if not (c in seen or seen.add(c))]

    def fingerprint(self) -> str:
        """Stable hash of the schema (part of the processed-cache key)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict, *, origin: str = "<schema>") -> "Schema":
        _check_names_are_text(data, origin)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{origin}: invalid schema:\n{format_validation_error(exc, data)}") from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> "Schema":
        path = Path(path)
        data = read_yaml_file(path, "schema file")
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: a schema must be a mapping with 'labels' and 'features'")
        return cls.from_dict(data, origin=str(path))

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.model_dump(mode="json", exclude_defaults=True), sort_keys=False))


_NAME_KEYS = ("name", "column", "share_vocab_with", "timestamp_column")


def _check_names_are_text(data: object, origin: str) -> None:
    """Column and feature names that YAML read as numbers or booleans are an error with the fix: YAML turns an
    unquoted ``109_14`` into the integer 10914 (underscores are digit separators), ``1e3`` into 1000.0 and ``yes``
    into true, so the name no longer matches the file's header."""
    if not isinstance(data, dict):
        return
    found: list[tuple[str, object]] = []

    def visit(where: str, v: object) -> None:
        if isinstance(v, (bool, int, float)):
            found.append((where, v))

    for i, f in enumerate(data.get("features") or []):
        if isinstance(f, dict):
            for k in _NAME_KEYS:
                visit(f"features[{i}].{k}", f.get(k))
    for i, lab in enumerate(data.get("labels") or []):
        if isinstance(lab, dict):
            for k in ("name", "column"):
                visit(f"labels[{i}].{k}", lab.get(k))
        else:
            visit(f"labels[{i}]", lab)
    visit("user_column", data.get("user_column"))
    for i, c in enumerate(data.get("column_names") or []):
        visit(f"column_names[{i}]", c)
    if found:
        where, v = found[0]
        raise ConfigError(f"{origin}: {where} is {v!r}, a {type(v).__name__}, not a column name: YAML reads unquoted "
                          "names such as 109_14 (→ 10914), 1e3 or yes as numbers or booleans; quote the name as "
                          f"it appears in the file's header, e.g. \"109_14\"" +
                          (f" ({len(found) - 1} more such name(s))" if len(found) > 1 else ""))
