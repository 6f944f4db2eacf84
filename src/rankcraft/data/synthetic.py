"""Synthetic CTR data with planted structure — the embedded default dataset for the demo and the tests.

The true logit of a row is

.. math::

    z = b + Σ_f w_f[x_f]                                   (first order, one weight per id)
          + Σ_{(f,g) ∈ P} <u_f[x_f], u_g[x_g]>                (second order, rank-k factors on chosen pairs)
          + c · v_a[x_a] · v_b[x_b] · v_c[x_c]                (one third-order term)
          + Σ_j a_j · t_j + β · mean_{m ∈ genres} w_genre[m]  (numeric and multi-valued parts)

and the label is ``Bernoulli(sigmoid(z))``; ``b`` is found by bisection so that the mean label rate equals
``label_rate``. Categorical ids are Zipf-distributed (a few very frequent ids, a long tail), as in real logs.
The result is a table of *strings*, exactly as if read from a CSV, so it runs through the real data pipeline.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rankcraft.data.readers import RawTable
from rankcraft.data.schema import FeatureSpec, Schema


def _zipf_ids(rng: np.random.Generator, n: int, vocab: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** a
    p /= p.sum()
    perm = rng.permutation(vocab)  # so id 0 is not always the most frequent
    return perm[rng.choice(vocab, size=n, p=p)]


def synthetic_schema(n_categorical: int = 8, n_numeric: int = 2, with_multi: bool = True) -> Schema:
    feats = [FeatureSpec(name=f"c{i}", type="categorical", source="user" if i == 0 else "item" if i == 1
                         else "context") for i in range(n_categorical)]
    feats += [FeatureSpec(name=f"n{j}", type="numeric", transform="standardize") for j in range(n_numeric)]
    if with_multi:
        feats.append(FeatureSpec(name="genres", type="multi_categorical", separator="|", max_len=4, source="item"))
    return Schema(labels=["label"], features=feats, user_column="c0")


def make_synthetic(n_rows: int = 50_000, *, n_categorical: int = 8, vocab_size: int = 200, n_numeric: int = 2,
                   with_multi: bool = True, rank: int = 4, label_rate: float = 0.3, zipf_a: float = 1.1,
                   seed: int = 0) -> tuple[pa.Table, Schema]:
    """Generate ``n_rows`` rows; returns (string table, matching schema)."""
    if n_categorical < 3:
        raise ValueError("n_categorical must be >= 3 (the planted third-order term needs three fields)")
    rng = np.random.default_rng(seed)
    ids = np.stack([_zipf_ids(rng, n_rows, vocab_size, zipf_a) for _ in range(n_categorical)], axis=1)
    z = np.zeros(n_rows)
    # first order
    w = rng.normal(0, 0.6, size=(n_categorical, vocab_size))
    z += w[np.arange(n_categorical), ids].sum(1)
    # second order on a fixed set of pairs
    u = rng.normal(0, 1.0 / np.sqrt(rank), size=(n_categorical, vocab_size, rank))
    pairs = [(0, 1), (1, 2), (0, 3)] + ([(4, 5)] if n_categorical >= 6 else [])
    for f, g in pairs:
        z += 1.2 * (u[f, ids[:, f]] * u[g, ids[:, g]]).sum(1)
    # third order
    v = rng.normal(0, 1.0, size=(3, vocab_size))
    z += 0.8 * v[0, ids[:, 0]] * v[1, ids[:, 1]] * v[2, ids[:, 2]]
    cols: dict[str, list | np.ndarray] = {}
    # numeric
    nums = rng.lognormal(0, 1, size=(n_rows, n_numeric))
    coef = rng.normal(0, 0.8, size=n_numeric)
    if n_numeric:
        z += ((np.log1p(nums) - np.log1p(nums).mean(0)) * coef).sum(1)
    # multi-valued
    if with_multi:
        n_genres = 12
        wg = rng.normal(0, 1.0, size=n_genres)
        counts = rng.integers(0, 4, size=n_rows)
        genre_lists = [rng.choice(n_genres, size=c, replace=False) for c in counts]
        z += 0.8 * np.array([wg[g].mean() if len(g) else 0.0 for g in genre_lists])
        cols["genres"] = ["|".join(f"g{x}" for x in g) for g in genre_lists]
    # calibrate the intercept to the requested label rate
    lo, hi = -20.0, 20.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if (1 / (1 + np.exp(-(z + mid)))).mean() > label_rate:
            hi = mid
        else:
            lo = mid
    p = 1 / (1 + np.exp(-(z + lo)))
    y = (rng.random(n_rows) < p).astype(np.int64)
    table_cols = {"label": y.astype(str)}
    for i in range(n_categorical):
        table_cols[f"c{i}"] = np.char.add(f"v{i}_", ids[:, i].astype(str))
    for j in range(n_numeric):
        table_cols[f"n{j}"] = np.char.mod("%.5g", nums[:, j])
    table_cols.update(cols)
    table = pa.table({k: pa.array(list(v) if not isinstance(v, list) else v, pa.string())
                      for k, v in table_cols.items()})
    return table, synthetic_schema(n_categorical, n_numeric, with_multi)


def synthetic_raw(n_rows: int = 50_000, seed: int = 0, **kwargs) -> tuple[dict[str, RawTable], Schema]:
    """Train/valid/test split (80/10/10, in generation order) of :func:`make_synthetic` as :class:`RawTable`s."""
    table, schema = make_synthetic(n_rows, seed=seed, **kwargs)
    n_tr, n_va = int(n_rows * 0.8), int(n_rows * 0.1)
    name = f"<synthetic seed={seed}>"
    parts = {"train": table.slice(0, n_tr), "valid": table.slice(n_tr, n_va), "test": table.slice(n_tr + n_va)}
    return {k: RawTable(v, name, 0, "memory") for k, v in parts.items()}, schema
