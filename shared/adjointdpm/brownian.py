"""The Brownian path of a diffusion-SDE sample (AdjointDEIS poster, eq. 1 and Theorem 2).

In ``(y, rho)``, ``y = x / alpha_t``, the reverse diffusion SDE reads

    dy = 2 eps(alpha_t y, t(rho)) drho + dW,     Var(dW) = |d(rho^2)|,

so over a step from ``rho_i`` down to ``rho_{i+1}`` its Brownian increment is exactly
``sqrt(rho_i^2 - rho_{i+1}^2) z_i`` with ``z_i ~ N(0, I)`` (SDE-DPM-Solver-1's update
``x_t = (alpha_t/alpha_s) x_s - 2 sigma_t (e^h - 1) eps + sigma_t sqrt(e^{2h} - 1) z`` divided by
``alpha_t``). ``z_i`` is a pure function of ``(noise_seed, i)`` and the state's shape, dtype and
device, so every gradient strategy sees the same path, and a backward pass regenerates a
step's increment instead of storing it.
"""
from __future__ import annotations

import math

import torch

from .seeds import mix_seed


class BrownianPath:
    """The increments of one SDE sample on the forward grid ``rho_0 > rho_1 > ... > rho_N``."""

    def __init__(self, noise_seed: int, grid, like: torch.Tensor):
        self.noise_seed, self.grid = int(noise_seed), [float(s) for s in grid]
        self.shape, self.dtype, self.device = like.shape, like.dtype, like.device

    @property
    def steps(self) -> int:
        return len(self.grid) - 1

    def z(self, i: int) -> torch.Tensor:
        """Step ``i``'s standard normal draw."""
        gen = torch.Generator(device=self.device).manual_seed(mix_seed(self.noise_seed, i) % 2 ** 63)
        return torch.randn(self.shape, generator=gen, dtype=self.dtype, device=self.device)

    def increment(self, i: int) -> torch.Tensor:
        """``sqrt(rho_i^2 - rho_{i+1}^2) z_i``: the noise step ``i`` adds to ``y``."""
        return math.sqrt(self.grid[i] ** 2 - self.grid[i + 1] ** 2) * self.z(i)
