"""Fitted feature metadata: what a model needs to know about its inputs.

A :class:`FeatureSet` is produced by fitting encoders on a training split and is stored (as JSON) in every run
directory and checkpoint, so a model can be rebuilt without the data.

Batch layout (a ``dict[str, Tensor]``, batch size ``B``) — the contract between data and models:

* ``"cat"``: ``LongTensor[B, n_cat]`` — single-valued categorical features in :attr:`FeatureSet.categorical`
  order, each with local ids in ``[0, vocab_size)`` (0 = padding/missing, 1 = OOV).
* ``"num"``: ``FloatTensor[B, n_num]`` — numeric features in :attr:`FeatureSet.numeric` order, already filled and
  transformed.
* ``<name>`` for each multi-valued / sequence feature: ``LongTensor[B, max_len]`` (0 = padding). Sequences are
  left-padded (most recent event last); multi-valued features are right-padded.
* ``<name>__ts`` for a sequence with timestamps: ``DoubleTensor[B, max_len]`` in the file's units, e.g. unix
  seconds (0 at padding). float64 because float32 cannot resolve seconds at unix-time magnitudes; models take
  differences first and then cast.
* ``"label/<name>"``: ``FloatTensor[B]`` for every schema label (after its ``map``/``threshold``), and ``"label"``:
  the first non-weight label again (what single-label code reads). Scoring input (``predict``) has no label keys.
* ``"group"``: ``LongTensor[B]`` — user id for GAUC (only when the schema names a user column).

Models read only the keys they need, so extra keys are harmless.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

Kind = Literal["categorical", "numeric", "multi_categorical", "sequence"]


@dataclass(frozen=True)
class FeatureInfo:
    """One fitted feature.

    ``vocab_size`` counts padding (0) and OOV (1); it is 0 for numeric features. ``embedding_table`` is the name of
    the feature whose table this one uses (itself unless it shares a vocabulary).
    """

    name: str
    kind: Kind
    source: str = "context"
    vocab_size: int = 0
    max_len: int = 1
    embedding_table: str = ""
    has_timestamps: bool = False

    def __post_init__(self) -> None:
        if not self.embedding_table:
            object.__setattr__(self, "embedding_table", self.name)


def label_key(name: str) -> str:
    """The batch key of schema label ``name``."""
    return f"label/{name}"


@dataclass(frozen=True)
class FeatureSet:
    """Ordered fitted features plus the labels' names and kinds (binary, soft, regression, weight)."""

    features: tuple[FeatureInfo, ...]
    labels: tuple[str, ...] = ("label",)
    has_group: bool = False
    extra: dict = field(default_factory=dict, compare=False)
    label_kinds: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        kinds = {n: self.label_kinds.get(n, "binary") for n in self.labels}
        object.__setattr__(self, "label_kinds", kinds)

    @property
    def targets(self) -> list[str]:
        """Labels a head can learn (every label but sample weights)."""
        return [n for n in self.labels if self.label_kinds[n] != "weight"]

    # -- views ----------------------------------------------------------------
    @property
    def categorical(self) -> list[FeatureInfo]:
        return [f for f in self.features if f.kind == "categorical"]

    @property
    def numeric(self) -> list[FeatureInfo]:
        return [f for f in self.features if f.kind == "numeric"]

    @property
    def multi(self) -> list[FeatureInfo]:
        return [f for f in self.features if f.kind == "multi_categorical"]

    @property
    def sequences(self) -> list[FeatureInfo]:
        return [f for f in self.features if f.kind == "sequence"]

    def __getitem__(self, name: str) -> FeatureInfo:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    @property
    def num_fields(self) -> int:
        """Number of fields a :class:`~rankcraft.nn.embedding.FeatureEmbedding` produces (all features)."""
        return len(self.features)

    # -- (de)serialisation ----------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "features": [asdict(f) for f in self.features],
            "labels": list(self.labels),
            "label_kinds": dict(self.label_kinds),
            "has_group": self.has_group,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSet":
        return cls(
            features=tuple(FeatureInfo(**f) for f in d["features"]),
            labels=tuple(d.get("labels", ["label"])),
            label_kinds=dict(d.get("label_kinds", {})),
            has_group=bool(d.get("has_group", False)),
            extra=dict(d.get("extra", {})),
        )
