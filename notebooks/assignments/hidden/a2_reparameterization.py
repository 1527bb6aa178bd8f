"""Assignment 2's hidden tests (see ``hidden/__init__.py``): eq. 10's field, DPM-Solver-1's step with the field
it is given, and the equal-cost comparison."""
import torch

from forbid import FIELDS, SAMPLE, STEPPERS
from hidden import Hidden, close, number

F64 = dict(dtype=torch.float64)
FIELD_TIMES = ((0.9, 0.8), (0.3, 0.25), (0.05, 0.04))
STEP_TIMES = ((1.0, 0.7), (0.2, 0.01))


def field_at_three_times(ns):
    schedule, gen, out = ns["schedule"], torch.Generator().manual_seed(5), {}
    for i, (s, _) in enumerate(FIELD_TIMES):
        x = torch.randn(7, 2, generator=gen, **F64) * 2
        s = torch.tensor(s, **F64)
        out[f"field{i}"] = ns["reparam_field"](x / schedule.alpha(s), schedule.rho(s))
    return out


def field_expect(ns):
    """One Euler step of the library's eq. 10 solver gives the field: (y_t - y_s) / (rho_t - rho_s)."""
    from adjointdpm import sample
    schedule, gen, out = ns["schedule"], torch.Generator().manual_seed(5), {}
    for i, (s, t) in enumerate(FIELD_TIMES):
        x = torch.randn(7, 2, generator=gen, **F64) * 2
        x_t = sample(ns["model"], x, schedule, steps=1, solver="euler", space="reparam", t_start=s, t_end=t)
        s, t = torch.tensor(s, **F64), torch.tensor(t, **F64)
        out[f"quotient{i}"] = (x_t / schedule.alpha(t) - x / schedule.alpha(s)) / (schedule.rho(t) - schedule.rho(s))
    return out


def field_check(got, want, setup):
    return all(close(got, want, f"field{i}", rtol=1e-8, atol=1e-10) and
               close(got, {f"field{i}": want[f"quotient{i}"]}, f"field{i}", rtol=1e-8, atol=1e-10)
               for i in range(len(FIELD_TIMES)))


CONSTANT = torch.tensor([0.7, -1.3], **F64)  # a constant field: y_t = y_s + (rho_t - rho_s) c exactly


def steps_with_two_fields(ns):
    schedule, model, out = ns["schedule"], ns["model"], {}

    def field(y, rho):
        t = schedule.time_of_rho(rho)
        return model(schedule.alpha(t) * y, t.expand(y.shape[0]))
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(11), **F64)
    for i, (s, t) in enumerate(STEP_TIMES):
        out[f"eq10_{i}"] = ns["dpm1_step"](x, s, t, field=field)
        out[f"constant_{i}"] = ns["dpm1_step"](x, s, t, field=lambda y, rho: CONSTANT.expand_as(y))
    return out


def steps_expect(ns):
    """DDIM's closed form (DPM-Solver-1, Lu et al. 2022), the library's dpm1, and the constant field's exact step."""
    from adjointdpm import sample
    schedule, model, out = ns["schedule"], ns["model"], {}
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(11), **F64)
    for i, (s, t) in enumerate(STEP_TIMES):
        a_s, a_t = schedule.alpha(torch.tensor(s, **F64)), schedule.alpha(torch.tensor(t, **F64))
        h = schedule.lambda_(torch.tensor(t, **F64)) - schedule.lambda_(torch.tensor(s, **F64))
        out[f"ddim_{i}"] = a_t / a_s * x - schedule.sigma(torch.tensor(t, **F64)) * torch.expm1(h) * model(x, torch.full((9,), s, **F64))
        out[f"library_{i}"] = sample(model, x, schedule, steps=1, solver="dpm1", t_start=s, t_end=t)
        rho_s, rho_t = schedule.rho(torch.tensor(s, **F64)), schedule.rho(torch.tensor(t, **F64))
        out[f"exact_constant_{i}"] = a_t * (x / a_s + (rho_t - rho_s) * CONSTANT)
    return out


def steps_check(got, want, setup):
    for i in range(len(STEP_TIMES)):
        for key, reference, rtol, atol in ((f"eq10_{i}", f"ddim_{i}", 1e-8, 1e-10), (f"eq10_{i}", f"library_{i}", 0, 1e-10),
                                           (f"constant_{i}", f"exact_constant_{i}", 1e-8, 1e-10)):
            if not (close(got, want, key, rtol, atol) and close(got, {key: want[reference]}, key, rtol, atol)):
                return False
    return True


def equal_cost(ns):
    errors = ns["errors"]
    out = {f"{key}_{i}": float(e) for key in ("eq4", "eq10") for i, e in enumerate(errors[key])}
    return out | {"count_eq4": len(errors["eq4"]), "count_eq10": len(errors["eq10"]), "order_eq4": float(ns["order_eq4"]),
                  "order_eq10": float(ns["order_eq10"]), "better_at_5": str(ns["better_at_5"])}


def equal_cost_check(got, want, setup):
    """The RMSEs to relative 1e-9, the orders to 1e-6 and the comparison: the solution's, from the same set-up."""
    if got.get("count_eq4") != want["count_eq4"] or got.get("count_eq10") != want["count_eq10"]:
        return False
    for key in want:
        if key.startswith(("eq4_", "eq10_")):
            value = number(got, key)
            if value is None or abs(value - want[key]) > 1e-9 * want[key]:
                return False
    orders = [number(got, k) for k in ("order_eq4", "order_eq10")]
    return None not in orders and all(abs(v - want[k]) < 1e-6 for v, k in zip(orders, ("order_eq4", "order_eq10"))) \
        and got.get("better_at_5") == want["better_at_5"]


TESTS = (
    Hidden("q1", "field_at_three_times",
           "reparam_field(y, rho) is not eps(alpha y, t(rho)) at some time, or it uses the library's sampler or solvers",
           field_at_three_times, field_check, forbid=(SAMPLE, *STEPPERS, *FIELDS), expect=field_expect),
    Hidden("q2", "steps_with_two_fields",
           "dpm1_step is not one Euler step in rho of the field it is given (checked with eq. 10's field against "
           "DDIM's closed form, and with another field whose step is known), or it uses sample or the library's solvers",
           steps_with_two_fields, steps_check, forbid=(SAMPLE, *STEPPERS), expect=steps_expect),
    Hidden("q3", "equal_cost",
           "errors, the two orders or better_at_5 differ from the requested RMSEs (relative 1e-9), orders (1e-6) or "
           "comparison", equal_cost, equal_cost_check),
)
