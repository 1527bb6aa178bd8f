"""How the adjoint strategies solve backwards: the augmented adjoint system from the final state
to the initial one, in one of two forms.

Conventions (as in :mod:`adjointdpm.grad`): the sample's state is ``z = y = x / alpha_t`` over
``s = rho = sigma_t / alpha_t = exp(-lambda_t)``, its field ``F(z, s) = k eps(alpha y, t)``
(``k = 1`` for the probability-flow ODE, ``k = 2`` for the diffusion SDE's drift), and
``a_z = dL/dz``, ``a_w = dL/dw`` for the other tensors ``w`` (cond, weights).

* :func:`augmented` is eq. 11 (Alg. 1) as a field over ``(z, a_z, a_w)`` for the rules of
  :mod:`adjointdpm.solvers`: each step's vector-Jacobian product (VJP) is taken where the rule
  evaluates, starting at the adjoint's current point. In ``(y, rho)`` with ``dpm1``/``dpm2m`` this is
  the AdjointDEIS poster's eq. 12 and its multistep form: the *noise-prediction form*
  ``d a_y / d lambda = a_y^T sigma d eps/dx`` (ODE).
* :class:`DataForm` is AdjointDEIS in the *data-prediction form* (DPM-Solver++'s variables).
"""
from __future__ import annotations

import math

import torch

from .solvers import check_finite


def field_vjp(field, z: torch.Tensor, s: float, wrt: list, cot: torch.Tensor):
    """``F = field(z, s)`` (detached) and the VJPs ``cot^T dF/dz`` and ``cot^T dF/dw`` for each ``w`` of
    ``wrt``. A leaf that stopped requiring grad since the forward gets zeros, as autograd gives it none."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        F = field(z, s)
        live = [i for i, w in enumerate(wrt) if w.requires_grad]
        g_z, *g_live = torch.autograd.grad(F, (z, *(wrt[i] for i in live)), cot, allow_unused=True)
    g_wrt = [torch.zeros_like(w) for w in wrt]
    for i, g in zip(live, g_live):
        if g is not None:
            g_wrt[i] = g
    return F.detach(), torch.zeros_like(z) if g_z is None else g_z, g_wrt


def augmented(field, wrt: list):
    """The augmented field ``(dz/ds, -a_z^T dF/dz, -a_z^T dF/dw)`` of eq. 11, for
    :func:`~adjointdpm.solvers.integrate`."""
    def f(state, s):
        F, g_z, g_wrt = field_vjp(field, state[0], s, wrt, state[1])
        return (F, -g_z, *(-g for g in g_wrt))
    return f


class DataForm:
    """AdjointDEIS in the data-prediction form: orders 1 and 2, on stored or re-solved states.

    With ``x0_hat = (x - sigma eps) / alpha``, ``u = e^lambda = 1/rho`` and ``m = u^k``, the
    adjoint is carried as ``b = rho^k a_y`` (for the ODE ``b = sigma a_x = a_v``, the adjoint of
    DPM-Solver++'s ``v = x / sigma``) and obeys::

        d b / dm   = -b^T (sigma u^{1-k}) d x0_hat/dx  =: -J(b)
        d a_w / dm = -b^T d x0_hat/dw                  =: -P(b)

    In lambda, ``d b / d lambda = -k b^T (I - sigma d eps/dx)``: the part of ``sigma d eps/dx``
    near the identity (every direction at high noise, the directions normal to the data at low
    noise) is integrated exactly, where the noise form, ``d a_y/d lambda = k a_y^T sigma d eps/dx``,
    extrapolates it. (The noise form's explicit step on that rate-1 mode multiplies ``a_y`` by
    ``2 - e^h`` where the solution multiplies it by ``e^-h``: -0.72 against 0.37 at ``h = 1``.)

    Each backward step from ``t`` (the data side) to ``s`` takes the VJP at the state ``x_s``, the
    point where the forward step from ``s`` evaluated the model, in a predict-evaluate-correct
    pattern (``H = lambda_t - lambda_s``)::

        order 1:  b_s = b_t + (m_t - m_s) J_s(b_t)
        order 2:  b* = b_t + (m_t - m_s) J_t,   b_s = b_t + w_t J_t + w_s J_s(b*),
                  w_t = (H m_t - (m_t - m_s)/k) / H,   w_s = m_t - m_s - w_t

    (order 2 integrates ``J`` linear in lambda between ``t`` and ``s``, exactly in ``m``; ``J_t`` is
    the previous step's evaluation, so each step costs one VJP). ``a_w`` takes the same weights
    with ``P``. For the ODE the order-1 step is the transposed DDIM step,
    ``a_y(s) = a_y(t) + (rho_t - rho_s) a_y(t)^T d eps(alpha_s y_s)/dy``: on the forward's stored
    states it is the exact gradient of the DDIM sampler (``dpm1``), so the discrete sampler's
    exact gradient is itself an exponential-integrator adjoint.

    States: ``stored`` (the forward's states after each step's rule, ``states="reuse"``) restart the
    state at the forward's grid points; between them, and everywhere without ``stored``, ``x_s`` is
    re-solved from ``x_t`` by ``method`` (``dpm1``/``dpm2m`` backwards, the model's value at ``x_t``
    reused from the last evaluation), after ``before(j, state)`` (an SDE's Brownian increment undone).
    """

    def __init__(self, problem, order: int, method, times: torch.Tensor, before=None, stored: list | None = None):
        self.problem, self.order, self.method, self.before = problem, order, method, before
        self.k = problem.dynamics.factor
        self.rho = problem.grid(times.flip(0))   # the backward's points, data side first
        self.times = times.flip(0)
        self.stored = stored

    def _stored_at(self, p: int):
        """The stored states at backward point ``p`` if it is a forward grid point: (on the step's path,
        where the model was evaluated) -- for an SDE the latter has the step's Brownian increment added."""
        if self.stored is None:
            return None
        steps, forward = len(self.rho) - 1, len(self.stored) - 1
        per = steps // forward
        if p % per:
            return None
        i = forward - p // per
        after = self.problem.dynamics.after_step()
        path = self.stored[i]
        return path, path if after is None or i == 0 else after(i - 1, (path,))[0]

    def __call__(self, z_end: torch.Tensor, a_end: torch.Tensor, wrt: list):
        k, rho, order = self.k, self.rho, self.order
        m = [r ** -k for r in rho]
        field = self.problem.dz_ds
        cache = {}  # id(state) -> (state, F): the model's value at the last evaluated state

        def evaluate(z, r, cot):
            F, g_z, g_wrt = field_vjp(field, z, r, wrt, cot)
            cache.clear()
            cache[id(z)] = (z, F)
            return r ** k * (cot - (r / k) * g_z), [(-r / k) * g for g in g_wrt]

        def f(state, r):  # the state's field for the re-solve, from the cache when it was evaluated there
            z = state[0]
            hit = cache.get(id(z))
            if hit is not None and hit[0] is z:
                return (hit[1],)
            with torch.no_grad():
                return (field(z, r),)

        z, b = z_end, rho[0] ** k * a_end
        a_wrt = [torch.zeros_like(w) for w in wrt]
        J_t = P_t = at = None  # the last evaluation (order 2's J_t) and the state it was taken at
        hist = ()
        for j in range(len(rho) - 1):
            r_t, r_s = rho[j], rho[j + 1]
            here = self._stored_at(j)
            if here is not None:
                z = here[0]
            elif self.before is not None:
                z = self.before(j, (z,))[0]
            if order == 2 and at is not z:  # first step, or the path restarted or jumped here
                J_t, P_t = evaluate(z, r_t, b)
            there = self._stored_at(j + 1)
            if there is not None:
                z_s = there[1]
            else:
                (z_s,), hist = self.method.step(f, (z,), r_t, r_s, hist)
            dm = m[j] - m[j + 1]
            if order == 1:
                J_s, P_s = evaluate(z_s, r_s, b)
                b = b + dm * J_s
                a_wrt = [a + dm * p for a, p in zip(a_wrt, P_s)]
            else:
                J_s, P_s = evaluate(z_s, r_s, b + dm * J_t)
                H = math.log(r_s / r_t)  # lambda = -log(rho)
                w_t = (H * m[j] - dm / k) / H
                w_s = dm - w_t
                b = b + w_t * J_t + w_s * J_s
                a_wrt = [a + w_t * pt + w_s * ps for a, pt, ps in zip(a_wrt, P_t, P_s)]
                J_t, P_t = J_s, P_s
            z, at = z_s, z_s
            check_finite((b,), j + 1, len(rho) - 1, float(self.times[j + 1]), "adjoint state")
        return b / rho[-1] ** k, a_wrt
