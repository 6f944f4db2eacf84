"""Tabular architecture benchmarks: a fixed pool of architectures of one space, each trained once per fidelity, so
that search strategies can be compared over many repeats by lookup instead of training.

A table is built into a directory with a trial store (``trials.db``, study ``table``; a killed build resumes
without retraining a finished candidate) and exported as one compact gzipped JSON document::

    {"format": "rankcraft.table/1", "space": SpaceConfig, "embedding_dim": int,
     "fidelities": {name: {"data": DataSpec, "train": TrainConfig}},
     "rows": [{"arch": Arch JSON, "flops": FLOPs/example, "params": int,
               "<fidelity>": {"logloss", "auc", "ne", "seconds", "best_epoch", "steps",
                              "history": [{epoch, logloss, auc, train_loss, loss_curve}, …]} | absent}, …]}

Rows are sampled uniformly from the space (each decision uniform, as :meth:`SearchSpace.sample`), distinct in what
they compute (:meth:`Arch.live_key`), in a fixed order: the first ``n`` of a larger table are the table of ``n``.
Every row has the first fidelity; the first ``n_full`` rows also have the others.

:class:`Table` answers lookups by an architecture's live key; :class:`TableExecutor` is an executor over it (see
:mod:`rankcraft.parallel`): a search whose tasks it runs gets the tabulated results in microseconds, and an
architecture outside the table is a :class:`TableMissError` naming it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import random
from collections.abc import Callable
from pathlib import Path

from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_bytes
from rankcraft.models.arch.format import Arch
from rankcraft.parallel import Executor, is_failure
from rankcraft.search.evaluate import evaluate_task
from rankcraft.search.space import SearchSpace, SpaceConfig
from rankcraft.search.store import TrialStore

TABLE_FORMAT = "rankcraft.table/1"


class TableMissError(ConfigError):
    """An architecture that a tabular benchmark does not hold was asked for."""


def live_hash(arch: Arch) -> str:
    return hashlib.sha1(arch.live_key().encode()).hexdigest()[:16]


def sample_pool(space: SearchSpace, n: int, seed: int, accept: Callable[[Arch], bool] | None = None) -> list[Arch]:
    """``n`` architectures sampled uniformly from ``space`` with ``random.Random(seed)``, distinct by live key
    (repeats are drawn again), optionally only those ``accept`` admits. Deterministic: a prefix of a larger pool
    with the same seed is the smaller pool."""
    rng = random.Random(seed)
    out, seen = [], set()
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ConfigError(f"space '{space.name}': only {len(out)} distinct admissible architectures found in "
                              f"{tries} samples (asked for {n})")
        a = space.sample(rng)
        k = a.live_key()
        if k in seen or (accept is not None and not accept(a)):
            continue
        seen.add(k)
        out.append(a)
    return out


def build_table(out: str | Path, *, space: SpaceConfig, fidelities: dict[str, dict], n: int, n_full: int,
                executor: Executor, embedding_dim: int = 10, seed: int = 0, cache_dir: str | None = None,
                chunk: int = 16, progress: bool = True) -> Path:
    """Train the pool into ``out/trials.db`` (resumable) and export ``out/table.json.gz``; returns its path.

    ``fidelities`` maps a name to ``{"data": DataSpec dict, "train": TrainConfig dict}``; the first fidelity is
    trained for all ``n`` rows, the others for the first ``n_full``."""
    if not fidelities:
        raise ConfigError("a table needs at least one fidelity")
    if n_full > n:
        raise ConfigError(f"n_full ({n_full}) cannot exceed n ({n})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sp = SearchSpace(space)
    pool = sample_pool(sp, n, seed)
    meta = {"format": TABLE_FORMAT, "space": space.model_dump(mode="json"), "embedding_dim": embedding_dim,
            "seed": seed, "fidelities": fidelities}
    with TrialStore(out / "trials.db", study="table") as store:
        saved = store.get_meta("table")
        if saved is not None and {k: saved[k] for k in ("space", "fidelities", "seed", "embedding_dim")} != \
                {k: meta[k] for k in ("space", "fidelities", "seed", "embedding_dim")}:
            raise ConfigError(f"{out}: holds a table of another space, seed or fidelity; choose another directory")
        store.set_meta("table", meta)
        interrupted = store.recover()
        if interrupted and progress:
            print(f"resuming: {interrupted} interrupted candidate(s) will be re-run")
        for i, (name, fid) in enumerate(fidelities.items()):
            rows = pool if i == 0 else pool[:n_full]
            finished = store.completed_keys()  # one read of the store, not one per row
            todo = [a for a in rows if f"{name}-{live_hash(a)}" not in finished]
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                nums = [store.start(f"{name}-{live_hash(a)}", arch=a.to_dict(), hparams=fid["train"],
                                    fidelity={"tag": name}, strategy="table") for a in part]
                tasks = [{"key": f"{name}-{live_hash(a)}", "model": "arch",
                          "params": {"embedding_dim": embedding_dim, "arch": a.to_dict()}, "data": fid["data"],
                          "train": fid["train"], "cache_dir": cache_dir} for a in part]
                done = len(rows) - len(todo) + start
                results = executor.map(evaluate_task, tasks, progress=f"{name}: {done}/{len(rows)} done"
                                       if progress else None)
                for num, res in zip(nums, results):
                    if is_failure(res):
                        store.fail(num, res.error)
                        continue
                    store.complete(num, objective=res["metrics"].get("logloss", math.nan), flops=res["flops"],
                                   metrics=res["metrics"], params=res["params"], timings=res["timings"],
                                   extra={"best_epoch": res["best_epoch"], "steps": res["steps"],
                                          "history": res["history"]})
        return export_table(store, pool, meta, out / "table.json.gz")


def export_table(store: TrialStore, pool: list[Arch], meta: dict, path: Path) -> Path:
    """Write the store's results for ``pool`` (in pool order; rows without the first fidelity are left out) as
    the table document."""
    names = list(meta["fidelities"])
    by_key = {t.key: t for t in store.trials()}
    rows = []
    for a in pool:
        h = live_hash(a)
        first = by_key.get(f"{names[0]}-{h}")
        if first is None:
            continue
        row = {"arch": a.to_dict(), "flops": first.flops, "params": first.params}
        for name in names:
            t = by_key.get(f"{name}-{h}")
            if t is not None:
                row[name] = {**{k: t.metrics.get(k) for k in ("logloss", "auc", "ne")},
                             "seconds": t.timings.get("total_seconds"), "best_epoch": t.extra.get("best_epoch"),
                             "steps": t.extra.get("steps"), "history": t.extra.get("history", [])}
        rows.append(row)
    blob = json.dumps({**meta, "rows": rows}, separators=(",", ":")).encode()
    atomic_write_bytes(path, gzip.compress(blob, mtime=0))
    return path


class Table:
    """A tabular benchmark loaded from its document (``*.json.gz`` or ``*.json``)."""

    def __init__(self, doc: dict, origin: str = "table"):
        if doc.get("format") != TABLE_FORMAT:
            raise ConfigError(f"{origin}: not a rankcraft table (format {doc.get('format')!r}, expected "
                              f"{TABLE_FORMAT!r})")
        self.origin = origin
        self.space = SpaceConfig.model_validate(doc["space"])
        self.embedding_dim = int(doc["embedding_dim"])
        self.fidelities: dict[str, dict] = doc["fidelities"]
        self.rows: list[dict] = doc["rows"]
        self.archs = [Arch.model_validate(r["arch"]) for r in self.rows]
        self._index = {a.live_key(): i for i, a in enumerate(self.archs)}

    @classmethod
    def load(cls, path: str | Path) -> Table:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"table {p}: no such file")
        try:
            raw = gzip.decompress(p.read_bytes()) if p.suffix == ".gz" else p.read_bytes()
            doc = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"table {p}: cannot read it: {exc}") from None
        return cls(doc, str(p))

    def __len__(self) -> int:
        return len(self.rows)

    def index(self, arch: Arch | dict) -> int:
        a = arch if isinstance(arch, Arch) else Arch.model_validate(arch)
        i = self._index.get(a.live_key())
        if i is None:
            raise TableMissError(f"{self.origin}: architecture {live_hash(a)} is not in the table "
                                 f"({len(self)} architectures); restrict proposals to the table's pool")
        return i

    def contains(self, arch: Arch) -> bool:
        return arch.live_key() in self._index

    def with_fidelity(self, fidelity: str) -> list[int]:
        """Indices of the rows measured at ``fidelity``."""
        if fidelity not in self.fidelities:
            raise ConfigError(f"{self.origin}: no fidelity '{fidelity}' (has {', '.join(self.fidelities)})")
        return [i for i, r in enumerate(self.rows) if r.get(fidelity)]

    def result(self, arch: Arch | dict, fidelity: str) -> dict:
        """The tabulated result in the shape of :func:`~rankcraft.search.evaluate.evaluate_task`'s."""
        i = self.index(arch)
        r = self.rows[i]
        m = r.get(fidelity)
        if not m:
            raise TableMissError(f"{self.origin}: architecture {live_hash(self.archs[i])} has no "
                                 f"'{fidelity}' result (only the first rows carry every fidelity)")
        return {"metrics": {k: m[k] for k in ("logloss", "auc", "ne") if m.get(k) is not None},
                "flops": r["flops"], "params": r["params"], "best_epoch": m.get("best_epoch") or 0,
                "steps": m.get("steps") or 0, "history": m.get("history", []),
                "timings": {"total_seconds": m.get("seconds") or 0.0, "tabulated": True}}


class TableExecutor(Executor):
    """Answers :func:`~rankcraft.search.evaluate.evaluate_task` tasks from a :class:`Table` at one fidelity;
    other functions are refused. ``pool`` is the architectures a search may propose (those with the fidelity)."""

    def __init__(self, table: Table, fidelity: str):
        self.table, self.fidelity = table, fidelity
        self.pool = [table.archs[i] for i in table.with_fidelity(fidelity)]

    def map(self, fn, items: list, *, progress: str | None = None) -> list:
        if fn is not evaluate_task:
            raise ConfigError("a table executor only answers candidate evaluations (evaluate_task)")
        out = []
        for task in items:
            if task.get("model") != "arch":
                raise TableMissError(f"{self.table.origin}: holds architectures of space "
                                     f"'{self.table.space.name}' only, not zoo model '{task.get('model')}'")
            out.append(self.table.result(task["params"]["arch"], self.fidelity))
        return out

    def __repr__(self) -> str:
        return f"TableExecutor({self.table.origin!r}, fidelity={self.fidelity!r}, rows={len(self.pool)})"


__all__ = ["TABLE_FORMAT", "Table", "TableExecutor", "TableMissError", "build_table", "export_table", "live_hash",
           "sample_pool"]
