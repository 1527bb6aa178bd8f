"""The toy scale's two mixtures, as :class:`adjointdpm.GaussianMixture` (the exact-epsilon
model lives in the library, where the CIFAR stand-in uses it too)."""
from __future__ import annotations

import math

import torch

from adjointdpm import GaussianMixture, VPSchedule


def eight_modes(schedule: VPSchedule, radius: float = 2.0, scale: float = 0.3) -> GaussianMixture:
    """Eight equal Gaussians on a circle, the classic 2-D toy."""
    angles = torch.arange(8) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], 1)
    return GaussianMixture(torch.ones(8), means, torch.full((8, 2), scale), schedule)


def three_modes(schedule: VPSchedule) -> GaussianMixture:
    """Three unequal, anisotropic components (used where a class label matters)."""
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.5, 0.0], [1.5, 1.0], [1.0, -1.5]],
                           [[0.4, 0.6], [0.5, 0.3], [0.3, 0.3]], schedule)
