"""``ml-1m-u3k`` and ``ml-1m-u3k-seq``: MovieLens-1M restricted to users 1-2999 (their complete rating histories).

Input: a directory (``$RANKCRAFT_DATA_DIR/ml-1m-u3k`` or ``../shared/data/ml-1m-u3k`` by default) with
``ratings.dat.gz`` (gzip, ``UserID::MovieID::Rating::Timestamp``, unix seconds), ``users.dat``
(``UserID::Gender::Age::Occupation::Zip-code``) and ``movies.dat`` (``MovieID::Title (Year)::Genre|Genre|...``).
All three are read as latin-1 (``movies.dat`` has accented titles; latin-1 decodes any byte, so nothing fails on
encoding). The shared copy has 487,650 ratings of 2,999 users and 3,615 movies, 2000-10-04 to 2003-02-27.

* **Label**: ``label`` = rating >= 4 (about 57 % positive); the rating itself stays in the table as ``rating``
  (not a feature of ``ml-1m-u3k``).
* **Features** (``ml-1m-u3k``): ``user``, ``item``; user side ``gender``, ``age`` (MovieLens-1M's age-group code,
  1/18/25/35/45/50/56, categorical), ``occupation`` (code 0-20), ``zip_prefix`` (first 3 characters of the zip
  code, min_count 2); item side ``release_year`` (the 4-digit year in parentheses at the end of the title, empty if
  none) and ``genres`` (multi_categorical, ``|``-separated, at most 6).
* **Time**: every split keeps the raw ``timestamp`` column (unix seconds, int64; not a feature) and the source
  declares ``time_column="timestamp"``, so a stream run can bucket the rows into (e.g. weekly) partitions.
* **Split** (as ml-100k): all ratings sorted by (timestamp, user, item); the first ``fractions[0]`` of them are
  ``train``, the next ``fractions[1]`` ``valid`` and the rest ``test`` (default 0.8 / 0.1 / 0.1), so every
  validation rating is at or after every training rating.
* ``ml-1m-u3k-seq`` adds, as ml-100k-seq does, ``genre1`` (the item's first genre) and each rating's history built
  strictly from the same user's *earlier* ratings (timestamp < t; ratings in the same second never see each other):
  the last ``max_len`` (default 50) of them, oldest first, as ``hist_items``, ``hist_ts``, ``hist_genres`` (their
  first genres) and ``hist_ratings`` (the user's 1-5 rating of each, known before the impression). The histories
  are built by ml-100k-seq's :func:`~rankcraft.data.recipes.add_histories` (column-wise, see
  :mod:`rankcraft.data.histories`) and may reach into earlier splits (they are the past).

Options: ``data_dir``; ``fractions`` (2 or 3 numbers, train > 0, summing to 1); ``max_len`` (``-seq`` only).
"""

from __future__ import annotations

import gzip
import re
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankcraft.data.dataset import DataSource
from rankcraft.data.readers import RawTable
from rankcraft.data.recipes import add_histories, time_split, with_history_features
from rankcraft.data.registry import find_data_dir, recipe
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.errors import ConfigError, DataError

NAME = "ml-1m-u3k"
FILES = ("ratings.dat.gz", "users.dat", "movies.dat")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_YEAR = re.compile(r"\((\d{4})\)\s*$")


def ml1m_schema() -> Schema:
    feats = [
        FeatureSpec(name="user", type="categorical", source="user"),
        FeatureSpec(name="item", type="categorical", source="item"),
        FeatureSpec(name="gender", type="categorical", source="user"),
        FeatureSpec(name="age", type="categorical", source="user"),
        FeatureSpec(name="occupation", type="categorical", source="user"),
        FeatureSpec(name="zip_prefix", type="categorical", source="user", min_count=2),
        FeatureSpec(name="release_year", type="categorical", source="item"),
        FeatureSpec(name="genres", type="multi_categorical", source="item", separator="|", max_len=6),
    ]
    return Schema(labels=["label"], features=feats, user_column="user")


def ml1m_seq_schema(max_len: int = 50) -> Schema:
    return with_history_features(ml1m_schema(), max_len)


def _check_fractions(fractions) -> tuple[float, float, float]:
    try:
        fr = [float(f) for f in fractions]
    except (TypeError, ValueError):
        fr = []
    if len(fr) == 2:
        fr.append(1.0 - sum(fr))
    if len(fr) != 3 or min(fr) < 0 or fr[0] <= 0 or abs(sum(fr) - 1.0) > 1e-6:
        raise ConfigError(f"{NAME}: fractions must be 2 or 3 non-negative numbers (train > 0) that sum to 1, "
                          f"not {fractions!r}")
    return fr[0], fr[1], fr[2]


def _check_max_len(max_len) -> None:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ConfigError(f"{NAME}-seq: max_len must be a positive integer, not {max_len!r}")


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"{NAME}: file not found", path=str(path))
    data = path.read_bytes()
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{NAME}: cannot decompress the file: {exc}", path=str(path)) from None
    return data.decode("latin-1").splitlines()


def _fields(lines: list[str], n: int, path: Path) -> list[list[str]]:
    rows = [ln.split("::") for ln in lines]
    for i, parts in enumerate(rows, 1):
        if len(parts) != n:
            raise DataError(f"expected {n} '::'-separated fields, found {len(parts)}", path=str(path), line=i)
    return rows


def _ints(values: list[str], path: Path, column: str) -> np.ndarray:
    try:
        return np.array(values, dtype=np.int64)
    except ValueError:
        for i, v in enumerate(values, 1):
            if not v.strip().isdigit():
                raise DataError(f"expected a whole number, found {v!r}", path=str(path), line=i,
                                column=column) from None
        raise


def load_ml1m_table(d: Path) -> tuple[pa.Table, np.ndarray]:
    """ratings.dat.gz joined with users.dat and movies.dat: one string table in file order (plus ``timestamp``
    as int64) and the timestamps."""
    d = Path(d)
    upath, mpath, rpath = d / "users.dat", d / "movies.dat", d / "ratings.dat.gz"
    users = {p[0]: p for p in _fields(_lines(upath), 5, upath)}
    movies = {}
    for p in _fields(_lines(mpath), 3, mpath):
        m = _YEAR.search(p[1])
        movies[p[0]] = (m.group(1) if m else "", p[2])
    ratings = _fields(_lines(rpath), 4, rpath)
    u_raw, i_raw, r_raw, t_raw = (list(c) for c in zip(*ratings)) if ratings else ([], [], [], [])
    ts = _ints(t_raw, rpath, "timestamp")
    rating = _ints(r_raw, rpath, "rating")
    bad = np.flatnonzero((rating < 1) | (rating > 5))
    if len(bad):
        raise DataError(f"rating must be 1..5, found {r_raw[bad[0]]!r}", path=str(rpath), line=int(bad[0]) + 1,
                        column="rating")
    for col, raw, known in (("user", u_raw, users), ("item", i_raw, movies)):
        missing = [k for k, v in enumerate(raw) if v not in known]
        if missing:
            what = "users.dat" if col == "user" else "movies.dat"
            raise DataError(f"{col} {raw[missing[0]]!r} not in {what}", path=str(rpath), line=missing[0] + 1,
                            column=col)
    # side information: looked up once per distinct id, then gathered with take()
    u_dict = pa.array(u_raw, pa.string()).dictionary_encode()
    i_dict = pa.array(i_raw, pa.string()).dictionary_encode()
    uinfo = [users[u] for u in u_dict.dictionary.to_pylist()]
    iinfo = [movies[i] for i in i_dict.dictionary.to_pylist()]

    def side(values: list[str], index: pa.Array) -> pa.Array:
        return pa.array(values, pa.string()).take(index)

    table = pa.table({
        "label": pc.if_else(pc.greater_equal(pa.array(rating), 4), "1", "0"),
        "rating": pa.array(r_raw, pa.string()),
        "user": pa.array(u_raw, pa.string()),
        "item": pa.array(i_raw, pa.string()),
        "gender": side([p[1] for p in uinfo], u_dict.indices),
        "age": side([p[2] for p in uinfo], u_dict.indices),
        "occupation": side([p[3] for p in uinfo], u_dict.indices),
        "zip_prefix": side([p[4][:3] for p in uinfo], u_dict.indices),
        "release_year": side([m[0] for m in iinfo], i_dict.indices),
        "genres": side([m[1] for m in iinfo], i_dict.indices),
        "timestamp": pa.array(ts, pa.int64()),
    })
    return table, ts


def _data_dir(data_dir: str | None) -> Path:
    d = find_data_dir(NAME, data_dir)
    for f in FILES:
        if not (d / f).is_file():
            raise DataError(f"{NAME}: {f} not found", path=str(d / f))
    return d


def _split(table: pa.Table, ts: np.ndarray, fractions: tuple[float, float, float], path: Path
           ) -> dict[str, RawTable]:
    users = table.column("user").to_numpy(zero_copy_only=False).astype(np.int64)
    items = table.column("item").to_numpy(zero_copy_only=False).astype(np.int64)
    parts = time_split(table, ts, [users, items], fractions[:2])
    return {k: RawTable(v, str(path), 0, "memory") for k, v in parts.items()}


@recipe(NAME, "MovieLens-1M users 1-2999: user/movie side info, label = rating >= 4, time split, raw timestamps")
def ml1m_source(data_dir: str | None = None, *, fractions=DEFAULT_FRACTIONS) -> DataSource:
    d = _data_dir(data_dir)
    fr = _check_fractions(fractions)

    def load() -> dict[str, RawTable]:
        table, ts = load_ml1m_table(d)
        return _split(table, ts, fr, d / "ratings.dat.gz")

    return DataSource(name=NAME, schema=ml1m_schema(), loader=load, inputs=[str(d / f) for f in FILES],
                      version=f"1:fractions={','.join(map(str, fr))}", time_column="timestamp")


@recipe(f"{NAME}-seq", "ml-1m-u3k with behaviour sequences (earlier items, timestamps, genres, ratings), time split")
def ml1m_seq_source(data_dir: str | None = None, *, max_len: int = 50, fractions=DEFAULT_FRACTIONS) -> DataSource:
    d = _data_dir(data_dir)
    fr = _check_fractions(fractions)
    _check_max_len(max_len)

    def load() -> dict[str, RawTable]:
        table, ts = load_ml1m_table(d)
        return _split(add_histories(table, ts, max_len), ts, fr, d / "ratings.dat.gz")

    return DataSource(name=f"{NAME}-seq", schema=ml1m_seq_schema(max_len), loader=load,
                      inputs=[str(d / f) for f in FILES],
                      version=f"1:max_len={max_len}:fractions={','.join(map(str, fr))}", time_column="timestamp")
