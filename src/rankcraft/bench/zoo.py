"""Train a list of zoo models on one dataset with fixed presets; write ``results.json`` and ``results.md``.

Every number in the output is measured in this run: validation AUC/logloss of the best epoch, the best epoch,
FLOPs per example (``torch.utils.flop_counter``), parameters, training rows/s of the whole loop (batching
included, evaluation excluded), wall time, and — with ``test_file`` — test metrics computed with the run's encoders.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch

from rankcraft.data.dataset import encode_file
from rankcraft.data.spec import DataSpec, prepare_spec
from rankcraft.errors import ConfigError
from rankcraft.files import atomic_write_json, atomic_write_text
from rankcraft.training.evaluation import evaluate
from rankcraft.training.presets import dataset_presets, load_presets
from rankcraft.training.run import RunConfig
from rankcraft.training.run import train as train_run


def _fmt(x, digits=4):
    return "—" if x is None else f"{x:.{digits}f}"


def run_benchmark(dataset: str, models: list[str], out: str | Path, *, data_dir: str | None = None,
                  test_file: str | None = None, seeds: list[int] | None = None, presets: dict | None = None,
                  train_overrides: dict | None = None, param_overrides: dict | None = None,
                  quiet: bool = True, rows: int | None = None, merge: bool = True,
                  command: str | None = None) -> dict:
    """Run the benchmark; returns the results dict that is also written to ``out/results.json``."""
    presets = presets or load_presets()
    found = dataset_presets(dataset, presets)
    if found is None:
        raise ConfigError(f"no benchmark presets for dataset '{dataset}' (have: {', '.join(presets)})")
    ds = found[1]
    seeds = seeds or [2021]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    spec = DataSpec(recipe=dataset, data_dir=data_dir, rows=rows)
    data = prepare_spec(spec)
    results = {"dataset": dataset, "commands": [], "machine": {"platform": platform.platform(),
               "torch": torch.__version__, "threads": torch.get_num_threads()}, "models": {}}
    previous = out / "results.json"
    if merge and previous.exists():  # re-running some models replaces their rows and keeps the others
        old = json.loads(previous.read_text())
        if old.get("dataset") == dataset:
            results["models"] = old.get("models", {})
            results["commands"] = old.get("commands", [])
    for name in models:
        preset = ds.get("models", {}).get(name) or {}
        model_name = preset.get("model", name)  # a row label may differ from the zoo model (e.g. mos-din → mos)
        params = dict(preset.get("params", {}))
        params.update((param_overrides or {}).get(name, {}))
        runs = []
        for seed in seeds:
            train = dict(ds.get("train", {}))
            train.update(preset.get("train", {}))
            train.update(train_overrides or {})
            train.update(seed=seed, quiet=quiet)
            objective = preset.get("objective", ds.get("objective"))
            cfg = RunConfig(data=spec, model=model_name, params=params, objective=objective, train=train)
            run_dir = out / "runs" / f"{name}-seed{seed}"
            if run_dir.exists():
                import shutil
                shutil.rmtree(run_dir)
            t0 = time.perf_counter()
            res = train_run(cfg, out=run_dir, data=data)
            wall = time.perf_counter() - t0
            r = res.report
            label = (objective or {}).get("label") if (objective or {}).get("type", "binary") != "multitask" else None
            valid = _task_metrics(r["valid"], label)
            row = {"seed": seed, "valid": valid, "best_epoch": r["best_epoch"],
                   "epochs_run": r["epochs_run"], "flops_per_example": r["flops_per_example"], "params": r["params"],
                   "train_rows_per_s": r["train_rows_per_s"], "inference_rows_per_s": r["inference_rows_per_s"],
                   "wall_seconds": wall}
            if "auc" in r["valid"]:
                row.update(valid_auc=r["valid"]["auc"], valid_logloss=r["valid"]["logloss"],
                           valid_gauc=r["valid"].get("gauc"))
            if "test" in r:
                row["test"] = _task_metrics(r["test"], label)
            if test_file:
                tdata, _ = encode_file(data.encoders, test_file)
                m = evaluate(res.model, tdata, res.objective)
                row["test"] = _task_metrics(m, label)
            if "auc" in row.get("test", {}):
                row.update(test_auc=row["test"]["auc"], test_logloss=row["test"]["logloss"])
            runs.append(row)
            if not quiet:
                print(f"{name} seed {seed}: valid " + "  ".join(f"{k} {v:.4f}" for k, v in valid.items()
                                                                if isinstance(v, float)))
        agg = {"model": model_name, "params": params, "objective": objective, "train": train, "runs": runs}
        for k in ("valid_auc", "valid_logloss", "valid_gauc", "test_auc", "test_logloss", "train_rows_per_s"):
            vals = [r[k] for r in runs if r.get(k) is not None]
            if vals:
                agg[k + "_mean"] = statistics.fmean(vals)
                agg[k + "_std"] = statistics.pstdev(vals) if len(vals) > 1 else 0.0
        for split in ("valid", "test"):
            keys = sorted({k for r in runs for k, v in r.get(split, {}).items() if "/" in k and v is not None})
            for k in keys:
                vals = [r[split][k] for r in runs if r.get(split, {}).get(k) is not None]
                agg.setdefault(f"{split}_by_task", {})[k] = {
                    "mean": statistics.fmean(vals), "std": statistics.pstdev(vals) if len(vals) > 1 else 0.0}
        agg.update(flops_per_example=runs[0]["flops_per_example"], params_count=runs[0]["params"],
                   best_epoch=runs[0]["best_epoch"], wall_seconds=statistics.fmean(r["wall_seconds"] for r in runs))
        results["models"][name] = agg
        atomic_write_json(out / "results.json", results)
    if command:
        results["commands"].append({"command": command, "models": models})
        atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "results.md", to_markdown(results))
    return results


def _task_metrics(metrics: dict, label: str | None) -> dict:
    """Metrics keyed by task: a one-head run trained on label ``L`` of a multi-label dataset reports ``L/auc`` etc.
    (so single-task baselines line up with the multi-task models' per-task columns)."""
    out = {k: v for k, v in metrics.items() if k not in ("inference_rows_per_s",)}
    if label:
        out = {(k if "/" in k else f"{label}/{k}"): v for k, v in out.items()}
    return out


def to_markdown(results: dict) -> str:
    ms = results["models"]
    if any("valid_by_task" in m for m in ms.values()):
        return _tasks_markdown(results)
    has_test = any("test_auc_mean" in m for m in ms.values())
    multi = any(len(m["runs"]) > 1 for m in ms.values())
    head = "| model | valid AUC | valid logloss |" + (" test AUC | test logloss |" if has_test else "") + \
        " best epoch | FLOPs/example | params | train rows/s | wall s |"
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [f"Dataset: {results['dataset']}" + (" (mean ± std over seeds)" if multi else ""), "", head, sep]
    for name, m in sorted(ms.items(), key=lambda kv: -kv[1]["valid_auc_mean"]):
        def cell(k):
            if k + "_mean" not in m:
                return "—"
            s = _fmt(m[k + "_mean"])
            return s + (f" ± {_fmt(m[k + '_std'])}" if multi else "")
        row = f"| {name} | {cell('valid_auc')} | {cell('valid_logloss')} |"
        if has_test:
            row += f" {cell('test_auc')} | {cell('test_logloss')} |"
        row += (f" {m['best_epoch']} | {m['flops_per_example']:,.0f} | {m['params_count']:,} | "
                f"{m['train_rows_per_s_mean']:,.0f} | {m['wall_seconds']:.0f} |")
        lines.append(row)
    cmds = results.get("commands") or []
    if cmds:
        lines += ["", "Produced by:"] + [f"- `{c['command']}`" for c in cmds]
    return "\n".join(lines) + "\n"


__all__ = ["run_benchmark", "to_markdown"]


def _tasks_markdown(results: dict) -> str:
    """One row per model, AUC and logloss per task (test split when measured, else valid)."""
    ms = results["models"]
    split = "test" if any("test_by_task" in m for m in ms.values()) else "valid"
    tasks = sorted({k.rsplit("/", 1)[0] for m in ms.values() for k in m.get(f"{split}_by_task", {})
                    if k.rsplit("/", 1)[0] != "mean"})
    multi = any(len(m["runs"]) > 1 for m in ms.values())
    head = "| model | " + " | ".join(f"{split} {t} AUC | {split} {t} logloss" for t in tasks) + \
        " | params | FLOPs/example | best epoch | wall s |"
    sep = "|" + "---|" * (head.count("|") - 1)
    lines = [f"Dataset: {results['dataset']}" + (" (mean ± std over seeds)" if multi else ""), "", head, sep]

    def cell(m, k):
        v = m.get(f"{split}_by_task", {}).get(k)
        if v is None:
            return "—"
        return _fmt(v["mean"]) + (f" ± {_fmt(v['std'])}" if multi else "")

    for name, m in ms.items():
        cells = " | ".join(f"{cell(m, t + '/auc')} | {cell(m, t + '/logloss')}" for t in tasks)
        lines.append(f"| {name} | {cells} | {m['params_count']:,} | {m['flops_per_example']:,.0f} | "
                     f"{m['best_epoch']} | {m['wall_seconds']:.0f} |")
    cmds = results.get("commands") or []
    if cmds:
        lines += ["", "Produced by:"] + [f"- `{c['command']}`" for c in cmds]
    return "\n".join(lines) + "\n"
