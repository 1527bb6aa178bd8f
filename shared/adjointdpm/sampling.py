"""The one entry point: ``sample`` (paper Alg. 2, with the gradient of Alg. 3)."""
from __future__ import annotations

import functools

import torch

from .dynamics import dynamics_for
from .grad import Gradient, NoGradient, Problem
from .ode import SPACES, ProbabilityFlow, SolveInfo
from .schedule import VPSchedule, as_steps
from .solvers import make_method


def sample(model, x_T: torch.Tensor, schedule: VPSchedule, cond=None, *, steps: int,
           solver: str = "rk4", space: str = "reparam", spacing: str = "logSNR",
           t_start: float | None = None, t_end: float = 1e-3, gradient: Gradient | None = None,
           noise_seed: int | None = None, coupling: float | None = None, rtol: float = 1e-5, atol: float = 1e-5,
           return_info: bool = False):
    """Solve the probability-flow ODE (or, with an SDE solver, the diffusion SDE) from ``x_T`` at
    ``t_start`` to ``t_end``; return ``x_{t_end}``.

    Args:
        model: ``nn.Module`` called as ``model(x, t, cond)`` with ``t`` of shape ``(batch,)``,
            returning epsilon with the shape of ``x``.
        x_T: the initial noise, ``(batch, ...)``. Device and dtype of the solve follow it.
        schedule: a :class:`VPSchedule`.
        cond: any tensor (or ``None``) handed to the model; gradients reach it when it
            requires grad.
        steps: intervals of the time grid, for every solver.
        solver: ``euler``, ``heun``, ``rk4``, ``adams4`` (4th-order Adams-Bashforth),
            ``dpm1`` (= DDIM), ``dpm2``, ``dpm3``, ``dpm2m`` (DPM-Solver exponential integrators,
            ``space="reparam"`` only), ``dopri5`` (adaptive, torchdiffeq; ``rtol``/``atol``), or
            ``sde-dpm1`` (SDE-DPM-Solver-1 on the diffusion SDE, AdjointDEIS poster eq. 1), or
            ``reversible-dpm1`` (DDIM made algebraically reversible, two evaluations per step; exact
            gradients at constant memory with :class:`ReversibleAdjoint`).
        space: ``"original"`` solves eq. 4 in ``(x, t)``; ``"reparam"`` solves eq. 10 in
            ``(y, rho)``, ``y = x / alpha_t``, ``rho = sigma_t / alpha_t``.
        spacing: time grid, ``"logSNR"`` (uniform in lambda), ``"uniform"`` or ``"quadratic"``.
        t_start: defaults to the schedule's ``T`` (1, or 0.9946 for cosine). ``t_start < t_end``
            runs the ODE the other way, encoding data ``x_{t_start}`` into its noise ``x_{t_end}``
            (DDIM inversion with ``dpm1``); every gradient strategy works both ways.
        gradient: ``None`` (no graph), :class:`Backprop`, :class:`Checkpoint`,
            :class:`Adjoint`, :class:`AdjointDEIS` or :class:`ReversibleAdjoint`.
        noise_seed: the SDE solvers' Brownian path (required by them, refused by the ODE solvers): step
            ``i``'s noise depends only on ``(noise_seed, i)`` and the state's shape, dtype and
            device, so every gradient strategy samples the same path.
        coupling: the reversible solvers' coupling ``l`` in (0, 1] (default 0.999), refused by the others.
        return_info: also return a :class:`SolveInfo` with the NFE counts.
    """
    if not torch.is_tensor(x_T) or x_T.dim() < 1 or not x_T.is_floating_point():
        raise ValueError("x_T must be a floating-point tensor of shape (batch, ...)")
    if not bool(torch.isfinite(x_T.detach()).all()):  # detached: isfinite through abs() would save x_T for backward
        raise ValueError("x_T has non-finite values (nan or inf)")
    if space not in SPACES:
        raise ValueError(f"space must be one of {tuple(SPACES)}, got {space!r}")
    if gradient is not None and not isinstance(gradient, Gradient):
        raise ValueError(f"gradient must be None or a strategy such as Backprop(), got {gradient!r}")
    gradient = gradient or NoGradient()
    method = make_method(solver, rtol, atol, coupling)
    gradient.check(method)
    variables = SPACES[space](schedule)
    if method.exponential and not variables.exponential:
        raise ValueError(f"solver {solver!r} is an exponential integrator in lambda: it needs space='reparam'")
    make_times = functools.partial(schedule.grid, spacing=spacing, t_start=t_start, t_end=t_end)
    steps = as_steps(steps)
    times = make_times(steps)

    info = SolveInfo(solver=solver, space=space, steps=steps, times=times)
    t0, t1 = float(times[0]), float(times[-1])
    z0 = x_T / variables.scale(t0)
    dynamics = dynamics_for(method, noise_seed, t_start is not None and t_start < t_end, variables.grid(times), z0)
    flow = ProbabilityFlow(model, schedule, cond, info, x_T.dtype)
    problem = Problem(flow, variables, dynamics, method, times, make_times, rtol, atol)
    z_end = gradient.solve(problem, z0)
    info.nfe_forward = problem.flow.calls  # calls from here on are the backward pass's recomputations
    x_end = (variables.scale(t1) * z_end).to(x_T.dtype)  # a solver may hold its state wider (reversible-dpm1)
    return (x_end, info) if return_info else x_end
