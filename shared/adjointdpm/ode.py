"""The two vector fields of the probability-flow ODE (paper Sec. 3.1-3.2).

* ``original`` (eq. 4), state ``x`` over time ``s = t``::

      dx/dt = f(t) x + g(t)^2 / (2 sigma_t) * eps(x, t)  =  f(t) (x - eps(x, t) / sigma_t)

  using ``f = d log(alpha)/dt`` and ``g^2 = -2 f`` (VP).
* ``reparam`` (eq. 10), state ``y = x / alpha_t`` over ``s = rho = sigma_t / alpha_t``::

      dy/drho = eps(alpha_t y, t(rho))

  (the paper's ``y = alpha_0/alpha_t x``, ``rho = alpha_0 sigma_t/alpha_t - sigma_0`` with the
  constants ``alpha_0 = 1``, ``sigma_0 = 0`` dropped: they shift and scale nothing that matters).

A *space* converts between ``x`` and its state and gives the field ``dz/ds``; the
solvers only ever see ``(z, s)``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .schedule import VPSchedule


@dataclass
class SolveInfo:
    """What a call to :func:`adjointdpm.sample` cost, in model evaluations (NFE).

    ``nfe_forward`` counts the model calls of the sampling solve. ``nfe_backward`` counts the
    vector-Jacobian products through the model that ``backward()`` makes, whatever the strategy:
    Backprop traverses each forward evaluation once, Checkpoint recomputes and traverses each,
    an adjoint makes one per evaluation of its augmented field. It fills in when ``backward()`` runs.
    """

    solver: str
    space: str
    steps: int
    times: torch.Tensor
    nfe_forward: int = 0
    nfe_backward: int = 0


class ProbabilityFlow:
    """``eps(x, t)`` of one sampling problem: the model, its schedule and conditioning,
    with the shape check and the NFE count in one place. The model sees ``dtype`` (``x_T``'s)
    whatever the solver holds its state in, and ``eps`` is returned in the state's dtype."""

    def __init__(self, model, schedule: VPSchedule, cond, info: SolveInfo, dtype: torch.dtype | None = None):
        self.model, self.schedule, self.cond, self.info, self.dtype = model, schedule, cond, info, dtype
        self.calls = 0  # every model call, the backward pass's recomputations included

    def eps(self, x: torch.Tensor, t: float) -> torch.Tensor:
        self.calls += 1
        dtype = self.dtype or x.dtype
        t_batch = torch.full((x.shape[0],), t, dtype=dtype, device=x.device)
        out = self.model(x.to(dtype), t_batch, self.cond)
        if not torch.is_tensor(out) or out.shape != x.shape:
            shape = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"model output must have the shape of x {tuple(x.shape)}, got {shape}")
        if out.requires_grad:  # one vector-Jacobian product through the model each time a backward reaches it
            out.register_hook(self._count_backward)
        return out.to(x.dtype)

    def _count_backward(self, grad):
        self.info.nfe_backward += 1


class Space:
    """Abstract: ``x = scale(t) * z`` and ``s = coordinate(t)``."""

    name: str
    exponential: bool  # whether s = exp(-lambda), so exponential integrators apply

    def __init__(self, schedule: VPSchedule):
        self.schedule = schedule

    def coordinate(self, t: float) -> float:
        raise NotImplementedError

    def grid(self, times) -> list[float]:
        """The coordinates ``s`` of the times ``t`` (what the solvers step along)."""
        return [self.coordinate(float(t)) for t in times]

    def time(self, s: float) -> float:
        raise NotImplementedError

    def scale(self, t: float) -> float:
        raise NotImplementedError

    def field(self, flow: ProbabilityFlow):
        """``dz/ds`` as a function of ``(z, s)``."""
        raise NotImplementedError


class OriginalSpace(Space):
    """Eq. 4 in ``(x, t)``."""

    name, exponential = "original", False

    def coordinate(self, t):
        return t

    def time(self, s):
        return s

    def scale(self, t):
        return 1.0

    def field(self, flow):
        sched = self.schedule

        def dx_dt(x, t):
            f = float(sched.dlog_alpha_dt(t))
            return f * (x - flow.eps(x, t) / float(sched.sigma(t)))
        return dx_dt


class ReparamSpace(Space):
    """Eq. 10 in ``(y, rho)``, ``y = x / alpha_t``, ``rho = sigma_t / alpha_t``."""

    name, exponential = "reparam", True

    def coordinate(self, t):
        return float(self.schedule.rho(t))

    def time(self, rho):
        return float(self.schedule.time_of_rho(rho))

    def scale(self, t):
        return float(self.schedule.alpha(t))

    def field(self, flow):
        def dy_drho(y, rho):
            t = self.time(rho)
            return flow.eps(self.scale(t) * y, t)
        return dy_drho


SPACES = {"original": OriginalSpace, "reparam": ReparamSpace}
