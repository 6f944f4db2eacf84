"""Check that moving the supernets onto the shared trainer changed nothing: run a short one-shot and DNAS search on
Frappe_x1 with the committed search space (`benchmarks/search/frappe_x1.yaml`), once with this checkout and once
with another checkout (e.g. the commit before the move), and compare every trial's metrics and the DNAS-derived
architectures exactly.

    python benchmarks/supernet_identity.py --out /tmp/new.json                       # this checkout
    (cd OLD_CHECKOUT && PYTHONPATH=src python /path/to/benchmarks/supernet_identity.py --out /tmp/old.json)
    python benchmarks/supernet_identity.py --compare /tmp/old.json /tmp/new.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml


def run(out: str, data_dir: str, steps: int) -> None:
    from rankcraft.search.runner import run_search
    from rankcraft.search.store import TrialStore

    cfg = yaml.safe_load((Path(__file__).resolve().parent / "search" / "frappe_x1.yaml").read_text())
    cfg["data"] = {"recipe": "frappe_x1", "data_dir": data_dir}
    cfg["zoo"] = []
    cfg["budget"] = {"trials": 1}
    cfg["train"] = {**cfg["train"], "max_steps": 5, "epochs": 1}  # cheap retraining: the supernets are the point
    cfg["oneshot"] = {**cfg["oneshot"], "steps": steps, "candidates": 8, "population": 4, "sample": 2, "top_k": 1}
    cfg["dnas"] = {**cfg["dnas"], "steps": steps, "lambdas": [0.1]}
    result = {}
    for strategy in ("oneshot", "dnas"):
        d = Path(tempfile.mkdtemp()) / strategy
        run_search({**cfg, "strategy": strategy}, d, progress=False)
        store = TrialStore(d / "trials.db", create=False)
        result[strategy] = sorted([t.key, t.metrics] for t in store.trials())
        if strategy == "dnas":
            result["dnas_derived"] = store.get_meta("dnas_derived_0.1")
        shutil.rmtree(d.parent, ignore_errors=True)
    Path(out).write_text(json.dumps(result, indent=1, sort_keys=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "frappe_x1"))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--compare", nargs=2)
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(Path(p).read_text()) for p in args.compare)
        same = a == b
        print(f"{len(a['oneshot'])} one-shot trials, {len(a['dnas'])} DNAS trials: "
              + ("IDENTICAL" if same else "DIFFERENT"))
        sys.exit(0 if same else 1)
    run(args.out, args.data_dir, args.steps)


if __name__ == "__main__":
    main()
