"""The architecture search driver: configuration, budget, trial bookkeeping and the search directory.

A search directory holds::

    config.json      the resolved SearchConfig (a resumed search must use the same one)
    trials.db        the Optuna trial store (unless --storage names another database)
    supernet/last.pt one-shot supernet training state (oneshot); dnas-<λ>/last.pt per penalty weight (dnas)
    front.png        the Pareto front (validation objective vs FLOPs/example) with the zoo references
    report.md/json   the front, its hypervolume, the best architecture and the zoo comparison
    best.json        the best searched architecture: {"arch": ..., "params": ..., "metrics": ..., "flops": ...}

Every candidate evaluation is recorded in the store before and after it runs, so a search killed at any moment
(``kill -9``) continues with ``resume=True``: completed trials are reused (candidates are keyed by a hash of their
architecture and fidelity), interrupted ones are marked failed and re-run, and the strategies replay their
seeded decisions over the stored results.
"""

from __future__ import annotations

import os
from pathlib import Path

from rankcraft.data.spec import prepare_spec
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_json, read_json
from rankcraft.models.catalog import model_class
from rankcraft.parallel import make_executor
from rankcraft.search.config import SearchConfig
from rankcraft.search.context import SearchContext
from rankcraft.search.registry import get_strategy
from rankcraft.search.report import write_report
from rankcraft.search.store import TrialStore
from rankcraft.search.tabular import Table, TableExecutor

RESUME_CHANGES = ("budget", "confirm")


def run_search(cfg: SearchConfig | dict, out: str | Path, *, resume: bool = False, storage: str | None = None,
               cache_dir: str | Path | None = None, progress: bool = True, changes: dict | None = None) -> dict:
    """Run (or, with ``resume``, continue) a search into directory ``out``; returns the report dict.

    A resumed search continues with its saved config; ``changes`` may replace its ``budget`` (e.g. a finished
    search extended by more trials or minutes) or ``confirm`` section. Anything else would make the stored trials
    a different search's, and is an error."""

    if isinstance(cfg, dict):
        cfg = SearchConfig.parse(cfg)
    out = Path(out)
    cfg_path = out / "config.json"
    if cfg_path.exists():
        saved = read_json(cfg_path, "search config")
        if not resume:
            raise ConfigError(f"{out}: holds a search already; pass --resume to continue it or choose another --out")
        if saved != cfg.to_dict():
            cfg = SearchConfig.parse(saved, str(cfg_path))  # a resumed search continues with its own config
        if changes:
            bad = sorted(set(changes) - set(RESUME_CHANGES))
            if bad:
                raise ConfigError(f"{out}: a resumed search cannot change {', '.join(bad)} (only "
                                  f"{', '.join(RESUME_CHANGES)}); start a new search with another --out")
            cfg = SearchConfig.parse({**cfg.to_dict(), **changes}, f"{out}: resumed search")
    elif resume:
        raise ConfigError(f"{out}: no search to resume (config.json is missing)")
    for z in cfg.zoo:
        model_class(z if isinstance(z, str) else z.model)  # unknown zoo reference -> ConfigError
    spec = get_strategy(cfg.strategy)
    if cfg.table is not None and spec.trains_supernet:
        raise ConfigError(f"strategy '{cfg.strategy}' trains weight-sharing supernets; a tabular benchmark holds "
                          "standalone results only (remove 'table' or choose another strategy)")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(cfg_path, cfg.to_dict())
    store = TrialStore(storage or (out / "trials.db"), study="search")
    interrupted = store.recover()
    if interrupted and progress:
        print(f"resuming: {interrupted} interrupted trial(s) will be re-run")

    data = prepare_spec(cfg.data, cache_dir)
    # default: the machine's cores shared by the workers (a sequential search uses all of them)
    threads = cfg.threads_per_task or max(1, (os.cpu_count() or 1) // cfg.workers)
    if cfg.table is not None:
        executor = TableExecutor(Table.load(cfg.table.path), cfg.table.fidelity)
    else:
        executor = make_executor(cfg.workers, ray_address=cfg.ray_address, threads_per_task=threads)
    with executor:
        ctx = SearchContext(cfg, out, store, executor, data, cache_dir=cache_dir, progress=progress)
        if cfg.strategy != "evolution" and "evolution" in cfg.sections() and cfg.options("evolution").seeds:
            ctx.note(f"evolution.seeds are used by the evolution strategy only, not by {cfg.strategy}")
        if spec.prepare is not None:
            spec.prepare(ctx)
        if cfg.zoo and cfg.table is not None:
            ctx.note("zoo references are not trained on a tabular benchmark (it holds architectures only)")
        elif cfg.zoo:
            ctx.evaluate_zoo()
        spec.run(ctx)
        ctx.save_elapsed()
        if cfg.confirm is not None:
            if cfg.table is not None:
                ctx.note("confirm: a tabular benchmark has one seed per architecture; confirmation skipped")
            else:
                ctx.confirm()
    return write_report(ctx)
