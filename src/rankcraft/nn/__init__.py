"""Operator library shared by the model zoo and the architecture search space.

See ``docs/operators.md`` for the math, shapes and users of each operator.
"""

from rankcraft.nn.attention import FieldSelfAttention
from rankcraft.nn.cross import CrossNetMix, CrossNetV1, CrossNetV2
from rankcraft.nn.embedding import FeatureEmbedding
from rankcraft.nn.experts import (
    CGCLayer,
    ExpertBank,
    MixtureOfExperts,
    SoftmaxGate,
    mix,
)
from rankcraft.nn.gating import (
    FeatureSelection,
    InstanceGuidedMask,
    MaskBlock,
    SigmoidGating,
)
from rankcraft.nn.interaction import CIN, EFC, FM, BilinearFusion, DotInteraction
from rankcraft.nn.linear import LinearPart
from rankcraft.nn.mlp import MLP, activation

__all__ = [
    "FeatureEmbedding", "MLP", "activation",
    "LinearPart", "FM", "DotInteraction", "CIN", "EFC", "BilinearFusion",
    "CrossNetV1", "CrossNetV2", "CrossNetMix",
    "FieldSelfAttention",
    "SigmoidGating", "FeatureSelection", "InstanceGuidedMask", "MaskBlock",
    "ExpertBank", "SoftmaxGate", "mix", "MixtureOfExperts", "CGCLayer",
]
