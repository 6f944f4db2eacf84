"""ONNX export: every exportable zoo and multi-task model scores like torch (≤ 1e-5), including unseen categories and
empty sequences; the artifact scores without torch and matches `predict`; unexportable models say why."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pyarrow.csv as pacsv
import pytest
import torch

pytest.importorskip("onnxruntime", reason="ONNX export checks need onnxruntime (extra rankcraft[serve])")

from rankcraft.data.spec import prepare_spec  # noqa: E402
from rankcraft.models.catalog import available_models, is_multitask, requires_sequence  # noqa: E402
from rankcraft.serving.artifact import Artifact  # noqa: E402
from rankcraft.serving.export import ExportError, export_run  # noqa: E402
from rankcraft.training.run import RunConfig, load_run, train  # noqa: E402

SYNTH = {"recipe": "synthetic", "rows": 2000}
SEQ = {"recipe": "session-hopping", "options": {"users": 150, "max_len": 12}}
FUNNEL = {"recipe": "funnel", "options": {"rows": 3000, "seed": 3}}
MULTI = {"type": "multitask", "tasks": [{"name": "ctr", "label": "click"}, {"name": "ctcvr", "label": "purchase"}]}
TRAIN = {"epochs": 1, "max_steps": 3, "batch_size": 256, "quiet": True, "checkpoint_seconds": 0}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return {name: prepare_spec(spec, cache) for name, spec in (("synth", SYNTH), ("seq", SEQ), ("funnel", FUNNEL))}


def _run(model: str, datasets, tmp_path):
    if is_multitask(model):
        data, spec, objective = datasets["funnel"], FUNNEL, MULTI
    elif requires_sequence(model):
        data, spec, objective = datasets["seq"], SEQ, None
    else:
        data, spec, objective = datasets["synth"], SYNTH, None
    cfg = RunConfig.parse({"data": spec, "model": model, "objective": objective, "train": TRAIN,
                           "params": {"tasks": ["ctr", "ctcvr"]} if model in ("mmoe", "ple", "sharedbottom") else {}})
    train(cfg, out=tmp_path / "run", data=data)
    return tmp_path / "run", data


def _hostile(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Rows with unseen categories (the OOV id 1) and empty sequences/bags (all padding)."""
    out = {k: v.copy() for k, v in columns.items()}
    n = len(next(iter(out.values())))
    half = np.arange(n) < n // 2
    for k, v in out.items():
        if k == "cat":
            v[half] = 1
        elif v.dtype == np.int64 and v.ndim == 2:
            v[half] = 0
        elif k.endswith("__ts"):
            v[half] = 0.0
    return out


EXPORTABLE = [m for m in available_models() if m not in ("arch", "mos")]


@pytest.mark.parametrize("model", EXPORTABLE)
def test_onnx_matches_torch_on_real_unseen_and_empty_rows(model, datasets, tmp_path):
    run_dir, data = _run(model, datasets, tmp_path)
    art_dir = export_run(run_dir, tmp_path / "art")
    art = Artifact(art_dir)
    run = load_run(run_dir)
    cols = {k: v.numpy() for k, v in data.splits["valid"].columns.items() if not k.startswith("label")}
    cols = {k: v[:200] for k, v in cols.items()}
    for batch in (cols, _hostile(cols)):
        got = art.score_columns(batch)
        with torch.no_grad():
            from rankcraft.models.output import as_output

            want = run.objective.probabilities(as_output(run.model({k: torch.from_numpy(v) for k, v in batch.items()})))
        for h in art.heads:
            assert np.max(np.abs(got[h] - want[h].numpy())) <= 1e-5, (model, h)
    manifest = json.loads((art_dir / "manifest.json").read_text())
    assert manifest["heads"] == run.objective.heads and manifest["inputs"]
    assert all(i["shape"][0] == "batch" for i in manifest["inputs"])


def test_unexportable_model_says_why(datasets, tmp_path):
    run_dir, _ = _run("mos", datasets, tmp_path)
    with pytest.raises(ExportError, match="model 'mos' cannot be exported: its theme routing sizes tensors"):
        export_run(run_dir, tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_artifact_scores_raw_rows_like_predict_without_torch(datasets, tmp_path):
    from rankcraft.serving.predictor import predict

    for model, key in (("deepfm", "synth"), ("esmm", "funnel")):
        (tmp_path / model).mkdir()
        run_dir, _ = _run(model, datasets, tmp_path / model)
        art_dir = export_run(run_dir, tmp_path / model / "art")
        # raw rows of the recipe's training split, written as a CSV file and as JSON-like dicts
        spec = FUNNEL if key == "funnel" else SYNTH
        from rankcraft.data.spec import DataSpec

        raw = DataSpec.model_validate(spec).source().load_raw()["train"].table.slice(0, 300)
        csv = tmp_path / model / "rows.csv"
        pacsv.write_csv(raw, csv)
        want = predict(run_dir, csv)
        art = Artifact(art_dir)
        got = art.score_table(raw)
        want = want if isinstance(want, dict) else {"score": want}
        for h in art.heads:
            assert np.max(np.abs(got[h] - want[h])) <= 1e-5
        rows = raw.to_pylist()[:5]
        by_rows = art.score_rows(rows)
        for h in art.heads:
            assert np.allclose(by_rows[h], got[h][:5], atol=1e-6)
    code = ("import sys, pyarrow as pa; from rankcraft.serving.artifact import Artifact; "
            f"a = Artifact({str(art_dir)!r}); print(a.heads); assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]


def test_artifact_errors_are_named(tmp_path):
    from rankcraft.errors import ConfigError

    with pytest.raises(ConfigError, match="not an exported artifact"):
        Artifact(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ConfigError, match="format 99 is not supported"):
        Artifact(tmp_path)


def test_cli_export(datasets, tmp_path, capsys):
    from rankcraft.cli.main import main

    run_dir, _ = _run("dcnv2", datasets, tmp_path)
    assert main(["export", str(run_dir), "--out", str(tmp_path / "art")]) == 0
    assert "exported dcnv2 (score)" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "art").iterdir()) == ["encoders.json", "features.json",
                                                                    "manifest.json", "model.onnx"]
    assert main(["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2


@pytest.mark.parametrize("model", ["dcnv2", "esmm", "din"])
def test_pt2_export_scores_like_torch(model, datasets, tmp_path):
    run_dir, data = _run(model, datasets, tmp_path)
    art = Artifact(export_run(run_dir, tmp_path / "art", fmt="pt2"))
    assert art.kind == "pt2" and (tmp_path / "art" / "model.pt2").exists()
    run = load_run(run_dir)
    cols = {k: v.numpy()[:50] for k, v in data.splits["valid"].columns.items() if not k.startswith("label")}
    got = art.score_columns(_hostile(cols))
    from rankcraft.models.output import as_output

    with torch.no_grad():
        want = run.objective.probabilities(as_output(run.model({k: torch.from_numpy(v)
                                                                for k, v in _hostile(cols).items()})))
    for h in art.heads:
        assert np.max(np.abs(got[h] - want[h].numpy())) <= 1e-5
