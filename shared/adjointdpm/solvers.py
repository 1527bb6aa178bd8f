"""Fixed-grid steppers and exponential integrators (paper Sec. 3.4; DPM-Solver).

A stepper advances a *state* ``z`` (a tuple of tensors, so the same code integrates
the sample alone and the augmented adjoint system of eq. 11) along a grid of the
space's variable ``s``, given the field ``f(z, s) -> dz/ds`` (a tuple like ``z``).
Grids may run either way (sampling runs rho down, the adjoint runs it up) and need
not be uniform.

Exponential integrators (``dpm1``, ``dpm2``, ``dpm3``, ``dpm2m``) assume
``s = rho = exp(-lambda)``: written in ``(y, rho)`` the DPM-Solver updates become
explicit Runge-Kutta / multistep rules in ``rho`` whose stages sit at fractions of
``h = lambda_1 - lambda_0``. For instance DPM-Solver-1 (= DDIM)
``x_1 = (alpha_1/alpha_0) x_0 - sigma_1 expm1(h) eps_0`` divided by ``alpha_1`` is
``y_1 = y_0 + (rho_1 - rho_0) eps_0``, Euler on eq. 10.
"""
from __future__ import annotations

import functools
import inspect
import math
from typing import Callable

import numpy as np
import torch
import torch.utils.checkpoint

State = tuple  # tuple[torch.Tensor, ...]


def _comb(z: State, *terms) -> State:
    """``z + sum(c * d)`` over the tuple, for (c, d) in terms."""
    out = []
    for k, zk in enumerate(z):
        for c, d in terms:
            zk = zk + c * d[k]
        out.append(zk)
    return tuple(out)


def _lam(s: float) -> float:
    return -math.log(s)


class Method:
    """One integration rule: ``step(f, z, s0, s1, hist) -> (z1, hist)``.

    ``hist`` carries what a multistep rule remembers of earlier steps (``()`` at the start).
    """

    name: str
    order: int
    exponential = False   # True: needs s = rho (the reparameterized space)
    stochastic = False    # True: samples the diffusion SDE (needs a noise_seed)
    reversible = False    # True: each step can be undone exactly (takes a coupling)
    stages: int | None = 1  # model evaluations per step; None if adaptive

    def step(self, f, z, s0, s1, hist):
        raise NotImplementedError

    def nfe(self, steps: int) -> int | None:
        """Model evaluations for ``steps`` steps (``None``: adaptive, not known in advance)."""
        return None if self.stages is None else self.stages * steps

    def steps_for(self, nfe: int) -> int:
        """The number of steps that spends exactly ``nfe`` evaluations (the inverse of :meth:`nfe`)."""
        steps = next((s for s in range(1, nfe + 1) if self.nfe(s) == nfe), None)
        if steps is None:
            achievable = [n for n in (self.nfe(s) for s in range(1, 7)) if n is not None]
            raise ValueError(f"solver {self.name!r} cannot spend exactly {nfe} model evaluations"
                             + (f" (it spends {', '.join(map(str, achievable))}, ...)" if achievable else
                                " (adaptive: its NFE is known only after solving)"))
        return steps

    def __repr__(self):
        return self.name


class Euler(Method):
    name, order = "euler", 1

    def step(self, f, z, s0, s1, hist):
        return _comb(z, (s1 - s0, f(z, s0))), ()


class Heun(Method):
    name, order, stages = "heun", 2, 2

    def step(self, f, z, s0, s1, hist):
        h = s1 - s0
        d0 = f(z, s0)
        d1 = f(_comb(z, (h, d0)), s1)
        return _comb(z, (h / 2, d0), (h / 2, d1)), ()


def _rk4(f, z, s0, s1, d0):
    h = s1 - s0
    sm = s0 + h / 2
    d1 = f(_comb(z, (h / 2, d0)), sm)
    d2 = f(_comb(z, (h / 2, d1)), sm)
    d3 = f(_comb(z, (h, d2)), s1)
    return _comb(z, (h / 6, d0), (h / 3, d1), (h / 3, d2), (h / 6, d3))


class RK4(Method):
    name, order, stages = "rk4", 4, 4

    def step(self, f, z, s0, s1, hist):
        return _rk4(f, z, s0, s1, f(z, s0)), ()


_GL_X, _GL_W = np.polynomial.legendre.leggauss(4)  # exact for the cubic Lagrange basis


def adams_weights(nodes, s0: float, s1: float):
    """``w_j = int_{s0}^{s1} L_j(s) ds`` for the Lagrange basis on ``nodes`` (any spacing)."""
    xs = s0 + (s1 - s0) * (_GL_X + 1) / 2
    ws = _GL_W * (s1 - s0) / 2
    weights = []
    for j, sj in enumerate(nodes):
        basis = np.ones_like(xs)
        for m, sm in enumerate(nodes):
            if m != j:
                basis *= (xs - sm) / (sj - sm)
        weights.append(float(np.dot(ws, basis)))
    return weights


class AdamsBashforth4(Method):
    """4th-order Adams-Bashforth on any grid (weights integrate the Lagrange interpolant).

    Start-up as torchdiffeq's ``explicit_adams``: two RK4 steps, one 3-step step, then
    4-step steps, so ``M`` steps cost ``M + 6`` evaluations (``4`` if ``M = 1``).
    """

    name, order, stages = "adams4", 4, None

    def step(self, f, z, s0, s1, hist):
        d0 = f(z, s0)
        if len(hist) < 2:
            z1 = _rk4(f, z, s0, s1, d0)
        else:
            past = ((s0, d0),) + hist
            w = adams_weights([s for s, _ in past], s0, s1)
            z1 = _comb(z, *[(wj, d) for wj, (_, d) in zip(w, past)])
        return z1, ((s0, d0),) + hist[:2]

    def nfe(self, steps):
        return 4 * steps if steps <= 2 else steps + 6


class DPMSolver(Method):
    """Singlestep DPM-Solver of order 1, 2 (r = 1/2) or 3 (r1 = 1/3, r2 = 2/3), in ``(y, rho)``."""

    exponential = True

    def __init__(self, order: int):
        self.order = self.stages = order
        self.name = f"dpm{order}"

    def step(self, f, z, s0, s1, hist):
        d0 = f(z, s0)
        if self.order == 1:
            return _comb(z, (s1 - s0, d0)), ()
        h = _lam(s1) - _lam(s0)
        if self.order == 2:
            s_mid = s0 * math.exp(-h / 2)
            d_mid = f(_comb(z, (s_mid - s0, d0)), s_mid)
            # (s1-s0) * [d0 + (d_mid - d0) / (2 r)] with r = 1/2
            return _comb(z, (s1 - s0, d_mid)), ()
        r1, r2 = 1 / 3, 2 / 3
        sa, sb = s0 * math.exp(-r1 * h), s0 * math.exp(-r2 * h)
        da = f(_comb(z, (sa - s0, d0)), sa)
        phi_22 = math.expm1(r2 * h) / (r2 * h) - 1
        ub = _comb(z, (sb - s0, d0), (-(r2 / r1) * sb * phi_22, da), ((r2 / r1) * sb * phi_22, d0))
        db = f(ub, sb)
        phi_2 = math.expm1(h) / h - 1
        c = -s1 * phi_2 / r2
        return _comb(z, (s1 - s0 - c, d0), (c, db)), ()


class SDEDPMSolver1(DPMSolver):
    """SDE-DPM-Solver-1 in noise-prediction form: the diffusion SDE (AdjointDEIS poster eq. 1)
    integrated exactly in its linear part and in its noise, with eps frozen over the step::

        x_t = (alpha_t/alpha_s) x_s - 2 sigma_t (e^h - 1) eps(x_s, s) + sigma_t sqrt(e^{2h} - 1) z

    divided by ``alpha_t``: ``y_t = y_s + (rho_t - rho_s) 2 eps + sqrt(rho_s^2 - rho_t^2) z``, the
    DPM-Solver-1 step on the SDE's drift ``2 eps`` followed by the Brownian increment: both are
    the dynamics' (:class:`adjointdpm.dynamics.SDE`), so this class is the step rule only. No
    second-order SDE solver is offered: the multistep SDE-DPM-Solver++(2M) is written for data
    prediction, and its noise-prediction analogue has no published form
    whose gradients we could check against one."""

    stochastic = True

    def __init__(self):
        super().__init__(1)
        self.name = "sde-dpm1"


class DPMSolver2M(Method):
    """Second-order multistep exponential integrator (DPM-Solver-2M, Taylor form).

    The derivative is taken linear in lambda through the last two points, and
    ``int (lambda - lambda_0) drho = rho_1 (1 + h) - rho_0`` exactly. The first step is
    DPM-Solver-1. This is AdjointDEIS-2 when applied to the adjoint system.
    """

    name, order, exponential = "dpm2m", 2, True

    def step(self, f, z, s0, s1, hist):
        d0 = f(z, s0)
        if not hist:
            return _comb(z, (s1 - s0, d0)), ((s0, d0),)
        (sp, dp), = hist
        h = _lam(s1) - _lam(s0)
        c = (s1 * (1 + h) - s0) / (_lam(s0) - _lam(sp))
        return _comb(z, (s1 - s0 + c, d0), (-c, dp)), ((s0, d0),)


class ReversibleDPM1(Method):
    """DDIM made algebraically reversible by McCallum and Foster's coupling (2024), in the
    data-prediction form (as Rex couples exponential integrators).

    The state is a pair ``(y, z)``, both ``y_0 = z_0 = x_T / alpha_T``; in DPM-Solver++'s variables
    ``v = x / sigma = y / rho``, ``u = 1 / rho`` and with ``D(w, s) = x0_hat = w - rho_s eps(w, s)``
    (the model's data prediction, in y's units) one step from ``s0`` to ``s1`` is::

        v_y1 = l v_y0 + (1 - l) v_z0 + (u1 - u0) D(z0, s0)     (DDIM from z0, coupled to y0)
        v_z1 = v_z0 + (u1 - u0) D(y1, s1)                      (DDIM back from y1, reversed)

    and it is undone exactly, in the other order, from ``(y1, z1)`` alone::

        v_z0 = v_z1 - (u1 - u0) D(y1, s1)
        v_y0 = (v_y1 - (1 - l) v_z0 - (u1 - u0) D(z0, s0)) / l

    Two model evaluations per step (``stages = 2``); the sample is ``y``. With ``l = 1`` and
    ``y0 = z0`` the first line is DDIM; the coupling ``l < 1`` keeps ``y`` and ``z`` close (their
    gap contracts by ``l rho1/rho0`` per step, in y). :class:`adjointdpm.ReversibleAdjoint`
    differentiates it exactly at constant memory. Within :func:`integrate` (``Backprop``,
    ``Checkpoint``) the second component travels in ``hist``. No multistep version: a
    multistep step's inverse needs the previous step's evaluation, which needs the previous
    state, which only the inverse of that step gives."""

    name, order, stages, exponential, reversible = "reversible-dpm1", 1, 2, True, True
    # McCallum and Foster's examples use 0.99-0.999; below 1 for their stability argument. On the digits DDPM++
    # 0.999 samples as l = 1 does, 0.9 leaves a bias (results/cifar/reversible.md).
    DEFAULT_COUPLING = 0.999

    def __init__(self, coupling: float | None = None):
        coupling = self.DEFAULT_COUPLING if coupling is None else coupling
        if not (isinstance(coupling, (int, float)) and 0 < coupling <= 1):
            raise ValueError(f"coupling must be a number in (0, 1], got {coupling!r}")
        self.coupling = float(coupling)

    @staticmethod
    def _data(f, w: torch.Tensor, s: float) -> torch.Tensor:
        return w - s * f((w,), s)[0]

    @staticmethod
    def wide(w: torch.Tensor) -> torch.Tensor:
        """The pair's precision: at least float64. The forward step contracts the pair's difference in the
        directions along the data by up to ``e^{-2h}`` per step (``h`` in lambda), so the inverse expands
        round-off there by as much: a float32 pair returns a learned DDPM++'s states to 1.4e-4 after 10-100
        steps, a float64 one to 3e-7 with the model still in float32 (``python -m cifar.reversible``)."""
        return w if w.dtype == torch.float64 else w.to(torch.float64)

    def forward(self, f, y, z, s0, s1):
        """One step of the pair, ``(y0, z0) -> (y1, z1)``."""
        y, z = self.wide(y), self.wide(z)
        l, du = self.coupling, 1 / s1 - 1 / s0
        y1 = s1 * ((l * y + (1 - l) * z) / s0 + du * self._data(f, z, s0))
        z1 = s1 * (z / s0 + du * self._data(f, y1, s1))
        return y1, z1

    def inverse(self, f, y1, z1, s0, s1):
        """The step undone, ``(y1, z1) -> (y0, z0)``."""
        l, du = self.coupling, 1 / s1 - 1 / s0
        z0 = s0 * (z1 / s1 - du * self._data(f, y1, s1))
        y0 = s0 * (y1 / s1 - (1 - l) * z0 / s0 - du * self._data(f, z0, s0)) / l
        return y0, z0

    def step(self, f, z, s0, s1, hist):
        y1, z1 = self.forward(f, z[0], hist[0] if hist else z[0], s0, s1)
        return (y1,), (z1,)

    def backward(self, evaluate, y1, z1, a_y1, a_z1, s0, s1):
        """The step undone and transposed together: ``(y0, z0)`` from ``(y1, z1)``, and the cotangents
        ``(a_y0, a_z0)`` and ``a_w`` (a list) from ``(a_y1, a_z1)``, with the model evaluated twice, where
        the forward step evaluated it. ``evaluate(w, s, cot)`` returns ``eps(w, s)`` and its VJPs with ``cot``
        w.r.t. ``w`` and the other tensors (:func:`adjointdpm.backward.field_vjp`). In y, with
        ``D = w - s eps(w, s)``, ``z1 = (s1/s0) z0 + s1 du D(y1)`` and
        ``y1 = (s1/s0)(l y0 + (1 - l) z0) + s1 du D(z0)``."""
        l, du = self.coupling, 1 / s1 - 1 / s0
        a_y1, a_z1 = self.wide(a_y1), self.wide(a_z1)
        eps_y, g_y, g_w = evaluate(y1, s1, a_z1)            # z1's term in y1
        a_y1 = a_y1 + s1 * du * (a_z1 - s1 * g_y)
        a_w = [-s1 * du * s1 * g for g in g_w]
        z0 = s0 * (z1 / s1 - du * (y1 - s1 * eps_y))
        eps_z, g_z, g_w = evaluate(z0, s0, a_y1)            # y1's term in z0
        a_z0 = (s1 / s0) * (a_z1 + (1 - l) * a_y1) + s1 * du * (a_y1 - s0 * g_z)
        a_w = [a - s1 * du * s0 * g for a, g in zip(a_w, g_w)]
        y0 = s0 * (y1 / s1 - (1 - l) * z0 / s0 - du * (z0 - s0 * eps_z)) / l
        return y0, z0, (s1 / s0) * l * a_y1, a_z0, a_w


class Dopri5(Method):
    """Adaptive Dormand-Prince 5(4) through ``torchdiffeq.odeint``, once per grid interval."""

    name, order, stages = "dopri5", 5, None

    def __init__(self, rtol: float = 1e-5, atol: float = 1e-5):
        self.rtol, self.atol = rtol, atol

    def step(self, f, z, s0, s1, hist):
        import torchdiffeq  # here: its import (and scipy's) would cost every process that never asks for it
        span = torch.tensor([s0, s1], dtype=torch.float64, device=z[0].device)
        path = torchdiffeq.odeint(lambda s, zz: f(zz, float(s.detach())), z, span,
                                  rtol=self.rtol, atol=self.atol, method="dopri5",
                                  options={"step_t": span})  # never step past s1: the field may not exist there
        return tuple(p[-1] for p in path), ()


# The solvers by name: each entry builds one. A solver's own options (Dopri5's rtol and atol, a reversible
# solver's coupling) are its constructor's keyword arguments; make_method passes each solver the ones it takes.
SOLVERS: dict[str, Callable[..., Method]] = {
    "euler": Euler, "heun": Heun, "rk4": RK4, "adams4": AdamsBashforth4,
    "dpm1": functools.partial(DPMSolver, 1), "dpm2": functools.partial(DPMSolver, 2),
    "dpm3": functools.partial(DPMSolver, 3), "dpm2m": DPMSolver2M, "dopri5": Dopri5,
    "sde-dpm1": SDEDPMSolver1, "reversible-dpm1": ReversibleDPM1,
}


def steps_for_nfe(solver: str, nfe: int) -> int:
    """Steps of ``solver`` that spend exactly ``nfe`` model evaluations, e.g. ``adams4``: ``nfe - 6``
    (torchdiffeq's start-up of two RK4 steps), ``dpm2``: ``nfe / 2``; a ``ValueError`` if none does."""
    return make_method(solver).steps_for(nfe)


def make_method(name: str, rtol: float = 1e-5, atol: float = 1e-5, coupling: float | None = None) -> Method:
    """The solver ``name`` of :data:`SOLVERS`, given the options it takes; a ``coupling`` for a solver
    without one is refused."""
    if name not in SOLVERS:
        raise ValueError(f"solver must be one of {tuple(SOLVERS)}, got {name!r}")
    build = SOLVERS[name]
    takes = inspect.signature(build).parameters
    if coupling is not None and "coupling" not in takes:
        raise ValueError(f"coupling is for the reversible solvers (reversible-dpm1); solver {name!r} has none")
    given = {"rtol": rtol, "atol": atol, "coupling": coupling}
    return build(**{k: v for k, v in given.items() if k in takes})


def check_finite(z: State, step: int, steps: int, t: float, what: str):
    if not bool(torch.stack([torch.isfinite(zk).all() for zk in z]).all()):  # one host sync per step
        raise ValueError(f"non-finite values (nan or inf) in the {what} after step {step} of {steps} "
                         f"(t = {t:.6g}); try more steps, a larger t_end or float64")


def integrate(method: Method, f, z: State, grid, times, *, checkpoint: bool = False,
              states: list | None = None, before=None, after=None, what: str = "sample") -> State:
    """Step ``z`` along ``grid`` (the space's variable; ``times`` are the matching t for
    messages). ``checkpoint`` recomputes each step in backward instead of storing its
    activations; ``states`` collects the state after every step's rule. ``before(i, z)`` and
    ``after(i, z)``, if given, return the state to use before and after step ``i``'s rule: an
    adjoint restarting from stored states, an SDE's Brownian increments (added after the state
    is collected, so ``states`` holds the drift's end points)."""
    hist, steps = (), len(grid) - 1
    for i in range(steps):
        if before is not None:
            z = before(i, z)
        args = (f, z, float(grid[i]), float(grid[i + 1]), hist)
        if checkpoint:
            z, hist = torch.utils.checkpoint.checkpoint(method.step, *args, use_reentrant=False)
        else:
            z, hist = method.step(*args)
        check_finite(z, i + 1, steps, float(times[i + 1]), what)
        if states is not None:
            states.append(z)
        if after is not None:
            z = after(i, z)
    return z
