"""A reference route for the diffusion SDE's gradients through torchsde's ``sdeint_adjoint``, as
``Adjoint(backend="torchdiffeq")`` is for the ODE: ``Adjoint(backend="torchsde")``.

torchsde steps with a fixed ``dt``, so the SDE is written over the step index ``tau`` in
``[0, N]`` (``dt = 1`` lands on every grid point): on step ``i``, ``rho(tau)`` runs linearly from
``rho_i`` to ``rho_{i+1}``, the Ito SDE is

    dy = 2 eps(alpha y, t(rho(tau))) (rho_{i+1} - rho_i) dtau + sqrt(rho_i^2 - rho_{i+1}^2) dW_tau,

diagonal and additive (``g`` does not depend on ``y``), and ``W`` is the piecewise-linear path
whose increment over step ``i`` is our ``z_i`` (:class:`adjointdpm.brownian.BrownianPath`). Its
Euler step is then exactly SDE-DPM-Solver-1 on the same noise, and torchsde's adjoint re-solves
the path backwards with the same increments (our ``states="reintegrate"``), each step evaluating
at its upper end: a first-order scheme, compared in ``tests/test_sde.py``.
"""
from __future__ import annotations

import torch
import torchsde


class _StepBrownian(torchsde.BaseBrownian):
    """``W(tau)``: piecewise linear, ``W(i + 1) - W(i) = z_i`` (flattened to ``(batch, d)``)."""

    def __init__(self, noise, batch: int):
        self.noise, self.batch = noise, batch
        self._z = [noise.z(i).reshape(batch, -1) for i in range(noise.steps)]
        self._cumulative = torch.cumsum(torch.stack([torch.zeros_like(self._z[0])] + self._z), 0)

    def _w(self, tau) -> torch.Tensor:
        tau = min(max(float(tau), 0.0), float(self.noise.steps))
        i = min(int(tau), self.noise.steps - 1)
        return self._cumulative[i] + (tau - i) * self._z[i]

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        if return_U or return_A:
            raise ValueError("this Brownian path has no Levy area: use an Euler method")
        return self._w(ta) if tb is None else self._w(tb) - self._w(ta)

    def __repr__(self):
        return f"_StepBrownian(steps={self.noise.steps})"

    @property
    def dtype(self):
        return self._z[0].dtype

    @property
    def device(self):
        return self._z[0].device

    @property
    def shape(self):
        return self._z[0].shape

    @property
    def levy_area_approximation(self):
        return "none"


class _StepSDE(torch.nn.Module):
    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, field, grid: list[float], shape):
        super().__init__()
        self.field, self.grid, self.shape = field, grid, shape

    def _step(self, tau) -> tuple[int, float]:
        tau = float(tau)
        i = min(max(int(tau), 0), len(self.grid) - 2)
        return i, self.grid[i] + (tau - i) * (self.grid[i + 1] - self.grid[i])

    def f(self, tau, y):
        i, rho = self._step(tau)
        return self.field(y.reshape(self.shape), rho).reshape(y.shape) * (self.grid[i + 1] - self.grid[i])

    def g(self, tau, y):
        i, _ = self._step(tau)
        return torch.full_like(y, (self.grid[i] ** 2 - self.grid[i + 1] ** 2) ** 0.5)


def solve(problem, z0: torch.Tensor) -> torch.Tensor:
    """The SDE from ``z0`` through ``torchsde.sdeint_adjoint`` (Euler both ways, ``dt = 1``)."""
    grid, steps = problem.grid(problem.times), len(problem.times) - 1
    sde = _StepSDE(problem.dz_ds, grid, z0.shape)
    ts = torch.tensor([0.0, float(steps)], dtype=z0.dtype, device=z0.device)
    ys = torchsde.sdeint_adjoint(sde, z0.reshape(len(z0), -1), ts, bm=_StepBrownian(problem.noise, len(z0)),
                                 method="euler", adjoint_method="euler", dt=1.0,
                                 adjoint_params=tuple(problem.wrt()))
    return ys[-1].reshape(z0.shape)
