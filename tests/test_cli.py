"""End-to-end CLI: train → evaluate → predict on synthetic data, user files and the real samples."""

from __future__ import annotations

import csv
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401  (pa.compute)
import pyarrow.csv as pacsv
import pytest
from conftest import shared

from rankcraft.cli.main import main
from rankcraft.data.synthetic import make_synthetic


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A user's own CSV files + YAML schema (synthetic content)."""
    d = tmp_path_factory.mktemp("userdata")
    table, schema = make_synthetic(4000, seed=11)
    pacsv.write_csv(table.slice(0, 3000), d / "train.csv")
    pacsv.write_csv(table.slice(3000, 600), d / "valid.csv")
    pacsv.write_csv(table.slice(3600), d / "test.csv")
    schema.to_yaml(d / "schema.yaml")
    return d


def test_train_evaluate_predict_on_user_files(capsys, tmp_path, user_files):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--schema", user_files / "schema.yaml", "--train",
                             user_files / "train.csv", "--valid", user_files / "valid.csv", "--model", "dnn",
                             "--param", "hidden_units=[32,16]", "--epochs", "4", "--batch-size", "256", "--quiet",
                             "--opt", "early_stopping_patience=4",
                             "--out", run)
    assert code == 0, err
    assert "valid auc" in out
    for f in ("config.json", "encoders.json", "features.json", "metrics.jsonl", "report.json", "best.pt", "last.pt"):
        assert (run / f).exists(), f
    report = json.loads((run / "report.json").read_text())
    assert report["valid"]["auc"] > 0.6 and report["flops_per_example"] > 0 and report["params"] > 0
    assert report["train_rows_per_s"] > 0 and report["inference_rows_per_s"] > 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 4
    assert json.loads((run / "config.json").read_text())["params"]["hidden_units"] == [32, 16]

    code, out, err = run_cli(capsys, "evaluate", run, user_files / "test.csv", "--json")
    assert code == 0, err
    m = json.loads(out)
    assert set(m) >= {"auc", "logloss", "ne", "gauc", "calibration", "rows"}
    assert m["rows"] == 400 and 0.5 < m["auc"] <= 1

    # predict on a file without the label column, rows in input order
    test = pacsv.read_csv(user_files / "test.csv", convert_options=pacsv.ConvertOptions(
        column_types={c: pa.string() for c in ["label", "genres"]}, strings_can_be_null=False))
    nolabel = tmp_path / "nolabel.csv"
    pacsv.write_csv(test.drop_columns(["label"]), nolabel)
    scores = tmp_path / "scores.csv"
    code, out, err = run_cli(capsys, "predict", run, nolabel, "--out", scores)
    assert code == 0, err
    with open(scores) as fh:
        got = np.array([float(r["score"]) for r in csv.DictReader(fh)])
    assert len(got) == 400 and np.all((got > 0) & (got < 1))
    # the same rows reversed give the reversed scores: order is preserved
    rev = tmp_path / "rev.csv"
    pacsv.write_csv(test.drop_columns(["label"]).take(pa.array(np.arange(399, -1, -1))), rev)
    code, out, _ = run_cli(capsys, "predict", run, rev)
    assert code == 0
    assert np.allclose(np.array([float(x) for x in out.split()]), got[::-1], atol=1e-6)


def test_bad_input_gives_one_line_error_not_traceback(capsys, tmp_path, user_files):
    bad = tmp_path / "bad.csv"
    lines = (user_files / "train.csv").read_text().splitlines()
    header = lines[0].split(",")
    row = lines[5].split(",")
    row[header.index('"label"') if '"label"' in header else header.index("label")] = "7"
    lines[5] = ",".join(row)
    bad.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, "train", "--schema", user_files / "schema.yaml", "--train", bad, "--quiet",
                             "--epochs", "1", "--out", tmp_path / "r")
    assert code == 2
    assert "Traceback" not in err
    assert str(bad) in err and "line 6" in err and "'label'" in err and "0 or 1" in err


def test_config_errors_are_named(capsys, tmp_path, user_files):
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "500", "--model", "nosuch",
                           "--out", tmp_path / "r")
    assert code == 2 and "unknown model 'nosuch'" in err
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "500", "--param", "hiden=[3]",
                           "--out", tmp_path / "r")
    assert code == 2 and "hiden" in err
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "500", "--opt", "epoch=3",
                           "--out", tmp_path / "r")
    assert code == 2 and "epoch" in err
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nope", user_files / "test.csv")
    assert code == 2 and "not a finished run directory" in err


def test_resume_and_refuse_to_overwrite(capsys, tmp_path):
    run = tmp_path / "run"
    args = ["train", "--dataset", "synthetic", "--rows", "2000", "--model", "dnn", "--param", "hidden_units=[16]",
            "--epochs", "2", "--quiet", "--out", run]
    assert run_cli(capsys, *args)[0] == 0
    code, _, err = run_cli(capsys, *args)
    assert code == 2 and "--resume" in err
    code, out, err = run_cli(capsys, "train", "--out", run, "--resume", "--quiet")
    assert code == 0, err
    assert "valid auc" in out


def test_yaml_config(capsys, tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("data: {recipe: synthetic, rows: 2000}\nmodel: dnn\nparams: {hidden_units: [8]}\n"
                   "train: {epochs: 1, batch_size: 256, quiet: true}\n")
    code, out, err = run_cli(capsys, "train", "--config", cfg, "--out", tmp_path / "r")
    assert code == 0, err
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["batch_size"] == 256


def test_datasets_and_models_listing(capsys):
    code, out, _ = run_cli(capsys, "datasets")
    assert code == 0 and "frappe_x1" in out and "ml-100k" in out
    code, out, _ = run_cli(capsys, "datasets", "--dataset", "synthetic", "--rows", "1000", "--json")
    desc = json.loads(out)
    assert desc["splits"]["train"]["rows"] == 800 and len(desc["features"]) == 11
    code, out, _ = run_cli(capsys, "models")
    assert code == 0 and "dnn" in out


def test_demo_small(capsys, tmp_path):
    code, out, err = run_cli(capsys, "demo", "--rows", "3000", "--epochs", "1", "--models", "dnn", "--quiet",
                             "--out", tmp_path / "demo")
    assert code == 0, err
    assert "rank" in out and "dnn" in out and (tmp_path / "demo" / "dnn" / "report.json").exists()


def test_real_criteo_sample_end_to_end(capsys, tmp_path):
    path = shared("samples", "deepctr", "criteo_sample.txt")
    run = tmp_path / "criteo"
    code, out, err = run_cli(capsys, "train", "--dataset", "criteo", "--data-dir", path, "--model", "dnn",
                             "--param", "hidden_units=[16]", "--epochs", "1", "--batch-size", "64", "--quiet",
                             "--out", run)
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", run, path, "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == 200


def test_real_avazu_sample_end_to_end(capsys, tmp_path):
    path = shared("samples", "deepctr", "avazu_sample.txt")
    code, out, err = run_cli(capsys, "train", "--dataset", "avazu", "--data-dir", path, "--model", "dnn",
                             "--param", "hidden_units=[16]", "--epochs", "1", "--quiet", "--out", tmp_path / "a")
    assert code == 0, err


def test_installed_entry_point_help():
    proc = subprocess.run([sys.executable, "-m", "rankcraft.cli.main", "train", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--resume" in proc.stdout and "--schema" in proc.stdout


def test_bench_writes_tables_and_merges(capsys, tmp_path):
    out = tmp_path / "bench"
    code, _, err = run_cli(capsys, "bench", "--dataset", "synthetic", "--rows", "2000", "--models", "dnn",
                           "--epochs", "1", "--out", out)
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "bench", "--dataset", "synthetic", "--rows", "2000", "--models", "lr",
                                "--epochs", "1", "--seeds", "1,2", "--out", out)
    assert code == 0, err
    res = json.loads((out / "results.json").read_text())
    assert set(res["models"]) == {"dnn", "lr"}  # the second run kept the first one's row
    assert [r["seed"] for r in res["models"]["lr"]["runs"]] == [1, 2]
    assert len(res["commands"]) == 2 and "--models lr" in res["commands"][1]["command"]
    md = (out / "results.md").read_text()
    assert "| dnn |" in md and "| lr |" in md and "±" in md
    for m in res["models"].values():
        assert 0 < m["valid_auc_mean"] <= 1 and m["flops_per_example"] > 0 and m["params_count"] > 0


def test_analyze_sessions_on_an_event_file(capsys, tmp_path):
    rows = ["user,timestamp,genres"]
    # user 1: session A (drama, drama), 2-day gap, session B (comedy), 2-day gap, back to drama
    for t, g in [(0, "Drama"), (60, "Drama"), (200_000, "Comedy"), (200_060, "Comedy"), (400_000, "Drama")]:
        rows.append(f"1,{t},{g}")
    f = tmp_path / "events.csv"
    f.write_text("\n".join(rows) + "\n")
    png = tmp_path / "s.png"
    code, out, err = run_cli(capsys, "analyze", "sessions", "--dataset", f, "--json", "--png", png)
    assert code == 0, err
    r = json.loads(out)
    assert r["sessions"] == 3 and r["users"] == 1 and r["events"] == 5
    assert r["hop_rate"] == 1.0  # Drama → Comedy → Drama: every session's theme is absent from the next one
    assert png.exists() and png.stat().st_size > 1000


# --------------------------------------------------------------------------------------------- issue #10
def _one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished run directory (synthetic data, one epoch) and a labelled file to evaluate it on."""
    d = tmp_path_factory.mktemp("tinyrun")
    code = main(["train", "--dataset", "synthetic", "--rows", "2000", "--model", "dnn", "--param",
                 "hidden_units=[8]", "--epochs", "1", "--quiet", "--out", str(d / "run")])
    assert code == 0
    table, _ = make_synthetic(400, seed=5)
    pacsv.write_csv(table, d / "test.csv")
    return d


def _copy_run(tiny_run, tmp_path):
    import shutil

    return Path(shutil.copytree(tiny_run / "run", tmp_path / "run"))


def test_train_starts_from_the_recipe_preset_and_says_so(capsys, tmp_path):
    code, out, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "2000", "--epochs", "1",
                             "--param", "hidden_units=[8]", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    assert "no --model given: training dnn" in out
    assert "using preset synthetic (train: epochs=10, batch_size=2048" in out and "yours instead: epochs" in out
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["model"] == "dnn" and cfg["train"]["batch_size"] == 2048 and cfg["train"]["epochs"] == 1
    code, out, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "2000", "--epochs", "1",
                             "--model", "dnn", "--param", "hidden_units=[8]", "--quiet", "--no-preset",
                             "--out", tmp_path / "bare")
    assert code == 0, err
    assert "--no-preset: bare defaults" in out and "using preset" not in out and "no --model" not in out
    assert json.loads((tmp_path / "bare" / "config.json").read_text())["train"]["batch_size"] == 4096


def test_the_frappe_preset_is_the_base_and_the_user_wins(capsys):
    from rankcraft.cli.main import _apply_preset
    from rankcraft.training.presets import dataset_key, preset_for

    cfg = {"data": {"recipe": "frappe_x1"}, "model": "dnn", "params": {"dropout": 0.1}, "train": {"epochs": 3}}
    merged = _apply_preset(cfg)
    line = capsys.readouterr().out.strip()
    assert line.startswith("using preset frappe_x1/dnn (train: epochs=100, batch_size=4096, optimizer=adam")
    assert "params: hidden_units=[400, 400, 400], batch_norm=true, dropout=0.2" in line
    assert "yours instead: epochs, dropout" in line and "\n" not in line
    assert merged["params"] == {"hidden_units": [400, 400, 400], "batch_norm": True, "dropout": 0.1}
    assert merged["train"]["epochs"] == 3 and merged["train"]["embedding_l2"] == 0.05
    assert merged["train"]["batch_size"] == 4096 and cfg["train"] == {"epochs": 3}  # the input is not modified
    assert _apply_preset({**cfg, "params": {}, "train": {}}, no_preset=True)["params"] == {}
    # one normalisation for every spelling of a dataset; a row may name a variant of a zoo model
    assert dataset_key("Frappe_X1") == dataset_key("frappe-x1") == "frappe-x1"
    assert preset_for("Frappe-X1", "dnn") == preset_for("frappe_x1", "dnn")
    assert preset_for("frappe_x1", "deepfm-xavier")["model"] == "deepfm"
    fm = preset_for("frappe_x1", "fm")
    assert fm["train"]["embedding_l2"] == 5.0e-6 and fm["train"]["epochs"] == 100  # row over dataset settings
    other = preset_for("frappe_x1", "mos")
    assert other["row"] is False and other["params"] == {} and other["train"]["epochs"] == 100
    assert preset_for("criteo", "dnn") is None and preset_for(None, "dnn") is None
    # presets may carry an objective: the row's, else the dataset's; the user's replaces it whole
    census = {"data": {"recipe": "census-income"}, "model": "mmoe", "params": {}, "train": {}}
    merged = _apply_preset(census)
    assert merged["objective"] == {"type": "multitask", "tasks": [{"name": "income"}, {"name": "marital"}]}
    assert "objective: {" in capsys.readouterr().out
    assert preset_for("census_income", "dnn-income")["objective"] == {"type": "binary", "label": "income"}
    mine = _apply_preset({**census, "objective": {"type": "binary", "label": "income"}})
    assert mine["objective"] == {"type": "binary", "label": "income"}
    assert "yours instead: objective" in capsys.readouterr().out


def test_help_lists_the_catalog_recipes_and_the_defaults(capsys):
    from rankcraft.data.catalog import RECIPES

    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in RECIPES), out
    flat = " ".join(out.split())
    assert "default dnn" in flat and "the synthetic recipe" in flat and "--no-preset" in flat
    code, listing, _ = run_cli(capsys, "datasets")
    assert [ln.split()[0] for ln in listing.splitlines()[1:1 + len(RECIPES)]] == list(RECIPES)


def test_a_broken_run_config_is_one_line_naming_the_file(capsys, tmp_path, tiny_run):
    run = _copy_run(tiny_run, tmp_path)
    (run / "config.json").write_text('{"model": "dnn", "train": {"epochs": 1,}')
    for argv in (["evaluate", run, tiny_run / "test.csv"], ["predict", run, tiny_run / "test.csv"],
                 ["train", "--out", run, "--resume", "--quiet"]):
        code, _, err = run_cli(capsys, *argv)
        line = _one_line_error(err)
        assert code == 2 and f"{run / 'config.json'}: run config is not valid JSON (line 1" in line, line


def test_a_corrupt_checkpoint_is_named_on_evaluate(capsys, tmp_path, tiny_run):
    run = _copy_run(tiny_run, tmp_path)
    data = bytearray((run / "best.pt").read_bytes())
    data[len(data) // 2] ^= 0x04
    (run / "best.pt").write_bytes(bytes(data))
    code, out, err = run_cli(capsys, "evaluate", run, tiny_run / "test.csv", "--json")
    assert code == 2 and out == ""
    assert f"{run / 'best.pt'}: corrupt: checksum mismatch" in _one_line_error(err)
    (run / "best.pt").write_bytes(b"\x00garbage")
    code, _, err = run_cli(capsys, "predict", run, tiny_run / "test.csv")
    assert code == 2 and "best.pt" in _one_line_error(err) and "weights_only" not in err


def test_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "1000", "--epochs", "1", "--quiet",
                           "--out", tmp_path / "r")
    assert code == 2
    assert _one_line_error(err).startswith("error: No space left on device while writing "), err


def test_a_diverging_loss_is_one_line(capsys, tmp_path, monkeypatch):
    from rankcraft import api

    def diverge(*args, **kwargs):
        raise FloatingPointError("training loss became nan at epoch 1, step 3; lower the learning rate or enable "
                                 "clip_grad_norm")

    monkeypatch.setattr(api, "train", diverge)
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "1000", "--quiet",
                           "--out", tmp_path / "r")
    assert code == 2 and _one_line_error(err).startswith("error: training loss became nan at epoch 1, step 3")


def test_system_errors_are_one_line(capsys, tmp_path, monkeypatch):
    from rankcraft import api

    def unreadable(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp_path / "data.csv"))

    monkeypatch.setattr(api, "train", unreadable)
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--rows", "1000", "--quiet",
                           "--out", tmp_path / "r")
    assert code == 2 and _one_line_error(err) == f"error: {tmp_path / 'data.csv'}: Permission denied"


def test_evaluate_json_writes_undefined_metrics_as_null(capsys, tmp_path, tiny_run):
    table = pacsv.read_csv(tiny_run / "test.csv", convert_options=pacsv.ConvertOptions(
        column_types={"label": pa.string(), "genres": pa.string()}, strings_can_be_null=False))
    zeros = table.filter(pa.compute.equal(table["label"], "0"))
    pacsv.write_csv(zeros, tmp_path / "one_class.csv")
    code, out, err = run_cli(capsys, "evaluate", tiny_run / "run", tmp_path / "one_class.csv", "--json")
    assert code == 0, err
    assert "NaN" not in out and "Infinity" not in out

    def refuse(name):
        raise ValueError(name)

    m = json.loads(out, parse_constant=refuse)
    assert m["auc"] is None and m["rows"] == zeros.num_rows
    code, out, err = run_cli(capsys, "evaluate", tiny_run / "run", tmp_path / "one_class.csv")
    assert code == 0 and "auc" in out and "n/a" in out


def test_data_options_reach_the_recipe(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "--dataset", "synthetic", "--data-option", "rows=300",
                             "--data-option", "seed=4", "--epochs", "1", "--quiet", "--out", tmp_path / "r")
    assert code == 0, err
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["data"]["options"] == {"rows": 300, "seed": 4}
    assert json.loads((tmp_path / "r" / "report.json").read_text())["valid"]["rows"] == 30  # 10% of 300 rows
    code, _, err = run_cli(capsys, "train", "--dataset", "synthetic", "--data-option", "nokey", "--out",
                           tmp_path / "r2")
    assert code == 2 and "--data-option 'nokey': expected KEY=VALUE" in err
