"""``rankcraft`` command line.

Errors in the user's input (bad data, config, checkpoint), a full disk, an unreadable file and a diverging loss are
printed as one line naming the file, line and column, with exit status 2 — never a stack trace.
``RANKCRAFT_DEBUG=1`` shows the traceback. Ctrl-C, and SIGTERM during ``train``/``search``/``bench``, stop the
command the same way (the run or search directory stays resumable); the exit status is then ``128 + signal``
(130 after Ctrl-C, 143 after SIGTERM).

Run as the ``rankcraft`` program (:func:`main` without arguments), the process ends with ``os._exit`` once its
output is flushed and the ``atexit`` handlers have run — see :func:`_end_process` for why.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from rankcraft.errors import ConfigError, RankcraftError
from rankcraft.search.registry import strategies, strategy_names

DEMO_MODELS = ["lr", "fm", "dnn", "deepfm", "dcnv2", "finalmlp"]
#: commands that leave a resumable directory: SIGTERM stops them like Ctrl-C
INTERRUPTIBLE_COMMANDS = {"train", "search", "tune", "bench"}


# --------------------------------------------------------------------------------------------- helpers
def _kv(items: list[str] | None, what: str) -> dict:
    """Parse ``KEY=VALUE`` pairs; values are YAML scalars/lists (``safe_load``, nothing is evaluated)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{what} '{item}': expected KEY=VALUE")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v)
        except yaml.YAMLError:
            raise ConfigError(f"{what} '{item}': cannot parse the value") from None
    return out


class _HelpFormatter(argparse.HelpFormatter):
    """Fills ``{recipes}`` in help texts with the catalog's recipe names, only when help is shown (importing the
    catalog imports torch, which the other commands' start-up should not pay for)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = super()._get_help_string(action) or ""
        if "{recipes}" in text:
            text = text.replace("{recipes}", ", ".join(_recipe_names()))
        if "{preset_datasets}" in text:
            from rankcraft.training.presets import load_presets

            text = text.replace("{preset_datasets}", ", ".join(load_presets()))
        return text

    def _split_lines(self, text: str, width: int) -> list[str]:
        import textwrap

        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)  # keep ml-100k-seq whole


def _recipe_names() -> list[str]:
    """The built-in recipes, in the order ``rankcraft datasets`` lists them."""
    from rankcraft.data.catalog import RECIPES

    return list(RECIPES)


def _add_data_args(p: argparse.ArgumentParser, without: str | None = None) -> None:
    """The data options; ``without``: what the command does when none is given (said in the help)."""
    g = p.add_argument_group("data (a recipe, or a schema with files)")
    g.add_argument("--dataset", metavar="RECIPE", help="built-in recipe, as `rankcraft datasets` lists them: "
                   "{recipes}" + (f". {without}" if without else ""))
    g.add_argument("--data-dir", help="directory (or file) of the recipe's raw data")
    g.add_argument("--schema", help="YAML schema for your own files")
    g.add_argument("--train", dest="train_file", help="training file (CSV/TSV/Parquet)")
    g.add_argument("--valid", dest="valid_file", help="validation file (default: 10%% of --train)")
    g.add_argument("--test", dest="test_file", help="optional test file")
    g.add_argument("--rows", type=int, help="rows to generate (synthetic recipe)")
    g.add_argument("--data-option", action="append", metavar="KEY=VALUE",
                   help="a recipe option (repeatable), e.g. --data-option negatives=4 for the events recipe")
    g.add_argument("--valid-from-train", type=float, metavar="FRACTION",
                   help="select (early stopping, tuning, search) on this seeded fraction of the training rows; the "
                   "given validation and test splits are dropped, so the split you report on stays unseen")
    g.add_argument("--cache-dir", help="processed-data cache (default $RANKCRAFT_CACHE or ~/.cache/rankcraft)")


def _data_spec(args) -> dict | None:
    d = _data_source_spec(args)
    if d is not None and getattr(args, "valid_from_train", None) is not None:
        d["valid_from_train"] = args.valid_from_train
    elif getattr(args, "valid_from_train", None) is not None:
        raise ConfigError("--valid-from-train needs the data on the command line (--dataset or --schema); in a "
                          "config file write data.valid_from_train")
    return d


def _data_source_spec(args) -> dict | None:
    if args.dataset:
        d = {"recipe": args.dataset, "data_dir": args.data_dir}
        if args.rows:
            d["rows"] = args.rows
        options = _kv(getattr(args, "data_option", None), "--data-option")
        if options:
            d["options"] = options
        return d
    if args.schema:
        return {"schema_file": args.schema, "train": args.train_file, "valid": args.valid_file,
                "test": args.test_file}
    if args.train_file:
        raise ConfigError("--train needs --schema (or use --dataset for a built-in recipe)")
    return None


# --------------------------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    from rankcraft import api

    if args.resume:
        if not args.out:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        _check_run_config(args.out)
        res = _launch(api, {}, args, out=args.out, resume=True)
        _print_report(res.report, args.out)
        return 0
    cfg: dict = {}
    if args.config:
        api.RunConfig.from_yaml(args.config)  # errors name the file
        cfg = api.read_config_yaml(args.config)  # as written: the preset fills only what it leaves out
    data = _data_spec(args)
    if data is not None:
        cfg["data"] = data
    if args.partition_by or args.fit_on or args.partition_column:
        d = cfg.setdefault("data", {"recipe": "synthetic"})
        if isinstance(d, dict):
            part = d["partitions"] = dict(d.get("partitions") or {})
            for key, val in (("unit", args.partition_by), ("fit_on", args.fit_on), ("column", args.partition_column)):
                if val is not None:
                    part[key] = val
    if getattr(args, "out_of_core", False):
        d = cfg.setdefault("data", {"recipe": "synthetic"})
        if isinstance(d, dict):
            d["out_of_core"] = dict(d.get("out_of_core") or {})
    if args.init_from:
        cfg["init_from"] = args.init_from
    if args.model:
        cfg["model"] = args.model
    if args.arch:
        from rankcraft.models.arch.format import load_arch

        if args.model and args.model != "arch":
            raise ConfigError("--arch trains the searched architecture; do not combine it with --model")
        arch = load_arch(args.arch)
        doc = json.loads(Path(args.arch).read_text())
        cfg["model"] = "arch"
        params = dict(doc.get("params", {})) if isinstance(doc, dict) and "arch" in doc else {}
        params["arch"] = arch.to_dict()
        cfg["params"] = params
    params = cfg["params"] = _copy_section(cfg.get("params"))
    if isinstance(params, dict):
        params.update(_kv(args.param, "--param"))
    train = cfg["train"] = _copy_section(cfg.get("train"))
    if isinstance(train, dict):
        for key in ("epochs", "batch_size", "lr", "optimizer", "seed", "threads", "embedding_l2", "monitor",
                    "max_steps", "checkpoint_every", "device"):
            val = getattr(args, key)
            if val is not None:
                train[key] = val
        if args.bf16:
            train["bf16"] = True
        if args.quiet:
            train["quiet"] = True
        if args.report_to:
            train["report_to"] = ["jsonl"] + [r for r in args.report_to.split(",") if r and r != "jsonl"]
        train.update(_kv(args.opt, "--opt"))
    cfg = _apply_preset(cfg, no_preset=args.no_preset)
    config = api.RunConfig.parse(cfg, "command line")
    out = args.out or f"runs/{config.model}-{time.strftime('%Y%m%d-%H%M%S')}"
    res = _launch(api, config, args, out=out, resume=False)
    _print_report(res.report, out)
    return 0


def _launch(api, config, args, *, out: str, resume: bool):
    """Train in this process, in ``--workers`` local processes, or on a Ray cluster (``--ray-address``)."""
    if args.ray_address:
        from rankcraft.training.ray_train import train_on_ray

        return train_on_ray(config, out=out, resume=resume, cache_dir=args.cache_dir, address=args.ray_address,
                            workers=args.workers or 2)
    return api.train(config, out=out, resume=resume, cache_dir=args.cache_dir, workers=args.workers or 1)


def _copy_section(section):
    """A config section to update: a copy of a mapping, ``{}`` for none (anything else is left for validation)."""
    if section is None:
        return {}
    return dict(section) if isinstance(section, dict) else section


def _apply_preset(cfg: dict, *, no_preset: bool = False) -> dict:
    """``cfg`` (the user's config: --config, then flags) on top of the recipe's benchmark preset for its model.

    Says (one line each) which data is used when none was given, which model is trained when none was named, and
    which preset is used. The user's keys win over the preset's, key by key within ``train`` and ``params``."""
    from rankcraft.training.presets import preset_for

    data = cfg.get("data")
    if data is None:
        print("no --dataset/--schema given: training on the synthetic recipe")
        recipe = "synthetic"
    else:
        recipe = data.get("recipe") if isinstance(data, dict) else None
    model = cfg.get("model")
    if model is None:
        model = "dnn"
        if recipe:
            print(f"no --model given: training {model}")
    if not recipe or not isinstance(model, str):
        return cfg
    preset = preset_for(recipe, model)
    if preset is None:
        return cfg
    if no_preset:
        print(f"--no-preset: bare defaults for {model} on {recipe}, not preset {_preset_label(preset)}")
        return cfg
    out = dict(cfg)
    out["model"] = preset["model"]  # a preset row may name a variant of a zoo model, e.g. deepfm-xavier → deepfm
    if isinstance(cfg["params"], dict):
        out["params"] = {**preset["params"], **cfg["params"]}
    if isinstance(cfg["train"], dict):
        out["train"] = {**preset["train"], **cfg["train"]}
    if preset["objective"] is not None and cfg.get("objective") is None:  # an objective is replaced whole
        out["objective"] = preset["objective"]
    print(_describe_preset(preset, cfg["train"], cfg["params"], cfg.get("objective")))
    return out


def _preset_label(preset: dict) -> str:
    return preset["name"] if preset["row"] else preset["name"].rsplit("/", 1)[0]


def _describe_preset(preset: dict, user_train, user_params, user_objective=None) -> str:
    """One line: the preset's name, its settings, which of them the user's config/flags replace."""
    def items(d: dict) -> str:
        return ", ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in d.items())

    row = preset["name"].rsplit("/", 1)[1]
    head = f"using preset {_preset_label(preset)}"
    if preset["row"] and preset["model"] != row:
        head += f" (zoo model {preset['model']})"
    body = f"train: {items(preset['train']) or 'defaults'}"
    if preset["row"]:
        body += f"; params: {items(preset['params']) or 'defaults'}"
    else:
        body += f"; no params for {row}"
    if preset["objective"] is not None:
        body += f"; objective: {json.dumps(preset['objective'], separators=(', ', ': '))}"
    line = f"{head} ({body})"
    mine = [k for k in preset["train"] if isinstance(user_train, dict) and k in user_train] + \
        [k for k in preset["params"] if isinstance(user_params, dict) and k in user_params] + \
        (["objective"] if preset["objective"] is not None and user_objective is not None else [])
    if mine:
        line += f"; yours instead: {', '.join(mine)}"
    return line + "; --no-preset for bare defaults"


def _check_run_config(run_dir: str | Path) -> None:
    """A run directory's ``config.json``, if present, must be valid JSON: say so naming the file (the commands
    that read it would otherwise stop with a traceback)."""
    from rankcraft.files import read_json

    path = Path(run_dir) / "config.json"
    if path.is_file():
        read_json(path, "run config")


def _fmt_metric(v, spec: str = ".4f") -> str:
    """A metric for printing: an undefined one (None, NaN) as 'n/a'."""
    if v is None or (isinstance(v, float) and v != v):
        return "n/a"
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def _fmt_value(v) -> str:
    """A value as evaluate prints it: an undefined metric (None, NaN) as 'n/a', anything else as it is."""
    return "n/a" if v is None or (isinstance(v, float) and v != v) else str(v)


def _num(v) -> float:
    """A metric as a float for tables (an undefined one, None, as NaN)."""
    return float("nan") if v is None else float(v)


def _dumps(obj, indent: int | None = None) -> str:
    """``--json`` output: strict JSON, an undefined metric (NaN/inf) as null."""
    from rankcraft.files import dumps_json

    return dumps_json(obj, indent=indent)


def _fmt_metrics(m: dict) -> str:
    return "  ".join(f"{k} {_fmt_metric(v)}" if v is None or isinstance(v, float) else f"{k} {v}"
                     for k, v in m.items() if k != "rows" and not k.endswith("/rows"))


def _print_report(report: dict, out: str) -> None:
    from rankcraft.serving.predictor import nest_by_head

    v = nest_by_head(report["valid"])
    flat = {k: x for k, x in v.items() if not isinstance(x, dict)}
    stream = report.get("stream")
    what = "progressive (every partition scored before training on it)" if stream else "valid"
    print(f"{report['model']} on {report['dataset']}: {what} {_fmt_metrics(flat)}".rstrip())
    for head, m in v.items():
        if isinstance(m, dict):
            print(f"  {head}: {_fmt_metrics(m)}")
    where = (f"{len(stream['partitions'])} partitions ({stream['started_at']} .. {stream['partitions'][-1]})"
             if stream else f"best epoch {report['best_epoch']} (monitor {report.get('monitor', 'auc')})")
    workers = f"  {report['workers']} workers" if report.get("workers", 1) > 1 else ""
    print(f"{where}  params {report['params']:,}  "
          f"flops/example {_fmt_metric(report['flops_per_example'], ',.0f')}  "
          f"train {_fmt_metric(report['train_rows_per_s'], ',.0f')} rows/s{workers}")
    print(f"run directory: {out}")


def cmd_evaluate(args) -> int:
    from rankcraft import api

    _check_run_config(args.run_dir)
    m = api.evaluate(args.run_dir, args.file)
    if args.json:
        print(_dumps(m))
    else:
        for k, v in m.items():
            if isinstance(v, dict):
                for name, x in v.items():
                    print(f"{k + '/' + name:20s} {_fmt_value(x)}")
            else:
                print(f"{k:20s} {_fmt_value(v)}")
    return 0


def cmd_predict(args) -> int:
    from rankcraft import api

    _check_run_config(args.run_dir)
    p = api.predict(args.run_dir, args.file, args.out, window=args.window)
    heads = p if isinstance(p, dict) else {"score": p}
    n = len(next(iter(heads.values())))
    if args.out is None:
        if len(heads) > 1:
            print(",".join(heads))
        for row in zip(*heads.values()):
            print(",".join(f"{x:.6f}" for x in row))
    else:
        print(f"wrote {n} rows of {', '.join(heads)} to {args.out}")
    return 0


def cmd_export(args) -> int:
    from rankcraft.serving.export import export_run

    _check_run_config(args.run_dir)
    out = export_run(args.run_dir, args.out, fmt=args.format)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"exported {manifest['model']} ({', '.join(manifest['heads'])}) to {out}: {manifest['file']}, encoders.json, "
          f"manifest.json; checked against torch on {manifest['check']['rows']} rows (max |Δp| "
          f"{manifest['check']['max_abs_diff']:.1e})")
    return 0


def cmd_serve(args) -> int:
    from rankcraft.serving.server import serve

    serve(args.artifact, host=args.host, port=args.port, workers=args.workers, threads=args.threads,
          max_candidates=args.max_candidates, log_level=args.log_level)
    return 0


def cmd_loadtest(args) -> int:
    from rankcraft.serving.loadtest import load_body, run_loadtest

    body = load_body(args.payload, args.artifact, args.candidates)
    res = run_loadtest(args.url, body, clients=args.clients, requests=args.requests, max_seconds=args.max_seconds)
    if args.json:
        print(_dumps(res))
    else:
        lat = res["latency_ms"]
        print(f"{res['ok']}/{res['requests']} ok in {res['wall_seconds']:.1f} s with {res['clients']} client(s), "
              f"{res['candidates_per_request']} candidates/request")
        print(f"latency ms: p50 {lat['p50']}  p95 {lat['p95']}  p99 {lat['p99']}")
        print(f"throughput: {res['requests_per_s']} requests/s, {res['candidates_per_s']} candidates/s")
        print(f"errors: {res['errors'] or 0}")
    return 0 if not res["errors"] else 1


def cmd_datasets(args) -> int:
    from rankcraft.data.catalog import RECIPES
    from rankcraft.data.dataset import prepare

    spec = _data_spec(args)
    if spec is None:
        print("built-in dataset recipes:")
        for name, (_, help_) in RECIPES.items():
            print(f"  {name:10s} {help_}")
        print("\ndescribe one with: rankcraft datasets --dataset NAME [--data-dir DIR]")
        return 0
    from rankcraft.api import DataSpec

    data = prepare(DataSpec.model_validate(spec).source(), cache_dir=args.cache_dir)
    desc = data.describe()
    if args.json:
        print(_dumps(desc, indent=2))
        return 0
    print(f"dataset {desc['name']}")
    for split, s in desc["splits"].items():
        print(f"  {split:6s} rows {s['rows']:>10,}  label rate {_fmt_metric(s['label_rate'])}")
    print("  features:")
    for f in desc["features"]:
        extra = f"vocab {f['vocab_size']:,}" if f["vocab_size"] else ""
        if f["max_len"]:
            extra += f"  max_len {f['max_len']}"
        print(f"    {f['name']:20s} {f['kind']:18s} {f['source']:8s} {extra}")
    for msg in data.skipped:
        print(f"  warning: {msg}")
    return 0


def cmd_demo(args) -> int:
    from rankcraft import api
    from rankcraft.data.dataset import prepare
    from rankcraft.models.catalog import available_models

    if args.models:
        models = [m for m in args.models.split(",") if m]
    else:
        models = [m for m in DEMO_MODELS if m in available_models()]
    unknown = [m for m in models if m not in available_models()]
    if unknown:
        raise ConfigError(f"unknown model(s) {unknown}; available: {', '.join(available_models())}")
    spec = api.DataSpec(recipe="synthetic", rows=args.rows, seed=0)
    print(f"rankcraft demo: {args.rows:,} synthetic rows with planted 1st/2nd/3rd-order interactions; "
          f"training {len(models)} models for up to {args.epochs} epochs each")
    t0 = time.perf_counter()
    data = prepare(spec.source(), cache_dir=args.cache_dir)
    rows = []
    for name in models:
        cfg = api.RunConfig(data=spec, model=name,
                            train={"epochs": args.epochs, "batch_size": 2048, "quiet": args.quiet,
                                   "early_stopping_patience": 1, "seed": 0})
        res = api.train(cfg, out=Path(args.out) / name if args.out else None, data=data)
        r = res.report
        rows.append((name, _num(r["valid"].get("auc")), _num(r["valid"].get("logloss")),
                     _num(r["valid"].get("ne")), _num(r["flops_per_example"]), _num(r["train_rows_per_s"]),
                     _num(r.get("test", {}).get("auc"))))
        if not args.quiet:
            print(f"  {name}: valid auc {_fmt_metric(r['valid'].get('auc'))}")
    rows.sort(key=lambda r: -r[1] if r[1] == r[1] else float("inf"))  # undefined AUCs last
    print()
    print(f"{'rank':>4}  {'model':10s} {'val AUC':>8} {'logloss':>8} {'NE':>7} {'test AUC':>8} "
          f"{'FLOPs/ex':>10} {'train rows/s':>13}")
    for i, (name, auc, ll, ne, flops, rps, tauc) in enumerate(rows, 1):
        print(f"{i:>4}  {name:10s} {auc:8.4f} {ll:8.4f} {ne:7.4f} {tauc:8.4f} {flops:10,.0f} {rps:13,.0f}")
    print(f"\ndone in {time.perf_counter() - t0:.0f}s" + (f"; run directories under {args.out}" if args.out else ""))
    return 0


# --------------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose help fills in ``{recipes}`` (subcommand parsers are of the same class)."""

    def __init__(self, *args, formatter_class=_HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="rankcraft", description="Build, search and serve CTR ranking models.")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    t = sub.add_parser("train", help="train a model", description="Train a zoo model on a dataset recipe or on "
                       "your own files described by a schema; writes a resumable run directory. On a recipe with "
                       "benchmark presets (the settings `rankcraft bench` uses) the model's preset is the starting "
                       "point; --config and flags override it, --no-preset starts from the bare defaults. Every "
                       "config key: docs/config.md.")
    _add_data_args(t, without="Without --dataset and --schema (and no data section in --config): the synthetic "
                   "recipe")
    t.add_argument("--config", help="YAML run config (data/model/params/train/objective sections; see "
                   "docs/config.md); flags override it")
    t.add_argument("--model", help="zoo model name (see `rankcraft models`); default dnn")
    t.add_argument("--no-preset", action="store_true", help="ignore the recipe's benchmark preset: bare defaults "
                   "plus --config and flags")
    t.add_argument("--arch", help="architecture JSON (best.json from `rankcraft search`, or a bare architecture)")
    t.add_argument("--param", action="append", metavar="KEY=VALUE", help="model hyperparameter (repeatable)")
    t.add_argument("--opt", action="append", metavar="KEY=VALUE", help="any training option (repeatable)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float)
    t.add_argument("--optimizer", choices=["adam", "adamw", "adagrad", "sgd"])
    t.add_argument("--embedding-l2", type=float, help="L2 on embedding tables (FuxiCTR embedding_regularizer)")
    t.add_argument("--monitor", metavar="METRIC", help="early-stopping metric: any metric the objective reports "
                   "(auc, logloss, ne, gauc; TASK/auc or mean/auc for a multitask objective); default auc")
    t.add_argument("--seed", type=int)
    t.add_argument("--threads", type=int, help="torch intra-op threads")
    t.add_argument("--max-steps", type=int, help="stop after this many steps (smoke tests)")
    t.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps")
    t.add_argument("--bf16", action="store_true", help="bf16 autocast")
    t.add_argument("--device", help="cpu (default), cuda, cuda:N or auto (cuda when available)")
    t.add_argument("--out", help="run directory (default runs/MODEL-TIMESTAMP)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    t.add_argument("--out-of-core", action="store_true", help="read the training file in record batches into a "
                   "sharded cache, memory bounded whatever its size (docs/out-of-core.md; file-based data)")
    s = t.add_argument_group("streams (time partitions; see docs/streams.md)")
    s.add_argument("--partition-by", choices=["hour", "day", "week"],
                   help="train as a stream: one pass per time partition, each evaluated before training on it")
    s.add_argument("--partition-column", metavar="COLUMN", help="the time column (default: the recipe's)")
    s.add_argument("--fit-on", type=int, metavar="N", help="fit the encoders on the first N partitions (default 1)")
    s.add_argument("--init-from", metavar="RUN", help="warm start from a finished stream run: its weights and "
                   "frozen encoders; trains on the partitions after its last one")
    w = t.add_argument_group("several processes (see docs/distributed.md)")
    w.add_argument("--workers", type=int, metavar="N", help="data-parallel training with N processes "
                   "(torch.distributed, gloo); the same total batch size")
    w.add_argument("--ray-address", metavar="ADDR", help="train on a Ray cluster through Ray Train (e.g. auto, "
                   "ray://head:10001), with --workers processes; extra rankcraft[distributed]")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    t.add_argument("--report-to", metavar="TRACKERS",
                   help="also send the per-epoch metrics to trackers, comma-separated: tensorboard, mlflow (extras "
                        "rankcraft[tensorboard], rankcraft[mlflow]); metrics.jsonl in the run directory always")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="metrics of a trained run on a labelled file")
    e.add_argument("run_dir")
    e.add_argument("file")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=cmd_evaluate)

    pr = sub.add_parser("predict", help="scores for every row of a file, in input order")
    pr.add_argument("run_dir")
    pr.add_argument("file")
    pr.add_argument("--out", help="CSV to write (one 'score' column); default: print")
    pr.add_argument("--window", metavar="DURATION", help="conversion probability within this attribution window "
                    "(e.g. 3d, 36h), interpolated from a run's fixed-window heads (docs/windows.md)")
    pr.set_defaults(func=cmd_predict)

    x = sub.add_parser("export", help="export a trained run as a self-contained ONNX artifact",
                       description="Write DIR with model.onnx (encoded columns → one probability per head, dynamic "
                       "batch and list axes), the encoders, the features and a manifest (versions, heads, input "
                       "signature). Scoring it needs numpy, pyarrow and onnxruntime only (extra rankcraft[serve]).")
    x.add_argument("run_dir")
    x.add_argument("--format", default="onnx", choices=["onnx", "pt2"],
                   help="onnx (scored by onnxruntime, no torch) or pt2 (a torch.export program, scored with torch)")
    x.add_argument("--out", required=True, help="artifact directory to write")
    x.set_defaults(func=cmd_export)

    sv = sub.add_parser("serve", help="HTTP scoring server for an exported artifact (or a run, exported first)",
                        description="POST /v1/score, GET /healthz, GET /metrics, POST /admin/reload (docs/serving.md). "
                        "Needs the extra rankcraft[serve].")
    sv.add_argument("artifact", help="artifact directory (rankcraft export) or a finished run directory")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.add_argument("--workers", type=int, default=1, help="server processes sharing the port")
    sv.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per process")
    sv.add_argument("--max-candidates", type=int, default=1000)
    sv.add_argument("--log-level", default="warning")
    sv.set_defaults(func=cmd_serve)

    lt = sub.add_parser("loadtest", help="bounded load test of a local scoring server")
    lt.add_argument("url", help="e.g. http://127.0.0.1:8000/v1/score (localhost only)")
    lt.add_argument("--clients", type=int, default=1)
    lt.add_argument("--requests", type=int, default=200)
    lt.add_argument("--candidates", type=int, default=100)
    lt.add_argument("--max-seconds", type=float, default=60.0)
    lt.add_argument("--payload", help="JSON request body to send")
    lt.add_argument("--artifact", help="build the request from this artifact's vocabularies")
    lt.add_argument("--json", action="store_true")
    lt.set_defaults(func=cmd_loadtest)

    d = sub.add_parser("datasets", help="list recipes, or describe one dataset")
    _add_data_args(d)
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_datasets)

    b = sub.add_parser("bench", help="benchmark zoo models on a dataset (writes results.json + results.md)",
                       description="Train each model with the dataset's presets (rankcraft/training/presets.yaml) "
                       "and tabulate validation AUC/logloss, best epoch, FLOPs/example, params, rows/s, wall time.")
    b.add_argument("--dataset", required=True, help="a recipe with presets: {preset_datasets}")
    b.add_argument("--data-dir")
    b.add_argument("--models", required=True, help="comma-separated zoo models")
    b.add_argument("--out", required=True, help="output directory")
    b.add_argument("--test", help="labelled test file: adds test AUC/logloss")
    b.add_argument("--seeds", help="comma-separated seeds (default 2021)")
    b.add_argument("--epochs", type=int, help="override the preset's max epochs")
    b.add_argument("--bf16", action="store_true")
    b.add_argument("--threads", type=int)
    b.add_argument("--rows", type=int, help="rows (synthetic only)")
    b.add_argument("--presets", help="YAML presets file instead of the built-in one")
    b.add_argument("--verbose", action="store_true", help="progress bars and per-run lines")
    b.add_argument("--fresh", action="store_true", help="discard earlier rows in OUT/results.json (default: "
                   "re-run models replace their rows, others are kept)")
    b.set_defaults(func=cmd_bench)

    sr = sub.add_parser("search", help="architecture search (random, evolution, one-shot, DNAS)",
                        description="Search the block space for architectures; writes a search directory with the "
                        "trial database, the Pareto front plot, best.json and a report. Resumable with --resume.")
    _add_data_args(sr)
    sr.add_argument("--config", help="YAML search config (see docs/search.md); flags override it")
    sr.add_argument("--space", help="search space preset: small, full (or tiny for smoke tests)")
    sr.add_argument("--strategy", choices=strategy_names(),
                    help="; ".join(f"{n}: {s.help}" for n, s in strategies().items()))
    sr.add_argument("--budget", help="trials (e.g. 50) or time (30m, 1.5h)")
    sr.add_argument("--fidelity-steps", type=int, help="training steps per standalone candidate (default 300)")
    sr.add_argument("--workers", type=int, help="candidates trained in parallel through Ray (default 1)")
    sr.add_argument("--threads-per-task", type=int, help="torch threads per candidate")
    sr.add_argument("--ray-address", help="existing Ray cluster (e.g. auto, ray://host:10001); default: local")
    sr.add_argument("--storage", help="trial database URL (default: sqlite file OUT/trials.db)")
    sr.add_argument("--zoo", help="comma-separated zoo references trained at the same fidelity ('' for none)")
    sr.add_argument("--objective", choices=["logloss", "ne", "auc"],
                    help="quality objective (default logloss; auc minimises 1 - AUC)")
    sr.add_argument("--max-flops", type=float, help="FLOPs/example cap: larger candidates are never trained")
    sr.add_argument("--seeds", help="evolution: comma-separated zoo models that start the population")
    sr.add_argument("--seed", type=int)
    sr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any config value by dotted path, e.g. oneshot.steps=2000, dnas.lambdas=[0,0.5]")
    sr.add_argument("--out", required=True, help="search directory")
    sr.add_argument("--resume", action="store_true", help="continue the search in --out")
    sr.add_argument("--quiet", action="store_true", help="no progress bars")
    sr.set_defaults(func=cmd_search)

    sr.add_argument("--table", help="run against a tabular benchmark (table.json.gz) instead of training")
    sr.add_argument("--table-fidelity", help="the table's fidelity to look up (default low)")

    tu = sub.add_parser("tune", help="hyperparameter tuning of a zoo model (Optuna: TPE, random, NSGA-II)",
                        description="Tune a zoo model's parameters (--param) and training options (--opt) over typed "
                        "ranges; writes a tune directory with the trial database, best.json (a run config) and a "
                        "report. Resumable with --resume. Ranges: float:LOW:HIGH[:log], int:LOW:HIGH[:STEP], "
                        "choice:A|B|C (YAML values, e.g. choice:[400,400]|[256,256]).")
    _add_data_args(tu)
    tu.add_argument("--config", help="YAML tune config (see docs/tuning.md); flags override it")
    tu.add_argument("--model", help="zoo model to tune")
    tu.add_argument("--param", action="append", metavar="NAME=RANGE", help="a model parameter range, repeatable")
    tu.add_argument("--opt", action="append", metavar="NAME=RANGE", help="a training option range, repeatable")
    tu.add_argument("--objective", action="append", choices=["auc", "logloss", "ne", "flops", "params"],
                    help="objective, repeatable (first: the quality metric; default auc); two or more = "
                    "multi-objective")
    tu.add_argument("--sampler", choices=["tpe", "random", "nsga2"], help="default tpe")
    tu.add_argument("--pruner", choices=["median", "none"], help="default median")
    tu.add_argument("--no-preset", action="store_true", help="do not start from the dataset's benchmark preset")
    tu.add_argument("--budget", help="trials (e.g. 50) or time (30m, 1.5h)")
    tu.add_argument("--workers", type=int, help="trials trained in parallel through Ray (default 1)")
    tu.add_argument("--threads-per-task", type=int, help="torch threads per trial")
    tu.add_argument("--ray-address", help="existing Ray cluster (e.g. auto); default: local")
    tu.add_argument("--storage", help="trial database URL (default: sqlite file OUT/trials.db)")
    tu.add_argument("--seed", type=int)
    tu.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="any config value by dotted path, e.g. train.epochs=20, prune_startup=8")
    tu.add_argument("--out", required=True, help="tune directory")
    tu.add_argument("--resume", action="store_true", help="continue the tune in --out (--budget may extend it)")
    tu.add_argument("--quiet", action="store_true", help="no progress output")
    tu.set_defaults(func=cmd_tune)

    ar = sub.add_parser("arch", help="architecture JSON tools: show (validate, FLOPs, params), zoo, sample")
    ar_sub = ar.add_subparsers(dest="arch_command", metavar="ACTION")
    ash = ar_sub.add_parser("show", help="validate an architecture; with data, its FLOPs/example and parameters")
    ash.add_argument("file", help="architecture JSON or best.json")
    _add_data_args(ash)
    ash.add_argument("--embedding-dim", type=int, help="default: best.json's params, else 10")
    ash.add_argument("--json", action="store_true")
    ash.set_defaults(func=cmd_arch_show)
    az = ar_sub.add_parser("zoo", help="a zoo model written as an architecture (dnn, deepfm, dcnv2, dlrm)")
    az.add_argument("model")
    az.add_argument("--param", action="append", metavar="KEY=VALUE")
    az.add_argument("--out", help="write here (default: print)")
    az.set_defaults(func=cmd_arch_zoo)
    asa = ar_sub.add_parser("sample", help="a random architecture of a search space")
    asa.add_argument("--space", default="small")
    asa.add_argument("--seed", type=int, default=0)
    asa.add_argument("--numeric", action="store_true", help="the data has numeric features (raw dense input)")
    asa.add_argument("--out", help="write here (default: print)")
    asa.set_defaults(func=cmd_arch_sample)

    an = sub.add_parser("analyze", help="data analyses (session hopping)")
    an_sub = an.add_subparsers(dest="analysis", metavar="ANALYSIS")
    se = an_sub.add_parser("sessions", help="within- vs across-session similarity and theme returns (MoS)",
                           description="Cut each user's events into sessions by a time gap; report the "
                           "similarity of consecutive items within and across sessions and how often a session's "
                           "theme returns k sessions later; optionally plot to PNG.")
    se.add_argument("--dataset", default="ml-100k", help="recipe (ml-100k reads the full rating log) or an event "
                    "file with user, timestamp and category columns")
    se.add_argument("--data-dir")
    se.add_argument("--gap-seconds", type=float, default=86_400.0, help="new session after this gap (default 1 day)")
    se.add_argument("--max-k", type=int, default=10, help="largest session lag for theme returns")
    se.add_argument("--png", help="write the plot here")
    se.add_argument("--json", action="store_true", help="print the statistics as JSON")
    se.set_defaults(func=cmd_analyze_sessions)

    m = sub.add_parser("models", help="list zoo models and their hyperparameters")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)

    de = sub.add_parser("demo", help="train several models on synthetic data and print a leaderboard")
    de.add_argument("--rows", type=int, default=60_000)
    de.add_argument("--epochs", type=int, default=4)
    de.add_argument("--models", help=f"comma-separated (default {','.join(DEMO_MODELS)})")
    de.add_argument("--out", default="runs/demo", help="where run directories go ('' for none)")
    de.add_argument("--cache-dir")
    de.add_argument("--quiet", action="store_true")
    de.set_defaults(func=cmd_demo)
    return p


def cmd_analyze_sessions(args) -> int:
    from rankcraft.analysis.sessions import analyze_sessions, format_session_report

    target = args.dataset
    if os.path.exists(target) and not os.path.isdir(target):
        result = analyze_sessions(target, gap_seconds=args.gap_seconds, max_k=args.max_k, out_png=args.png)
    else:
        from rankcraft.data.catalog import find_data_dir

        name = target
        data_dir = str(find_data_dir("ml-100k" if name.startswith("ml-100k") else name, args.data_dir)) \
            if name.startswith("ml-100k") else args.data_dir
        result = analyze_sessions(name, data_dir=data_dir, gap_seconds=args.gap_seconds, max_k=args.max_k,
                                  out_png=args.png, title=name)
    if args.json:
        print(_dumps(result, indent=2))
    else:
        print(format_session_report(result))
        if args.png:
            print(f"plot written to {args.png}")
    return 0


def cmd_search(args) -> int:
    from rankcraft.search.config import SearchConfig, parse_budget
    from rankcraft.search.runner import run_search

    if args.resume:
        if not (Path(args.out) / "config.json").exists():
            raise ConfigError(f"{args.out}: no search to resume (config.json is missing)")
        from rankcraft.files import read_json

        read_json(Path(args.out) / "config.json", "search config")
        fixed = [f"--{k.replace('_', '-')}" for k in ("config", "space", "strategy", "objective", "max_flops",
                                                        "seeds", "zoo", "fidelity_steps", "seed", "table", "table_fidelity")
                 if getattr(args, k) is not None]
        if fixed or _data_spec(args) is not None:
            raise ConfigError(f"--resume continues the search saved in {args.out}; it takes --budget and "
                              f"--set budget.*/confirm.* only, not {', '.join(fixed) or 'data options'}")
        changes: dict = {}
        if args.budget is not None:
            changes["budget"] = parse_budget(args.budget).model_dump(exclude_none=True)
        for path, value in _kv(args.set, "--set").items():
            _set_path(changes, path, value)
        report = run_search({}, args.out, resume=True, storage=args.storage, cache_dir=args.cache_dir,
                            progress=not args.quiet, changes=changes or None)
        _print_search(report, args.out)
        return 0
    from rankcraft.api import read_config_yaml

    cfg: dict = read_config_yaml(args.config) if args.config else {}
    data = _data_spec(args)
    if data is not None:
        cfg["data"] = data
    elif args.data_dir:  # --config names the recipe, the flag where its files are
        cfg.setdefault("data", {})["data_dir"] = args.data_dir
    for key in ("space", "strategy", "workers", "threads_per_task", "ray_address", "seed", "objective",
                "max_flops"):
        val = getattr(args, key)
        if val is not None:
            cfg[key] = val
    if args.budget is not None:
        cfg["budget"] = parse_budget(args.budget).model_dump(exclude_none=True)
    if args.fidelity_steps is not None:
        cfg.setdefault("train", dict(SearchConfig.model_fields["train"].default_factory()))["max_steps"] = \
            args.fidelity_steps
    if args.zoo is not None:
        cfg["zoo"] = [z for z in args.zoo.split(",") if z.strip()]
    if args.seeds is not None:
        cfg.setdefault("evolution", {})["seeds"] = [z.strip() for z in args.seeds.split(",") if z.strip()]
    if args.table is not None:
        cfg["table"] = {"path": args.table, **({"fidelity": args.table_fidelity} if args.table_fidelity else {})}
    elif args.table_fidelity is not None:
        raise ConfigError("--table-fidelity needs --table")
    for path, value in _kv(args.set, "--set").items():
        _set_path(cfg, path, value)
    config = SearchConfig.parse(cfg, "command line")
    report = run_search(config, args.out, storage=args.storage, cache_dir=args.cache_dir, progress=not args.quiet)
    _print_search(report, args.out)
    return 0


def _set_path(cfg: dict, path: str, value) -> None:
    """``cfg[a][b][c] = value`` for ``path`` ``a.b.c`` (sections created as needed)."""
    node = cfg
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: '{part}' is not a section")
    node[parts[-1]] = value


def cmd_tune(args) -> int:
    from rankcraft.search.config import parse_budget
    from rankcraft.search.tune import TuneConfig, parse_range, run_tune

    if args.resume:
        given = [f"--{k.replace('_', '-')}" for k in ("config", "model", "param", "opt", "objective", "sampler",
                                                        "pruner", "seed") if getattr(args, k)]
        if given or _data_spec(args) is not None:
            raise ConfigError(f"--resume continues the tune saved in {args.out}; it takes --budget only, not "
                              f"{', '.join(given) or 'data options'}")
        changes = {"budget": parse_budget(args.budget).model_dump(exclude_none=True)} if args.budget else None
        report = run_tune({}, args.out, resume=True, storage=args.storage, cache_dir=args.cache_dir,
                          progress=not args.quiet, changes=changes)
        _print_tune(report, args.out)
        return 0
    from rankcraft.api import read_config_yaml

    cfg: dict = read_config_yaml(args.config) if args.config else {}
    data = _data_spec(args)
    if data is not None:
        cfg["data"] = data
    elif args.data_dir:
        cfg.setdefault("data", {})["data_dir"] = args.data_dir
    for key in ("model", "sampler", "pruner", "workers", "threads_per_task", "ray_address", "seed"):
        val = getattr(args, key)
        if val is not None:
            cfg[key] = val
    if args.objective:
        cfg["objectives"] = args.objective
    if args.no_preset:
        cfg["use_preset"] = False
    if args.budget is not None:
        cfg["budget"] = parse_budget(args.budget).model_dump(exclude_none=True)
    for flag, section in (("param", "param_ranges"), ("opt", "train_ranges")):
        for item in getattr(args, flag) or []:
            if "=" not in item:
                raise ConfigError(f"--{flag} '{item}': expected NAME=RANGE, e.g. dropout=float:0:0.5")
            name, text = item.split("=", 1)
            cfg.setdefault(section, {})[name.strip()] = parse_range(name.strip(), text, f"--{flag}").model_dump()
    for path, value in _kv(args.set, "--set").items():
        _set_path(cfg, path, value)
    if "model" not in cfg:
        raise ConfigError("tune: give --model (or model: in --config)")
    report = run_tune(TuneConfig.parse(cfg, "command line"), args.out, storage=args.storage,
                      cache_dir=args.cache_dir, progress=not args.quiet)
    _print_tune(report, args.out)
    return 0


def _print_tune(report: dict, out: str) -> None:
    print(f"tune of {report['model']}: {report['trials']} trial(s) (pruned {report['pruned']}, failed "
          f"{report['failed']}) in {report['elapsed_minutes']:.1f} min")
    if report["best"]:
        b = report["best"]
        print("best: trial {}: {}".format(b["number"], ", ".join(f"{k} {v:.5g}" for k, v in b["values"].items())))
        print(f"  params {b['params']}, train {b['tuned_train']}")
    print(f"tune directory: {out} (best.json, report.md)")


def _print_search(report: dict, out: str) -> None:
    obj = report["objective"]
    print(f"{report['strategy']} search on space {report['space']}: {report['trials']} standalone trial(s), "
          f"{report['elapsed_minutes']:.1f} min, hypervolume {report['hypervolume']:.6g}")
    if report["best"]:
        b = report["best"]
        print(f"best: {obj} {b[obj]:.4f}  auc {b['auc']:.4f}  flops/example {b['flops']:,.0f}")
    for z in report["zoo"]:
        print(f"zoo {z['model']}: {obj} {z[obj]:.4f}  auc {z['auc']:.4f}  flops/example {z['flops']:,.0f}")
    print(f"search directory: {out} (best.json, front.png, report.md)")


def _write_or_print(text: str, out: str | None) -> None:
    if out:
        from rankcraft.files import atomic_write_text

        atomic_write_text(out, text + "\n")
        print(f"wrote {out}")
    else:
        print(text)


def cmd_arch_show(args) -> int:
    from rankcraft.models.arch.format import load_arch

    arch = load_arch(args.file)
    doc = json.loads(Path(args.file).read_text())
    d = args.embedding_dim or (doc.get("params", {}).get("embedding_dim") if "arch" in doc else None) or 10
    info: dict = {"blocks": len(arch.blocks), "live_nodes": len(arch.live()),
                  "nodes": [f"{i}: dense={b.dense.op if b.dense else '-'} sparse={b.sparse.op if b.sparse else '-'}"
                            for i, b in enumerate(arch.blocks, start=1)]}
    data = _data_spec(args)
    if data is not None:
        from rankcraft.api import DataSpec
        from rankcraft.data.dataset import prepare
        from rankcraft.models.arch.cost import arch_flops
        from rankcraft.models.arch.network import ArchNet
        from rankcraft.training.profile import count_parameters

        prepared = prepare(DataSpec.model_validate(data).source(), cache_dir=args.cache_dir)
        info["embedding_dim"] = d
        info["flops_per_example"] = arch_flops(arch, prepared.features, d)
        info["params"] = count_parameters(ArchNet(prepared.features, arch, d))
    if args.json:
        print(_dumps(info, indent=1))
    else:
        print(f"{args.file}: valid architecture, {info['blocks']} blocks, {info['live_nodes']} live node(s)")
        for line in info["nodes"]:
            print("  block " + line)
        if "flops_per_example" in info:
            print(f"flops/example {info['flops_per_example']:,.0f}  params {info['params']:,}  "
                  f"(embedding_dim {d})")
    return 0


def cmd_arch_zoo(args) -> int:
    from rankcraft.models.arch.zoo import zoo_arch

    _write_or_print(zoo_arch(args.model, _kv(args.param, "--param")).to_json(), args.out)
    return 0


def cmd_arch_sample(args) -> int:
    import random

    from rankcraft.search.space import get_space

    arch = get_space(args.space, raw_dense=args.numeric).sample(random.Random(args.seed))
    _write_or_print(arch.to_json(), args.out)
    return 0


def cmd_bench(args) -> int:
    import shlex

    from rankcraft.bench.zoo import run_benchmark, to_markdown
    from rankcraft.training.presets import load_presets

    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    overrides = {}
    if args.epochs:
        overrides["epochs"] = args.epochs
    if args.bf16:
        overrides["bf16"] = True
    if args.threads:
        overrides["threads"] = args.threads
    res = run_benchmark(args.dataset, models, args.out, data_dir=args.data_dir, test_file=args.test, seeds=seeds,
                        presets=load_presets(args.presets) if args.presets else None, train_overrides=overrides,
                        quiet=not args.verbose, rows=args.rows, merge=not args.fresh,
                        command="rankcraft " + shlex.join(args.argv))
    print(to_markdown(res))
    return 0


def cmd_models(args) -> int:
    from pydantic import ValidationError

    from rankcraft.models.catalog import available_models, model_class

    info = {}
    for name in available_models():
        try:
            info[name] = model_class(name).Params().model_dump()
        except ValidationError:  # required fields (the `arch` model needs an architecture)
            fields = model_class(name).Params.model_fields
            info[name] = {k: ("<required>" if f.is_required() else f.default) for k, f in fields.items()}
    if args.json:
        print(_dumps(info, indent=2))
    else:
        for name, params in info.items():
            print(f"{name:10s} " + " ".join(f"{k}={v}" for k, v in params.items()))
    return 0


def _version() -> str:
    from rankcraft import __version__

    return f"rankcraft {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Run the ``rankcraft`` command line.

    With ``argv`` (tests, other programs) the exit status is returned. Without (the ``rankcraft`` program, ``python -m
    rankcraft.cli.main``) the process ends here with that status, see :func:`_end_process`."""
    if argv is not None:
        return _run(argv)
    try:
        code = _run(None)
    except SystemExit as exc:  # argparse (--help, --version, usage errors)
        code = _system_exit_status(exc)
    except BaseException:  # a bug: the traceback and status 1, as Python itself would
        import traceback

        traceback.print_exc()
        code = 1
    _end_process(code)
    return code  # not reached


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # recorded by commands that log how they were run
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    debug = bool(os.environ.get("RANKCRAFT_DEBUG"))
    try:
        if args.command in INTERRUPTIBLE_COMMANDS:
            from rankcraft.interrupts import terminate_as_interrupt

            with terminate_as_interrupt():
                return args.func(args)
        return args.func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (rankcraft.interrupts.Terminated)
        from rankcraft.interrupts import interrupt_exit_code

        what = "terminated" if getattr(exc, "signum", None) == signal.SIGTERM else "interrupted"
        print(f"\n{what}; a run continues with `rankcraft train --out RUN_DIR --resume` (a search with "
              "`rankcraft search --out DIR --resume`)", file=sys.stderr)
        return interrupt_exit_code(exc)
    except BrokenPipeError:  # output piped into e.g. `head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (RankcraftError, FloatingPointError, MemoryError, OSError) as exc:
        if debug:
            raise
        print(f"error: {_error_text(exc)}", file=sys.stderr)
        return 2


def _error_text(exc: BaseException) -> str:
    """The message printed after ``error:``: the error's own for ours, one line naming the file for the system's."""
    if isinstance(exc, RankcraftError):
        return str(exc)
    if isinstance(exc, FloatingPointError):  # the trainer's "training loss became nan at epoch E, step S; ..."
        return " ".join(str(exc).split()) or "floating-point error (a NaN or infinite value)"
    if isinstance(exc, MemoryError):
        return "out of memory" + (f" ({exc})" if str(exc) else "") + "; try a smaller --batch-size or fewer rows"
    assert isinstance(exc, OSError)
    reason = exc.strerror or " ".join(str(exc).split()) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        return f"{reason} while writing {exc.filename}" if exc.filename else f"{reason} (disk full)"
    names = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(names)}: {reason}" if names else reason


def _system_exit_status(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _end_process(code: int) -> None:
    """End the program without finalising the interpreter: join Python's non-daemon threads and run the ``atexit``
    handlers as a normal exit does, flush stdout/stderr, then ``os._exit(code)``.

    Why: native thread pools may still hold Python objects when the main thread is done. After ``pyarrow.csv.read_csv``
    fails (a bad cell, invalid UTF-8), Arrow's reader keeps finishing its read-ahead on its own threads, and its last
    reference — with the Python ``invalid_row_handler`` inside — can be dropped on one of them while the interpreter
    is finalising. Taking the GIL then makes CPython end that thread (``pthread_exit``) inside a C++ destructor, and
    the C++ runtime aborts the process: "terminate called without an active exception", status 134 instead of 2,
    in up to half of the runs with ``OMP_NUM_THREADS=1`` (one Arrow CPU thread, so the read-ahead drains slowly).
    ``os._exit`` skips interpreter finalisation and C++ static destructors, so the status is the one we return."""
    try:
        import threading

        threading._shutdown()  # type: ignore[attr-defined]  # what Py_Finalize does first: join non-daemon threads
    except Exception:
        pass
    try:
        import atexit

        atexit._run_exitfuncs()
    except Exception:
        pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


if __name__ == "__main__":
    main()
