"""``drifting-stream``: a synthetic, low-base-rate click stream in chunks with drift, two domains and the true
logit known (the ExFM experiment's second test, ``shared/papers/wave2-specs.md`` §2(d)).

* **Features** (categorical): ``domain`` (``A`` / ``B``, half the rows each) and ``fields`` fields ``f1 …``
  (``vocab`` values each, Zipf).
* **Planted logit** of a row in chunk ``c``: ``b + Σ_j s_{d,j} · e_j(f_j; c)`` where ``e_j(v; c) = cos(θ_c) a_{j,v}
  + sin(θ_c) a'_{j,v}`` rotates between two random effect tables as ``θ_c = drift · c`` (drift per chunk, radians),
  and ``s_{d,j} = −1`` for domain B on the first ``flipped`` fields (the domains disagree there), else +1. ``b`` is
  set by bisection so that the mean probability is ``base_rate`` (3%).
* **Columns**: the features, ``label`` (Bernoulli of σ(logit)), ``ts`` (unix seconds: chunk ``c`` is day ``c``
  from 2026-01-01, so ``--partition-by day`` gives one partition per chunk), ``chunk`` and the truth column
  ``true_logit``, declared as a regression label so that it stays aligned with every row through encoding and
  partitioning (objectives name ``label``; nothing learns ``true_logit`` unless asked).
* **Split**: every row in ``train`` (a stream: time partitions do the rest).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rankcraft.data.dataset import DataSource
from rankcraft.data.funnel import calibration_bias
from rankcraft.data.readers import RawTable
from rankcraft.data.registry import recipe
from rankcraft.data.schema import FeatureSpec, Schema

T0 = 1_767_225_600  # 2026-01-01T00:00:00Z


def make_drifting_stream(chunks: int = 20, rows_per_chunk: int = 10_000, *, fields: int = 6, vocab: int = 100,
                         flipped: int = 2, base_rate: float = 0.03, drift: float = 0.08, scale: float = 1.0,
                         zipf_a: float = 1.0, seed: int = 0) -> pa.Table:
    """Generate the stream (module docstring)."""
    if chunks < 1 or rows_per_chunk < 1 or fields < 1 or vocab < 1:
        raise ValueError("chunks, rows_per_chunk, fields and vocab must be >= 1")
    if not 0 <= flipped <= fields:
        raise ValueError("flipped must lie in [0, fields]")
    if not 0.0 < base_rate < 1.0:
        raise ValueError("base_rate must lie in (0, 1)")
    rng = np.random.default_rng(seed)
    a, a2 = rng.normal(0, scale, size=(2, fields, vocab))
    n = chunks * rows_per_chunk
    rng = np.random.default_rng([seed, 1])
    chunk = np.repeat(np.arange(chunks), rows_per_chunk)
    dom = rng.integers(0, 2, n)
    p = 1.0 / np.arange(1, vocab + 1) ** zipf_a
    f = rng.choice(vocab, size=(fields, n), p=p / p.sum())
    theta = drift * chunk
    eff = np.cos(theta) * a[np.arange(fields)[:, None], f] + np.sin(theta) * a2[np.arange(fields)[:, None], f]
    sign = np.ones((fields, n))
    sign[:flipped] = np.where(dom == 1, -1.0, 1.0)
    z = (sign * eff).sum(0)
    z = z + calibration_bias(z, base_rate)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    cols = {"domain": pa.array(np.array(["A", "B"])[dom])}
    for j in range(fields):
        cols[f"f{j + 1}"] = pa.array([f"v{k}" for k in range(vocab)], pa.string()).take(pa.array(f[j]))
    cols.update(label=pa.array(y).cast(pa.string()), ts=pa.array(T0 + chunk * 86_400 + 3600),
                chunk=pa.array(chunk), true_logit=pa.array(z).cast(pa.string()))
    return pa.table(cols)


def drift_schema(fields: int = 6) -> Schema:
    feats = [FeatureSpec(name="domain", type="categorical", source="context")]
    feats += [FeatureSpec(name=f"f{j + 1}", type="categorical", source="context") for j in range(fields)]
    # the true logit travels with every row as a regression label (never a feature), for the oracle NE
    return Schema(labels=["label", {"name": "true_logit", "kind": "regression"}], features=feats)


@recipe("drifting-stream", "synthetic low-base-rate stream in daily chunks with drift, two domains and the true "
        "logit (ExFM)")
def drifting_source(data_dir: str | None = None, *, seed: int = 0, **options) -> DataSource:
    """Options: ``seed`` and any keyword of :func:`make_drifting_stream`. ``data_dir`` is ignored."""
    make_drifting_stream(**{**options, "chunks": 1, "rows_per_chunk": 1}, seed=seed)  # bad options fail here
    fields = int(options.get("fields", 6))

    def load() -> dict[str, RawTable]:
        return {"train": RawTable(make_drifting_stream(seed=seed, **options), f"<drifting-stream seed={seed}>", 0,
                                  "memory")}

    opts = ":".join(f"{k}={options[k]}" for k in sorted(options))
    return DataSource(name="drifting-stream", schema=drift_schema(fields), loader=load,
                      version=f"1:seed={seed}" + (f":{opts}" if opts else ""), time_column="ts")


def drift_truth(source: DataSource) -> np.ndarray:
    """The true logit of every row, in row order."""
    return source.load_raw()["train"].table.column("true_logit").cast(pa.float64()).to_numpy()
