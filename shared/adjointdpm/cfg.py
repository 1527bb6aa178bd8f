"""Epsilon-model wrappers (paper Sec. 2.1)."""
from __future__ import annotations

import math

import torch
from torch import nn


class CFG(nn.Module):
    """Classifier-free guidance in the paper's form (Sec. 2.1)::

        eps~(x, t, c) = s * eps(x, t, c) + (1 - s) * eps(x, t, null)

    Both branches run as one batched call, which counts as one model evaluation.
    ``null_cond`` is one unconditional input (broadcast over the batch) or a batch of them.
    """

    def __init__(self, model: nn.Module, scale: float, null_cond: torch.Tensor):
        super().__init__()
        if not math.isfinite(float(scale)):
            raise ValueError(f"guidance scale must be a finite number, got {scale}")
        self.model, self.scale = model, float(scale)
        self.register_buffer("null_cond", null_cond)

    def forward(self, x, t, cond):
        if cond is None:
            raise ValueError("CFG needs a condition: got cond=None")
        try:
            null = self.null_cond.to(cond).expand_as(cond)
        except RuntimeError:
            raise ValueError(f"null_cond of shape {tuple(self.null_cond.shape)} does not broadcast to "
                             f"cond of shape {tuple(cond.shape)}") from None
        eps_c, eps_null = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([cond, null])).chunk(2)
        return self.scale * eps_c + (1.0 - self.scale) * eps_null
