"""Each solver's error against the closed-form flow map falls at its order."""
import math

import pytest
import torch

from adjointdpm import VPSchedule, sample, steps_for_nfe
from helpers import T_END, exact, gaussian, noise, rel

# (space, solver, order, step counts in the asymptotic range)
CASES = [
    ("reparam", "euler", 1, (40, 80, 160)),
    ("reparam", "heun", 2, (40, 80, 160)),
    ("reparam", "rk4", 4, (20, 40, 80)),
    ("reparam", "adams4", 4, (160, 320, 640)),
    ("reparam", "dpm1", 1, (40, 80, 160)),
    ("reparam", "dpm2", 2, (40, 80, 160)),
    ("reparam", "dpm3", 3, (40, 80, 160)),
    ("reparam", "dpm2m", 2, (40, 80, 160)),
    ("original", "euler", 1, (40, 80, 160)),
    ("original", "heun", 2, (40, 80, 160)),
    ("original", "rk4", 4, (40, 80, 160)),
    ("original", "adams4", 4, (40, 80, 160)),
]


@pytest.mark.parametrize("space,solver,order,steps", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_convergence_order(space, solver, order, steps):
    x_T = noise()
    x_exact, _ = exact(x_T)
    errors = [rel(sample(gaussian(), x_T, VPSchedule.linear(), steps=n, solver=solver, space=space), x_exact)
              for n in steps]
    slopes = [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]
    assert all(s > order - 0.35 for s in slopes), (errors, slopes)
    assert slopes[-1] < order + 0.5, (errors, slopes)  # not accidentally of a higher order


def test_dopri5_meets_its_tolerance():
    x_T = noise()
    x_exact, _ = exact(x_T)
    x, info = sample(gaussian(), x_T, VPSchedule.linear(), steps=4, solver="dopri5", rtol=1e-8, atol=1e-8,
                     return_info=True)
    assert rel(x, x_exact) < 1e-6
    assert info.nfe_forward > 4 * 6  # adaptive: several evaluations per grid interval


def test_dpm_solver_1_is_ddim():
    """DDIM: x_t = alpha_t (x_s - sigma_s eps) / alpha_s + sigma_t eps, written independently."""
    sched, model, x = VPSchedule.linear(), gaussian(), noise()
    times = sched.grid(6, "logSNR", t_end=T_END)
    for s, t in zip(times[:-1], times[1:]):
        a_s, s_s, a_t, s_t = (float(v) for v in (sched.alpha(s), sched.sigma(s), sched.alpha(t), sched.sigma(t)))
        eps = model(x, torch.full((x.shape[0],), float(s), dtype=x.dtype))
        x = a_t * (x - s_s * eps) / a_s + s_t * eps
    ours = sample(model, noise(), sched, steps=6, solver="dpm1", spacing="logSNR")
    assert torch.allclose(ours, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("solver,nfe", [("euler", lambda n: n), ("heun", lambda n: 2 * n), ("rk4", lambda n: 4 * n),
                                        ("adams4", lambda n: 4 * n if n <= 2 else n + 6), ("dpm2", lambda n: 2 * n),
                                        ("dpm3", lambda n: 3 * n), ("dpm2m", lambda n: n)])
def test_nfe_is_counted_exactly_and_budgets_invert_it(solver, nfe):
    for steps in (1, 2, 5, 12):
        _, info = sample(gaussian(), noise(4), VPSchedule.linear(), steps=steps, solver=solver, return_info=True)
        assert info.nfe_forward == nfe(steps)
        assert steps_for_nfe(solver, nfe(steps)) == steps


def test_budgets_that_cannot_be_met():
    with pytest.raises(ValueError, match="'dpm3' cannot spend exactly 10 .* 3, 6, 9, 12, 15, 18, ..."):
        steps_for_nfe("dpm3", 10)
    with pytest.raises(ValueError, match=r"'dopri5' cannot .* \(adaptive"):
        steps_for_nfe("dopri5", 10)


def test_one_table_names_every_solver_and_sample_s_docstring_lists_each():
    """``SOLVERS`` is the one place a solver is registered: each entry builds the method of that name, takes
    its own options and no other, and ``sample``'s docstring (what a user reads) lists every name."""
    from adjointdpm.solvers import SOLVERS, make_method
    for name in SOLVERS:
        assert make_method(name).name == name
        assert f"``{name}``" in sample.__doc__, f"sample's docstring does not list {name}"
    assert make_method("dopri5", rtol=1e-3, atol=1e-4).rtol == 1e-3
    assert make_method("reversible-dpm1", coupling=0.5).coupling == 0.5
    with pytest.raises(ValueError, match="coupling is for the reversible solvers"):
        make_method("rk4", coupling=0.5)
