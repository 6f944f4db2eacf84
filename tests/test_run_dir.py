"""The run directory: paths stored absolute (resume/evaluate from anywhere), a broken config.json is a named error."""

from __future__ import annotations

import json

import pytest

from rankcraft import api
from rankcraft.errors import ConfigError

SCHEMA = "labels: [label]\nfeatures:\n  - {name: c, type: categorical}\n  - {name: x, type: numeric}\n"


def _files(d):
    d.mkdir()
    rows = "\n".join(f"{i % 2},v{i % 7},{i / 10}" for i in range(200))
    (d / "train.csv").write_text("label,c,x\n" + rows + "\n")
    (d / "s.yaml").write_text(SCHEMA)


def test_relative_paths_are_stored_absolute_so_resume_works_from_another_directory(tmp_path, monkeypatch):
    _files(tmp_path / "data")
    monkeypatch.chdir(tmp_path / "data")
    cfg = {"data": {"schema_file": "s.yaml", "train": "train.csv"}, "model": "lr",
           "train": {"epochs": 2, "max_steps": 1, "quiet": True, "batch_size": 64}}
    api.train(cfg, out=tmp_path / "run")
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["data"]
    assert saved["train"] == str(tmp_path / "data" / "train.csv")
    assert saved["schema_file"] == str(tmp_path / "data" / "s.yaml")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = api.train({}, out=tmp_path / "run", resume=True)
    assert res.report["epochs_run"] >= 1
    assert api.evaluate(tmp_path / "run", tmp_path / "data" / "train.csv")["rows"] == 200


def test_a_broken_config_json_is_a_named_error(tmp_path):
    _files(tmp_path / "data")
    cfg = {"data": {"schema_file": str(tmp_path / "data" / "s.yaml"), "train": str(tmp_path / "data" / "train.csv")},
           "model": "lr", "train": {"epochs": 1, "quiet": True}}
    api.train(cfg, out=tmp_path / "run")
    (tmp_path / "run" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"config.json: run config is not valid JSON \(line 1, column 2"):
        api.load_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"config.json: run config is not valid JSON \(line 1, column 2"):
        api.train({}, out=tmp_path / "run", resume=True)


def test_a_run_directory_in_use_by_another_writer_fails_at_once_naming_it(tmp_path):
    from rankcraft.errors import RankcraftError
    from rankcraft.files import DirectoryLock

    _files(tmp_path / "data")
    cfg = {"data": {"schema_file": str(tmp_path / "data" / "s.yaml"), "train": str(tmp_path / "data" / "train.csv")},
           "model": "lr", "train": {"epochs": 1, "quiet": True}}
    with DirectoryLock(tmp_path / "run"):  # another writer holds it
        with pytest.raises(RankcraftError, match=r"run is in use by (another rankcraft|this) process"):
            api.train(cfg, out=tmp_path / "run")
    api.train(cfg, out=tmp_path / "run")  # free again
    with pytest.raises(Exception, match="holds a previous run"):
        api.train(cfg, out=tmp_path / "run")


def test_ctrl_c_mid_epoch_writes_last_pt_at_that_step_and_resume_finishes(tmp_path):
    import os
    import signal

    import torch

    from rankcraft.data.spec import prepare_spec
    from rankcraft.models.catalog import build_model
    from rankcraft.training.checkpoint import load_checkpoint
    from rankcraft.training.trainer import TrainConfig, Trainer

    data = prepare_spec({"recipe": "synthetic", "rows": 3000}, tmp_path / "cache")
    cfg = TrainConfig(epochs=2, batch_size=100, quiet=True, checkpoint_seconds=0)

    def interrupt_at_7(step):
        if step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    torch.manual_seed(0)
    model = build_model("lr", data.features)
    with pytest.raises(KeyboardInterrupt):
        Trainer(model, cfg, tmp_path / "run", on_step=interrupt_at_7).fit(data.splits["train"], data.splits["valid"])
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert state["state"]["steps"] == 7 and state["state"]["cursor"] == {"epoch": 0, "step": 7}
    fit = Trainer(model, cfg, tmp_path / "run").fit(data.splits["train"], data.splits["valid"], resume=True)
    assert fit.steps == 2 * data.splits["train"].num_batches(100)
