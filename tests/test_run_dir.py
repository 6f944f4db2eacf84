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
    with pytest.raises(ConfigError, match=r"config.json: cannot read the run's config"):
        api.load_run(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"config.json: cannot read the run's config"):
        api.train({}, out=tmp_path / "run", resume=True)
