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
# name: a1_adjoint_step
# export_cell: false
# run_tests: false
# check_all_cell: false
# generate: true

# %% [markdown]
# # Assignment 1 · The adjoint step
#
# *Builds on notebook 01, sections 3 and 5 (the adjoint ODE, eq. 11 and its derivation; a
# gradient check against the closed form). Paper: Pan et al., "AdjointDPM: Adjoint Sensitivity
# Method for Gradient Backpropagation of Diffusion Probabilistic Models", ICLR 2024, Sec. 3.1-3.3
# and eq. 11 ([arXiv:2307.10711](https://arxiv.org/abs/2307.10711)).*
#
# In notebook 01 the library's `Adjoint()` gave `dL/dx_T` with memory that does not grow
# with the number of steps. Here you build it yourself, on the single Gaussian, where the
# exact gradient is known in closed form.
#
# **The setting.** In the reparameterized coordinates `y = x / alpha_t`, `rho = sigma_t / alpha_t`
# the probability-flow ODE is eq. 10 of the paper, `dy/drho = eps(alpha_t y, t)` with
# `t = t(rho)`. Sampling runs from `rho_T` (large, noise) down to `rho_end` (small, data).
# For a loss `L(x_end)` the adjoint `a_y(rho) = dL/dy(rho)` obeys the augmented system
# (paper eq. 11, the `y` and `a_y` rows):
#
# $$\frac{dy}{d\rho} = \epsilon(\alpha y, t), \qquad \frac{da_y}{d\rho} = -\,a_y^\top \frac{\partial \epsilon(\alpha y, t)}{\partial y}.$$
#
# Starting from `y_end` and `a_y(rho_end) = alpha_end dL/dx_end`, we solve it **backwards**,
# from `rho_end` up to `rho_T`; then `dL/dx_T = a_y(rho_T) / alpha_T`. Nothing of the forward
# solve is stored: `y` is re-integrated alongside `a_y`.
#
# Run every cell in order. Each question says what to write; `grader.check` runs the
# visible tests (more, hidden ones grade your work with other inputs). You are building
# what the library already has, so each question names the library pieces it may not use:
# while its hidden tests run, those pieces raise an error instead of answering.

# %%
import math

import torch

from adjointdpm import Adjoint, GaussianMixture, VPSchedule, sample
from toy import flow_map, flow_map_vjp

torch.set_default_dtype(torch.float64)  # gradients are compared to closed forms at 1e-8
schedule = VPSchedule.linear()
mean, log_scale = torch.tensor([1.0, -0.5]), torch.log(torch.tensor([0.3, 0.6]))
model = GaussianMixture(torch.ones(1), mean[None], log_scale.exp()[None], schedule).requires_grad_(False)  # exact eps
t_start, t_end = 1.0, 1e-3
x_T = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
target = torch.tensor([0.5, 0.5])


def loss_grad(x_end):
    """dL/dx_end for L = sum |x_end - target|^2 / 2."""
    return x_end - target

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 3
# all_or_nothing: true

# %% [markdown]
# ## Question 1 (3 points): the right-hand side
#
# Write `adjoint_rhs(y, a_y, rho)` returning the pair `(dy/drho, da_y/drho)` of the system
# above. Use `t = schedule.time_of_rho(rho)`, `alpha = schedule.alpha(t)`, and call the model
# as `model(x, t_batch)` with `t_batch` of shape `(batch,)`. Compute the vector-Jacobian
# product `a_y^T d eps/dy` with `torch.autograd.grad` (hint: make a detached copy of `y`
# that requires grad, evaluate `eps`, and pass `grad_outputs=a_y`), never by forming the
# Jacobian. Not allowed: `sample` and the gradient strategies (`Adjoint`, `AdjointDEIS`,
# `Backprop`, `Checkpoint`). Graded against a reference to 1e-10 at three times.

# %% [raw]
# # BEGIN SOLUTION

# %%
def adjoint_rhs(y, a_y, rho):
    # BEGIN SOLUTION
    t = schedule.time_of_rho(rho)
    alpha = schedule.alpha(t)
    with torch.enable_grad():
        y = y.detach().requires_grad_(True)
        eps = model(alpha * y, t.expand(y.shape[0]))
        (vjp,) = torch.autograd.grad(eps, y, grad_outputs=a_y)
    return eps.detach(), -vjp
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_rho = schedule.rho(torch.tensor(0.5))
_dy, _da = adjoint_rhs(x_T, torch.ones_like(x_T), _rho)
assert _dy.shape == x_T.shape and _da.shape == x_T.shape

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
# ## Question 2 (2 points): one Euler step and one RK4 step
#
# Write `euler_step(rhs, y, a, rho, h)` and `rk4_step(rhs, y, a, rho, h)`: one explicit step
# of size `h` (positive here: backwards in the sampling direction means increasing `rho`)
# of the coupled system `(y, a)' = rhs(y, a, rho)`. Both return the new pair `(y, a)`.
# Classical RK4 evaluates `rhs` four times, at `rho`, `rho + h/2` (twice) and `rho + h`.
# Not allowed: the library's solvers (`sample`, the steppers in `adjointdpm.solvers`) and
# gradient strategies. Graded on linear systems with known solutions, to 1e-12.

# %% [raw]
# # BEGIN SOLUTION

# %%
def euler_step(rhs, y, a, rho, h):
    # BEGIN SOLUTION
    dy, da = rhs(y, a, rho)
    return y + h * dy, a + h * da
    # END SOLUTION


def rk4_step(rhs, y, a, rho, h):
    # BEGIN SOLUTION
    k1 = rhs(y, a, rho)
    k2 = rhs(y + h / 2 * k1[0], a + h / 2 * k1[1], rho + h / 2)
    k3 = rhs(y + h / 2 * k2[0], a + h / 2 * k2[1], rho + h / 2)
    k4 = rhs(y + h * k3[0], a + h * k3[1], rho + h)
    return tuple(z + h / 6 * (p + 2 * q + 2 * r + s) for z, p, q, r, s in zip((y, a), k1, k2, k3, k4))
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
_lin = lambda y, a, rho: (-y, a)  # y' = -y, a' = a
_y1, _a1 = euler_step(_lin, torch.ones(1), torch.ones(1), 0.0, 0.1)
assert torch.allclose(_y1, torch.tensor([0.9])) and torch.allclose(_a1, torch.tensor([1.1]))

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
# ## Question 3 (3 points): `dL/dx_T` by the adjoint method
#
# Write `grad_x_T(x_T, steps, step=rk4_step, rhs=adjoint_rhs)`:
# 1. sample `x_end` with `sample(model, x_T, schedule, steps=steps, solver="rk4", t_start=t_start, t_end=t_end)`
#    (no graph needed: wrap it in `torch.no_grad()`);
# 2. take the grid `rhos = schedule.rho(schedule.grid(steps, "logSNR", t_start=t_start, t_end=t_end))`
#    (decreasing, from `rho_T` to `rho_end`);
# 3. start from `y = x_end / alpha_end`, `a = alpha_end * loss_grad(x_end)` and take `steps`
#    steps of `step` backwards through the grid (from `rhos[-1]` to `rhos[0]`);
# 4. return `a / alpha_T`.
#
# Use the arguments `step` and `rhs` (not the global names): the grader passes its own,
# among them a different stepper, and expects exactly `steps` calls of `step`. Not allowed:
# the gradient strategies (`Adjoint`, `AdjointDEIS`, `Backprop`, `Checkpoint`) and the closed
# form `flow_map_vjp`; `sample` is allowed for the forward pass (step 1). Graded to 1e-10
# against the same loop, and to 2e-4 against the closed form at 40 RK4 steps.

# %% [raw]
# # BEGIN SOLUTION

# %%
def grad_x_T(x_T, steps, step=rk4_step, rhs=adjoint_rhs):
    # BEGIN SOLUTION
    with torch.no_grad():
        x_end = sample(model, x_T, schedule, steps=steps, solver="rk4", t_start=t_start, t_end=t_end)
    rhos = schedule.rho(schedule.grid(steps, "logSNR", t_start=t_start, t_end=t_end))
    alpha_end, alpha_T = schedule.alpha(torch.tensor(t_end)), schedule.alpha(torch.tensor(t_start))
    y, a = x_end / alpha_end, alpha_end * loss_grad(x_end)
    for i in range(steps, 0, -1):
        y, a = step(rhs, y, a, rhos[i], rhos[i - 1] - rhos[i])
    return a / alpha_T
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [markdown]
# Compare with the closed form (`toy.flow_map_vjp`) and with the library:

# %%
exact = flow_map_vjp(x_T, mean, log_scale, loss_grad(flow_map(x_T, mean, log_scale, schedule, t_start, t_end)),
                     schedule, t_start, t_end)["x_T"]
mine = grad_x_T(x_T, 20)
x = x_T.clone().requires_grad_()
x_end = sample(model, x, schedule, steps=20, solver="rk4", t_start=t_start, t_end=t_end, gradient=Adjoint())
(((x_end - target) ** 2).sum() / 2).backward()
print("relative error, mine vs closed form:", float((mine - exact).norm() / exact.norm()))
print("relative error, library Adjoint vs closed form:", float((x.grad - exact).norm() / exact.norm()))

# %% [raw]
# # BEGIN TESTS

# %%
# a step that changes nothing: the answer is then alpha_end dL/dx_end / alpha_T
_still = lambda rhs, y, a, rho, h: (y, a)
_x_end = sample(model, x_T, schedule, steps=10, solver="rk4", t_start=t_start, t_end=t_end)
_ratio = schedule.alpha(torch.tensor(t_end)) / schedule.alpha(torch.tensor(t_start))
assert torch.allclose(grad_x_T(x_T, 10, step=_still), _ratio * loss_grad(_x_end))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q4
# points: 2
# all_or_nothing: true

# %% [markdown]
# ## Question 4 (2 points): the order of the error
#
# Write `fit_order(steps, errors)`: the slope `p` of the least-squares line through
# `(log steps, -log errors)`, i.e. the `p` in `error ~ C steps^-p`. Then run the cell
# after it, which measures the gradient error of your Euler and RK4 adjoints.
# Not allowed: `toy.reproduce.fitted_order` (the library's own fit).

# %% [raw]
# # BEGIN SOLUTION

# %%
def fit_order(steps, errors):
    # BEGIN SOLUTION
    u = torch.log(torch.as_tensor(steps, dtype=torch.float64))
    v = -torch.log(torch.as_tensor(errors, dtype=torch.float64))
    u, v = u - u.mean(), v - v.mean()
    return float((u * v).sum() / (u * u).sum())
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %%
grid_steps = [10, 20, 40, 80]
errors = {name: [float((grad_x_T(x_T, n, step=s) - exact).norm() / exact.norm()) for n in grid_steps]
          for name, s in (("euler", euler_step), ("rk4", rk4_step))}
for name, errs in errors.items():
    print(name, ["%.1e" % e for e in errs], "order %.2f" % fit_order(grid_steps, errs))

# %% [raw]
# # BEGIN TESTS

# %%
assert abs(fit_order([1, 2, 4], [1.0, 0.25, 0.0625]) - 2) < 1e-9

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q5
# manual: true
# points: 1

# %% [markdown]
# ## Question 5 (1 point, graded by hand): why the order?
#
# The forward sample uses RK4 with the same `steps`, yet the Euler adjoint's error falls
# about 10x per 10x steps and the RK4 adjoint's about 10,000x. In two or three sentences:
# why does the gradient error fall at the order of the *backward* solver, and what would
# happen to the RK4 adjoint's error if the forward sampler were Euler?

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer.** The adjoint does not differentiate the forward sampler's steps: it solves the
# continuous adjoint ODE (eq. 11) backwards with its own solver, re-integrating `y` alongside `a_y`,
# so its truncation error is the backward solver's, of order 1 for Euler and 4 for RK4. The forward
# sampler enters only through `x_end` (the start of the backward solve and of `a_y = alpha dL/dx_end`);
# with an RK4 forward that error is fourth order and hidden behind the Euler adjoint's. With an Euler
# forward, `x_end` would be off by O(h), the adjoint would start from the wrong point, and the RK4
# adjoint's error would fall only at first order (about 10x per 10x steps).
#
# **Rubric (1 point).** 0.5: the error is the backward solver's because the adjoint solves the
# continuous ODE with its own steps (re-integrating `y`), not the sampler's discrete steps. 0.5: with
# an Euler forward the first-order error of `x_end` enters the adjoint's start, so the RK4 adjoint
# becomes first order. No point for "RK4 is more accurate" without the mechanism.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
