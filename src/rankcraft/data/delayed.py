"""``delayed-conversions``: synthetic clicks whose conversions arrive after advertiser-specific delays, with the
truth known (the Personalized Interpolation experiment of ``shared/papers/wave2-specs.md`` §4(d)).

Generative story (every knob is an option of :func:`make_delayed_conversions` and of the recipe):

* **Features** (categorical): ``advertiser`` (``advertisers`` ids, Zipf-distributed) and ``fields`` context
  fields ``f1 … f6`` (``vocab`` values each, Zipf).
* **Conversion probability** ``p_∞(x) = σ(b + a_adv + Σ_j e_j(f_j) + affinity·⟨U_adv, V_f1⟩)`` with planted
  effects ``N(0, effect_scale²)`` and a rank-4 advertiser × f1 interaction; ``b`` is set by bisection so that the
  mean ``p_∞`` is ``base_rate``.
* **Delays.** Every advertiser has a rate ``β_a`` log-uniform on ``[beta_low, beta_high]`` per day. The first
  ``1 − nonexp_fraction`` of the advertisers (in id order) have ``delay ~ Exp(β_a)``; the rest alternate between
  Weibull with shape ``weibull_k`` and log-normal with ``σ = lognormal_sigma``, each scaled so that its median is
  the exponential's, ``ln 2 / β_a`` (a misspecified block for an exponential interpolation).
* **Times.** Clicks are uniform over ``days`` days from 2026-01-01 UTC; a conversion happens at click + delay.
  The log is cut at ``observed_at`` = the end of the click period: conversions after it are not in the data
  (``conversion_time`` empty), so the last days' labels are immature — exactly what the ``delay`` label kind's
  maturity weights handle.

**Columns**: the features; ``click_time`` (unix seconds) and ``conversion_time`` (unix seconds, empty = none
observed by the cut), read by the ``conv`` label of kind ``delay`` with ``windows`` (default ``1d … 7d``); and
truth columns the schema does not list: ``true_p`` (p_∞), ``true_delay_days`` (inf when the click never converts),
``true_beta`` and ``family`` (exponential / weibull / lognormal). :func:`delayed_truth` returns them per split.

**Split**: i.i.d. rows in generation order (click times are random, so every split spans the whole period):
80 % ``train``, 10 % ``valid``, 10 % ``test``.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rankcraft.data.dataset import DataSource
from rankcraft.data.funnel import calibration_bias
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import recipe
from rankcraft.data.schema import FeatureSpec, LabelSpec, Schema
from rankcraft.errors import DataError

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
DAY = 86_400.0
FAMILIES = ("exponential", "weibull", "lognormal")
TRUTH = ("true_p", "true_delay_days", "true_beta", "family")
DEFAULT_WINDOWS = tuple(f"{d}d" for d in range(1, 8))


def delayed_schema(fields: int = 6, windows=DEFAULT_WINDOWS, observed_at: float | None = None) -> Schema:
    label = LabelSpec(name="conv", kind="delay", column="conversion_time", click_time="click_time",
                      windows=list(windows), observed_at=observed_at)
    feats = [FeatureSpec(name="advertiser", type="categorical", source="item")]
    feats += [FeatureSpec(name=f"f{j + 1}", type="categorical", source="context") for j in range(fields)]
    return Schema(labels=[label], features=feats)


def _zipf(rng: np.random.Generator, n: int, vocab: int, a: float) -> np.ndarray:
    p = 1.0 / np.arange(1, vocab + 1) ** a
    return rng.permutation(vocab)[rng.choice(vocab, size=n, p=p / p.sum())]


def advertiser_delays(advertisers: int, *, beta_low: float = 0.1, beta_high: float = 3.0,
                      nonexp_fraction: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per advertiser: ``β_a`` (per day) and the family index into :data:`FAMILIES`."""
    rng = np.random.default_rng([seed, 7])
    beta = np.exp(rng.uniform(math.log(beta_low), math.log(beta_high), size=advertisers))
    family = np.zeros(advertisers, dtype=np.int64)
    n_exp = int(round(advertisers * (1.0 - nonexp_fraction)))
    family[n_exp:] = 1 + (np.arange(advertisers - n_exp) % 2)
    return beta, family


def delay_cdf(t_days: np.ndarray | float, beta: np.ndarray, family: np.ndarray, *, weibull_k: float = 0.6,
              lognormal_sigma: float = 1.0) -> np.ndarray:
    """``P(delay ≤ t | conversion)`` for each row's advertiser parameters (vectorised over rows)."""
    from scipy.special import ndtr

    t = np.broadcast_to(np.asarray(t_days, dtype=np.float64), np.shape(beta))
    med = math.log(2.0) / beta
    with np.errstate(divide="ignore"):
        exp = 1.0 - np.exp(-beta * t)
        lam = med / math.log(2.0) ** (1.0 / weibull_k)
        wei = 1.0 - np.exp(-(np.maximum(t, 0.0) / lam) ** weibull_k)
        logn = ndtr((np.log(np.maximum(t, 1e-300)) - np.log(med)) / lognormal_sigma)
    return np.where(family == 0, exp, np.where(family == 1, wei, logn))


def make_delayed_conversions(clicks: int = 600_000, *, advertisers: int = 300, fields: int = 6, vocab: int = 200,
                             zipf_a: float = 1.0, base_rate: float = 0.05, effect_scale: float = 0.6,
                             affinity: float = 1.0, beta_low: float = 0.1, beta_high: float = 3.0,
                             nonexp_fraction: float = 0.3, weibull_k: float = 0.6, lognormal_sigma: float = 1.0,
                             days: float = 28.0, seed: int = 0) -> tuple[pa.Table, float]:
    """Generate the clicks (module docstring): ``(table, observed_at)``."""
    if clicks < 1 or advertisers < 1 or fields < 1 or vocab < 1:
        raise ValueError("clicks, advertisers, fields and vocab must be >= 1")
    if not 0.0 < base_rate < 1.0:
        raise ValueError("base_rate must lie in (0, 1)")
    if not 0.0 <= nonexp_fraction <= 1.0:
        raise ValueError("nonexp_fraction must lie in [0, 1]")
    if not 0 < beta_low < beta_high:
        raise ValueError("need 0 < beta_low < beta_high")
    if days <= 0:
        raise ValueError("days must be > 0")
    rng = np.random.default_rng(seed)
    a_adv = rng.normal(0, effect_scale, size=advertisers)
    e_field = rng.normal(0, effect_scale, size=(fields, vocab))
    U = rng.normal(0, 0.5, size=(advertisers, 4))
    V = rng.normal(0, 0.5, size=(vocab, 4))
    beta, family = advertiser_delays(advertisers, beta_low=beta_low, beta_high=beta_high,
                                     nonexp_fraction=nonexp_fraction, seed=seed)
    rng = np.random.default_rng([seed, 1])
    adv = _zipf(rng, clicks, advertisers, zipf_a)
    f = np.stack([_zipf(rng, clicks, vocab, zipf_a) for _ in range(fields)])
    z = a_adv[adv] + e_field[np.arange(fields)[:, None], f].sum(0) + affinity * (U[adv] * V[f[0]]).sum(1)
    p = 1.0 / (1.0 + np.exp(-(z + calibration_bias(z, base_rate))))
    converts = rng.random(clicks) < p
    b, fam = beta[adv], family[adv]
    med = np.log(2.0) / b
    delay = np.where(fam == 0, rng.exponential(1.0, clicks) / b,
                     np.where(fam == 1, med / math.log(2.0) ** (1.0 / weibull_k) * rng.weibull(weibull_k, clicks),
                              med * np.exp(lognormal_sigma * rng.standard_normal(clicks))))
    delay = np.where(converts, delay, np.inf)
    click_t = T0 + rng.uniform(0.0, days * DAY, clicks)
    observed_at = T0 + days * DAY
    conv_t = click_t + delay * DAY
    seen = conv_t <= observed_at
    conv_str = pa.array(np.where(seen, np.floor(np.where(seen, conv_t, 0)).astype(np.int64), 0)).cast(pa.string())
    conv_str = pc.if_else(pa.array(seen), conv_str, pa.scalar("", pa.string()))

    def names(prefix: str, n: int, idx: np.ndarray) -> pa.Array:
        return pa.array([f"{prefix}{k}" for k in range(n)], pa.string()).take(pa.array(idx))

    cols = {"advertiser": names("a", advertisers, adv)}
    for j in range(fields):
        cols[f"f{j + 1}"] = names(f"v{j + 1}_", vocab, f[j])
    cols["click_time"] = pa.array(np.floor(click_t).astype(np.int64)).cast(pa.string())
    cols["conversion_time"] = conv_str
    cols.update(true_p=pa.array(p), true_delay_days=pa.array(delay), true_beta=pa.array(b),
                family=pa.array(np.array(FAMILIES)[fam]))
    return pa.table(cols), float(observed_at)


def delayed_splits(table: pa.Table) -> dict[str, pa.Table]:
    n = table.num_rows
    a, b = int(n * 0.8), int(n * 0.9)
    return {"train": table.slice(0, a), "valid": table.slice(a, b - a), "test": table.slice(b)}


@recipe("delayed-conversions", "synthetic clicks with advertiser-specific conversion delays and known truth "
        "(Personalized Interpolation)")
def delayed_source(data_dir: str | None = None, *, clicks: int = 600_000, seed: int = 0, windows=DEFAULT_WINDOWS,
                   **options) -> DataSource:
    """Options: ``clicks``, ``seed``, ``windows`` (the label's windows) and any keyword of
    :func:`make_delayed_conversions`. ``data_dir`` is ignored (nothing is read)."""
    if clicks < 10:
        raise DataError(f"delayed-conversions: clicks must be >= 10 (three splits), got {clicks}")
    _, observed_at = make_delayed_conversions(1, seed=seed, **options)  # bad options fail here
    fields = int(options.get("fields", 6))
    schema = delayed_schema(fields, windows, observed_at)

    def load() -> dict[str, RawTable]:
        table, _ = make_delayed_conversions(clicks, seed=seed, **options)
        return {k: RawTable(v, f"<delayed-conversions seed={seed}>", 0, "memory")
                for k, v in delayed_splits(table).items()}

    opts = ":".join(f"{k}={options[k]}" for k in sorted(options))
    return DataSource(name="delayed-conversions", schema=schema, loader=load,
                      version=f"1:clicks={clicks}:seed={seed}:windows={','.join(map(str, windows))}"
                              + (f":{opts}" if opts else ""))


def delayed_truth(source: DataSource, split: str) -> dict[str, np.ndarray]:
    """The truth columns of ``split`` in row order (the data is regenerated, deterministically): ``true_p``,
    ``true_delay_days``, ``true_beta`` (float64) and ``family`` (str)."""
    raw = source.load_raw()
    if split not in raw:
        raise DataError(f"delayed_truth: no split {split!r}; splits: {', '.join(raw)}")
    t = raw[split].table
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in TRUTH}
