"""Self-contained export of a trained run: ``rankcraft export RUN --format onnx|pt2 --out DIR``.

``onnx`` (default) is scored by ONNX Runtime without torch; ``pt2`` is a ``torch.export`` program (dynamic batch
axis, list axes at the schema's ``max_len``), scored with torch but without rankcraft's model code. Below, the
ONNX form; the pt2 artifact has the same files with ``model.pt2``.

An artifact directory holds everything scoring needs, and nothing of the training stack:

* ``model.onnx`` — the scoring graph: encoded input columns → one probability (or value) per head;
* ``encoders.json`` — the fitted encoders with their schema (raw values → ids / transformed numbers);
* ``features.json`` — the fitted feature metadata;
* ``manifest.json`` — format version, rankcraft / torch / ONNX versions, opset, model and params, head names and
  kinds, and the input signature (name, dtype, shape with its dynamic axes).

Graph inputs follow the batch layout of :mod:`rankcraft.data.features`: ``cat`` int64 ``[batch, n_cat]``, ``num``
float32 ``[batch, n_num]``, one int64 ``[batch, len_<name>]`` per multi-valued / sequence feature and float64
``[batch, len_<name>]`` timestamps (``<name>__ts``). The batch axis and every list axis are dynamic. Inputs that the
model does not read are left out of the graph (the manifest lists the graph's inputs only). Multi-valued features
are embedded by gather + mask + mean (no ``EmbeddingBag``, whose ONNX form is a per-bag loop). The outputs are the
heads' probabilities (sigmoid of the logits; regression heads unchanged), named after the heads.

A model whose forward pass depends on the data in a way a traced graph cannot keep (for example MoS's
data-dependent expert routing) is refused with an :class:`ExportError` that names the model and the reason; every
export is checked against torch on sample rows before it is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from rankcraft.data.encoders import Encoders
from rankcraft.data.readers import RawTable
from rankcraft.data.windows import WINDOWS_FILE
from rankcraft.errors import RankcraftError
from rankcraft.files import atomic_write_json
from rankcraft.models.output import as_output
from rankcraft.training.objectives import Objective
from rankcraft.training.run import load_run

EXPORT_FORMAT = 1
OPSET = 17
#: models that cannot be traced into a static graph, with the reason (checked before trying)
NOT_EXPORTABLE: dict[str, str] = {
    "mos": "its theme routing sizes tensors from the data (the number of sessions and themes per batch), which a "
           "traced graph freezes to the sample's sizes; serve it from the run directory (rankcraft predict)",
}


def _register_symbolics() -> None:
    """ONNX has no Expm1 (ESMM's stable log-space CTCVR uses it): export it as Exp(x) - 1. The graph's
    probabilities stay within the parity tolerance (tests/test_export.py)."""
    from torch.onnx import register_custom_op_symbolic

    def expm1(g, x):
        return g.op("Sub", g.op("Exp", x), g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32)))

    register_custom_op_symbolic("aten::expm1", expm1, OPSET)


class ExportError(RankcraftError):
    """A run that cannot be exported (and why)."""


class ScoringModule(nn.Module):
    """``forward(*inputs) -> (p_head1, p_head2, ...)``: positional encoded columns in ``keys`` order → the
    probability (or regression value) of every head in ``heads`` order, each ``[batch]``."""

    def __init__(self, model: nn.Module, objective: Objective, keys: list[str], heads: list[str]):
        super().__init__()
        self.model, self.objective, self.keys, self.heads = model, objective, keys, heads

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        probs = self.objective.probabilities(as_output(self.model(dict(zip(self.keys, inputs)))))
        return tuple(probs[h] for h in self.heads)


def sample_columns(encoders: Encoders, rows: int = 4) -> dict[str, np.ndarray]:
    """Encoded columns of ``rows`` rows of blank raw values (missing categories, fill values, empty lists): a
    batch with the exact keys, dtypes and shapes the encoders produce."""
    cols = [c for c in encoders.schema.required_columns() if c not in encoders.schema.label_columns]
    table = pa.table({c: pa.array([""] * rows, pa.string()) for c in cols})
    return encoders.transform(RawTable(table, "<sample>", 0, "memory"), labels=False)


def _dynamic_axes(columns: dict[str, np.ndarray]) -> dict[str, dict[int, str]]:
    axes = {}
    for k, v in columns.items():
        axes[k] = {0: "batch"}
        if k not in ("cat", "num") and v.ndim == 2:
            axes[k][1] = "len_" + k.removesuffix("__ts")
    return axes


def export_run(run_dir: str | Path, out: str | Path, *, fmt: str = "onnx", check_rows: int = 64) -> Path:
    """Export the run in ``run_dir`` to the artifact directory ``out`` (written atomically: a temporary directory
    renamed into place). Returns ``out``."""
    if fmt not in ("onnx", "pt2"):
        raise ExportError(f"export format '{fmt}' is not supported; use onnx or pt2")
    run = load_run(run_dir)
    name = run.config.model
    if name in NOT_EXPORTABLE:
        raise ExportError(f"model '{name}' cannot be exported: {NOT_EXPORTABLE[name]}")
    heads = list(run.objective.heads)
    columns = sample_columns(run.encoders, rows=max(2, check_rows))
    keys = [k for k in columns if k != "group"]
    rng = np.random.default_rng(0)
    for k in keys:  # vary the sample so the check sees real ids, not only padding
        if columns[k].dtype == np.int64:
            hi = max(2, int(_vocab_bound(run.features, k)))
            columns[k] = rng.integers(0, hi, size=columns[k].shape).astype(np.int64)
        else:
            columns[k] = rng.normal(size=columns[k].shape).astype(columns[k].dtype)
    scoring = ScoringModule(run.model, run.objective, keys, heads).eval()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        if fmt == "onnx":
            graph_inputs, worst = _write_onnx(scoring, columns, keys, heads, tmp, name)
        else:
            graph_inputs, worst = _write_pt2(scoring, columns, keys, heads, tmp, name)
        if not worst <= 1e-4:
            raise ExportError(f"model '{name}': the exported graph disagrees with torch (max |Δp| = {worst:.2e} on "
                              "sample rows); it likely depends on the data in a way tracing cannot keep")
        (tmp / "encoders.json").write_text(run.encoders.to_json())
        (tmp / "features.json").write_text(json.dumps(run.features.to_dict()))
        if (Path(run_dir) / WINDOWS_FILE).exists():  # the run serves any conversion window (training/windows.py)
            (tmp / WINDOWS_FILE).write_bytes((Path(run_dir) / WINDOWS_FILE).read_bytes())
        manifest = {
            "format": EXPORT_FORMAT,
            "kind": fmt,
            "file": f"model.{fmt}",
            "model": name,
            "params": run.config.params,
            "heads": heads,
            "head_kinds": {h: k for h, k in zip(heads, _head_kinds(run.objective, heads))},
            "inputs": [{"name": k, "dtype": str(columns[k].dtype),
                        "shape": _shape(k, columns[k]) if fmt == "onnx" else ["batch", *columns[k].shape[1:]]}
                       for k in graph_inputs],
            "outputs": [{"name": h, "dtype": "float32", "shape": ["batch"]} for h in heads],
            "opset": OPSET if fmt == "onnx" else None,
            "versions": _versions(),
            "source_run": str(Path(run_dir).resolve()),
            "check": {"rows": int(len(columns[keys[0]])), "max_abs_diff": worst},
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _check(score_fn, scoring: ScoringModule, columns: dict, keys: list[str], name: str) -> float:
    """Max |Δp| between ``score_fn`` (the exported graph) and torch at the traced batch size and another one."""
    worst = 0.0
    for rows in (slice(None), slice(0, 3)):
        part = {k: columns[k][rows] for k in keys}
        with torch.no_grad():
            want = [t.numpy() for t in scoring(*(torch.from_numpy(part[k]) for k in keys))]
        try:
            got = score_fn(part)
        except Exception as exc:
            raise ExportError(f"model '{name}': the exported graph fails on a batch of another size "
                              f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]}); it depends on the "
                              "data in a way tracing cannot keep") from None
        worst = max([worst] + [float(np.max(np.abs(a - np.asarray(b)))) for a, b in zip(want, got)])
    return worst


def _write_onnx(scoring, columns, keys, heads, tmp: Path, name: str) -> tuple[list[str], float]:
    tensors = tuple(torch.from_numpy(columns[k]) for k in keys)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    # the fused transformer-encoder kernel has no ONNX form: trace the plain attention ops instead
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _register_symbolics()
            try:
                torch.onnx.export(scoring, tensors, str(tmp / "model.onnx"), input_names=keys, output_names=heads,
                                  dynamic_axes={**_dynamic_axes({k: columns[k] for k in keys}),
                                                **{h: {0: "batch"} for h in heads}},
                                  opset_version=OPSET, dynamo=False)
            except Exception as exc:  # the exporters raise many types; the reason is what the user needs
                reason = " ".join(str(exc).split())[:300]
                raise ExportError(f"model '{name}' cannot be exported to ONNX: {type(exc).__name__}: {reason}") \
                    from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(tmp / "model.onnx"), providers=["CPUExecutionProvider"])
    graph_inputs = [i.name for i in sess.get_inputs()]
    worst = _check(lambda part: sess.run(None, {k: part[k] for k in graph_inputs}), scoring, columns, keys, name)
    return graph_inputs, worst


def _write_pt2(scoring, columns, keys, heads, tmp: Path, name: str) -> tuple[list[str], float]:
    """``torch.export`` program (``model.pt2``): dynamic batch axis; list axes fixed at the schema's ``max_len``
    (what the encoders produce). Loading it needs torch (``torch.export.load``), not rankcraft's model code."""
    tensors = tuple(torch.from_numpy(columns[k]) for k in keys)
    batch = torch.export.Dim("batch", min=1)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.export.export(scoring, tensors, dynamic_shapes=(tuple({0: batch} for _ in keys),))
            torch.export.save(program, str(tmp / "model.pt2"))
    except Exception as exc:
        reason = " ".join(str(exc).split())[:300]
        raise ExportError(f"model '{name}' cannot be exported with torch.export: {type(exc).__name__}: {reason}") \
            from None
    module = torch.export.load(str(tmp / "model.pt2")).module()

    def run(part):
        with torch.no_grad():
            return [t.numpy() for t in module(*(torch.from_numpy(part[k]) for k in keys))]

    return keys, _check(run, scoring, columns, keys, name)


def _vocab_bound(features, key: str) -> int:
    if key == "cat":
        return min([f.vocab_size for f in features.categorical] or [2])
    name = key.removesuffix("__ts")
    try:
        return features[name].vocab_size or 2
    except KeyError:
        return 2


def _shape(key: str, arr: np.ndarray) -> list:
    if arr.ndim == 1:
        return ["batch"]
    if key in ("cat", "num"):
        return ["batch", int(arr.shape[1])]
    return ["batch", "len_" + key.removesuffix("__ts")]


def _head_kinds(objective: Objective, heads: list[str]) -> list[str]:
    kinds = {t.name: t.kind for t in objective.tasks}
    if objective.single:
        return [objective.tasks[0].kind] * len(heads)
    return [kinds.get(h, "binary") for h in heads]


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"torch": torch.__version__}
    for pkg in ("rankcraft", "onnx", "onnxruntime", "numpy", "pyarrow"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out
