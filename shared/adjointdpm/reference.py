"""The adjoint through other libraries' solvers, as references for :class:`adjointdpm.Adjoint`
(the tests compare them): the same problem, the same grid, the library's own adjoint.

* :class:`TorchdiffeqAdjoint`: ``torchdiffeq.odeint_adjoint`` on the probability-flow ODE, the
  paper's own route; fixed grid = the forward's; solvers euler, heun, rk4, adams4, dopri5.
* :class:`TorchsdeAdjoint`: ``torchsde.sdeint_adjoint`` on the diffusion SDE behind ``sde-dpm1``.
  torchsde steps with a fixed ``dt``, so the SDE is written over the step index ``tau`` in
  ``[0, N]`` (``dt = 1`` lands on every grid point): on step ``i``, ``rho(tau)`` runs linearly from
  ``rho_i`` to ``rho_{i+1}``, the Ito SDE is

      dy = 2 eps(alpha y, t(rho(tau))) (rho_{i+1} - rho_i) dtau + sqrt(rho_i^2 - rho_{i+1}^2) dW_tau,

  diagonal and additive (``g`` does not depend on ``y``), and ``W`` is the piecewise-linear path
  whose increment over step ``i`` is our ``z_i`` (:class:`adjointdpm.brownian.BrownianPath`). Its
  Euler step is then exactly SDE-DPM-Solver-1 on the same noise, and torchsde's adjoint re-solves
  the path backwards with the same increments (``Adjoint(states="reintegrate")``), each step
  evaluating at its upper end: a first-order scheme, compared in ``tests/test_sde.py``.

Both solve the adjoint on the forward grid from the final state, so they take no arguments.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from .grad import Gradient


@dataclass(frozen=True)
class TorchdiffeqAdjoint(Gradient):
    """``torchdiffeq.odeint_adjoint`` with the forward's solver on the forward's grid, both ways."""

    SOLVERS = {"euler": ("euler", {}), "heun": ("heun2", {}), "rk4": ("rk4", {}),
               "adams4": ("explicit_adams", {"max_order": 5}), "dopri5": ("dopri5", {})}

    def check(self, method):
        if method.stochastic:
            raise ValueError("TorchdiffeqAdjoint solves ODEs: use Adjoint or TorchsdeAdjoint for the SDE solvers")
        if method.name not in self.SOLVERS:
            raise ValueError(f"TorchdiffeqAdjoint supports solvers {tuple(self.SOLVERS)}, got {method.name!r}")

    def solve(self, problem, z0):
        method, options = self.SOLVERS[problem.method.name]
        grid = torch.tensor(problem.grid(problem.times), dtype=z0.dtype, device=z0.device)
        # Ask for the end state only (odeint_adjoint keeps every requested output for its backward), and
        # put the steps on the forward grid both ways: fixed-grid methods build it, dopri5 must land on it.
        if method == "dopri5":
            options = dict(options, step_t=grid)
        else:
            options = dict(options, grid_constructor=functools.partial(_grid_between, grid))
        import torchdiffeq  # here: its import (and scipy's) would cost every process that never asks for it
        field = problem.dz_ds
        path = torchdiffeq.odeint_adjoint(
            lambda s, z: field(z, float(s.detach())), z0, grid[[0, -1]], method=method, options=options,
            rtol=problem.rtol, atol=problem.atol, adjoint_params=tuple(problem.wrt()),
            adjoint_method=method, adjoint_options=dict(options))
        return path[-1]


def _grid_between(grid, func, y0, t):
    """The forward grid between ``t[0]`` and ``t[-1]`` as torchdiffeq asks for it: run either way,
    and negated where it integrates a reversed time internally."""
    for candidate in (grid, grid.flip(0), -grid, -grid.flip(0)):
        if candidate[0] == t[0] and candidate[-1] == t[-1]:
            return candidate
    raise ValueError(f"torchdiffeq asked for a grid from {float(t[0])} to {float(t[-1])}, not the forward's ends")


@dataclass(frozen=True)
class TorchsdeAdjoint(Gradient):
    """``torchsde.sdeint_adjoint`` on the step-indexed SDE (Euler both ways, ``dt = 1``)."""

    def check(self, method):
        if not method.stochastic:
            raise ValueError("TorchsdeAdjoint solves the SDE solvers' problems: use Adjoint or TorchdiffeqAdjoint "
                             "for the ODE")

    def solve(self, problem, z0):
        from .torchsde_route import sdeint_adjoint  # torchsde loads only when this route runs
        return sdeint_adjoint(problem, z0)
