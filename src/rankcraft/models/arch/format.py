"""Architecture format of the block search space (NASRec/Rankitect style), as plain, validated JSON.

An architecture is a stack of ``N`` blocks over two streams (see ``docs/search.md``):

* the **dense** stream — vectors ``[B, w]``;
* the **sparse** stream — field embeddings ``[B, F, d]`` (``d`` = the embedding width).

Source ``0`` is the raw input: its dense output is the numeric features ``[B, n_num]`` (empty when the data has
none) and its sparse output the field embeddings ``[B, F0, d]`` (categorical and multi-valued features, plus the
numeric features as fields when ``numeric_fields`` is true — the :class:`~rankcraft.nn.FeatureEmbedding`
convention of the zoo). Block ``i`` (1-based) may read the outputs of any earlier source ``j < i``:

* ``inputs``: dense outputs, concatenated;
* ``flat_inputs``: sparse outputs flattened to ``[B, F·d]`` and concatenated after the dense ones;
* ``sparse_inputs``: sparse outputs concatenated along the field axis.

Each block has at most one **dense node** and one **sparse node** (NASRec's single-path micro choice). Dense node
ops (``x`` = the concatenated dense+flat input ``[B, w_in]``, ``E`` = the concatenated sparse input ``[B, F, d]``,
``post(h) = dropout(act(norm(h)))``):

=========== ===================================================================== ===========================
op          output                                                                operator (``rankcraft.nn``)
=========== ===================================================================== ===========================
``mlp``     ``post(W x + b) : [B, dim]``                                          ``nn.Linear``
``linear``  ``W x + b : [B, dim]``                                                ``nn.Linear``
``cross``   DCN-v2 cross net with ``layers`` layers over ``x`` (``x0 = x``): ``[B, w_in]`` ``CrossNetV2``
``gating``  ``post((W_v x + b_v) ⊙ σ(W_g x + b_g)) : [B, dim]`` (GLU-style)       ``SigmoidGating``
``sum``     ``post(W Σ_j pad(x_j) + b) : [B, dim]``, each input zero-padded        ``nn.Linear``
``dot``     DLRM pairs of ``[z; E]`` ``[B, n(n-1)/2]`` (``z`` = ``x`` as one field ``DotInteraction``
            when given: directly if ``w_in = d``, else through ``Linear(w_in→d)``);
            with ``dim``: ``post(W pairs + b) : [B, dim]``
``fm``      ``dim`` unset: FM scalar ``[B, 1]``; with ``dim``:                    ``FM``
            ``post(W fm_vec(E) + b) : [B, dim]`` (``fm_vec : [B, d]``)
``fsgate``  FinalMLP feature-selection gate ``x ⊙ 2σ(G(c)) : [B, w_in]``; ``c`` the ``SigmoidGating``
            flattened raw embeddings of the ``context`` features ``[B, |ctx|·d]``
            (empty ``context``: a learned vector ``[1, d]``, so the gate is one
            per-coordinate weighting shared by all examples); ``G`` is
            ``Linear(c→dim) → act → Linear(dim→w_in)``, or one Linear without ``dim``
``bilinear`` FinalMLP multi-head bilinear fusion of its two dense ``inputs``           ``BilinearFusion``
            ``[B, 1]`` with ``heads`` heads (both widths divisible by ``heads``)
=========== ===================================================================== ===========================

Sparse node ops: ``efc`` — ``act(norm_d(EFC(E)))`` with ``fields`` output fields (``EFC``: a Linear along the field
axis); ``attention`` — ``EFC`` to ``fields`` fields, then one self-attention layer over fields
(``FieldSelfAttention``, one head of width ``d``, residual, LayerNorm). ``norm_d`` is a LayerNorm over ``d``
whenever ``norm`` is not ``none``.

The **head** computes ``logit = Linear([dense of head.inputs, flat of head.flat_inputs]) + Σ head.sum_inputs
(+ LR(batch) with wide)``; ``sum_inputs`` must be dense outputs of width 1.

Only outputs the head depends on are built (dead blocks are pruned), so FLOPs count what is computed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rankcraft.errors import ConfigError

FORMAT = "rankcraft.arch/1"
DENSE_OPS = ("mlp", "linear", "cross", "gating", "sum", "dot", "fm", "fsgate", "bilinear")
SPARSE_OPS = ("efc", "attention")
#: dense ops whose output width is ``dim`` (required); ``cross`` keeps its input width, ``dot``/``fm`` take an
#: optional ``dim`` (unset = the raw interaction output).
_DIM_REQUIRED = {"mlp", "linear", "gating", "sum"}
Norm = Literal["layer", "batch", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DenseNode(_Strict):
    op: Literal["mlp", "linear", "cross", "gating", "sum", "dot", "fm", "fsgate", "bilinear"]
    dim: int | None = Field(default=None, ge=1, le=65536)
    inputs: list[int] = Field(default_factory=list)
    flat_inputs: list[int] = Field(default_factory=list)
    sparse_inputs: list[int] = Field(default_factory=list)
    layers: int = Field(default=1, ge=1, le=16)  # cross layers
    context: list[str] = Field(default_factory=list)  # fsgate: feature names whose raw embeddings gate the input
    heads: int = Field(default=1, ge=1, le=1024)  # bilinear: number of heads
    norm: Norm | None = None  # None: the architecture's default
    dropout: float | None = Field(default=None, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _check(self) -> DenseNode:
        if self.op in _DIM_REQUIRED and self.dim is None:
            raise ValueError(f"op '{self.op}' needs 'dim' (its output width)")
        if self.op == "cross" and self.dim is not None:
            raise ValueError("op 'cross' keeps its input width; do not give 'dim'")
        if self.context and self.op != "fsgate":
            raise ValueError(f"'context' is for op 'fsgate', not '{self.op}'")
        if self.heads != 1 and self.op != "bilinear":
            raise ValueError(f"'heads' is for op 'bilinear', not '{self.op}'")
        if self.op == "bilinear":
            if self.dim not in (None, 1):
                raise ValueError("op 'bilinear' outputs one logit term; do not give 'dim'")
            if len(self.inputs) != 2 or self.flat_inputs:
                raise ValueError("op 'bilinear' reads exactly two dense 'inputs' (and no 'flat_inputs')")
        if self.op in ("dot", "fm"):
            if not self.sparse_inputs:
                raise ValueError(f"op '{self.op}' needs 'sparse_inputs' (the fields it interacts)")
            if self.op == "fm" and (self.inputs or self.flat_inputs):
                raise ValueError("op 'fm' reads only 'sparse_inputs'")
        else:
            if self.sparse_inputs:
                raise ValueError(f"op '{self.op}' reads dense inputs only; 'sparse_inputs' is for 'dot' and 'fm'")
            if not (self.inputs or self.flat_inputs):
                raise ValueError(f"op '{self.op}' needs 'inputs' or 'flat_inputs'")
        if self.op == "sum" and len(self.inputs) + len(self.flat_inputs) < 1:
            raise ValueError("op 'sum' needs at least one input")
        return self

    def sources(self) -> list[tuple[int, str]]:
        """``(source, stream)`` pairs this node reads (stream ``dense`` or ``sparse``)."""
        return ([(j, "dense") for j in self.inputs] + [(j, "sparse") for j in self.flat_inputs]
                + [(j, "sparse") for j in self.sparse_inputs])


class SparseNode(_Strict):
    op: Literal["efc", "attention"]
    fields: int = Field(ge=1, le=4096)
    inputs: list[int] = Field(min_length=1)

    def sources(self) -> list[tuple[int, str]]:
        return [(j, "sparse") for j in self.inputs]


class Block(_Strict):
    dense: DenseNode | None = None
    sparse: SparseNode | None = None


class Head(_Strict):
    inputs: list[int] = Field(default_factory=list)
    flat_inputs: list[int] = Field(default_factory=list)
    sum_inputs: list[int] = Field(default_factory=list)
    wide: bool = False

    def sources(self) -> list[tuple[int, str]]:
        return ([(j, "dense") for j in self.inputs + self.sum_inputs]
                + [(j, "sparse") for j in self.flat_inputs])


class Arch(_Strict):
    """A validated architecture (see the module docstring)."""

    format: Literal["rankcraft.arch/1"] = FORMAT
    numeric_fields: bool = True
    norm: Norm = "layer"
    activation: str = "relu"
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    blocks: list[Block] = Field(min_length=1, max_length=64)
    head: Head = Field(default_factory=Head)

    @model_validator(mode="after")
    def _check_graph(self) -> Arch:
        from rankcraft.nn.mlp import activation

        activation(self.activation)  # unknown names -> ValueError
        n = len(self.blocks)

        def check(sources, where: str, limit: int) -> None:
            for j, stream in sources:
                if j < 0 or j >= limit:
                    raise ValueError(f"{where} reads source {j}, but only sources 0..{limit - 1} exist there "
                                     "(0 = raw input, i = block i; a block reads earlier sources only)")
                if j == 0:
                    continue
                blk = self.blocks[j - 1]
                if getattr(blk, stream) is None:
                    raise ValueError(f"{where} reads the {stream} output of block {j}, which has no {stream} node")

        for i, blk in enumerate(self.blocks, start=1):
            if blk.dense is None and blk.sparse is None:
                raise ValueError(f"block {i} has neither a dense nor a sparse node")
            if blk.dense is not None:
                check(blk.dense.sources(), f"block {i} dense node", i)
            if blk.sparse is not None:
                check(blk.sparse.sources(), f"block {i} sparse node", i)
        h = self.head
        if not (h.inputs or h.flat_inputs or h.sum_inputs):
            raise ValueError("head: give 'inputs', 'flat_inputs' or 'sum_inputs'")
        check(h.sources(), "head", n + 1)
        for j in h.sum_inputs:
            node = self.blocks[j - 1].dense if j > 0 else None
            if node is None or self.dense_width_is_one(node) is False:
                raise ValueError(f"head.sum_inputs: source {j} must be a dense output of width 1 "
                                 "(e.g. 'linear' with dim 1 or 'fm' without dim)")
        return self

    @staticmethod
    def dense_width_is_one(node: DenseNode) -> bool | None:
        """True/False when the node's output width is 1 / not 1 regardless of the data; None when it depends."""
        if (node.op == "fm" and node.dim is None) or node.op == "bilinear":
            return True
        if node.dim is not None:
            return node.dim == 1
        return None

    # -- graph helpers ----------------------------------------------------------------------------------------
    def live(self) -> set[tuple[int, str]]:
        """``(block, stream)`` outputs the head depends on (blocks 1-based; the raw input 0 is not listed)."""
        need: set[tuple[int, str]] = set()
        stack = [s for s in self.head.sources() if s[0] > 0]
        while stack:
            j, stream = stack.pop()
            if (j, stream) in need:
                continue
            need.add((j, stream))
            node = getattr(self.blocks[j - 1], stream)
            stack.extend(s for s in node.sources() if s[0] > 0)
        return need

    def to_dict(self) -> dict:
        """The JSON form. Node fields added after format 1 was first written (``context``, ``heads``) are left
        out at their defaults, so earlier architectures keep their JSON and their :meth:`key`."""
        out = self.model_dump(mode="json", exclude_defaults=False)
        for blk in out["blocks"]:
            node = blk.get("dense")
            if node is not None:
                if not node.get("context"):
                    node.pop("context", None)
                if node.get("heads") == 1:
                    node.pop("heads", None)
        return out

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def live_key(self) -> str:
        """Canonical string of what the architecture computes: :meth:`key` with the nodes the head does not depend
        on blanked out (architectures that differ only in dead nodes build the same model)."""
        live = self.live()
        d = self.to_dict()
        for i, blk in enumerate(d["blocks"], start=1):
            for stream in ("dense", "sparse"):
                if (i, stream) not in live:
                    blk[stream] = None
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Canonical string of the architecture (equal architectures have equal keys)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _format_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_arch(obj: dict | Arch, origin: str = "architecture") -> Arch:
    """Validate an architecture dict; errors name the field (``blocks.2.dense.dim: ...``)."""
    if isinstance(obj, Arch):
        return obj
    if not isinstance(obj, dict):
        raise ConfigError(f"{origin}: an architecture is a JSON object, got {type(obj).__name__}")
    if "arch" in obj and "blocks" not in obj:  # a best.json / search record wrapping the architecture
        obj = obj["arch"]
    try:
        return Arch.model_validate(obj)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: invalid architecture:\n{_format_error(exc)}") from None


def load_arch(path: str | Path) -> Arch:
    """Read an architecture JSON file (a bare architecture or a ``best.json`` holding one under ``arch``)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: architecture file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read ({exc})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    return parse_arch(obj, str(path))
