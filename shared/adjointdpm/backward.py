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

    Each backward step from ``t`` to ``s`` (``s`` the point the forward step started from: the noise
side when sampling, the data side when encoding) takes the VJP at the state ``x_s``, where the forward
step evaluated the model, in a predict-evaluate-correct pattern::

        order 1:  b_s = b_t + (m_t - m_s) J_s(b_t)
        order 2:  b* = b_t + A G_t,   b_s = b_t + (A - c) G_s(b*) + c G_t,
                  G = m^2 J,   A = 1/m_s - 1/m_t,   c = (A/k - H/m_t) / H,   H = lambda_t - lambda_s

    Order 2 integrates ``G = m^2 J`` linear in lambda between the step's ends, exactly against
    ``dm / m^2``: ``G`` is constant on both limits of the adjoint, the directions where
    ``sigma d eps/dx = I`` (``J = 0``) and those where it is 0 (``b ∝ 1/m``), so the predictor and the
    corrector are exact on both, while ``J`` itself varies there like ``e^{-2k lambda}`` (taking ``J``
    linear in lambda cost a factor 2-5 in accuracy at 10-80 steps on the toy, and blew up when
    encoding). ``G_t`` is the previous step's evaluation, so each step costs one VJP on the ODE;
    where the path jumps (an SDE's Brownian increment, at each forward grid point) ``G_t`` is taken
    again on the step's side of the jump: two VJPs per forward step. ``a_w`` takes the same weights
    with ``P``. For the ODE the order-1 step is the transposed DDIM step,
    ``a_y(s) = a_y(t) + (rho_t - rho_s) a_y(t)^T d eps(alpha_s y_s)/dy``: on the forward's stored
    states it is the exact gradient of the DDIM sampler (``dpm1``), so the discrete sampler's
    exact gradient is itself an exponential-integrator adjoint.

    States: ``stored`` (the forward's states after each step's rule, ``states="reuse"``) restart the
    state at the forward's grid points; between them, and everywhere without ``stored``, ``x_s`` is
    re-solved from ``x_t`` by ``method`` (``dpm1``/``dpm2m`` backwards, the model's value at ``x_t``
    reused from the last evaluation, its history restarted where the path jumps), after
    ``before(j, state)`` (an SDE's Brownian increment undone).
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
        last = [None, None]  # the last state the model was evaluated at, and its value there

        def evaluate(z, r, cot):
            """``J`` and ``P`` at ``(z, r)`` for the cotangent ``cot``."""
            F, g_z, g_wrt = field_vjp(field, z, r, wrt, cot)
            last[:] = z, F
            return r ** k * (cot - (r / k) * g_z), [(-r / k) * g for g in g_wrt]

        def f(state, r):  # the state's field for the re-solve: the last evaluation's where it was taken
            if state[0] is last[0]:
                return (last[1],)
            with torch.no_grad():
                return (field(state[0], r),)

        z, b = z_end, rho[0] ** k * a_end
        a_wrt = [torch.zeros_like(w) for w in wrt]
        G_t = P_t = None  # order 2: the last evaluation, taken at the state z had before this step
        hist = ()
        for j in range(len(rho) - 1):
            start = self._stored_at(j)
            moved = start[0] if start is not None else z if self.before is None else self.before(j, (z,))[0]
            if moved is not z:  # a restart from a stored state, or a jump: nothing of the other side is reused
                z, hist, G_t = moved, (), None
            end = self._stored_at(j + 1)
            if end is not None:
                z_s = end[1]
            else:
                (z_s,), hist = self.method.step(f, (z,), rho[j], rho[j + 1], hist)
            if order == 1:
                dm = m[j] - m[j + 1]
                J_s, P_s = evaluate(z_s, rho[j + 1], b)
                b = b + dm * J_s
                a_wrt = [a + dm * p for a, p in zip(a_wrt, P_s)]
            else:
                if G_t is None:
                    J, P = evaluate(z, rho[j], b)
                    G_t, P_t = m[j] ** 2 * J, [m[j] ** 2 * p for p in P]
                A, H = 1 / m[j + 1] - 1 / m[j], math.log(rho[j + 1] / rho[j])  # lambda = -log(rho)
                c = (A / k - H / m[j]) / H
                J, P = evaluate(z_s, rho[j + 1], b + A * G_t)
                G_s, P_s = m[j + 1] ** 2 * J, [m[j + 1] ** 2 * p for p in P]
                b = b + (A - c) * G_s + c * G_t
                a_wrt = [a + (A - c) * ps + c * pt for a, ps, pt in zip(a_wrt, P_s, P_t)]
                G_t, P_t = G_s, P_s
            z = z_s
            check_finite((b, *a_wrt), j + 1, len(rho) - 1, float(self.times[j + 1]), "adjoint state")
        return b / rho[-1] ** k, a_wrt
