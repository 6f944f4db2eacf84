"""Zoo models written as points of the architecture space, so a search can start from human designs.

:func:`zoo_arch` maps a zoo model name and its hyperparameters to an :class:`~rankcraft.models.arch.format.Arch` that
computes the same function with the same operators (and therefore the same FLOPs). Supported: ``dnn``, ``deepfm``,
``dcnv2`` (parallel / stacked / crossnet-only, full-rank), ``dlrm`` (``interaction_op`` dot or cat, on data with
numeric features: the zoo's learned dense vector for data without them has no counterpart in the space) and
``finalmlp`` (two ``fsgate`` nodes, two MLP towers with their own norm and dropout, a ``bilinear`` fusion; gate
MLPs of at most one hidden layer, one activation for both towers and the gates).
"""

from __future__ import annotations

from rankcraft.errors import ConfigError
from rankcraft.models.arch.format import Arch
from rankcraft.models.catalog import validate_params


def _tower(first_inputs: dict, units: list[int], start: int) -> tuple[list[dict], int]:
    """Blocks of an MLP tower (one ``mlp`` node per layer); returns the blocks and the last block's index."""
    blocks, last = [], None
    for k, w in enumerate(units):
        src = first_inputs if k == 0 else {"inputs": [last]}
        blocks.append({"dense": {"op": "mlp", "dim": w, **src}})
        last = start + k
    return blocks, last


def _common(p) -> dict:
    return {"norm": "batch" if getattr(p, "batch_norm", False) else "none", "activation": p.activation,
            "dropout": getattr(p, "dropout", 0.0)}


def zoo_arch(model: str, params: dict | None = None) -> Arch:
    """The architecture equivalent to zoo model ``model`` with ``params`` (validated as the zoo validates them)."""
    model = model.lower()
    p = validate_params(model, params)
    if model == "dnn":
        blocks, last = _tower({"flat_inputs": [0]}, p.hidden_units, 1)
        head = {"inputs": [last]} if blocks else {"flat_inputs": [0]}
        return Arch.model_validate({**_common(p), "blocks": blocks or [{"dense": {"op": "linear", "dim": 1,
                                                                                   "flat_inputs": [0]}}],
                                    "head": head})
    if model == "deepfm":
        if not p.hidden_units:
            raise ConfigError("deepfm without hidden units has no architecture counterpart")
        blocks, last = _tower({"flat_inputs": [0]}, p.hidden_units, 1)
        blocks.append({"dense": {"op": "linear", "dim": 1, "inputs": [last]}})
        blocks.append({"dense": {"op": "fm", "sparse_inputs": [0]}})
        n = len(blocks)
        return Arch.model_validate({**_common(p), "blocks": blocks,
                                    "head": {"sum_inputs": [n - 1, n], "wide": True}})
    if model == "dcnv2":
        if p.use_low_rank_mixture:
            raise ConfigError("dcnv2 with use_low_rank_mixture has no architecture counterpart (full rank only)")
        structure = p.model_structure if p.hidden_units else "crossnet_only"
        cross = {"dense": {"op": "cross", "layers": p.num_cross_layers, "flat_inputs": [0]}}
        if structure == "crossnet_only":
            return Arch.model_validate({**_common(p), "blocks": [cross], "head": {"inputs": [1]}})
        if structure == "stacked":
            tower, last = _tower({"inputs": [1]}, p.hidden_units, 2)
            return Arch.model_validate({**_common(p), "blocks": [cross, *tower], "head": {"inputs": [last]}})
        tower, last = _tower({"flat_inputs": [0]}, p.hidden_units, 2)
        return Arch.model_validate({**_common(p), "blocks": [cross, *tower], "head": {"inputs": [1, last]}})
    if model == "dlrm":
        bottom = [{"dense": {"op": "mlp", "dim": w, "inputs": [0] if k == 0 else [k], "norm": "none",
                             "dropout": 0.0}}
                  for k, w in enumerate([*p.bottom_mlp_units, p.embedding_dim])]
        z = len(bottom)
        if p.interaction_op == "dot":
            if p.self_interaction:
                raise ConfigError("dlrm with self_interaction has no architecture counterpart")
            inter = {"dense": {"op": "dot", "inputs": [z], "sparse_inputs": [0]}}
            top_in = {"inputs": [z, z + 1]}
            blocks = [*bottom, inter]
        else:
            top_in = {"inputs": [z], "flat_inputs": [0]}
            blocks = list(bottom)
        tower, last = _tower(top_in, p.top_mlp_units, len(blocks) + 1)
        if not tower:
            raise ConfigError("dlrm without top MLP units has no architecture counterpart")
        arch = {**_common(p), "numeric_fields": False, "blocks": [*blocks, *tower], "head": {"inputs": [last]}}
        return Arch.model_validate(arch)
    if model == "finalmlp":
        return _finalmlp(p)
    raise ConfigError(f"zoo model '{model}' has no architecture counterpart yet; supported: dnn, deepfm, dcnv2, "
                      "dlrm, finalmlp")


def _finalmlp(p) -> Arch:
    if p.mlp1_activation != p.mlp2_activation or (p.use_fs and p.mlp1_activation != "relu"):
        raise ConfigError("finalmlp: its architecture counterpart has one activation (relu with feature "
                          "selection, whose gates use relu)")
    if not (p.mlp1_hidden_units and p.mlp2_hidden_units):
        raise ConfigError("finalmlp without hidden units in both MLPs has no architecture counterpart")
    if p.use_fs and len(p.fs_hidden_units) > 1:
        raise ConfigError("finalmlp: fsgate nodes have at most one hidden layer (fs_hidden_units of length <= 1)")
    blocks: list[dict] = []
    if p.use_fs:
        hidden = p.fs_hidden_units[0] if p.fs_hidden_units else None
        for ctx in (p.fs1_context, p.fs2_context):
            blocks.append({"dense": {"op": "fsgate", "dim": hidden, "context": list(ctx), "flat_inputs": [0]}})
        srcs = ({"inputs": [1]}, {"inputs": [2]})
    else:
        srcs = ({"flat_inputs": [0]}, {"flat_inputs": [0]})
    lasts = []
    for src, units, drop, bn in ((srcs[0], p.mlp1_hidden_units, p.mlp1_dropout, p.mlp1_batch_norm),
                                 (srcs[1], p.mlp2_hidden_units, p.mlp2_dropout, p.mlp2_batch_norm)):
        tower, last = _tower(src, units, len(blocks) + 1)
        for b in tower:
            b["dense"].update(norm="batch" if bn else "none", dropout=drop)
        blocks += tower
        lasts.append(last)
    blocks.append({"dense": {"op": "bilinear", "inputs": lasts, "heads": p.num_heads}})
    return Arch.model_validate({"norm": "none", "activation": p.mlp1_activation, "dropout": 0.0,
                                "blocks": blocks, "head": {"sum_inputs": [len(blocks)]}})


def zoo_params(model: str, params: dict | None = None) -> dict:
    """Model params of the ``arch`` model equivalent to a zoo model (architecture plus the shared embedding
    settings)."""
    p = validate_params(model, params)
    shared = {k: getattr(p, k) for k in ("embedding_dim", "fused_embedding", "sparse_embedding", "linear_init")}
    return {**shared, "arch": zoo_arch(model, params).to_dict()}
