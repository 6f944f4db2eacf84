"""Standalone evaluation of one candidate: train an architecture from scratch at a given fidelity and measure it.

:func:`evaluate_task` is a plain module-level function of one picklable dict, so the same call runs in-process or
in a Ray worker (:mod:`rankcraft.parallel`). It is fully determined by its arguments (seeded data order and
initial weights), which is what makes parallel and sequential searches agree.

Task dict::

    {"key": str, "model": "arch" | zoo name, "params": {...},   # params of the model (arch JSON inside for "arch")
     "data": DataSpec dict, "train": TrainConfig dict (the fidelity: max_steps / epochs, lr, batch size, seed),
     "cache_dir": str | None,
     "prune": {"metric": str, "thresholds": {epoch: value}} | absent}   # stop a trial worse than the thresholds

Result dict: ``{"metrics": {auc, logloss, ne, …}, "flops": FLOPs/example, "params": int, "timings": {…},
"best_epoch": int, "steps": int,
"history": [{epoch, auc, logloss, ne, train_loss, loss_curve, steps}, …], "pruned_at": epoch | None}``.
"""

from __future__ import annotations

import json
import time

from rankcraft.data.spec import prepare_spec
from rankcraft.training.objectives import higher_is_better
from rankcraft.training.run import RunConfig
from rankcraft.training.run import train as train_run

_DATA_MEMO: dict[str, object] = {}
_HISTORY_KEYS = ("epoch", "auc", "logloss", "ne", "train_loss", "loss_curve", "steps")


def _prepared(data: dict, cache_dir: str | None):
    """Prepared data, memoised per process (a Ray worker evaluates many candidates on the same data)."""
    key = json.dumps([data, cache_dir], sort_keys=True)
    if key not in _DATA_MEMO:
        _DATA_MEMO.clear()
        _DATA_MEMO[key] = prepare_spec(data, cache_dir)
    return _DATA_MEMO[key]


def _pruner(prune: dict | None):
    """``after_epoch`` hook of a pruned trial: stop once the monitored ``metric`` at an epoch is worse than that
    epoch's threshold (``{"metric": "auc", "thresholds": {"2": 0.97, ...}}``; set by the tuner from the
    completed trials, e.g. their median)."""
    if not prune:
        return None
    metric, thresholds = prune["metric"], {int(k): float(v) for k, v in prune["thresholds"].items()}
    higher = higher_is_better(metric)

    def hook(epoch: int, metrics: dict) -> bool:
        thr, value = thresholds.get(epoch), metrics.get(metric)
        if thr is None or value is None:
            return False
        return value < thr if higher else value > thr

    return hook


def evaluate_task(task: dict) -> dict:
    t0 = time.perf_counter()
    data = _prepared(task["data"], task.get("cache_dir"))
    train = {**task["train"], "quiet": True, "checkpoint_seconds": 0}
    cfg = RunConfig.parse({"data": task["data"], "model": task.get("model", "arch"), "params": task["params"],
                               "train": train}, f"candidate {task.get('key', '')}")
    res = train_run(cfg, data=data, after_epoch=_pruner(task.get("prune")))
    r = res.report
    return {
        "metrics": {k: float(v) for k, v in r["valid"].items() if isinstance(v, (int, float))},
        "flops": float(r["flops_per_example"]),
        "params": int(r["params"]),
        "best_epoch": int(r["best_epoch"]),
        "steps": int(r["steps"]),
        # per epoch: validation metrics, mean training loss and its within-epoch curve (learning-curve labels)
        "history": [{k: v for k, v in h.items() if k in _HISTORY_KEYS} for h in res.fit.history],
        "pruned_at": res.fit.extra.get("stopped_by_hook"),
        "timings": {"train_seconds": float(r["train_seconds"]), "total_seconds": time.perf_counter() - t0,
                    "train_rows_per_s": float(r["train_rows_per_s"])},
    }
