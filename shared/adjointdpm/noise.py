"""Operations on initial noises ``x_T``."""
from __future__ import annotations

import torch


def slerp(a: torch.Tensor, b: torch.Tensor, w: float = 0.5) -> torch.Tensor:
    """Spherical interpolation of each row of ``a`` and ``b`` (flattened): Gaussian noises live near
    a sphere, which a straight line between two of them leaves (DiM's interpolation of two
    encoded noises)."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7)).view(-1, *[1] * (a.dim() - 1))
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)
