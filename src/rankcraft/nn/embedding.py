"""Feature embedding collection: a batch dict → field embeddings ``[B, F, d]``.

Every non-numeric feature owns (or shares, via ``embedding_table``) one table. Two layouts are offered:

* ``fused=True`` (default): all tables are rows of one ``nn.Embedding`` and each feature adds its row offset, so
  all single-valued categoricals are looked up by one gather: ``E[cat + offsets]``.
* ``fused=False``: one ``nn.Embedding`` per table, looked up feature by feature.

Field order of the output: categorical features, then numeric, then multi-valued, then sequences (mean-pooled),
each in :class:`~rankcraft.data.features.FeatureSet` order. Shapes:

* categorical ``x_cat: [B, n_cat]`` → ``E[x_cat + o] : [B, n_cat, d]``
* numeric ``x_num: [B, n_num]`` → ``x_num[..., None] * W_num : [B, n_num, d]`` (one learned vector per feature)
* multi-valued / sequence ``ids: [B, L]`` → masked mean ``Σ_l m_l E[ids_l] / max(Σ_l m_l, 1) : [B, d]`` with
  ``m_l = [ids_l != 0]``.
"""

from __future__ import annotations

import torch
from torch import nn

from rankcraft.data.features import FeatureSet


class FeatureEmbedding(nn.Module):
    """Embeds every feature of a :class:`FeatureSet` into ``dim`` dimensions.

    Args:
        features: fitted feature metadata.
        dim: embedding width ``d``.
        fused: one shared table with per-feature offsets (True) or one table per feature (False).
        sparse: produce sparse gradients for the tables (use with Adagrad / SparseAdam).
        init_std: standard deviation of the normal initialisation.
        pool_exclude: multi-valued/sequence features that are *not* pooled into fields (a sequence model encodes
            them itself through :meth:`sequence`); their tables still exist.
    """

    def __init__(self, features: FeatureSet, dim: int, *, fused: bool = True, sparse: bool = False,
                 init_std: float = 1e-4, pool_exclude: frozenset[str] | set[str] = frozenset()):
        super().__init__()
        self.features = features
        self.dim = dim
        self.fused = fused
        self.cat_names = [f.name for f in features.categorical]
        self.num_names = [f.name for f in features.numeric]
        self.bag_names = [f.name for f in features.multi + features.sequences if f.name not in pool_exclude]

        # one table per distinct `embedding_table`
        sizes: dict[str, int] = {}
        for f in features.features:
            if f.kind != "numeric":
                owner = features[f.embedding_table]
                sizes[f.embedding_table] = max(sizes.get(f.embedding_table, 0), owner.vocab_size, f.vocab_size)
        self.table_of = {f.name: f.embedding_table for f in features.features if f.kind != "numeric"}
        self.table_names = list(sizes)
        if fused:
            offsets, total = {}, 0
            for name, size in sizes.items():
                offsets[name] = total
                total += size
            self.offset_of = offsets
            self.table = nn.Embedding(max(total, 1), dim, sparse=sparse)
            nn.init.normal_(self.table.weight, std=init_std)
            cat_off = [offsets[self.table_of[n]] for n in self.cat_names]
            self.register_buffer("cat_offsets", torch.tensor(cat_off, dtype=torch.long), persistent=False)
        else:
            self.tables = nn.ModuleDict({name: nn.Embedding(size, dim, sparse=sparse) for name, size in sizes.items()})
            for t in self.tables.values():
                nn.init.normal_(t.weight, std=init_std)
        if self.num_names:
            self.num_weight = nn.Parameter(torch.randn(len(self.num_names), dim) * init_std)

    @property
    def num_fields(self) -> int:
        return len(self.cat_names) + len(self.num_names) + len(self.bag_names)

    def lookup(self, name: str, ids: torch.Tensor) -> torch.Tensor:
        """Embeds raw ids of feature ``name``: ``[...]`` → ``[..., d]``."""
        table = self.table_of[name]
        if self.fused:
            return self.table(ids + self.offset_of[table])
        return self.tables[table](ids)

    def sequence(self, batch: dict[str, torch.Tensor], name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpooled embeddings of a multi-valued/sequence feature: ``([B, L, d], mask [B, L] bool)``."""
        ids = batch[name]
        return self.lookup(name, ids), ids != 0

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts: list[torch.Tensor] = []
        if self.cat_names:
            cat = batch["cat"]
            if self.fused:
                parts.append(self.table(cat + self.cat_offsets))
            else:
                parts.append(torch.stack([self.tables[self.table_of[n]](cat[:, i])
                                          for i, n in enumerate(self.cat_names)], dim=1))
        if self.num_names:
            parts.append(batch["num"].unsqueeze(-1) * self.num_weight)
        for name in self.bag_names:
            emb, mask = self.sequence(batch, name)
            m = mask.unsqueeze(-1).to(emb.dtype)
            pooled = (emb * m).sum(1) / m.sum(1).clamp_min(1.0)
            parts.append(pooled.unsqueeze(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
