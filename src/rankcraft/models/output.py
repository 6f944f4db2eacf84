"""What a model returns: a logits tensor ``[B]`` (one head) or a :class:`ModelOutput` with named heads.

* ``logits``: ``{head: Tensor[B]}``. A head's value is a logit for binary heads (``σ(logit)`` is the probability)
  and the prediction itself for regression heads; which is which is the objective's business, not the model's.
* ``aux_loss``: an optional scalar added to the training loss as it is (already weighted by the model), e.g. a
  mixture-of-experts load-balancing term. Only present in training mode.
* ``extras``: anything else a caller may want (exit confidences, embeddings for distillation); never used by the
  loss unless an objective asks for a named extra.

:func:`as_output` turns a plain tensor into a one-head output named :data:`DEFAULT_HEAD`, so single-head zoo models
stay plain ``nn.Module``\\s returning ``Tensor[B]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: the name of the only head of a model that returns a plain tensor
DEFAULT_HEAD = "score"


@dataclass
class ModelOutput:
    logits: dict[str, torch.Tensor]
    aux_loss: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def heads(self) -> list[str]:
        return list(self.logits)


def as_output(out: torch.Tensor | ModelOutput) -> ModelOutput:
    """A model's return value as a :class:`ModelOutput` (a plain ``Tensor[B]`` becomes head ``"score"``)."""
    if isinstance(out, ModelOutput):
        return out
    if isinstance(out, torch.Tensor):
        return ModelOutput({DEFAULT_HEAD: out})
    raise TypeError(f"a model returns a logits tensor or a ModelOutput, got {type(out).__name__}")


def stable_logit_of_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``logit(σ(a)·σ(b))`` computed in log space (no ``log(0)`` for confident heads).

    ``log p = logσ(a) + logσ(b)`` and ``log(1 − p) = log(−expm1(log p))``; the result is ``log p − log(1 − p)``.
    Used for a derived head such as ESMM's CTCVR = CTR × CVR.
    """
    log_p = torch.nn.functional.logsigmoid(a) + torch.nn.functional.logsigmoid(b)
    log_1mp = torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))
    return log_p - log_1mp
