"""Build the tabular benchmark of the ``small`` space on Frappe_x1 (the table that search strategies are compared on
by lookup, see ``benchmarks/searchers_on_table.py``).

    python benchmarks/nas_table.py --out benchmarks/results/nas_table_frappe --n 500 --n-full 100 --workers 2

* Architectures: ``--n`` sampled uniformly from the ``small`` space (seed 0, distinct by what they compute), no
  FLOPs cap.
* Fidelity ``low`` (every row): 2 epochs on a fixed 100,000-row random subsample of Frappe_x1 train (seed 0),
  batch 1024, Adam lr 1e-3, constant learning rate, training seed 2024; valid metrics of the better epoch by
  logloss, and the per-epoch learning curve (8 points per epoch) for curve-extrapolated labels.
* Fidelity ``full`` (the first ``--n-full`` rows): the zoo benchmark's Frappe_x1 recipe (all train rows, batch
  4096, Adam lr 1e-3, embedding L2 0.05, learning rate x0.1 on a validation-AUC plateau, early stopping with
  patience 2) with at most ``--full-epochs`` epochs (default 12: the cap keeps the table affordable on a 2-core
  machine; the zoo runs stop between epochs 10 and 23, so some rows are cut before convergence).
* Each task runs with one torch thread; ``--workers`` tasks at a time (Ray). A killed build resumes from
  ``OUT/trials.db``. The result is ``OUT/table.json.gz`` (no data rows copied: architectures and metrics only).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from rankcraft.parallel import make_executor  # noqa: E402
from rankcraft.search.space import PRESETS, SpaceConfig  # noqa: E402
from rankcraft.search.tabular import build_table  # noqa: E402


def fidelities(data_dir: str | None, full_epochs: int) -> dict:
    data = {"recipe": "frappe_x1", **({"data_dir": data_dir} if data_dir else {})}
    low = {"data": {**data, "train_rows": 100_000, "seed": 0},
           "train": {"epochs": 2, "batch_size": 1024, "optimizer": "adam", "lr": 1e-3, "lr_schedule": "constant",
                     "monitor": "logloss", "early_stopping_patience": 2, "seed": 2024}}
    full = {"data": data,
            "train": {"epochs": full_epochs, "batch_size": 4096, "optimizer": "adam", "lr": 1e-3,
                      "embedding_l2": 0.05, "monitor": "auc", "early_stopping_patience": 2,
                      "lr_schedule": "plateau", "lr_factor": 0.1, "lr_patience": 0, "seed": 2021}}
    return {"low": low, "full": full}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="benchmarks/results/nas_table_frappe")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--n-full", type=int, default=100)
    ap.add_argument("--full-epochs", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    t0 = time.time()
    with make_executor(args.workers, threads_per_task=1) as ex:
        path = build_table(args.out, space=SpaceConfig(**PRESETS["small"]),
                           fidelities=fidelities(args.data_dir, args.full_epochs), n=args.n, n_full=args.n_full,
                           executor=ex, seed=0)
    print(f"wrote {path} in {(time.time() - t0) / 60:.1f} min")


if __name__ == "__main__":
    main()
