"""Gradient strategies: how ``loss(sample(...)).backward()`` reaches ``x_T``, ``cond``
and the model's weights (paper Alg. 1 and 3, eq. 11; AdjointDEIS eq. 12).

Each strategy is an object passed as ``sample(..., gradient=...)`` (as diffrax passes
``adjoint=``), so they are interchangeable and comparable on one problem:

* :class:`Backprop`   autograd through every step; exact for the discrete sampler,
  memory grows with steps.
* :class:`Checkpoint` the same gradient, storing only the state between steps and
  recomputing one step at a time in backward.
* :class:`Adjoint`    the augmented adjoint ODE solved backwards (eq. 11 in
  ``(y, rho)``, eq. 8 in ``(x, t)``); memory independent of steps.
* :class:`AdjointDEIS` the adjoint ODE solved with exponential integrators in lambda, in the
  data-prediction form (default) or the poster's noise-prediction form.
* :class:`~adjointdpm.reference.TorchdiffeqAdjoint`, :class:`~adjointdpm.reference.TorchsdeAdjoint`
  the same adjoint through torchdiffeq's and torchsde's solvers, as references.

A strategy refuses what it cannot do in one place: its arguments when it is built, the
problem it is given at the start of ``solve``.

Which to use: :class:`Checkpoint` by default. It is exact, costs one recomputed forward per
step (1.1-1.8x Backprop's time on the toy MLP, 1.9-2.4x on tiny SD components: ``python -m
toy.bench``, ``python -m stable_diffusion.bench``) and keeps one state per step beyond a
single step's activations (a 4x64x64 latent, 64 KiB, per step at SD 1.5's size). The adjoints
pay off when even that does not fit; they approximate the sampler's gradient, and how well
depends on the model as much as on the rule. Measured on two learned models (``python -m
cifar.adjoint_accuracy``, ``python -m stable_diffusion.digits.accuracy``), with as many adjoint
steps as sampler steps: :class:`AdjointDEIS` in the data form never blows up (on the DDPM++ behind
10 DDIM steps its error is about the gradient's own length, 0.84 for order 1 and 1.04 for order 2,
at cosine only 0.54-0.73; from 20 steps its cosine is 0.98), where the noise form is uncorrelated or up to a million times too large;
:class:`Adjoint` with RK4 is the most accurate on the latent digits model (3.9 % off behind 10
DPM-Solver-2M steps) but 2.2 to 13 times off on the DDPM++ at 10 steps, at four VJPs per step.

Adjoint notation, in the space's variables ``(z, s)`` with ``dz/ds = F(z, s)``: the
augmented state ``(z, a_z, a_c, a_theta)`` obeys (Alg. 1)::

    d a_z/ds = -a_z^T dF/dz,   d a_c/ds = -a_z^T dF/dc,   d a_theta/ds = -a_z^T dF/dtheta

from ``a_z(s_end) = dL/dz_end``, ``a_c = a_theta = 0`` back to ``s_start``. In ``(y, rho)``
``F = eps(alpha y, t(rho))``, which is eq. 11.
"""
from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Callable

import torch
from torch.autograd.function import once_differentiable

from .backward import DataForm, augmented, field_vjp
from .dynamics import ODE, SDE
from .ode import ProbabilityFlow, Space
from .schedule import as_steps
from .solvers import Method, check_finite, integrate, make_method


@dataclass
class Problem:
    """One sampling problem, as the strategies see it."""

    flow: ProbabilityFlow
    space: Space
    dynamics: ODE | SDE
    method: Method
    times: torch.Tensor                       # t_0 = t_start > ... > t_N = t_end (float64)
    make_times: Callable[[int], torch.Tensor]  # the same spacing and ends with other steps
    rtol: float
    atol: float

    def __post_init__(self):
        # dz/ds of the dynamics for this problem's model, schedule and condition
        self.dz_ds = self.dynamics.drift(self.space.field(self.flow))

    def grid(self, times) -> list[float]:
        return self.space.grid(times)

    def solve(self, z0: torch.Tensor, **kwargs) -> torch.Tensor:
        """The forward solve from ``z0`` (``kwargs`` go to :func:`integrate`)."""
        return integrate(self.method, self.field, (z0,), self.grid(self.times), self.times,
                         after=self.dynamics.after_step(), **kwargs)[0]

    def field(self, z: tuple, s: float) -> tuple:
        return (self.dz_ds(z[0], s),)

    def wrt(self) -> list[torch.Tensor]:
        """Tensors besides ``x_T`` that want gradients: ``cond`` (if it requires grad), then the
        model's parameters that require grad (a plain function is a model without parameters)."""
        cond, model = self.flow.cond, self.flow.model
        conds = [cond] if torch.is_tensor(cond) and cond.requires_grad else []
        params = model.parameters() if isinstance(model, torch.nn.Module) else ()
        return conds + [p for p in params if p.requires_grad]


class Gradient:
    """The strategy contract: map the initial state ``z0`` to the final one, after refusing in
    :meth:`check` a sampler it cannot differentiate."""

    def check(self, method: Method) -> None:
        """Refuse the forward rule ``method`` if this strategy cannot differentiate it (before anything runs)."""

    def solve(self, problem: Problem, z0: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True)
class NoGradient(Gradient):
    """``gradient=None``: sample only, at ``torch.no_grad()`` cost."""

    def solve(self, problem, z0):
        with torch.no_grad():
            return problem.solve(z0)


@dataclass(frozen=True)
class Backprop(Gradient):
    """Autograd through every step (the baseline): exact for the discrete sampler; memory grows
    with steps. Backward traverses each model evaluation's graph once, ``nfe_backward = nfe_forward``."""

    def solve(self, problem, z0):
        return problem.solve(z0)


@dataclass(frozen=True)
class Checkpoint(Gradient):
    """Exactly :class:`Backprop`'s gradient; keeps the states between steps and
    recomputes one step's activations at a time in backward."""

    def solve(self, problem, z0):
        return problem.solve(z0, checkpoint=True)


class ODEAdjoint(Gradient):
    """What :class:`Adjoint` and :class:`AdjointDEIS` share: the backward's plan from their ``steps``,
    ``solver`` and ``states``, and the check of those three."""

    def _check_fields(self):
        if self.steps is not None:
            object.__setattr__(self, "steps", as_steps(self.steps, f"{type(self).__name__} steps"))
        if self.states not in ("reintegrate", "reuse"):
            raise ValueError(f"{type(self).__name__} states must be 'reintegrate' or 'reuse', got {self.states!r}")

    def check(self, method):
        if (method if self.solver is None else make_method(self.solver)).reversible:  # the adjoint's own rule
            raise ValueError(f"{type(self).__name__} cannot solve the adjoint with a reversible rule: behind "
                             "reversible-dpm1 use ReversibleAdjoint() (exact), or name another solver")

    def _plan(self, problem: Problem) -> tuple[Method, torch.Tensor, object]:
        """The backward's rule, grid and restart for ``problem``: every refusal that needs the problem is here
        (the last one the dynamics': an SDE re-solved backwards must land on every forward grid point)."""
        times, forward_steps = problem.times, len(problem.times) - 1
        if self.steps is not None and self.steps != forward_steps:
            if self.states == "reuse" and self.steps % forward_steps:
                raise ValueError(f"{type(self).__name__}(states='reuse') restarts from the stored states at the "
                                 f"forward's grid points: steps must be a multiple of the forward's {forward_steps} "
                                 f"(got {self.steps})")
            times = problem.make_times(self.steps)
        method = problem.method if self.solver is None else make_method(self.solver, problem.rtol, problem.atol)
        if method.exponential and not problem.space.exponential:
            raise ValueError(f"adjoint solver {self.solver!r} is an exponential integrator: it needs space='reparam'")
        # between stored states (or everywhere, re-solving), y is re-solved as the dynamics say
        restart = problem.dynamics.reverse(len(times) - 1) if self.states == "reintegrate" else None
        return method, times, restart

    def solve(self, problem, z0):
        run = _AdjointRun(problem, *self._plan(problem), reuse=self.states == "reuse")
        return _AdjointSolve.apply(run, z0, *run.wrt)


@dataclass(frozen=True)
class Adjoint(ODEAdjoint):
    """The paper's method: solve the augmented adjoint ODE backwards (eq. 11).

    Memory does not grow with steps. The gradient is that of the continuous ODE, reached as
    the backward solver converges: with RK4 at the forward's steps behind an RK4 sampler,
    ``dL/dx_T`` on the toy MLP is 2 % off the exact gradient of the sampler at 10 steps, 0.1 %
    at 20 and 3e-5 at 50 (``python -m toy.bench``). Behind a coarse sampler the ODE's gradient
    is not the sampler's, and no number of adjoint steps closes that gap (32 % at 10
    DPM-Solver-2M steps on notebook 01's mixture, 0.6 % at 50). On learned models it depends on
    the model: behind 10 DPM-Solver-2M steps RK4 at the sampler's steps is 3.9 % off the
    sampler's gradient on the latent digits model, 220 % off (cosine 0.94) on the digits DDPM++
    (``results/*/adjoint_accuracy.md``). Each backward step costs the solver's stages in model
    evaluations *and* vector-Jacobian products: an RK4 adjoint behind a one-evaluation sampler
    (``dpm2m``) costs 3.7-3.9x Backprop's time on tiny SD components, against Checkpoint's
    1.9-2.4x. Do not use it when :class:`Checkpoint` fits: that is exact and cheaper. With
    ``states="reintegrate"`` the re-solved ``y`` drifts from the forward path where the ODE
    is sensitive (high noise, few steps); ``states="reuse"`` removes that error for one stored
    state per step.

    Behind an SDE solver (``sde-dpm1``) the adjoint is still an ODE (:mod:`adjointdpm.dynamics`):
    ``states="reuse"`` takes the sampled path from the stored states; ``"reintegrate"`` re-solves
    the SDE backwards, subtracting each step's regenerated Brownian increment where the forward
    added it (so ``steps`` must be a multiple of the forward's).

    The same adjoint through torchdiffeq's and torchsde's own solvers, as references:
    :class:`adjointdpm.reference.TorchdiffeqAdjoint`, :class:`adjointdpm.reference.TorchsdeAdjoint`.

    Args:
        steps: steps of the backward solve (default: the forward's). The grid has the
            forward's spacing and ends.
        solver: its solver (default: the forward's); any name ``sample`` accepts.
        states: ``"reintegrate"`` (the paper) solves ``y`` backwards alongside the adjoint
            from the final state only, so memory is independent of steps;
            ``"reuse"`` restarts ``y`` from the stored forward state at every forward grid point
            (more accurate, stores one state per step; ``steps`` a multiple of the forward's).
    """

    steps: int | None = None
    solver: str | None = None
    _: KW_ONLY
    states: str = "reintegrate"

    def __post_init__(self):
        if self.solver is not None and make_method(self.solver).stochastic:  # make_method validates the name
            raise ValueError(f"the adjoint is an ODE, also behind an SDE sampler: its solver must be an ODE rule, "
                             f"got {self.solver!r}")
        self._check_fields()


@dataclass(frozen=True)
class AdjointDEIS(ODEAdjoint):
    """AdjointDEIS-k: the adjoint solved with exponential integrators in lambda, order 1 or 2, one
    model evaluation and one vector-Jacobian product per step, memory flat in steps.

    Two forms (:mod:`adjointdpm.backward` gives the equations):

    * ``form="data"`` (default): the data-prediction form, DPM-Solver++'s variables. The adjoint
      ``b = sigma a_x`` over ``u = e^lambda`` integrates exactly the part of ``sigma d eps/dx``
      that is near the identity, and each step takes its VJP at the state where the forward step
      evaluated the model. Order 1 on the forward's stored states behind ``dpm1`` *is* the exact
      gradient of the DDIM sampler (:class:`Checkpoint`'s, to round-off). The default because it
      holds up on learned models where the noise form does not (``results/cifar/adjoint_accuracy.md``,
      ``results/stable_diffusion/digits/adjoint_accuracy.md``, worst of the losses, adjoint steps =
      sampler steps, states re-solved): behind 10 / 20 DDIM steps on the digits DDPM++, order 1
      has cosine 0.537 / 0.983 to the sampler's exact gradient (relative error 0.84 / 0.27), order 2
      0.704 / 0.986 (1.0 / 0.72); behind 10 / 20 DPM-Solver-2M steps order 2 0.611 / 0.9995 (0.81 /
      0.096); on the latent digits model behind 10 DPM-Solver-2M steps, order 1 0.974 (0.35), order
      2 0.996 (0.12). Neither is within a few percent at 10 steps: there :class:`Checkpoint` or
      :class:`ReversibleAdjoint` gives the exact gradient.
    * ``form="noise"``: the poster's eq. 12 as written, in ``(y, rho)`` (the noise-prediction form):
      ``a_x(s) = (alpha_t/alpha_s) a_x(t) + sigma_s (e^h - 1) (alpha_t^2/alpha_s^2) a_x(t)^T deps/dx``,
      the VJP at the adjoint's current point; order 2 takes the VJPs linear in lambda through the last
      two points (DPM-Solver-2M on the adjoint system). It extrapolates the identity-like part of
      ``sigma d eps/dx`` across each step, which at about one unit of lambda per step sits at the edge of
      the explicit rules' stability: on the DDPM++ behind 10 DDIM steps its order 1 is uncorrelated
      with the sampler's gradient (cosine -0.22 and 0.13, 10-40 times too large) and its order 2 is
      44,000-1,600,000 times too large. Where the steps are shorter in lambda (the latent model's schedule: 0.6 per step at 10
      steps) it holds up better (cosine 0.77-0.92). Kept to reproduce the poster, and to show why the
      form matters.

    Behind ``sde-dpm1`` both forms solve the SDE's adjoint ODE (drift ``2 eps``; the data form then
    carries ``b = rho^2 a_y`` over ``u^2``, as SDE-DPM-Solver++ does); ``states="reuse"`` follows the
    stored sampled path (the poster's AdjointDEIS-1 on it, with ``form="noise"``).

    Args:
        order: 1 or 2.
        steps: the backward's steps (default: the forward's), on the forward's spacing and ends; with
            ``states="reuse"`` a multiple of the forward's.
        states: ``"reintegrate"`` re-solves ``y`` backwards (memory flat in steps); ``"reuse"`` restarts it
            from the forward's stored states at its grid points (one state per forward step).
        form: ``"data"`` or ``"noise"``.
    """

    order: int = 1
    steps: int | None = None
    _: KW_ONLY
    states: str = "reintegrate"
    form: str = "data"

    def __post_init__(self):
        if self.order not in (1, 2):
            raise ValueError(f"AdjointDEIS order must be 1 or 2, got {self.order!r}")
        if self.form not in ("data", "noise"):
            raise ValueError(f"AdjointDEIS form must be 'data' or 'noise', got {self.form!r}")
        self._check_fields()

    @property
    def solver(self) -> str:
        """The forward rule of the same order in lambda: the noise form solves the adjoint with it."""
        return "dpm1" if self.order == 1 else "dpm2m"

    def solve(self, problem, z0):
        if self.form == "noise":
            return super().solve(problem, z0)
        method, times, restart = self._plan(problem)
        run = _AdjointRun(problem, method, times, restart, reuse=self.states == "reuse", order=self.order)
        return _AdjointSolve.apply(run, z0, *run.wrt)


@dataclass(frozen=True)
class ReversibleAdjoint(Gradient):
    """The exact gradient of a reversible sampler (``solver="reversible-dpm1"``) at constant memory.

    The forward keeps no graph and nothing per step: only the final pair ``(y_N, z_N)``. Backward,
    each step is undone algebraically (:meth:`adjointdpm.solvers.ReversibleDPM1.backward`), its two
    model evaluations taken again at the reconstructed states, and the step's transpose applied
    there: two evaluations and two VJPs per step, the same as Checkpoint's recomputation. The
    gradient is :class:`Backprop`'s through the same sampler, up to the reconstruction's round-off
    (``tests/test_reversible.py``); the memory is flat in steps, as an adjoint's. What it costs is the
    sampler: two model evaluations per step instead of DDIM's one, and a sample that differs from
    DDIM's (``results/cifar/reversible.md``)."""

    def check(self, method):
        if not method.reversible:
            raise ValueError(f"ReversibleAdjoint differentiates a reversible solver (reversible-dpm1), got "
                             f"{method.name!r}")

    def solve(self, problem, z0):
        run = _ReversibleRun(problem)
        return _AdjointSolve.apply(run, z0, *run.wrt)


class _ReversibleRun:
    """The forward pass keeping only the final pair, and the backward pass undoing it step by step."""

    def __init__(self, problem: Problem):
        self.problem, self.wrt = problem, problem.wrt()
        self.grid = problem.grid(problem.times)

    def forward(self, z0):
        method, f, grid, steps = self.problem.method, self.problem.field, self.grid, len(self.grid) - 1
        self.dtype = z0.dtype
        y, z = z0, z0
        with torch.no_grad():
            for i in range(steps):
                y, z = method.forward(f, y, z, grid[i], grid[i + 1])
                check_finite((y, z), i + 1, steps, float(self.problem.times[i + 1]), "sample")
        return y, [z]

    def backward(self, y, stored, a_y):
        method, grid, wrt = self.problem.method, self.grid, self.wrt
        evaluate = lambda w, s, cot: field_vjp(self.problem.dz_ds, w, s, wrt, cot)  # noqa: E731
        z, a_z = stored[0], torch.zeros_like(a_y)
        a_wrt = [torch.zeros_like(w) for w in wrt]
        for i in reversed(range(len(grid) - 1)):
            y, z, a_y, a_z, a_w = method.backward(evaluate, y, z, a_y, a_z, grid[i], grid[i + 1])
            a_wrt = [a + g for a, g in zip(a_wrt, a_w)]
        # y_0 = z_0 = the initial state; the pair was held in float64 (ReversibleDPM1.wide)
        return (a_y + a_z).to(self.dtype), [a.to(w.dtype) for a, w in zip(a_wrt, wrt)]


class _AdjointRun:
    """The forward solve without a graph and the backward adjoint solve, for one call. The
    tensors that receive gradients (``wrt``) are fixed here, once, so the backward matches them
    to the forward's inputs even if ``requires_grad`` changes in between. ``order`` selects the
    data-form AdjointDEIS backward (:class:`~adjointdpm.backward.DataForm`); without it the
    augmented system is integrated by ``method`` (eq. 11)."""

    def __init__(self, problem: Problem, method: Method, times, restart, *, reuse: bool, order: int | None = None):
        self.problem, self.method, self.times, self.restart, self.reuse = problem, method, times, restart, reuse
        self.order = order
        self.wrt = problem.wrt()

    def forward(self, z0):
        states = [] if self.reuse else None
        z_end = self.problem.solve(z0, states=states)
        stored = [z0] + [s[0] for s in states] if self.reuse else []  # an SDE's: before each step's noise
        return z_end, stored

    def _before(self, stored):
        """Before backward step ``j``: the stored state where ``j`` is a forward grid point (``reuse``),
        else what the dynamics do to a re-solved state (``restart``)."""
        if not self.reuse:
            return self.restart
        stored = stored[::-1]
        per = (len(self.times) - 1) // (len(stored) - 1)
        return lambda j, state: state if j % per else (stored[j // per],) + tuple(state[1:])

    def backward(self, z_end, stored, a_end):
        if self.order is not None:
            solve = DataForm(self.problem, self.order, self.method, self.times, self.restart,
                             stored if self.reuse else None)
            return solve(z_end, a_end, self.wrt)
        state = (z_end, a_end) + tuple(torch.zeros_like(w) for w in self.wrt)
        state = integrate(self.method, augmented(self.problem.dz_ds, self.wrt), state,
                          self.problem.grid(self.times)[::-1], self.times.flip(0), before=self._before(stored),
                          what="adjoint state")
        return state[1], state[2:]


class _AdjointSolve(torch.autograd.Function):
    """``z_end = solve(z0)`` with the adjoint backward; ``wrt`` are the tensors (cond,
    parameters) whose gradients the adjoint accumulates."""

    @staticmethod
    def forward(ctx, run: _AdjointRun, z0, *wrt):
        z_end, stored = run.forward(z0)
        ctx.run = run
        ctx.save_for_backward(z_end, *stored)
        return z_end

    @staticmethod
    @once_differentiable
    def backward(ctx, a_end):
        z_end, *stored = ctx.saved_tensors
        a_z0, a_wrt = ctx.run.backward(z_end, stored, a_end)
        return (None, a_z0, *a_wrt)
