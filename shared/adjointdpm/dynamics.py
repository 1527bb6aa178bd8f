"""What a sample follows between grid points: the probability-flow ODE or the diffusion SDE.

Both are written in the space's variables ``(z, s)`` on the field ``F(z, s)`` of
:mod:`adjointdpm.ode` (in ``(y, rho)``, ``F = eps``):

* :class:`ODE`, the probability-flow ODE ``dz/ds = F`` (paper eq. 10);
* :class:`SDE`, the reverse diffusion SDE ``dy = 2 eps drho + dW`` (AdjointDEIS poster eq. 1),
  with ``Var(dW) = |d(rho^2)|``: the drift is doubled, and after each step's rule its Brownian
  increment is added (:class:`adjointdpm.brownian.BrownianPath`). Its adjoint is still an ODE
  (poster Theorem 2, eqs. 13-16): eq. 11 on the doubled drift along the sampled path.

An SDE solver is an ODE rule flagged ``stochastic`` (:class:`adjointdpm.solvers.SDEDPMSolver1`):
everything else the SDE needs, forward and backward, lives here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .brownian import BrownianPath


@dataclass(frozen=True)
class ODE:
    """The probability-flow ODE: the field as it is, nothing between steps."""

    stochastic = False
    factor = 1  # the drift is factor * eps in (y, rho)

    def drift(self, field):
        return field

    def after_step(self):
        """What :func:`adjointdpm.solvers.integrate` does after each forward step (``after=``)."""
        return None

    def reverse(self, adjoint_steps: int):
        """What an adjoint re-solving the state backwards does before each of its steps (``before=``)."""
        return None


class SDE:
    """The reverse diffusion SDE sampled on one Brownian path (the forward grid's increments)."""

    stochastic = True
    factor = 2

    def __init__(self, path: BrownianPath):
        self.path = path

    def drift(self, field):
        """``2 eps`` in ``(y, rho)``: poster eq. 1 against eq. 2's ``eps``."""
        return lambda z, s: self.factor * field(z, s)

    def after_step(self):
        return lambda i, z: (z[0] + self.path.increment(i),) + tuple(z[1:])

    def reverse(self, adjoint_steps: int):
        """Before backward step ``j``: subtract the Brownian increment of the forward step it
        enters, regenerated from the seed (so the backward must land on every forward grid point)."""
        steps = self.path.steps
        if adjoint_steps % steps:
            raise ValueError(f"an SDE's adjoint steps must be a multiple of the forward's {steps} (got "
                             f"{adjoint_steps}): its Brownian increments are undone at the forward's grid points")
        per = adjoint_steps // steps

        def undo(j, state):
            if j % per:
                return state
            return (state[0] - self.path.increment(steps - 1 - j // per),) + tuple(state[1:])
        return undo

    def __repr__(self):
        return f"SDE(noise_seed={self.path.noise_seed}, steps={self.path.steps})"


def dynamics_for(method, noise_seed: int | None, encoding: bool, grid, like):
    """The dynamics ``method`` samples, with every check of the SDE's arguments in one place."""
    if not method.stochastic:
        if noise_seed is not None:
            raise ValueError(f"noise_seed is for the SDE solvers (sde-dpm1); solver {method.name!r} solves the ODE")
        return ODE()
    if noise_seed is None:
        raise ValueError(f"solver {method.name!r} samples an SDE: give noise_seed (an int that fixes its Brownian path)")
    if encoding:
        raise ValueError("the SDE solvers sample, from noise to data: encode with an ODE solver (t_start < t_end)")
    return SDE(BrownianPath(noise_seed, grid, like))
