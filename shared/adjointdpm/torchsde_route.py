"""The glue for :class:`adjointdpm.reference.TorchsdeAdjoint` (its docstring gives the SDE):
the step-indexed SDE and its piecewise-linear Brownian path as torchsde takes them. A module of
its own so that torchsde loads only when that route runs."""
from __future__ import annotations

import torch
import torchsde


def sdeint_adjoint(problem, z0: torch.Tensor) -> torch.Tensor:
    """``torchsde.sdeint_adjoint`` from ``z0`` on ``problem``'s SDE and Brownian path (Euler both ways, ``dt = 1``)."""
    grid, steps = problem.grid(problem.times), len(problem.times) - 1
    sde = _StepSDE(problem.dz_ds, grid, z0.shape)
    ts = torch.tensor([0.0, float(steps)], dtype=z0.dtype, device=z0.device)
    ys = torchsde.sdeint_adjoint(sde, z0.reshape(len(z0), -1), ts, bm=_StepBrownian(problem.dynamics.path, len(z0)),
                                 method="euler", adjoint_method="euler", dt=1.0, adjoint_params=tuple(problem.wrt()))
    return ys[-1].reshape(z0.shape)


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
