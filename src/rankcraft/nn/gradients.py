"""Gradient operators: identity in the forward pass, a changed gradient in the backward pass.

``scale_gradient(x, β)``: ``y = x`` forward, ``∂L/∂x = β · ∂L/∂y`` backward (ExFM's Gradient Scaling of a
distillation head's input; β = 0 stops the gradient, β = 1 is the identity). Shapes are unchanged.
"""

from __future__ import annotations

import torch


class _ScaleGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.beta = beta
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.beta, None


def scale_gradient(x: torch.Tensor, beta: float) -> torch.Tensor:
    """``x`` unchanged; its gradient multiplied by ``beta`` (see the module docstring)."""
    if beta == 1.0:
        return x
    return _ScaleGradient.apply(x, float(beta))
