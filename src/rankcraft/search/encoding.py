"""Architectures of a block space as categorical decisions and as feature vectors (for predictors, TPE and
policies over a pool of candidates).

:func:`decisions` names every choice of an architecture of the space's block pattern, per block ``i``::

    d{i}.op     dense op                     d{i}.size   width (``dim``) or cross depth (``x<layers>``)
    d{i}.in     dense node's inputs          s{i}.op     sparse op
    s{i}.size   output fields                s{i}.in     sparse node's inputs

with inputs as a canonical string (``d1+f0`` = dense output of block 1 and flattened sparse output of source 0;
``s0+s2|d1`` = the sparse inputs of ``dot``/``fm``, then an optional dense input). A node the head does not depend
on (dead) has every decision ``"-"``: two architectures that compute the same model have the same decisions.

:class:`FeatureEncoder` turns decision dicts into a one-hot matrix ``[n, D]`` over a vocabulary fitted on a pool
(one column per (decision, value) seen), plus ``log2`` of the numeric sizes and, optionally, ``log10`` FLOPs as
scaled numerics (the configuration encoding of the predictor; wave2-specs §6 (e)).
"""

from __future__ import annotations

import math
import re

import numpy as np

from rankcraft.models.arch.format import Arch

DEAD = "-"


def _inputs(node) -> str:
    if node.op in ("dot", "fm"):
        s = "+".join(f"s{j}" for j in sorted(node.sparse_inputs))
        extra = "+".join(f"d{j}" for j in sorted(node.inputs)) + "+".join(f"f{j}" for j in sorted(node.flat_inputs))
        return s + (f"|{extra}" if extra else "")
    return "+".join([f"d{j}" for j in sorted(node.inputs)] + [f"f{j}" for j in sorted(node.flat_inputs)])


def decisions(arch: Arch) -> dict[str, str]:
    """The named categorical decisions of ``arch`` (dead nodes as ``"-"``)."""
    live = arch.live()
    out: dict[str, str] = {}
    for i, blk in enumerate(arch.blocks, start=1):
        d, s = blk.dense, blk.sparse
        if d is not None and (i, "dense") in live:
            out[f"d{i}.op"] = d.op
            out[f"d{i}.size"] = f"x{d.layers}" if d.op == "cross" else str(d.dim if d.dim is not None else "raw")
            out[f"d{i}.in"] = _inputs(d)
        else:
            out[f"d{i}.op"] = out[f"d{i}.size"] = out[f"d{i}.in"] = DEAD
        if s is not None and (i, "sparse") in live:
            out[f"s{i}.op"] = s.op
            out[f"s{i}.size"] = str(s.fields)
            out[f"s{i}.in"] = "+".join(f"s{j}" for j in sorted(s.inputs))
        else:
            out[f"s{i}.op"] = out[f"s{i}.size"] = out[f"s{i}.in"] = DEAD
    return out


def hamming(a: dict[str, str], b: dict[str, str]) -> int:
    """The number of decisions in which ``a`` and ``b`` differ."""
    return sum(1 for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _numeric(value: str) -> float:
    m = re.fullmatch(r"x?(\d+)", value)
    return math.log2(float(m.group(1))) if m else 0.0


class FeatureEncoder:
    """One-hot decisions (a vocabulary fitted on a pool), ``log2`` sizes, optional ``log10`` FLOPs.

    ``transform`` of a value not seen at fit time gives no one-hot column (all zeros for that decision)."""

    def __init__(self, *, with_flops: bool = False):
        self.with_flops = with_flops
        self.columns: list[tuple[str, str]] = []
        self.size_keys: list[str] = []
        self._col: dict[tuple[str, str], int] = {}
        self._flops_scale: tuple[float, float] = (0.0, 1.0)

    def fit(self, rows: list[dict[str, str]], flops: list[float] | None = None) -> FeatureEncoder:
        keys = sorted({k for r in rows for k in r})
        self.columns = sorted({(k, r.get(k, DEAD)) for r in rows for k in keys})
        self._col = {c: i for i, c in enumerate(self.columns)}
        self.size_keys = [k for k in keys if k.endswith(".size")]
        if self.with_flops and flops:
            lf = np.log10(np.maximum(np.asarray(flops, dtype=float), 1.0))
            self._flops_scale = (float(lf.mean()), float(lf.std() or 1.0))
        return self

    @property
    def width(self) -> int:
        return len(self.columns) + len(self.size_keys) + int(self.with_flops)

    def transform(self, rows: list[dict[str, str]], flops: list[float] | None = None) -> np.ndarray:
        x = np.zeros((len(rows), self.width), dtype=np.float32)
        n1 = len(self.columns)
        for r, row in enumerate(rows):
            for k, v in row.items():
                c = self._col.get((k, v))
                if c is not None:
                    x[r, c] = 1.0
            for j, k in enumerate(self.size_keys):
                x[r, n1 + j] = _numeric(row.get(k, DEAD)) / 10.0
        if self.with_flops:
            if flops is None:
                raise ValueError("this encoder uses FLOPs as a feature: pass flops")
            mu, sd = self._flops_scale
            x[:, -1] = (np.log10(np.maximum(np.asarray(flops, dtype=float), 1.0)) - mu) / sd
        return x


__all__ = ["DEAD", "FeatureEncoder", "decisions", "hamming"]
