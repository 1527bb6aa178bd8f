"""Assignment 1's hidden tests (see ``hidden/__init__.py``): the adjoint's right-hand side, two steppers, the
gradient loop and the order fit, each on inputs the hand-out never shows."""
import math

import torch

from forbid import CLOSED_FORMS, FITTED_ORDER, GRADIENTS, SAMPLE, STEPPERS
from hidden import Hidden, close, number, tensor

F64 = dict(dtype=torch.float64)


def rhs_at_three_times(ns):
    schedule, gen, out = ns["schedule"], torch.Generator().manual_seed(123), {}
    for i, t in enumerate((0.05, 0.3, 0.9)):
        y, a = torch.randn(5, 2, generator=gen, **F64), torch.randn(5, 2, generator=gen, **F64)
        out[f"dy{i}"], out[f"da{i}"] = ns["adjoint_rhs"](y, a, schedule.rho(torch.tensor(t, **F64)))
    return out


# a linear, time-dependent system: RK4 is the degree-4 Taylor polynomial only for constant coefficients, so
# that case is compared to the solution's to round-off and the time-dependent one is checked for its order
A = torch.tensor([[0.0, 1.0], [-2.0, -0.3]], **F64)
TIMED_H = (0.1, 0.05)


def steps_on_linear_systems(ns):
    const = lambda y, a, rho: (y @ A.T, -a @ A)
    timed = lambda y, a, rho: (rho * y, -rho * a)  # y(rho) = y0 exp(rho^2 / 2)
    one = torch.ones(1, **F64)
    y, a = ns["rk4_step"](const, torch.tensor([[1.0, 0.5]], **F64), torch.tensor([[0.3, -1.0]], **F64), 0.0, 0.2)
    out = {"rk4_y": y, "rk4_a": a}
    out["euler_y"], out["euler_a"] = ns["euler_step"](timed, one, one, 1.0, 0.1)
    for i, h in enumerate(TIMED_H):
        out[f"rk4_timed{i}"] = ns["rk4_step"](timed, one, one, 1.0, h)[0]
    return out


def steps_check(got, want, setup):
    if not all(close(got, want, k, atol=1e-12) for k in ("rk4_y", "rk4_a", "euler_y", "euler_a")):
        return False
    timed = [tensor(got, f"rk4_timed{i}", (1,)) for i in range(len(TIMED_H))]
    if any(v is None for v in timed):
        return False
    errors = [abs(float(v) - math.exp(((1 + h) ** 2 - 1) / 2)) for v, h in zip(timed, TIMED_H)]
    return errors[1] > 0 and 24 < errors[0] / errors[1] < 40  # local error O(h^5): ratio 2^5 = 32


def _ref_rhs(schedule, model):
    def rhs(y, a_y, rho):
        t = schedule.time_of_rho(rho)
        eps, vjp = torch.func.vjp(lambda v: model(schedule.alpha(t) * v, t.expand(v.shape[0])), y)
        return eps, -vjp(a_y)[0]
    return rhs


def euler_loop(ns):
    calls = []

    def euler(rhs, y, a, rho, h):
        calls.append(float(h))
        dy, da = rhs(y, a, rho)
        return y + h * dy, a + h * da
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(8), **F64)
    grad = ns["grad_x_T"](x, 12, step=euler, rhs=_ref_rhs(ns["schedule"], ns["model"]))
    return {"grad": grad, "calls": torch.tensor(calls, **F64)}


def euler_loop_check(got, want, setup):
    calls = tensor(got, "calls")
    return calls is not None and calls.shape == (12,) and bool((calls > 0).all()) and \
        close(got, want, "grad", rtol=1e-10, atol=1e-12)


def rk4(rhs, y, a, rho, h):
    """The grader's RK4 step of the coupled system: the library's (question 3 forbids no stepper)."""
    from adjointdpm.solvers import RK4
    (y, a), _ = RK4().step(lambda z, s: rhs(*z, s), (y, a), rho, rho + h, ())
    return y, a


RK4_X = lambda: torch.randn(6, 2, generator=torch.Generator().manual_seed(7), **F64) * 1.5


def rk4_loop(ns):
    return {"grad": ns["grad_x_T"](RK4_X(), 40, step=rk4, rhs=_ref_rhs(ns["schedule"], ns["model"]))}


def rk4_loop_expect(ns):
    """The closed form and the library's Adjoint taking the same 40 RK4 steps, from the solution's set-up."""
    from toy import flow_map, flow_map_vjp
    from adjointdpm import Adjoint, sample
    x, schedule, t_start, t_end = RK4_X(), ns["schedule"], ns["t_start"], ns["t_end"]
    end = flow_map(x, ns["mean"], ns["log_scale"], schedule, t_start, t_end)
    exact = flow_map_vjp(x, ns["mean"], ns["log_scale"], ns["loss_grad"](end), schedule, t_start, t_end)["x_T"]
    x = x.clone().requires_grad_()
    x_end = sample(ns["model"], x, schedule, steps=40, solver="rk4", t_start=t_start, t_end=t_end, gradient=Adjoint())
    (library,) = torch.autograd.grad(x_end, x, ns["loss_grad"](x_end.detach()))
    return {"exact": exact, "library": library}


def rk4_loop_check(got, want, setup):
    grad = tensor(got, "grad", want["exact"].shape)
    return grad is not None and float((grad - want["exact"]).norm() / want["exact"].norm()) < 2e-4 and \
        close(got, want, "grad", rtol=1e-9, atol=1e-12) and close(got, {"grad": want["library"]}, "grad", 1e-9, 1e-12)


def uneven_fit(ns):
    n = [3, 7, 20, 55]
    return {"p": ns["fit_order"](n, [2.5 * k ** -3.3 * (1.05 if i % 2 else 0.95) for i, k in enumerate(n)])}


def uneven_fit_check(got, want, setup):
    p, reference = number(got, "p"), number(want, "p")
    return p is not None and abs(p - reference) < 1e-9


TESTS = (
    Hidden("q1", "rhs_at_three_times",
           "adjoint_rhs does not give (eps, -a_y^T d eps/dy) at some time, or it uses sample or a gradient strategy",
           rhs_at_three_times, lambda got, want, setup: all(close(got, want, k, atol=1e-10) for k in want),
           forbid=(SAMPLE, *GRADIENTS)),
    Hidden("q2", "steps_on_linear_systems",
           "euler_step or rk4_step is not the classical step on a linear test system (constant or time-dependent "
           "coefficients), or it uses the library's solvers",
           steps_on_linear_systems, steps_check, forbid=(SAMPLE, *STEPPERS, *GRADIENTS)),
    Hidden("q3", "euler_loop",
           "grad_x_T does not take exactly `steps` steps of the `step` and `rhs` it is given, from rho_end back to "
           "rho_T (checked with an Euler stepper), or it uses a gradient strategy or the closed form",
           euler_loop, euler_loop_check, forbid=(*GRADIENTS, *CLOSED_FORMS)),
    Hidden("q3", "rk4_loop",
           "with RK4 steps, grad_x_T is further than 2e-4 (relative) from the closed-form gradient at 40 steps, or "
           "differs from the library's Adjoint taking the same steps",
           rk4_loop, rk4_loop_check, forbid=(*GRADIENTS, *CLOSED_FORMS), expect=rk4_loop_expect),
    Hidden("q4", "uneven_fit", "fit_order is not the least-squares slope of -log(error) against log(steps) on uneven data",
           uneven_fit, uneven_fit_check, forbid=FITTED_ORDER),
)
