"""Search spaces: which architectures (:class:`~rankcraft.models.arch.format.Arch`) a search may visit.

A space fixes the number of blocks ``N``, the dense and sparse operators, the elastic widths (dense ``dim`` and
sparse ``fields``), the DCN depth choices and how many earlier outputs a node may read. Every architecture of a
space has, in each block ``i``, one dense node and one sparse node reading up to ``max_inputs`` outputs of sources
``0..i-1`` (NASRec's macro any-path / micro single-path choice), and the NASRec head: ``Linear`` over the last
block's dense output and flattened sparse output.

Reconstruction choices (documented, configurable through :class:`SpaceConfig`):

* ``cross`` reads only the raw flattened embeddings (DCN's ``x0``), so its weights stay ``(F0·d)²``;
* ``dot`` optionally (probability ½) adds one dense input as an extra field; ``dot``/``fm`` always project to
  ``dim`` inside the space (the raw-interaction variants exist for zoo equivalence only).

Presets: ``small`` (NASRec-Small-like: mlp, dot, cross, fm / efc; 4 blocks) and ``full`` (NASRec-Full plus DCN
and FM: mlp, dot, gating, sum, cross, fm / efc, attention; 5 blocks). NASRec's 7 blocks and widths up to 1024
are scaled down so a supernet trains on a 2-core CPU; pass a :class:`SpaceConfig` for larger spaces.
"""

from __future__ import annotations

import random
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import DENSE_OPS, SPARSE_OPS, Arch

#: dense ops a space can sample (``linear`` is the logit-term op of human designs; ``fsgate`` and ``bilinear``
#: express FinalMLP, whose graph the space's block pattern does not hold)
SPACE_DENSE_OPS = ("mlp", "cross", "gating", "sum", "dot", "fm")


class SpaceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "custom"
    blocks: int = Field(default=4, ge=1, le=16)
    dense_ops: list[str] = Field(default_factory=lambda: ["mlp", "dot", "cross", "fm"])
    sparse_ops: list[str] = Field(default_factory=lambda: ["efc"])
    dense_dims: list[int] = Field(default_factory=lambda: [64, 128, 256, 512])
    sparse_fields: list[int] = Field(default_factory=lambda: [8, 16, 32])
    cross_layers: list[int] = Field(default_factory=lambda: [1, 2, 3])
    max_inputs: int = Field(default=2, ge=1, le=8)
    norm: Literal["layer", "batch", "none"] = "layer"
    activation: str = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: dropout rates a mutation may give one node of an architecture outside the space's block pattern (a human
    #: design seeding a search; see :meth:`SearchSpace.mutate`)
    dropout_choices: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.2, 0.3, 0.4, 0.5])

    @model_validator(mode="after")
    def _check(self) -> SpaceConfig:
        for op in self.dense_ops:
            if op not in SPACE_DENSE_OPS:
                why = (" (an architecture op for human designs such as FinalMLP, which seed an evolution through "
                       "evolution.seeds; the space's samplers and supernets do not draw it)"
                       if op in DENSE_OPS else "")
                raise ValueError(f"dense_ops: unknown or unsupported op '{op}'{why}; choose from "
                                 f"{list(SPACE_DENSE_OPS)}")
        for op in self.sparse_ops:
            if op not in SPARSE_OPS:
                raise ValueError(f"sparse_ops: unknown op '{op}'; choose from {list(SPARSE_OPS)}")
        if not (self.dense_ops and self.sparse_ops and self.dense_dims and self.sparse_fields
                and self.cross_layers):
            raise ValueError("every choice list must be non-empty")
        self.dense_dims = sorted(set(self.dense_dims))
        self.sparse_fields = sorted(set(self.sparse_fields))
        self.cross_layers = sorted(set(self.cross_layers))
        return self

    @property
    def max_dim(self) -> int:
        return self.dense_dims[-1]

    @property
    def max_fields(self) -> int:
        return self.sparse_fields[-1]


PRESETS: dict[str, dict] = {
    "small": {"name": "small", "blocks": 4, "dense_ops": ["mlp", "dot", "cross", "fm"], "sparse_ops": ["efc"],
                  "dense_dims": [64, 128, 256, 512], "sparse_fields": [8, 16, 32], "cross_layers": [1, 2, 3]},
    "full": {"name": "full", "blocks": 5, "dense_ops": ["mlp", "dot", "gating", "sum", "cross", "fm"],
                 "sparse_ops": ["efc", "attention"], "dense_dims": [32, 64, 128, 256, 512],
                 "sparse_fields": [8, 16, 32], "cross_layers": [1, 2, 3]},
    # for tests and smoke runs
    "tiny": {"name": "tiny", "blocks": 3, "dense_ops": ["mlp", "dot", "gating", "sum", "cross", "fm"],
                 "sparse_ops": ["efc", "attention"], "dense_dims": [8, 16], "sparse_fields": [4, 6], "cross_layers": [1, 2]},
}


def get_space(name_or_config: str | dict | SpaceConfig, *, raw_dense: bool = False) -> SearchSpace:
    """A preset by name (``small``, ``full``, ``tiny``) or a :class:`SpaceConfig` mapping."""
    if isinstance(name_or_config, SpaceConfig):
        return SearchSpace(name_or_config, raw_dense=raw_dense)
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ConfigError(f"unknown search space '{name_or_config}'; presets: {', '.join(PRESETS)}")
        return SearchSpace(SpaceConfig(**PRESETS[name_or_config]), raw_dense=raw_dense)
    try:
        return SearchSpace(SpaceConfig.model_validate(name_or_config), raw_dense=raw_dense)
    except ValueError as exc:
        raise ConfigError(f"search space: {exc}") from None


class SearchSpace:
    """Sampling, mutation and membership for one :class:`SpaceConfig`.

    ``raw_dense``: whether the data has numeric features (then the raw dense stream, source 0, is a candidate
    dense input).
    """

    def __init__(self, config: SpaceConfig, *, raw_dense: bool = False):
        self.config = config
        self.raw_dense = raw_dense

    @property
    def name(self) -> str:
        return self.config.name

    # -- sampling -----------------------------------------------------------------------------------------------
    def _pick_sources(self, rng: random.Random, candidates: list, k_max: int | None = None) -> list:
        k_max = min(k_max or self.config.max_inputs, len(candidates))
        k = rng.randint(1, k_max)
        return sorted(rng.sample(candidates, k))

    def _dense_node(self, i: int, rng: random.Random, op: str | None = None) -> dict:
        c = self.config
        op = op or rng.choice(c.dense_ops)
        if op == "cross":
            return {"op": "cross", "layers": rng.choice(c.cross_layers), "flat_inputs": [0]}
        dim = rng.choice(c.dense_dims)
        if op in ("dot", "fm"):
            node = {"op": op, "dim": dim, "sparse_inputs": self._pick_sources(rng, list(range(i)))}
            dense_src = list(range(1, i)) + ([0] if self.raw_dense else [])
            if op == "dot" and dense_src and rng.random() < 0.5:
                node["inputs"] = [rng.choice(dense_src)]
            return node
        cands = [("d", j) for j in range(1, i)] + ([("d", 0)] if self.raw_dense else []) + \
                [("f", j) for j in range(i)]
        picked = self._pick_sources(rng, cands)
        return {"op": op, "dim": dim, "inputs": [j for s, j in picked if s == "d"],
                "flat_inputs": [j for s, j in picked if s == "f"]}

    def _sparse_node(self, i: int, rng: random.Random, op: str | None = None) -> dict:
        c = self.config
        return {"op": op or rng.choice(c.sparse_ops), "fields": rng.choice(c.sparse_fields),
                "inputs": self._pick_sources(rng, list(range(i)))}

    def _arch(self, blocks: list[dict]) -> Arch:
        c = self.config
        n = len(blocks)
        return Arch.model_validate({"norm": c.norm, "activation": c.activation, "dropout": c.dropout,
                                    "blocks": blocks, "head": {"inputs": [n], "flat_inputs": [n]}})

    def sample(self, rng: random.Random) -> Arch:
        """A uniformly sampled architecture (each decision uniform; the number of inputs uniform in
        ``1..max_inputs``)."""
        blocks = [{"dense": self._dense_node(i, rng), "sparse": self._sparse_node(i, rng)}
                  for i in range(1, self.config.blocks + 1)]
        return self._arch(blocks)

    def largest(self, rng: random.Random) -> Arch:
        """A warm-up path: sampled operators, but every node at its maximum width, depth and input count."""
        c = self.config
        blocks = []
        for i in range(1, c.blocks + 1):
            d = self._dense_node(i, rng)
            if d["op"] == "cross":
                d["layers"] = c.cross_layers[-1]
            else:
                d["dim"] = c.max_dim
            s = self._sparse_node(i, rng)
            s["fields"] = c.max_fields
            blocks.append({"dense": d, "sparse": s})
        return self._arch(blocks)

    def contains(self, arch: Arch) -> bool:
        try:
            self.check(arch)
        except ConfigError:
            return False
        return True

    def mutate(self, arch: Arch, rng: random.Random) -> Arch:
        """One decision of one block resampled (always a different architecture when the space allows it).

        An architecture outside the space's block pattern (e.g. a zoo model seeding an evolution) keeps its graph
        and gets one of its choices changed instead: see :meth:`mutate_free`."""
        if not self.contains(arch):
            return self.mutate_free(arch, rng)
        base = arch.to_dict()
        for _ in range(20):
            blocks = [{"dense": dict(b["dense"]), "sparse": dict(b["sparse"])} for b in base["blocks"]]
            i = rng.randint(1, len(blocks))
            blk = blocks[i - 1]
            what = rng.choice(["dense_op", "dense_width", "dense_inputs", "sparse_op", "sparse_fields",
                               "sparse_inputs"])
            d = blk["dense"]
            if what == "dense_op":
                blk["dense"] = self._dense_node(i, rng)
            elif what == "dense_width":
                if d["op"] == "cross":
                    d["layers"] = rng.choice(self.config.cross_layers)
                else:
                    d["dim"] = rng.choice(self.config.dense_dims)
            elif what == "dense_inputs":
                fresh = self._dense_node(i, rng, op=d["op"])
                for k in ("inputs", "flat_inputs", "sparse_inputs"):
                    d[k] = fresh.get(k, [])
            elif what == "sparse_op":
                blk["sparse"]["op"] = rng.choice(self.config.sparse_ops)
            elif what == "sparse_fields":
                blk["sparse"]["fields"] = rng.choice(self.config.sparse_fields)
            else:
                blk["sparse"]["inputs"] = self._pick_sources(rng, list(range(i)))
            new = self._arch(blocks)
            if new.key() != arch.key():
                return new
        return self._arch(blocks)

    def mutate_free(self, arch: Arch, rng: random.Random) -> Arch:
        """Mutate any architecture without changing its graph: one live node gets a new width (``dim``: one of the
        space's ``dense_dims`` or the current width ×0.5, ×0.75, ×1.25, ×1.5), a new cross depth, a new dropout
        rate (``dropout_choices``) or, for ``bilinear``, a new head count. Widths read by a ``bilinear`` node stay
        divisible by its heads. Returns ``arch`` unchanged only when it has no such choice."""
        base = arch.to_dict()
        live = arch.live()
        nodes = [(i, b.dense) for i, b in enumerate(arch.blocks, start=1) if (i, "dense") in live and b.dense]
        heads_of = {}  # dense source -> heads of the bilinear nodes reading it
        for _, n in nodes:
            if n.op == "bilinear":
                for j in n.inputs:
                    heads_of.setdefault(j, []).append(n.heads)
        has_post = {"mlp", "gating", "sum"}
        moves = []
        for i, n in nodes:
            if n.op == "cross":
                moves.append(("layers", i))
            elif n.op == "bilinear":
                if 0 not in n.inputs and all(arch.blocks[j - 1].dense.dim for j in n.inputs):
                    moves.append(("heads", i))
            elif n.dim is not None and not (n.op == "linear" and n.dim == 1):
                moves.append(("width", i))
            if n.op in has_post or (n.op in ("dot", "fm") and n.dim):
                moves.append(("dropout", i))
        if not moves:
            return arch
        c = self.config
        for _ in range(50):
            what, i = rng.choice(moves)
            node = base["blocks"][i - 1]["dense"]
            cur = arch.blocks[i - 1].dense
            if what == "layers":
                options = [v for v in c.cross_layers if v != cur.layers]
                key = "layers"
            elif what == "dropout":
                now = cur.dropout if cur.dropout is not None else arch.dropout
                options = [v for v in c.dropout_choices if v != now]
                key = "dropout"
            elif what == "heads":
                w1, w2 = (arch.blocks[j - 1].dense.dim for j in cur.inputs)
                options = [h for h in (1, 2, 4, 5, 8, 10, 16, 20) if h != cur.heads and not w1 % h and not w2 % h]
                key = "heads"
            else:
                cands = set(c.dense_dims) | {max(1, round(cur.dim * f)) for f in (0.5, 0.75, 1.25, 1.5)}
                options = sorted(w for w in cands if w != cur.dim and all(w % h == 0 for h in heads_of.get(i, [])))
                key = "dim"
            if not options:
                continue
            blocks = list(base["blocks"])
            blocks[i - 1] = {**blocks[i - 1], "dense": {**node, key: rng.choice(options)}}
            return Arch.model_validate({**base, "blocks": blocks})
        return arch

    # -- membership -----------------------------------------------------------------------------------------------
    def check(self, arch: Arch) -> None:
        """Raise :class:`ConfigError` unless ``arch`` is a point of this space (what the supernet can run)."""
        c = self.config
        problems = []
        if len(arch.blocks) != c.blocks:
            problems.append(f"has {len(arch.blocks)} blocks, the space {c.blocks}")
        for i, b in enumerate(arch.blocks, start=1):
            if b.dense is None or b.sparse is None:
                problems.append(f"block {i} lacks a dense or sparse node")
                continue
            d, s = b.dense, b.sparse
            if d.op not in c.dense_ops:
                problems.append(f"block {i}: dense op '{d.op}' is not in the space")
            if d.op == "cross":
                if d.layers not in c.cross_layers or d.flat_inputs != [0] or d.inputs:
                    problems.append(f"block {i}: cross must read flat_inputs [0] with layers in {c.cross_layers}")
            elif d.dim not in c.dense_dims:
                problems.append(f"block {i}: dense dim {d.dim} is not in {c.dense_dims}")
            if d.norm is not None or d.dropout is not None:
                problems.append(f"block {i}: per-node norm/dropout overrides are not part of the space")
            if s.op not in c.sparse_ops or s.fields not in c.sparse_fields:
                problems.append(f"block {i}: sparse node ({s.op}, {s.fields} fields) is not in the space")
        if not arch.numeric_fields:
            problems.append("numeric_fields must be true")
        if arch.head.sum_inputs or arch.head.wide:
            problems.append("head: sum_inputs / wide are not part of the space")
        if arch.norm != c.norm or arch.activation != c.activation:
            problems.append(f"norm/activation must be the space's ({c.norm}, {c.activation})")
        if problems:
            raise ConfigError(f"architecture is not in search space '{c.name}': " + "; ".join(problems))
