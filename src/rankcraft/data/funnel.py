"""``funnel``: a synthetic impression → click → conversion funnel with known true CTR and CVR per impression.

Generative story (every knob is an option of :func:`make_funnel` and of the recipe):

* **Features** (categorical): ``user`` (``n_users``, Zipf-distributed like real logs) and its ``user_group``
  (``n_user_groups``, fixed per user); ``item`` (``n_items``, Zipf) and its ``category`` (``n_categories``, fixed
  per item); ``position`` (``n_positions`` slots, uniform).
* **Planted parameters**: latent vectors ``P_u, Q_i, P'_u, Q'_i ~ N(0, I/r)`` (``r = rank``); click-side effects
  ``β_u, β_g, α_i, α_c`` (user, user group, item, category) and a position bias ``π_p = −position_bias · p``;
  conversion-side effects ``γ_u, γ_g`` (independent of the click side) and an item / category *quality*
  ``κ_i = −anti·α_i + √(1 − anti²)·ε_i`` (same for ``κ_c``; ``ε`` fresh noise of the same scale), so items that
  attract clicks tend to convert worse (``anti > 0``: eye-catching but disappointing items, the typical funnel).
* **True logits**::

      f_ctr(x) = b_ctr + β_u + β_g + α_i + α_c + π_p + affinity · ⟨P_u, Q_i⟩
      f_cvr(x) = b_cvr + γ_u + γ_g + κ_i + κ_c + affinity · (shared · ⟨P_u, Q_i⟩ + (1 − shared) · ⟨P'_u, Q'_i⟩)

  ``pCTR = σ(f_ctr)``, ``pCVR = σ(f_cvr)``; the intercepts are set by bisection so that the mean pCTR over all
  impressions is ``ctr_rate`` and the mean pCVR over all impressions is ``cvr_rate``. pCTR and pCVR share the
  ``shared`` part of the user–item affinity (correlated, not identical); position acts on clicks only.
* **Outcomes**: ``click ~ Bernoulli(pCTR)``, a latent ``conv ~ Bernoulli(pCVR)`` drawn independently given x;
  conversions are observed only after a click.
* **Determinism**: the planted world (every per-id parameter and the Zipf popularity order) depends on ``seed``
  and the shape options only; impressions come from a second stream of the same seed, so a larger ``rows`` draws
  more impressions from the same world (only the intercepts, calibrated on the sample, move slightly).

**Selection bias.** Among clicked impressions ``x`` is distributed as ``p(x)·pCTR(x) / E[pCTR]``, not as
``p(x)``: items and categories with a low click effect are rare among clicks, and (``anti > 0``) these are the
ones with high CVR, so the mean true CVR among clicked rows differs from the mean over all impressions, and a CVR
model fitted on clicked rows sees little of the feature values that matter most for CVR over all impressions.

**Columns** (strings, as if read from a CSV): the five features; labels ``click``, ``purchase`` (= click AND
conversion: the CTCVR label, observed on every impression) and ``conversion`` (the conversion outcome, meaningful
only where ``click = 1``; it is set to 0 where ``click = 0``, so its values equal ``purchase``'s — a CVR model
"trained on clicked rows only" must weight it by ``click``); and two extra float64 columns ``true_ctr`` and
``true_cvr`` (pCTR(x), pCVR(x)) that are not in the schema, so the encoders never see them. Use
:func:`funnel_truth` to get them for a split in row order, e.g. to score a CVR estimate against the true CVR over
all impressions.

**Split**: rows are i.i.d.; the first 80 % (in generation order) are ``train``, the next 10 % ``valid``, the last
10 % ``test``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rankcraft.data.dataset import DataSource
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import recipe
from rankcraft.data.schema import FeatureSpec, Schema
from rankcraft.errors import DataError

FUNNEL_LABELS = ["click", "purchase", "conversion"]
FUNNEL_FEATURES = ["user", "user_group", "item", "category", "position"]
TRUTH_COLUMNS = {"ctr": "true_ctr", "cvr": "true_cvr"}


def funnel_schema() -> Schema:
    sources = {"user": "user", "user_group": "user", "item": "item", "category": "item", "position": "context"}
    return Schema(labels=list(FUNNEL_LABELS),
                  features=[FeatureSpec(name=f, type="categorical", source=sources[f]) for f in FUNNEL_FEATURES],
                  user_column="user")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def calibration_bias(z: np.ndarray, rate: float) -> float:
    """The intercept ``b`` (bisection on [−30, 30]) with ``mean σ(z + b) = rate``: how the synthetic generators set
    their base rates."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if _sigmoid(z + mid).mean() > rate:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def _calibrate(z: np.ndarray, rate: float) -> np.ndarray:
    """``σ(z + b)`` with ``b = calibration_bias(z, rate)``."""
    return _sigmoid(z + calibration_bias(z, rate))


def _zipf_ranks(rng: np.random.Generator, n: int, vocab: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** a
    return rng.choice(vocab, size=n, p=p / p.sum())


def _names(prefix: str, n: int) -> pa.Array:
    return pa.array([f"{prefix}{k}" for k in range(n)], pa.string())  # one string per id, not per row


def make_funnel(rows: int = 200_000, *, n_users: int = 2000, n_user_groups: int = 20, n_items: int = 1000,
                n_categories: int = 30, n_positions: int = 5, rank: int = 4, zipf_a: float = 0.8,
                ctr_rate: float = 0.1, cvr_rate: float = 0.2, user_scale: float = 0.5, item_scale: float = 0.8,
                position_bias: float = 0.4, affinity: float = 1.5, shared: float = 0.5, anti: float = 0.7,
                seed: int = 0) -> pa.Table:
    """Generate ``rows`` impressions (module docstring); returns the string table plus ``true_ctr``/``true_cvr``."""
    if rows < 1:
        raise ValueError("rows must be >= 1")
    if not (0.0 < ctr_rate < 1.0 and 0.0 < cvr_rate < 1.0):
        raise ValueError("ctr_rate and cvr_rate must lie in (0, 1)")
    if not (0.0 <= shared <= 1.0 and -1.0 <= anti <= 1.0):
        raise ValueError("shared must lie in [0, 1] and anti in [-1, 1]")
    if min(n_users, n_user_groups, n_items, n_categories, n_positions, rank) < 1:
        raise ValueError("every vocabulary size and rank must be >= 1")
    rng = np.random.default_rng(seed)
    # fixed per-id structure
    user_group = rng.integers(n_user_groups, size=n_users)
    item_cat = rng.integers(n_categories, size=n_items)
    P, Q, P2, Q2 = (rng.normal(0, 1 / np.sqrt(rank), size=(n, rank)) for n in (n_users, n_items, n_users, n_items))
    beta_u, gamma_u = rng.normal(0, user_scale, size=(2, n_users))
    beta_g, gamma_g = rng.normal(0, user_scale, size=(2, n_user_groups))
    alpha_i = rng.normal(0, item_scale, size=n_items)
    alpha_c = rng.normal(0, item_scale, size=n_categories)
    mix = np.sqrt(max(0.0, 1.0 - anti * anti))
    kappa_i = -anti * alpha_i + mix * rng.normal(0, item_scale, size=n_items)
    kappa_c = -anti * alpha_c + mix * rng.normal(0, item_scale, size=n_categories)
    # Zipf popularity: id of popularity rank k is perm[k], P(rank k) ∝ (k+1)^(−zipf_a)
    user_perm, item_perm = rng.permutation(n_users), rng.permutation(n_items)
    # impressions (drawn from a generator of their own: the planted world above does not depend on `rows`)
    rng = np.random.default_rng([seed, 1])
    u = user_perm[_zipf_ranks(rng, rows, n_users, zipf_a)]
    i = item_perm[_zipf_ranks(rng, rows, n_items, zipf_a)]
    pos = rng.integers(n_positions, size=rows)
    g, c = user_group[u], item_cat[i]
    aff = (P[u] * Q[i]).sum(1)
    aff2 = (P2[u] * Q2[i]).sum(1)
    f_ctr = beta_u[u] + beta_g[g] + alpha_i[i] + alpha_c[c] - position_bias * pos + affinity * aff
    f_cvr = gamma_u[u] + gamma_g[g] + kappa_i[i] + kappa_c[c] + affinity * (shared * aff + (1 - shared) * aff2)
    p_ctr, p_cvr = _calibrate(f_ctr, ctr_rate), _calibrate(f_cvr, cvr_rate)
    click = rng.random(rows) < p_ctr
    conv = rng.random(rows) < p_cvr
    purchase = click & conv
    zero_one = pa.array(["0", "1"], pa.string())

    def labels(x: np.ndarray) -> pa.Array:
        return zero_one.take(pa.array(x.astype(np.int64)))

    return pa.table({
        "user": _names("u", n_users).take(pa.array(u)),
        "user_group": _names("g", n_user_groups).take(pa.array(g)),
        "item": _names("i", n_items).take(pa.array(i)),
        "category": _names("c", n_categories).take(pa.array(c)),
        "position": _names("p", n_positions).take(pa.array(pos)),
        "click": labels(click),
        "purchase": labels(purchase),
        "conversion": labels(purchase),   # conversion outcome where click = 1, 0 where click = 0
        "true_ctr": pa.array(p_ctr, pa.float64()),
        "true_cvr": pa.array(p_cvr, pa.float64()),
    })


def funnel_splits(table: pa.Table) -> dict[str, pa.Table]:
    """80/10/10 in generation order."""
    n = table.num_rows
    a, b = int(n * 0.8), int(n * 0.9)
    return {"train": table.slice(0, a), "valid": table.slice(a, b - a), "test": table.slice(b)}


@recipe("funnel", "synthetic impression → click → conversion funnel with known true pCTR/pCVR (ESMM checks)")
def funnel_source(data_dir: str | None = None, *, rows: int = 200_000, seed: int = 0, **options) -> DataSource:
    """Options: ``rows``, ``seed`` and any keyword of :func:`make_funnel` (``ctr_rate``, ``cvr_rate``, ``shared``,
    ``anti``, ``n_items``, ...). ``data_dir`` is ignored (nothing is read)."""
    if rows < 10:
        raise DataError(f"funnel: rows must be >= 10 (three splits), got {rows}")
    make_funnel(1, seed=seed, **options)  # unknown or invalid options fail here, before any loading

    def load() -> dict[str, RawTable]:
        parts = funnel_splits(make_funnel(rows, seed=seed, **options))
        return {k: RawTable(v, f"<funnel seed={seed}>", 0, "memory") for k, v in parts.items()}

    opts = ":".join(f"{k}={options[k]}" for k in sorted(options))
    return DataSource(name="funnel", schema=funnel_schema(), loader=load,
                      version=f"1:rows={rows}:seed={seed}" + (f":{opts}" if opts else ""))


def funnel_truth(data: DataSource | dict | RawTable | pa.Table, split: str | None = None) -> dict[str, np.ndarray]:
    """The true ``{"ctr": pCTR, "cvr": pCVR}`` (float64 arrays) of every impression of ``split``, in row order.

    ``data`` is a ``funnel`` :class:`DataSource` (its loader is run: the data is regenerated, deterministically),
    a dict of split → :class:`RawTable` / ``pa.Table``, or one table (then ``split`` is not needed). The row order
    is that of the prepared split (the encoders keep row order), so ``funnel_truth(src, "test")["cvr"][k]`` is the
    true CVR of row ``k`` of ``prepare(src).splits["test"]``.
    """
    if isinstance(data, DataSource):
        data = data.load_raw()
    if isinstance(data, dict):
        if split not in data:
            raise DataError(f"funnel_truth: no split {split!r}; splits: {', '.join(data)}")
        data = data[split]
    table = data.table if isinstance(data, RawTable) else data
    missing = [c for c in TRUTH_COLUMNS.values() if c not in table.column_names]
    if missing:
        raise DataError(f"funnel_truth: the table has no {', '.join(missing)} column(s); is it a funnel table?")
    return {k: table.column(c).to_numpy().astype(np.float64) for k, c in TRUTH_COLUMNS.items()}
