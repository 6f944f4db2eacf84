"""End-to-end CLI: train → evaluate → predict on synthetic data, user files and the real samples."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
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
