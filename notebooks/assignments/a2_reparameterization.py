# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [raw]
# # ASSIGNMENT CONFIG
# name: a2_reparameterization
# export_cell: false
# run_tests: false
# check_all_cell: false
# generate: true

# %% [markdown]
# # Assignment 2 · The reparameterization
#
# *Builds on notebook 01, sections 4 and 6 (the reparameterization; Table 1 in 2-D), and on
# notebook 02, sections 2 and 4 (three samplers at an exact budget; where each makes its error).
# Paper: Pan et al., "AdjointDPM: Adjoint Sensitivity Method for Gradient Backpropagation of
# Diffusion Probabilistic Models", ICLR 2024, Sec. 3.2 and Table 1
# ([arXiv:2307.10711](https://arxiv.org/abs/2307.10711)).*
#
# The probability-flow ODE (paper eq. 4) in `(x, t)` is `dx/dt = f(t) x + g(t)^2 / (2 sigma_t) eps(x, t)`.
# Section 3.2 of the paper removes its linear part and changes the time variable. Derive it (the
# derivation is part of the assignment's reading; Question 4 uses it):
#
# 1. For VP, `alpha_t' = f(t) alpha_t`, `sigma_t^2 = 1 - alpha_t^2` and `g^2 = -2 f`; so
#    `sigma_t' = -alpha_t alpha_t' / sigma_t = g^2/(2 sigma_t) + f sigma_t`.
# 2. With `y = x / alpha_t`: `dy/dt = x'/alpha_t - x alpha_t'/alpha_t^2 = g^2/(2 sigma_t alpha_t) eps`:
#    the integrating factor `1/alpha_t` removes `f x` exactly.
# 3. With `rho = sigma_t / alpha_t`: `drho/dt = (sigma_t' - f sigma_t)/alpha_t = g^2/(2 sigma_t alpha_t)`,
#    the same factor. Dividing the two,
#
# $$\frac{dy}{d\rho} = \epsilon\big(\alpha_{t(\rho)}\, y,\; t(\rho)\big) \qquad \text{(eq. 10)}$$
#
# Its right-hand side is just the network's output: a solver of eq. 10 approximates how `eps` changes
# over a step in `rho`, where a solver of eq. 4 must also follow `f x` and the factor `1/sigma_t`
# over a step in `t`. Euler's method on eq. 10 is DPM-Solver-1 (and DDIM). You will implement both and
# measure whether the change of variables buys accuracy at equal cost. Whether it does is an empirical
# question: on the DDPM++ of notebook 02 it depends on the time grid and the budget
# (`results/cifar/table1_digits.md`), so your numbers, not the paper's, decide it here.

# %%
import math

import torch

from adjointdpm import GaussianMixture, VPSchedule, sample
from toy import flow_map
from toy.reproduce import fitted_order

torch.set_default_dtype(torch.float64)
schedule = VPSchedule.linear()
mean, log_scale = torch.tensor([1.5, -1.0]), torch.log(torch.tensor([0.05, 0.2]))
model = GaussianMixture(torch.ones(1), mean[None], log_scale.exp()[None], schedule).requires_grad_(False)
t_start, t_end = 1.0, 1e-3
x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(0))
exact = flow_map(x_T, mean, log_scale, schedule, t_start, t_end)  # the closed-form solution


def fit_order(nfes, errors):
    """The p in error ~ C NFE^-p (least squares in log-log), by the library's fit."""
    return fitted_order([{"steps": n, "error": e} for n, e in zip(nfes, errors)])

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3
# all_or_nothing: true

# %% [markdown]
# ## Question 1 (3 points): the vector field of eq. 10
#
# Write `reparam_field(y, rho)` returning `dy/drho` for a batch `y` of shape `(batch, 2)`
# and a scalar tensor `rho`. Use `schedule.time_of_rho`, `schedule.alpha`, and call the
# model as `model(x, t_batch)` with `t_batch` of shape `(batch,)`. Not allowed: the library's
# sampler and solvers (`sample`, `adjointdpm.solvers`, the spaces in `adjointdpm.ode`): they
# raise while the hidden test runs. Graded to a relative 1e-8 at three times.

# %% [raw]
# # BEGIN SOLUTION

# %%
def reparam_field(y, rho):
    # BEGIN SOLUTION
    t = schedule.time_of_rho(rho)
    return model(schedule.alpha(t) * y, t.expand(y.shape[0]))
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert reparam_field(x_T, schedule.rho(torch.tensor(0.5))).shape == x_T.shape

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 2
# all_or_nothing: true

# %% [markdown]
# ## Question 2 (2 points): DPM-Solver-1 from it
#
# Write `dpm1_step(x_s, t_s, t_t, field=reparam_field)`: one Euler step of eq. 10 from time
# `t_s` to `t_t < t_s`, in `x` coordinates: convert to `y`, step in `rho`, convert back.
# Use the argument `field` (the grader passes its own, which is not eq. 10's). Not allowed:
# `sample` and the library's solvers. Then `dpm1_sample` runs it on a grid. Graded to a
# relative 1e-8.

# %% [raw]
# # BEGIN SOLUTION

# %%
def dpm1_step(x_s, t_s, t_t, field=reparam_field):
    # BEGIN SOLUTION
    t_s, t_t = torch.as_tensor(t_s), torch.as_tensor(t_t)
    rho_s, rho_t = schedule.rho(t_s), schedule.rho(t_t)
    y_t = x_s / schedule.alpha(t_s) + (rho_t - rho_s) * field(x_s / schedule.alpha(t_s), rho_s)
    return schedule.alpha(t_t) * y_t
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %%
def dpm1_sample(x, steps):
    times = schedule.grid(steps, "logSNR", t_start=t_start, t_end=t_end)
    for t_s, t_t in zip(times[:-1], times[1:]):
        x = dpm1_step(x, t_s, t_t)
    return x


print("DPM-Solver-1, 20 steps: RMSE", float((dpm1_sample(x_T, 20) - exact).pow(2).mean().sqrt()))

# %% [raw]
# # BEGIN TESTS

# %%
# with a zero field, y does not move: x_t = (alpha_t / alpha_s) x_s
_ratio = schedule.alpha(torch.tensor(0.4)) / schedule.alpha(torch.tensor(0.5))
assert torch.allclose(dpm1_step(x_T, 0.5, 0.4, field=lambda y, rho: torch.zeros_like(y)), _ratio * x_T)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 3
# all_or_nothing: true

# %% [markdown]
# ## Question 3 (3 points): equal cost, different accuracy
#
# Both samplers below are first order and call the model once per step, so NFE = steps:
# - eq. 4: `sample(model, x_T, schedule, steps=nfe, solver="euler", space="original", t_start=t_start, t_end=t_end)`
# - eq. 10: `sample(model, x_T, schedule, steps=nfe, solver="dpm1", space="reparam", t_start=t_start, t_end=t_end)`
#
# (both on the default logSNR grid). Fill `errors["eq4"]` and `errors["eq10"]` with the RMSE
# against `exact` at each NFE of `nfes` (RMSE: `(x - exact).pow(2).mean().sqrt()`, as a float),
# set `order_eq4` and `order_eq10` with `fit_order`, and set `better_at_5` to `"eq4"` or
# `"eq10"`: which is more accurate at NFE 5. (Not NFE 10: there the two differ by about 2 %, less than
# a change of grid or of `x_T` moves them, a tie that no single comparison should decide.)

# %% [raw]
# # BEGIN SOLUTION

# %%
nfes = [5, 10, 20, 50]
errors = {"eq4": [], "eq10": []}
# BEGIN SOLUTION
for nfe in nfes:
    for key, cfg in (("eq4", dict(solver="euler", space="original")), ("eq10", dict(solver="dpm1", space="reparam"))):
        x = sample(model, x_T, schedule, steps=nfe, t_start=t_start, t_end=t_end, **cfg)
        errors[key].append(float((x - exact).pow(2).mean().sqrt()))
order_eq4, order_eq10 = fit_order(nfes, errors["eq4"]), fit_order(nfes, errors["eq10"])
better_at_5 = "eq10" if errors["eq10"][0] < errors["eq4"][0] else "eq4"
# END SOLUTION

# %% [raw]
# # END SOLUTION

# %%
for key in errors:
    print(key, ["%.2e" % e for e in errors[key]])
print(f"orders: eq. 4 {order_eq4:.2f}, eq. 10 {order_eq10:.2f}; more accurate at NFE 5: {better_at_5}")

# %% [raw]
# # BEGIN TESTS

# %%
assert len(errors["eq4"]) == len(errors["eq10"]) == len(nfes)

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# manual: true
# points: 1

# %% [markdown]
# ## Question 4 (1 point, graded by hand)
#
# Compare your two error columns: where does eq. 10 win, where does it lose, and how do
# your two orders explain the trend? The paper's Table 1 has eq. 10 clearly ahead of
# eq. 4 at NFE 10 (4th-order Adams-Bashforth, a trained network on CIFAR-10). Name one
# difference between that setting and this one (solver order, what `eps` looks like along
# the path, the time grid) that could explain a different outcome, in three sentences at most.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer** (with the committed notebook's numbers: eq. 4 7.69e-2, 3.15e-2, 1.30e-2, 4.63e-3 and
# eq. 10 5.72e-2, 3.10e-2, 1.64e-2, 6.79e-3 at NFE 5, 10, 20, 50; orders 1.22 and 0.93). Eq. 10 wins at
# NFE 5, ties at NFE 10 (2 % apart) and loses from NFE 20 on: both are first-order methods, but eq. 4's
# error falls a little faster (order 1.2 against 0.9), so the curves cross. The paper's setting differs
# in the solver: 4th-order Adams-Bashforth is accurate where a field is close to a cubic over a step in
# its own variable, and notebook 01 section 4 measures that eq. 4's field is so at the noise end (its
# RK4 start-up leaves errors below 1e-2) while eq. 10's first step, long in `rho`, is where it loses;
# and in the time grid, which decides how many steps fall where: on the learned DDPM++ the order of
# eq. 4 + AB4 and eq. 10 + AB4 changes with the grid (`results/cifar/table1_digits.md`).
#
# **Rubric (1 point).** 0.5: a reading of *their own* columns that agrees with their orders (where
# eq. 10 wins, where it loses, that the higher measured order explains the crossing). 0.5: one
# relevant difference from the paper's setting (the solver's order and where on the path each field is
# close to a polynomial, a learned `eps` against an exact linear one, the time grid) tied to the
# outcome. "Eq. 4 is stiff near the data" earns nothing by itself: no step here is unstable, and the
# notebooks measure where each solver's error is made instead. An answer that repeats the paper's
# claim against its own numbers gets at most 0.5.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
