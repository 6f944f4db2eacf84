"""Built-in dataset recipes: a name → a :class:`~rankcraft.data.dataset.DataSource`.

| recipe | input | labels / split |
|---|---|---|
| ``synthetic`` | generated (embedded default) | planted logit, 80/10/10 in generation order |
| ``frappe_x1`` | directory with ``train.csv``, ``valid.csv`` [, ``test.csv``] (BARS layout) | given files |
| ``ml-100k`` | directory with ``u.data``, ``u.user``, ``u.item`` | rating >= 4; global time split (below) |
| ``ml-100k-seq`` | the same | as ml-100k, plus each user's earlier items/timestamps/genres/ratings |
| ``criteo`` | one file or a directory of ``train``/``valid``/``test`` files: label, I1-I13, C1-C26 | 10% seeded valid |
| ``avazu`` | one file or a directory: ``click`` label, ``hour``, categorical columns | 10% seeded valid |

ML-100K time split (documented choice): all 100,000 ratings are sorted by timestamp (ties by user, item); the first
80% form ``train``, the next 10% ``valid`` and the last 10% ``test``. Every validation rating is therefore later
than every training rating, as in production.

A directory argument that is omitted is looked up as ``$RANKCRAFT_DATA_DIR/<name>``, then ``../shared/data/<name>``
and ``./data/<name>``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from rankcraft.data.dataset import DataSource
from rankcraft.data.histories import history_columns
from rankcraft.data.readers import RawTable, first_line, sniff_delimiter
from rankcraft.data.registry import find_data_dir, recipe
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.data.synthetic import synthetic_raw
from rankcraft.errors import DataError


# -------------------------------------------------------------------------------------------- recipes
@recipe("synthetic", "generated CTR data with planted 1st/2nd/3rd-order interactions (no files needed)")
def synthetic_source(data_dir: str | None = None, *, rows: int = 50_000, seed: int = 0) -> DataSource:
    schema = synthetic_raw(10, seed=seed)[1]
    return DataSource(name="synthetic", schema=schema, loader=lambda: synthetic_raw(rows, seed=seed)[0],
                      version=f"1:rows={rows}:seed={seed}")


FRAPPE_FIELDS = ["user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather", "country", "city"]


@recipe("frappe_x1", "BARS Frappe_x1: 10 categorical context/app fields, label = app used")
def frappe_source(data_dir: str | None = None) -> DataSource:
    d = find_data_dir("frappe_x1", data_dir)
    feats = [FeatureSpec(name=f, type="categorical",
                         source="user" if f == "user" else "item" if f in ("item", "cost") else "context")
             for f in FRAPPE_FIELDS]
    schema = Schema(labels=["label"], features=feats, user_column="user")
    files = {s: str(d / f"{s}.csv") for s in ("train", "valid", "test") if (d / f"{s}.csv").exists()}
    if "train" not in files:
        raise DataError("frappe_x1: train.csv not found", path=str(d))
    return DataSource(name="frappe_x1", schema=schema, files=files)


ML100K_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                 "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                 "War", "Western"]


def ml100k_schema() -> Schema:
    feats = [
        FeatureSpec(name="user", type="categorical", source="user"),
        FeatureSpec(name="item", type="categorical", source="item"),
        FeatureSpec(name="age", type="numeric", source="user", transform="bucketize", buckets=7),
        FeatureSpec(name="gender", type="categorical", source="user"),
        FeatureSpec(name="occupation", type="categorical", source="user"),
        FeatureSpec(name="zip_prefix", type="categorical", source="user", min_count=2),
        FeatureSpec(name="release_year", type="categorical", source="item"),
        FeatureSpec(name="genres", type="multi_categorical", source="item", separator="|", max_len=6),
    ]
    return Schema(labels=["label"], features=feats, user_column="user")


def load_ml100k_table(d: Path) -> tuple[pa.Table, np.ndarray]:
    """Join u.data with u.user and u.item into one string table (rows in u.data order) + timestamps."""
    def lines(name: str, encoding: str = "utf-8") -> list[str]:
        p = d / name
        if not p.exists():
            raise DataError("ml-100k: file not found", path=str(p))
        return p.read_text(encoding=encoding).splitlines()

    users = {}
    for i, ln in enumerate(lines("u.user"), 1):
        parts = ln.split("|")
        if len(parts) != 5:
            raise DataError(f"expected 5 '|'-separated fields, found {len(parts)}", path=str(d / "u.user"), line=i)
        users[parts[0]] = parts
    items = {}
    for i, ln in enumerate(lines("u.item", "latin-1"), 1):
        parts = ln.split("|")
        if len(parts) != 24:
            raise DataError(f"expected 24 '|'-separated fields, found {len(parts)}", path=str(d / "u.item"), line=i)
        genres = "|".join(g for g, flag in zip(ML100K_GENRES, parts[5:]) if flag == "1")
        year = parts[2][-4:] if len(parts[2]) >= 4 else ""
        items[parts[0]] = (year, genres)
    cols: dict[str, list[str]] = {k: [] for k in ("label", "rating", "user", "item", "age", "gender", "occupation",
                                                  "zip_prefix", "release_year", "genres", "timestamp")}
    path = str(d / "u.data")
    for i, ln in enumerate(lines("u.data"), 1):
        parts = ln.split("\t")
        if len(parts) != 4:
            raise DataError(f"expected 4 tab-separated fields, found {len(parts)}", path=path, line=i)
        u, it, r, ts = parts
        if u not in users:
            raise DataError(f"user {u!r} not in u.user", path=path, line=i, column="user")
        if it not in items:
            raise DataError(f"item {it!r} not in u.item", path=path, line=i, column="item")
        if r not in ("1", "2", "3", "4", "5"):
            raise DataError(f"rating must be 1..5, found {r!r}", path=path, line=i, column="rating")
        uu, year_genres = users[u], items[it]
        cols["label"].append("1" if int(r) >= 4 else "0")
        cols["rating"].append(r)
        cols["user"].append(u)
        cols["item"].append(it)
        cols["age"].append(uu[1])
        cols["gender"].append(uu[2])
        cols["occupation"].append(uu[3])
        cols["zip_prefix"].append(uu[4][:3])
        cols["release_year"].append(year_genres[0])
        cols["genres"].append(year_genres[1])
        cols["timestamp"].append(ts)
    table = pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()})
    return table, np.array(cols["timestamp"], dtype=np.int64)


def time_split(table: pa.Table, ts: np.ndarray, tie_keys: list[np.ndarray], fractions=(0.8, 0.1)) -> dict[str, pa.Table]:
    """Sort rows by (timestamp, *tie_keys) and cut into train/valid/test by ``fractions``. The tables keep (or gain)
    an int64 ``timestamp`` column: not a feature, it lets stream training bucket the rows by time."""
    if "timestamp" not in table.column_names:
        table = table.append_column("timestamp", pa.array(np.asarray(ts, dtype=np.int64)))
    order = np.lexsort(tuple(reversed([ts] + tie_keys)))
    n = len(order)
    a, b = int(n * fractions[0]), int(n * (fractions[0] + fractions[1]))
    return {"train": table.take(pa.array(order[:a])), "valid": table.take(pa.array(order[a:b])),
            "test": table.take(pa.array(order[b:]))}


@recipe("ml-100k", "MovieLens-100K: user/item side information, label = rating >= 4, time-based split")
def ml100k_source(data_dir: str | None = None) -> DataSource:
    d = find_data_dir("ml-100k", data_dir)

    def load() -> dict[str, RawTable]:
        table, ts = load_ml100k_table(d)
        users = np.array(table.column("user").to_pylist(), dtype=np.int64)
        items = np.array(table.column("item").to_pylist(), dtype=np.int64)
        parts = time_split(table, ts, [users, items])
        return {k: RawTable(v, str(d / "u.data"), 0, "memory") for k, v in parts.items()}

    return DataSource(name="ml-100k", schema=ml100k_schema(), loader=load, time_column="timestamp",
                      inputs=[str(d / f) for f in ("u.data", "u.user", "u.item")], version="1")


def with_history_features(base: Schema, max_len: int) -> Schema:
    """``base`` plus the columns :func:`add_histories` writes: the item's first genre and the user's earlier items
    (with timestamps), their genres and ratings, as sequences of at most ``max_len``."""
    feats = list(base.features) + [
        FeatureSpec(name="genre1", type="categorical", source="item"),
        FeatureSpec(name="hist_items", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="item", timestamp_column="hist_ts"),
        FeatureSpec(name="hist_genres", type="sequence", source="user", separator="^", max_len=max_len,
                    share_vocab_with="genre1"),
        FeatureSpec(name="hist_ratings", type="sequence", source="user", separator="^", max_len=max_len),
    ]
    return Schema(labels=["label"], features=feats, user_column="user")


def ml100k_seq_schema(max_len: int = 50) -> Schema:
    return with_history_features(ml100k_schema(), max_len)


def add_histories(table: pa.Table, ts: np.ndarray, max_len: int) -> pa.Table:
    """Append each impression's behaviour history, built strictly from the same user's *earlier* events.

    For the event (u, i, t): ``hist_items`` = the items u rated at timestamps ``< t`` (same-second events are
    excluded, so neither the target nor anything simultaneous or later can leak), oldest first, the last
    ``max_len`` of them; ``hist_ts`` their timestamps; ``hist_genres`` each history item's first genre;
    ``hist_ratings`` the user's rating (1-5) of each history item — feedback that was known before the impression.
    ``genre1`` is the impression item's own first genre.
    """
    users = np.array(table.column("user").to_pylist(), dtype=np.int64)
    genre1 = [g.split("|")[0] if g else "" for g in table.column("genres").to_pylist()]
    hist = history_columns(users, ts, {
        "hist_items": table.column("item").to_pylist(),
        "hist_ts": [str(x) for x in np.asarray(ts).tolist()],
        "hist_genres": genre1,
        "hist_ratings": table.column("rating").to_pylist(),
    }, max_len)
    table = table.append_column("genre1", pa.array(genre1, pa.string()))
    for name, column in hist.items():
        table = table.append_column(name, column)
    return table


@recipe("ml-100k-seq", "MovieLens-100K with behaviour sequences (earlier items, timestamps, genres), time split")
def ml100k_seq_source(data_dir: str | None = None, *, max_len: int = 50) -> DataSource:
    d = find_data_dir("ml-100k", data_dir)

    def load() -> dict[str, RawTable]:
        table, ts = load_ml100k_table(d)
        table = add_histories(table, ts, max_len)
        users = np.array(table.column("user").to_pylist(), dtype=np.int64)
        items = np.array(table.column("item").to_pylist(), dtype=np.int64)
        parts = time_split(table, ts, [users, items])
        return {k: RawTable(v, str(d / "u.data"), 0, "memory") for k, v in parts.items()}

    return DataSource(name="ml-100k-seq", schema=ml100k_seq_schema(max_len), loader=load, time_column="timestamp",
                      inputs=[str(d / f) for f in ("u.data", "u.user", "u.item")], version=f"2:max_len={max_len}")


CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]


def _files_of(name: str, data_dir: str | None) -> tuple[dict[str, str], str]:
    """A single file (→ train) or a directory holding train/valid/test files (any extension)."""
    if data_dir is None:
        p = find_data_dir(name, None)
    else:
        p = Path(data_dir)
        if not p.exists():
            raise DataError(f"dataset '{name}': not found", path=str(p))
    if p.is_file():
        files = {"train": str(p)}
    else:
        files = {}
        for split in ("train", "valid", "test"):
            hits = sorted(q for q in p.iterdir() if q.is_file() and q.name.split(".")[0] == split)
            if hits:
                files[split] = str(hits[0])
        if "train" not in files:
            raise DataError(f"dataset '{name}': no train file in directory", path=str(p))
    return files, sniff_delimiter(files["train"])


@recipe("criteo", "Criteo display ads: label, I1-I13 numeric (log1p), C1-C26 categorical (min_count 2)")
def criteo_source(data_dir: str | None = None, *, min_count: int = 2) -> DataSource:
    files, delim = _files_of("criteo", data_dir)
    has_header = first_line(files["train"]).split(delim)[0].strip().lower() == "label"
    feats = [FeatureSpec(name=f"I{i}", type="numeric", transform="log") for i in range(1, 14)]
    feats += [FeatureSpec(name=f"C{i}", type="categorical", min_count=min_count) for i in range(1, 27)]
    schema = Schema(labels=["label"], features=feats, delimiter=delim,
                    column_names=None if has_header else CRITEO_COLUMNS)
    return DataSource(name="criteo", schema=schema, files=files)


AVAZU_CATEGORICAL = ["C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id", "app_domain",
                     "app_category", "device_id", "device_ip", "device_model", "device_type", "device_conn_type",
                     "C14", "C15", "C16", "C17", "C18", "C19", "C20", "C21"]


@recipe("avazu", "Avazu mobile ads: click label, hour and 21 categorical fields (min_count 2)")
def avazu_source(data_dir: str | None = None, *, min_count: int = 2) -> DataSource:
    files, delim = _files_of("avazu", data_dir)
    feats = [FeatureSpec(name="hour", type="categorical", source="context")]
    feats += [FeatureSpec(name=c, type="categorical", min_count=min_count) for c in AVAZU_CATEGORICAL]
    schema = Schema(labels=["click"], features=feats, delimiter=delim)
    return DataSource(name="avazu", schema=schema, files=files)


def schema_source(schema: Schema, train: str, valid: str | None = None, test: str | None = None, *,
                  name: str | None = None, valid_fraction: float = 0.1, seed: int = 0) -> DataSource:
    """A user dataset: a schema plus files."""
    files = {"train": str(train)}
    if valid:
        files["valid"] = str(valid)
    if test:
        files["test"] = str(test)
    return DataSource(name=name or Path(train).stem, schema=schema, files=files, valid_fraction=valid_fraction,
                      seed=seed)
