"""CETNet (collaborative ensemble) on Frappe_x1: the variants of ``wave2-specs.md`` §1(d), an ablation and sweeps.

    python benchmarks/cetnet_frappe.py --seeds 2021,1,2 --out benchmarks/results/cetnet_frappe
    python benchmarks/cetnet_frappe.py --groups main,small,ablation,sweeps --out ...

Selection never touches ``valid.csv``: every run early-stops on a seeded 10% slice of the training rows
(``data.valid_from_train``), and the table reports ``valid.csv`` (encoded with the same encoders: they are fitted on
all training rows either way). Training settings: the BARS Frappe_x1 recipe of the presets (batch 4096, Adam 1e-3,
embedding L2 0.05, early stopping patience 2, up to 100 epochs); members use their Frappe_x1 preset parameters.

Variants (group ``main``):

| name | what |
|---|---|
| finalmlp | FinalMLP alone, embedding 10 |
| dcn | DCN alone, embedding 10 |
| dcn-emb20 | DCN alone, embedding 20 (the pair's embedding parameters) |
| me-dcn | two DCNs with their own embeddings, outputs averaged, trained jointly (multi-embedding) |
| posthoc-avg | the average of separately trained finalmlp and dcn (no training of its own) |
| joint-uniform | finalmlp + dcn trained jointly, uniform average, no collaborative term |
| cetnet | finalmlp + dcn, confidence fusion (τ = 1), collaborative term λ = 0.5 toward the ensemble |
| cetnet-fusion-only | confidence fusion, λ = 0 |

Group ``small``: CETNet with members at embedding 5 (``cetnet-emb5``) against the single models at 10 and 20.
Group ``ablation``: ``collab-only`` (uniform average + λ = 0.5); with cetnet-fusion-only and cetnet: fusion only /
collaboration only / both. Group ``sweeps``: τ ∈ {0.1, 0.3, 3} and λ ∈ {0.1, 1, 2}.

Every run is kept in ``OUT/runs/<variant>-<seed>/`` and skipped when its ``result.json`` exists (resumable).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rankcraft.data.spec import prepare_spec
from rankcraft.training.evaluation import predict_heads
from rankcraft.training.metrics import compute_metrics
from rankcraft.training.presets import preset_for
from rankcraft.training.run import RunConfig, train

HERE = Path(__file__).resolve().parent
DATA_DIR = HERE.parent.parent / "shared" / "data" / "frappe_x1"


def member(model: str, emb: int = 10) -> dict:
    return {"model": model, "params": {**preset_for("frappe_x1", model)["params"], "embedding_dim": emb}}


def ensemble(members: list[dict], *, fusion="confidence", tau=1.0, lam=0.5, member_weight=1.0, teacher="ensemble"):
    return ("ensemble", {"members": members, "fusion": fusion, "temperature": tau, "distill_weight": lam,
                         "teacher": teacher}, {"type": "ensemble", "members": len(members),
                                               "member_weight": member_weight})


def single(model: str, emb: int = 10):
    m = member(model, emb)
    return (model, m["params"], None)


PAIR = [member("finalmlp"), member("dcn")]
GROUPS = {
    "main": {
        "finalmlp": single("finalmlp"), "dcn": single("dcn"), "dcn-emb20": single("dcn", 20),
        "me-dcn": ensemble([member("dcn"), member("dcn")], fusion="uniform", lam=0.0, member_weight=0.0),
        "posthoc-avg": None,
        "joint-uniform": ensemble(PAIR, fusion="uniform", lam=0.0),
        "cetnet": ensemble(PAIR),
        "cetnet-fusion-only": ensemble(PAIR, lam=0.0),
    },
    "small": {"cetnet-emb5": ensemble([member("finalmlp", 5), member("dcn", 5)]),
              "finalmlp-emb20": single("finalmlp", 20)},
    "ablation": {"collab-only": ensemble(PAIR, fusion="uniform")},
    "sweeps": {**{f"cetnet-tau{t}": ensemble(PAIR, tau=t) for t in (0.1, 0.3, 3.0)},
               **{f"cetnet-lambda{v}": ensemble(PAIR, lam=v) for v in (0.1, 1.0, 2.0)}},
}


def run_one(name: str, spec, seed: int, out: Path, data, valid) -> dict:
    rdir = out / "runs" / f"{name}-{seed}"
    if (rdir / "result.json").exists():
        return json.loads((rdir / "result.json").read_text())
    model, params, objective = spec
    preset = preset_for("frappe_x1", "dcn")
    cfg = RunConfig.parse({"data": {"recipe": "frappe_x1", "data_dir": str(DATA_DIR), "valid_from_train": 0.1},
                           "model": model, "params": params, "objective": objective,
                           "train": {**preset["train"], "seed": seed, "quiet": True,
                                     **({"monitor": "mean/auc"} if objective else {})}})
    t0 = time.perf_counter()
    res = train(cfg, data=data)
    preds = predict_heads(res.model, valid, res.objective)
    y = valid.columns["label"].numpy()
    head = "score"
    m = compute_metrics(y, preds[head])
    result = {"variant": name, "seed": seed, "valid_csv": {"auc": m["auc"], "logloss": m["logloss"]},
              "members_valid_csv": {h: compute_metrics(y, p)["auc"] for h, p in preds.items() if h != head},
              "best_epoch": res.report["best_epoch"], "flops": res.report["flops_per_example"],
              "params": res.report["params"], "seconds": time.perf_counter() - t0}
    rdir.mkdir(parents=True, exist_ok=True)
    np.save(rdir / "valid_pred.npy", preds[head].astype(np.float32))
    (rdir / "result.json").write_text(json.dumps(result, indent=2))
    print(f"{name} seed {seed}: valid.csv AUC {m['auc']:.5f} logloss {m['logloss']:.5f} "
          f"(epoch {result['best_epoch']}, {result['seconds']:.0f} s)", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="2021,1,2")
    ap.add_argument("--groups", default="main")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "cetnet_frappe")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    data = prepare_spec({"recipe": "frappe_x1", "data_dir": str(DATA_DIR), "valid_from_train": 0.1})
    valid = prepare_spec({"recipe": "frappe_x1", "data_dir": str(DATA_DIR)}).splits["valid"]
    y = valid.columns["label"].numpy()
    results = {"command": "python " + shlex.join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": args.threads},
               "variants": {}}
    if (args.out / "results.json").exists():  # keep the groups of earlier invocations
        results["variants"] = json.loads((args.out / "results.json").read_text()).get("variants", {})
    for group in args.groups.split(","):
        for name, spec in GROUPS[group].items():
            runs = []
            for seed in seeds:
                if spec is None:  # post-hoc average of the separately trained members
                    p = np.mean([np.load(args.out / "runs" / f"{m}-{seed}" / "valid_pred.npy")
                                 for m in ("finalmlp", "dcn")], axis=0)
                    m = compute_metrics(y, p)
                    fl = [json.loads((args.out / "runs" / f"{x}-{seed}" / "result.json").read_text())
                          for x in ("finalmlp", "dcn")]
                    runs.append({"seed": seed, "valid_csv": {"auc": m["auc"], "logloss": m["logloss"]},
                                 "flops": sum(r["flops"] for r in fl), "params": sum(r["params"] for r in fl)})
                else:
                    runs.append(run_one(name, spec, seed, args.out, data, valid))
            agg = {k: (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else 0.0)
                   for k, v in (("auc", [r["valid_csv"]["auc"] for r in runs]),
                                ("logloss", [r["valid_csv"]["logloss"] for r in runs]))}
            results["variants"][name] = {"group": group, "runs": runs, **agg, "flops": runs[0]["flops"],
                                         "params": runs[0]["params"]}
            (args.out / "results.json").write_text(json.dumps(results, indent=2))
    write_markdown(results, args.out)
    return 0


def write_markdown(results: dict, out: Path) -> None:
    v = results["variants"]
    lines = ["# CETNet on Frappe_x1 (early stopping on a 10% slice of train; valid.csv never used for selection)", "",
             "| variant | group | valid.csv AUC | valid.csv logloss | FLOPs/example | params |", "|---|---|---|---|---|---|"]
    for name, r in v.items():
        lines.append(f"| {name} | {r['group']} | {r['auc'][0]:.5f} ± {r['auc'][1]:.5f} | "
                     f"{r['logloss'][0]:.5f} ± {r['logloss'][1]:.5f} | {r['flops']:,.0f} | {r['params']:,} |")
    if "cetnet" in v:
        base = [k for k in ("finalmlp", "dcn", "dcn-emb20", "me-dcn", "posthoc-avg") if k in v]
        best = max(base, key=lambda k: v[k]["auc"][0])
        margin = v["cetnet"]["auc"][0] - v[best]["auc"][0]
        two_sd = 2 * max(v["cetnet"]["auc"][1], v[best]["auc"][1])
        lines += ["", f"Claim (CETNet > best of {', '.join(base)} by more than 2·std): best baseline {best} "
                  f"{v[best]['auc'][0]:.5f}; CETNet − best = {margin:+.5f} AUC vs 2·std = {two_sd:.5f} → "
                  f"{'met' if margin > two_sd else 'not met'}."]
        if "joint-uniform" in v:
            lines.append(f"CETNet − joint-uniform (the confidence fusion and collaborative term together): "
                         f"{v['cetnet']['auc'][0] - v['joint-uniform']['auc'][0]:+.5f} AUC.")
    lines += ["", f"Produced by: `{results['command']}`"]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
