"""Python API, mirroring the CLI: a thin front over the library's layers.

>>> from rankcraft import api
>>> run = api.train(api.RunConfig(data={"recipe": "synthetic", "rows": 20000}, model="dcnv2",
...                               train={"epochs": 2}), out="runs/dcnv2")
>>> api.evaluate("runs/dcnv2", "new_rows.csv")          # metrics dict
>>> api.predict("runs/dcnv2", "new_rows.csv", "scores.csv")
>>> api.run_search({"data": {"recipe": "frappe_x1"}, "strategy": "predictor_rl", "budget": {"trials": 100}},
...                "searches/prl")                         # report dict; best.json in the directory
>>> api.run_tune({"data": {"recipe": "frappe_x1"}, "model": "dcnv2", "budget": {"minutes": 30},
...               "param_ranges": {"dropout": {"type": "float", "low": 0.0, "high": 0.5}}}, "tunes/dcnv2")

The run-directory format is described in :mod:`rankcraft.training.run`.
"""

from __future__ import annotations

from rankcraft.config import read_config_yaml
from rankcraft.data.spec import DataSpec, prepare_spec
from rankcraft.search.runner import run_search
from rankcraft.search.tune import run_tune
from rankcraft.serving.predictor import evaluate, predict
from rankcraft.training.run import LoadedRun, RunConfig, RunResult, load_run, train
from rankcraft.training.trainer import TrainConfig

__all__ = ["DataSpec", "LoadedRun", "RunConfig", "RunResult", "TrainConfig", "evaluate", "load_run", "predict",
           "prepare_spec", "read_config_yaml", "run_search", "run_tune", "train"]
