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

# %% [markdown]
# # 01 · Gradients through a diffusion sampler, on a 2-D toy
#
# A diffusion model generates `x_0` from noise `x_T` by solving the **probability-flow ODE**.
# We want gradients of a loss `L(x_0)` with respect to `x_T`, a condition `c` and the
# network weights `theta`, without storing every step of the solve. This notebook builds
# the idea on 2-D Gaussian mixtures, whose noise predictor `eps` is known exactly, so every
# number can be checked against mathematics.
#
# **Learning goals.** After this notebook you can
# - say why backpropagating through a sampler costs memory that grows with its steps, and how
#   the adjoint ODE (the paper's eq. 11, derived in section 3) avoids it;
# - derive the reparameterized ODE (eq. 10) and AdjointDEIS's exponential-integrator step in its
#   two forms, and say why the noise-prediction form breaks down at few steps where the
#   data-prediction form does not;
# - choose a gradient strategy (`Backprop`, `Checkpoint`, `Adjoint`, `AdjointDEIS`) from what it
#   is the gradient *of*, its memory and its time;
# - read the same questions for the diffusion SDE.
#
# **Prerequisites.** Calculus and the chain rule; what a diffusion model and its noise predictor
# `eps` are (Song et al. 2021); PyTorch autograd. The paper: Pan et al., "AdjointDPM: Adjoint
# Sensitivity Method for Gradient Backpropagation of Diffusion Probabilistic Models", ICLR 2024
# ([arXiv:2307.10711](https://arxiv.org/abs/2307.10711)), Sec. 2-3; the AdjointDEIS solvers:
# Blasingame and Liu, NeurIPS 2024 ([arXiv:2405.15020](https://arxiv.org/abs/2405.15020)).
#
# It runs on a CPU in about two minutes. Everything here is in the library `adjointdpm`
# (`shared/adjointdpm/`) and the package `toy`; the notebook holds only narrative and plots.
# For the full-size versions of its measurements run `python -m toy.reproduce` and
# `python -m toy.bench` (results in `results/toy/`).

# %%
import math
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the committed outputs

import matplotlib.pyplot as plt
import torch

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, GaussianMixture, VPSchedule, sample, steps_for_nfe
from toy import eight_modes, flow_map, flow_map_vjp
from toy import apps

torch.manual_seed(0)
schedule = VPSchedule.linear()  # score_sde's VP SDE: beta(t) = 0.1 + 19.9 t

# %% [markdown]
# ## 1. The probability-flow ODE
#
# With `alpha_t^2 + sigma_t^2 = 1` and `f(t) = d log(alpha_t)/dt`, eq. 4 of the paper reads
#
# $$\frac{dx}{dt} = f(t)\,x + \frac{g(t)^2}{2\sigma_t}\,\epsilon(x, t), \qquad g^2 = -2f .$$
#
# Time runs from `t_start = T = 1` (noise) down to `t_end = 1e-3` (data). For a mixture of
# Gaussians `eps(x, t) = -sigma_t * grad log p_t(x)` is exact. Below: trajectories of 200 points.

# %%
mix = eight_modes(schedule, scale=0.1)
x_T = torch.randn(200, 2)
times = schedule.grid(40, "logSNR")
path = [x_T]
for t0, t1 in zip(times[:-1], times[1:]):
    path.append(sample(mix, path[-1], schedule, steps=1, solver="rk4", t_start=float(t0), t_end=float(t1)))
path = torch.stack(path)

fig, ax = plt.subplots(figsize=(5, 5))
ax.plot(path[:, :, 0], path[:, :, 1], lw=0.4, color="0.6")
ax.scatter(*path[0].T, s=5, label="x_T (noise)")
ax.scatter(*path[-1].T, s=5, label="x_0 (generated)")
ax.set_aspect("equal"); ax.legend(); ax.set_title("probability-flow trajectories")
plt.show()

# %% [markdown]
# ## 2. Why naive backprop costs memory
#
# Autograd through the sampler keeps every intermediate activation of every model call
# until `backward()`. We count the bytes autograd stores with saved-tensor hooks.

# %%
def saved_bytes(gradient, steps, batch=512):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    x = torch.randn(batch, 2, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        x0 = sample(mix, x, schedule, steps=steps, solver="dpm2", gradient=gradient)
    x0.sum().backward()
    return total

steps_list = [5, 10, 20, 40]
memory = {name: [saved_bytes(make(), n) for n in steps_list]
          for name, make in [("Backprop", Backprop), ("Checkpoint", Checkpoint), ("Adjoint", Adjoint)]}
for name, values in memory.items():
    print(f"{name:10s}", "  ".join(f"{v / 1024:8.0f} KiB" for v in values))
assert memory["Adjoint"][0] == memory["Adjoint"][-1]                       # flat in steps
assert memory["Backprop"][-1] == 8 * memory["Backprop"][0]                  # linear in steps

# %%
fig, ax = plt.subplots(figsize=(5, 3.5))
for name, values in memory.items():
    ax.plot(steps_list, [v / 2**20 for v in values], marker="o", label=name)
ax.set(xlabel="steps", ylabel="MiB kept for backward", title="memory vs steps")
ax.legend(); plt.show()

# %% [markdown]
# ## 3. The adjoint ODE (eq. 11), and AdjointDEIS
#
# **The adjoint.** Take any ODE `dz/ds = F(z, s)` from `s_0` to `s_N` and a loss `L(z_N)`. The
# adjoint `a(s) = dL/dz(s)` says how the loss moves when the state at time `s` moves. Moving
# `z(s)` by `dz` moves `z(s + ds)` by `(I + ds dF/dz) dz`, so
# `a(s) = a(s + ds) (I + ds dF/dz)`, that is
#
# $$\frac{da}{ds} = -a^\top \frac{\partial F}{\partial z}, \qquad
#   \frac{da_\theta}{ds} = -a^\top \frac{\partial F}{\partial \theta}, \qquad a(s_N) = \frac{\partial L}{\partial z_N},\ a_\theta(s_N) = 0,$$
#
# where `a_theta` collects the parameters' contributions, `dL/dtheta = a_theta(s_0)` (Alg. 1).
# It is solved **backwards**, from `s_N` to `s_0`, re-integrating `z` alongside from `z_N`, so
# nothing of the forward solve needs to be stored.
#
# **Eq. 11.** In the reparameterized coordinates of section 4, `y = x / alpha_t` and
# `rho = sigma_t / alpha_t`, the field is `F = eps~(alpha y, t(rho), c)` (eq. 10). The paper
# writes the augmented system, state, adjoints of `y`, `theta` and `rho`, as
#
# $$d\begin{bmatrix} y \\ \partial L/\partial y \\ \partial L/\partial \theta \\ \partial L/\partial \rho \end{bmatrix}
#   = -\begin{bmatrix} -\tilde\epsilon \\ \frac{\partial L}{\partial y}\frac{\partial \tilde\epsilon}{\partial y} \\
#   \frac{\partial L}{\partial y}\frac{\partial \tilde\epsilon}{\partial \theta} \\
#   \frac{\partial L}{\partial y}\frac{\partial \tilde\epsilon}{\partial \rho} \end{bmatrix} d\rho ,
#   \qquad \tilde\epsilon = \tilde\epsilon_\theta(\alpha_{t(\rho)}\, y,\ t(\rho),\ c), \qquad \text{(eq. 11)}$$
#
# the first row is eq. 10 itself, the others are the adjoint rows above with `F = eps~` (the
# condition `c` gets a row like `theta`'s). Solved from `rho_end` up to `rho_T`, it starts from
# `dL/dy_end`. **Back to `x`:** `x = alpha y` at every `rho`, so by the chain rule
# `dL/dy = alpha dL/dx`: the start is `a_y(rho_end) = alpha_end dL/dx_end`, and the answer is
# `dL/dx_T = a_y(rho_T) / alpha_T`. (`alpha_T` is small at `t = 1`, about `7e-3` here, so the
# division matters.) The `rho` row is needed only to differentiate with respect to the end times.
#
# **Its cost.** Each backward step evaluates the augmented field once per stage of its solver,
# and each evaluation is one model call *and* one vector-Jacobian product (VJP): an Euler
# adjoint step costs one of each, an RK4 step four of each. Nothing is kept between steps, so
# memory does not grow with steps (the flat line above).
#
# **AdjointDEIS** (the poster's eq. 7-12) solves the same adjoint in `lambda = log(alpha/sigma)`
# with an exponential integrator. In `(y, rho)` the adjoint `a_y` has no linear part, and
# `rho = e^{-lambda}`; over one backward step from `t` to the noisier `s` (`h = lambda_s - lambda_t`,
# negative, so `rho_s = rho_t e^{-h}` is larger) the exact solution is
#
# $$a_y(\rho_s) = a_y(\rho_t) - \int_{\rho_t}^{\rho_s} a_y(\rho)^\top \frac{\partial \tilde\epsilon}{\partial y}\, d\rho .$$
#
# AdjointDEIS-1 freezes the VJP `a_y^T d eps~/dy` at the step's known end `rho_t` (the data side)
# and integrates the rest exactly: `a_y(s) = a_y(t) - (rho_s - rho_t) a_y(t)^T d eps~/dy |_t`.
# With `a_y = alpha a_x` and `rho_s - rho_t = rho_s (1 - e^h)` this is the poster's eq. 12,
# `a_x(s) = (alpha_t/alpha_s) a_x(t) + sigma_s (e^h - 1) (alpha_t^2/alpha_s^2) a_x(t)^T d eps/dx`;
# it is DPM-Solver-1 applied to the adjoint, as DDIM is Euler on eq. 10. AdjointDEIS-2 takes the
# VJP linear in `lambda` through the last two points (a multistep rule, `dpm2m`). This is the
# **noise-prediction form** (`AdjointDEIS(order, form="noise")`).
#
# **Why the noise form breaks down at few steps.** Written in `lambda`, it reads
# `d a_y / d lambda = a_y^T (sigma_t d eps/dx)`. The matrix `sigma_t d eps/dx` is close to the
# identity wherever the noise dominates: every direction at high noise, and the directions
# normal to the data at low noise. On that part the exact solution over a backward step of
# `|h|` in lambda multiplies `a_y` by `e^{-|h|}`, while the explicit step multiplies it by
# `2 - e^{|h|}`: 0.37 against -0.72 at `|h| = 1`, about what 10 logSNR steps of this schedule
# take. The sign flips at every step, and order 2 extrapolates the flip further.
#
# **The data-prediction form** (DPM-Solver++'s variables, `AdjointDEIS(order, form="data")`, the
# library's default) moves that identity into the part that is integrated exactly. With
# `x0_hat = (x - sigma_t eps) / alpha_t`, `v = x / sigma_t` and `u = e^lambda = 1 / rho`, the ODE is
#
# $$\frac{dv}{du} = \hat x_0(\sigma_t v, t), \qquad
#   \frac{d a_v}{du} = -a_v^\top \sigma_t \frac{\partial \hat x_0}{\partial x}, \qquad a_v = \sigma_t\, a_x ,$$
#
# and since `sigma_t d x0_hat/dx = rho_t (I - sigma_t d eps/dx)`, the identity-like part now
# contributes nothing to be extrapolated. DDIM is Euler in these variables:
# `v_t = v_s + (u_t - u_s) x0_hat(x_s, s)`. The library's first-order data-form step takes its
# VJP where that DDIM step evaluated the model, at `x_s`:
# `a_v(s) = a_v(t) + (u_t - u_s) a_v(t)^T sigma_s d x0_hat/dx |_{x_s}`. That is the transpose of
# the DDIM step, so on the sampler's stored states it is *the exact gradient of DDIM*:
# **the discrete sampler's exact gradient is itself an exponential-integrator adjoint**, of the
# data-prediction form. Order 2 integrates the VJP linear in lambda between the step's two
# ends, predicting `a_v(s)` with the first-order step (a predictor-corrector, one VJP per step).
# Below: one backward step on that identity-like part (a Gaussian of tiny variance, so
# `sigma d eps/dx = I`), and the identity with DDIM's gradient on the mixture.

# %%
f64 = dict(dtype=torch.float64)
point = GaussianMixture(torch.ones(1, **f64), torch.zeros(1, 2, **f64), torch.full((1, 2), 1e-6, **f64), schedule)
s_, t_ = (float(schedule.inverse_lambda(torch.tensor(lam, **f64))) for lam in (-1.0, 0.0))  # h = 1 in lambda
factor = {}
for form in ("noise", "data"):
    x_s = torch.randn(3, 2, **f64).requires_grad_()
    sample(point, x_s, schedule, steps=1, t_start=s_, t_end=t_, solver="dpm1",
           gradient=AdjointDEIS(1, form=form)).sum().backward()
    factor[form] = float(x_s.grad[0, 0]) * float(schedule.alpha(s_) / schedule.alpha(t_))  # what a_y is multiplied by
print(f"one backward step of h = 1: exact e^-h = {math.exp(-1):.3f}, noise form {factor['noise']:.3f}, "
      f"data form {factor['data']:.3f}")
assert abs(factor["noise"] - (2 - math.e)) < 1e-3 and abs(factor["data"] - math.exp(-1)) < 1e-3

mix8 = eight_modes(schedule, scale=0.3).double()
x8 = torch.randn(32, 2, generator=torch.Generator().manual_seed(2), **f64)
g = {}
for name, strategy in (("Checkpoint", Checkpoint()), ("data form, order 1, stored states",
                                                       AdjointDEIS(1, states="reuse", form="data"))):
    x = x8.clone().requires_grad_()
    (sample(mix8, x, schedule, steps=10, solver="dpm1", gradient=strategy) ** 2).sum().backward()
    g[name] = x.grad
gap_ddim = float((g["data form, order 1, stored states"] - g["Checkpoint"]).norm() / g["Checkpoint"].norm())
print(f"behind 10 DDIM steps, AdjointDEIS(1, states='reuse', form='data') is {gap_ddim:.1e} off DDIM's exact gradient")
assert gap_ddim < 1e-12

# %% [markdown]
# ## 4. The reparameterization: derived, and where it helps, measured
#
# Eq. 4 is `dx/dt = f(t) x + g(t)^2 / (2 sigma_t) eps(x, t)`. For VP, `alpha_t' = f alpha_t`,
# `sigma_t^2 = 1 - alpha_t^2` and `g^2 = -2 f`, so `sigma_t' = g^2/(2 sigma_t) + f sigma_t`. Then
#
# - with `y = x / alpha_t`: `dy/dt = x'/alpha_t - x alpha_t'/alpha_t^2 = g^2 / (2 sigma_t alpha_t) eps`
#   (the integrating factor `1/alpha_t` removes `f x` exactly);
# - with `rho = sigma_t / alpha_t`: `drho/dt = (sigma_t' - f sigma_t)/alpha_t = g^2 / (2 sigma_t alpha_t)`,
#   the same factor. Dividing,
#
# $$\frac{dy}{d\rho} = \epsilon(\alpha_t y, t(\rho)) \qquad \text{(eq. 10)}.$$
#
# A solver of eq. 10 only has to follow how `eps` changes over a step in `rho`; a solver of eq. 4
# follows the whole field over a step in `t`. Which is easier depends on where the step is, so
# measure it: below, the same 4th-order Adams-Bashforth solver on both ODEs at NFE 10 (4 steps, the
# first two RK4), on each of the three time grids, and after each step the state's error against a
# converged solve to the same time (`adjointdpm.trajectory.errors_along`; the eight-mode mixture of
# section 6, whose `eps` is exact).

# %%
# The derivation's drho/dt = g^2 / (2 sigma alpha), against the schedule's rho by central differences (float64).
t_, dt = torch.tensor([0.05, 0.3, 0.9], dtype=torch.float64), 1e-6
d = lambda fn: (fn(t_ + dt) - fn(t_ - dt)) / (2 * dt)
g2 = -2 * schedule.dlog_alpha_dt(t_)
factor = g2 / (2 * schedule.sigma(t_) * schedule.alpha(t_))
assert torch.allclose(d(schedule.rho), factor, rtol=1e-6)
# AdjointDEIS-1's step in (y, rho) is the poster's eq. 12: -(rho_s - rho_t) alpha_t^2/alpha_s = sigma_s (e^h - 1) alpha_t^2/alpha_s^2
t_, s_ = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.5, dtype=torch.float64)
h = schedule.lambda_(s_) - schedule.lambda_(t_)
ours = -(schedule.rho(s_) - schedule.rho(t_)) * schedule.alpha(t_) ** 2 / schedule.alpha(s_)
poster = schedule.sigma(s_) * torch.expm1(h) * schedule.alpha(t_) ** 2 / schedule.alpha(s_) ** 2
assert torch.allclose(ours, poster, rtol=1e-12)

# %%
from adjointdpm.trajectory import errors_along
from toy.reproduce import TABLE1

mix64 = eight_modes(schedule, scale=0.1).double()
x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), **f64)
converged = dict(steps=100, solver="dpm3", spacing="logSNR")  # 400 steps print the same digits below, at 4 times the cost
eq4, eq10 = "eq. 4 (original), Adams-Bashforth 4", "eq. 10 (reparam), Adams-Bashforth 4"
along = {}
for grid in ("uniform", "logSNR", "quadratic"):
    cache = {}  # the converged states, shared by the two samplers (same grid, same times)
    for name in (eq4, eq10):
        cfg = dict(TABLE1[name], steps=steps_for_nfe(TABLE1[name]["solver"], 10), spacing=grid)
        along[grid, name] = errors_along(mix64, x_T, schedule, cfg, converged, cache)
fig, axes = plt.subplots(1, 3, figsize=(12, 3.3), sharey=True)
for ax, grid in zip(axes, ("uniform", "logSNR", "quadratic")):
    for name, label in ((eq4, "eq. 4 + AB4"), (eq10, "eq. 10 + AB4")):
        steps = along[grid, name]
        ax.semilogy(range(1, len(steps) + 1), [s["rmse"] for s in steps], "o-", label=label)
    ax.set(title=f"{grid} grid, NFE 10", xlabel="after step", xticks=[1, 2, 3, 4])
axes[0].set_ylabel("median RMSE vs converged"); axes[0].legend()
plt.tight_layout(); plt.show()
for grid in ("uniform", "logSNR", "quadratic"):
    for name in (eq4, eq10):
        print(f"{grid:9s} {name[:6]:6s} " + "  ".join(f"t={s['t']:.3f} (d lambda {s['d_lambda']:.2f}): {s['rmse']:.1e}"
                                                    for s in along[grid, name]))

# %% [markdown]
# Read the curves, not only their ends (asserted below, step by step, on every grid):
# - **Eq. 4 is accurate at the noise end.** Its first two steps (t from 1 down to 0.25-0.5) leave an
#   error below 1e-2: there `x` is nearly Gaussian and the field nearly linear in `x`, which RK4 in
#   `t` follows. It makes its error in its last two steps, where the modes emerge (more than 10
#   times the error of step 2).
# - **Eq. 10 makes its error at the noise end.** Its first step spans `rho` from 152 down to 5-17
#   and already leaves more than 10 times eq. 4's error at the same time: one polynomial in `rho`
#   over so long an interval misses how `eps` starts to bend. On the logSNR and quadratic grids its
#   error then shrinks (the flow contracts toward the modes); on the uniform grid it keeps growing
#   through the last step, the longest in lambda (4.51).
# - **At the end** eq. 10 is ahead on all three grids at NFE 10, because what eq. 4 gets wrong
#   late is not contracted away. The quadratic grid's first step is the longest in lambda (3.37,
#   against 2.19 and 2.40), and eq. 10's error after it is the largest of the three grids.
#
# So neither ODE is "stiff" here in the textbook sense (no step was unstable); each is accurate
# where its field is close to a low-degree polynomial in its own variable over a step, and a grid
# decides how much of the trajectory falls where. Notebook 02 section 3 measures the same on a
# learned network.

# %%
grids = ("uniform", "logSNR", "quadratic")
for grid in grids:
    e4, e10 = along[grid, eq4], along[grid, eq10]
    assert e4[0]["rmse"] < 1e-2 and e4[1]["rmse"] < 1e-2              # eq. 4: accurate at the noise end
    assert max(s["rmse"] for s in e4[2:]) > 10 * e4[1]["rmse"]        # its error made in the last steps
    assert e10[0]["rmse"] > 10 * e4[0]["rmse"]                        # eq. 10: made at step 1
    assert e10[-1]["rmse"] < e4[-1]["rmse"]                           # ahead at the end
for grid in ("logSNR", "quadratic"):
    assert along[grid, eq10][-1]["rmse"] < max(s["rmse"] for s in along[grid, eq10])  # shrunk after its peak
assert along["uniform", eq10][-1]["rmse"] == max(s["rmse"] for s in along["uniform", eq10])
assert max(grids, key=lambda g: along[g, eq10][0]["d_lambda"]) == "quadratic"
assert max(grids, key=lambda g: along[g, eq10][0]["rmse"]) == "quadratic"

# %% [markdown]
# ## 5. A gradient check against the closed form
#
# For a single Gaussian the flow map is affine, `x_end = alpha_end mu + k (x_T - alpha_T mu)`
# with `k = sqrt(v_end / v_T)`, `v = alpha^2 s^2 + sigma^2`, so the gradients w.r.t. `x_T`,
# the mean and the log-scale are closed-form (`toy.flow_map_vjp`). We compare every
# strategy at 10, 20 and 40 steps and fit the order.

# %%
mean, scale = torch.tensor([0.5, -1.0], **f64), torch.tensor([0.3, 1.5], **f64)
x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), **f64)
target = torch.tensor([1.0, 2.0], **f64)
x_exact = flow_map(x_T, mean, scale.log(), schedule, 1.0, 1e-3)
exact = flow_map_vjp(x_T, mean, scale.log(), 2 * (x_exact - target), schedule, 1.0, 1e-3)

def gradient_error(make, steps, solver):
    model = GaussianMixture(torch.ones(1, **f64), mean[None], scale[None], schedule)
    x = x_T.clone().requires_grad_()
    ((sample(model, x, schedule, steps=steps, solver=solver, gradient=make()) - target) ** 2).sum().backward()
    return float((x.grad - exact["x_T"]).norm() / exact["x_T"].norm())

cases = {"Backprop": (Backprop, "rk4"), "Checkpoint": (Checkpoint, "rk4"), "Adjoint": (Adjoint, "rk4"),
         "AdjointDEIS-2": (lambda: AdjointDEIS(2), "dpm2m")}
orders = {}
for name, (make, solver) in cases.items():
    steps = (10, 20, 40) if name != "AdjointDEIS-2" else (80, 160, 320)
    errors = [gradient_error(make, n, solver) for n in steps]
    orders[name] = math.log2(errors[1] / errors[2])
    print(f"{name:14s} steps {steps}: errors " + ", ".join(f"{e:.1e}" for e in errors))
assert gradient_error(Adjoint, 40, "rk4") < 1e-4

# %% NBVAL_CHECK_OUTPUT
for name, order in orders.items():
    print(f"{name:14s} measured order {round(order)}")

# %% [markdown]
# ## 6. The paper's Table 1, in 2-D
#
# Same budget of model evaluations (NFE), three samplers: eq. 4 with 4th-order
# Adams-Bashforth, DPM-Solver-2, and eq. 10 with Adams-Bashforth. Error is measured against
# a very fine solve of the same ODE from the same `x_T` (the exact flow map).

# %%
x_T = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1), **f64)
reference = sample(mix64, x_T, schedule, steps=400, solver="dpm3")
table = {}
for nfe in (10, 20, 50):
    for name, cfg in TABLE1.items():
        x = sample(mix64, x_T, schedule, steps=steps_for_nfe(cfg["solver"], nfe), **cfg)
        table[nfe, name] = float((x - reference).norm(dim=1).mean())
print("NFE  " + " | ".join(f"{n[:22]:>22s}" for n in TABLE1))
for nfe in (10, 20, 50):
    print(f"{nfe:3d}  " + " | ".join(f"{table[nfe, n]:22.4f}" for n in TABLE1))
eq4, eq10 = "eq. 4 (original), Adams-Bashforth 4", "eq. 10 (reparam), Adams-Bashforth 4"
assert table[10, eq10] < 0.7 * table[10, eq4]                                  # eq. 10 clearly ahead at NFE 10
assert table[20, eq4] < table[20, eq10] and table[50, eq4] < table[50, eq10]  # eq. 4 ahead from NFE 20 on

# %% [markdown]
# At NFE 10 the reparameterized ODE is clearly more accurate; at larger budgets on this
# grid the original ODE catches up and passes it (see `results/toy/table1.md` for both grids
# and two more metrics). The toy reproduces the paper's effect where budgets are smallest.
#
# ## 7. One application: guided sampling
#
# Optimise `x_T` with AdamW so that generated points land in mixture component 2, under the
# exact Bayes classifier of the mixture: `L = -log p(class 2 | x_0)`, gradients by `Adjoint()`.

# %%
result = apps.guided_sampling(target=2, n=64, iters=30)
print(f"p(target) before {result['prob_before']:.2f}  after {result['prob_after']:.2f}")
assert result["prob_after"] > 0.8 > result["prob_before"]
fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharex=True, sharey=True)
for ax, pts, title in zip(axes, (result["x_before"], result["x_after"]), ("before", "after")):
    apps.plot_density(ax, result["mixture"])
    ax.scatter(*pts.T, s=8); ax.set_title(title); ax.set_aspect("equal")
plt.show()

# %% [markdown]
# ## 8. Which gradient strategy to use
#
# Every strategy gives `dL/dx_T`, `dL/dc` and `dL/dtheta`; they differ in what they are the
# gradient *of*, in memory and in time. `Backprop` and `Checkpoint` give the exact gradient of
# the discrete sampler you ran. The adjoints solve the adjoint of the *continuous* ODE, so
# they have two errors: their own solver's, which more adjoint steps remove, and the gap
# between the sampler's gradient and the ODE's, which only a finer sampler removes.
#
# Below, one gradient through a DPM-Solver-2M sampler (one model call per step, the cheap kind
# a real application uses) on the eight-Gaussian mixture, at 10, 20 and 50 sampler steps: how
# far each adjoint is from the sampler's exact gradient (`Checkpoint`), and the
# vector-Jacobian products (VJPs) its backward pass makes (Checkpoint makes one per step).

# %%
from adjointdpm.tools.memory import saved_bytes_during

mixture = eight_modes(schedule, scale=0.3).double()
x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), **f64)

def one_gradient(strategy, steps):
    mixture.zero_grad()
    x = x_T.clone().requires_grad_()
    (x0, info), kept = saved_bytes_during(lambda: sample(mixture, x, schedule, steps=steps, solver="dpm2m",
                                                         gradient=strategy, return_info=True))
    (x0 ** 2).sum().backward()
    return torch.cat([x.grad.flatten(), mixture.means.grad.flatten()]), kept, info.nfe_backward

adjoints = {"Adjoint RK4 (n)": lambda n: Adjoint(solver="rk4"), "Adjoint RK4 (3n)": lambda n: Adjoint(3 * n, "rk4"),
            "DEIS-2 noise (n)": lambda n: AdjointDEIS(2, form="noise"),
            "DEIS-2 noise (10n)": lambda n: AdjointDEIS(2, 10 * n, form="noise"),
            "DEIS-1 data (n)": lambda n: AdjointDEIS(1, form="data"),
            "DEIS-1 data (2n)": lambda n: AdjointDEIS(1, 2 * n, form="data"),
            "DEIS-2 data (n)": lambda n: AdjointDEIS(2, form="data")}
gap, vjps = {}, {}
print("steps n | " + " | ".join(f"{name:>18s}" for name in adjoints) + "   (off Checkpoint, VJPs)")
for n in (10, 20, 50):
    exact_grad = one_gradient(Checkpoint(), n)[0]
    for name, make in adjoints.items():
        g, _, vjps[n, name] = one_gradient(make(n), n)
        gap[n, name] = float((g - exact_grad).norm() / exact_grad.norm())
    print(f"{n:7d} | " + " | ".join(f"{gap[n, name]:9.1e} {vjps[n, name]:4d} VJPs" for name in adjoints))
kept = {name: one_gradient(make(), 20)[1] for name, make in
        [("Backprop", Backprop), ("Checkpoint", Checkpoint), ("Adjoint", Adjoint)]}
print("bytes kept for backward at 20 steps:", {k: f"{v / 1024:.0f} KiB" for k, v in kept.items()})
assert gap[50, "Adjoint RK4 (3n)"] < gap[20, "Adjoint RK4 (3n)"] < gap[10, "Adjoint RK4 (3n)"]  # the sampler's gap
assert gap[10, "Adjoint RK4 (3n)"] > 0.1 and gap[50, "Adjoint RK4 (3n)"] < 0.01  # tens of percent at 10, < 1 % at 50
assert gap[10, "Adjoint RK4 (3n)"] >= gap[10, "Adjoint RK4 (n)"]                 # more adjoint steps: no closer
assert gap[10, "DEIS-2 noise (n)"] > 10                                          # the noise form overshoots
for n in (10, 20, 50):  # ten times the steps: the noise form reaches the same floor as the RK4 adjoint
    assert abs(gap[n, "DEIS-2 noise (10n)"] - gap[n, "Adjoint RK4 (3n)"]) < 0.15 * gap[n, "Adjoint RK4 (3n)"]
for n in (10, 20):  # the data form, order 1, twice the steps: nearer than RK4 at half its VJPs
    assert gap[n, "DEIS-1 data (2n)"] < gap[n, "Adjoint RK4 (n)"] and 2 * vjps[n, "DEIS-1 data (2n)"] == vjps[n, "Adjoint RK4 (n)"]
assert gap[50, "Adjoint RK4 (n)"] < gap[50, "DEIS-1 data (2n)"]                   # ... but not at 50 steps
assert gap[10, "DEIS-1 data (n)"] < gap[10, "DEIS-2 data (n)"] < 1                # order 2: no blow-up, not nearer here

# %% [markdown]
# Reading it: at 10 sampler steps the sampler's own gradient is tens of percent away from the
# ODE's, and three times the adjoint steps do not help (they converge to the ODE's gradient);
# at 50 steps the gap is below one percent. The noise form at the sampler's steps overshoots
# (a factor of hundreds at 10 steps); ten times as many steps bring it to the same floor. The
# data form does not blow up: at the sampler's steps its order 1 is within 10 % with one VJP per
# step, and with twice the steps it is nearer than the RK4 adjoint at half the VJPs (at 10 and 20
# sampler steps; at 50 RK4 is nearer). Its order 2 is of order 2 as the steps shrink (the tests
# measure it), but at these coarse steps its error is larger than order 1's.
#
# With the measurements on learned networks (next section) and the timings of
# `python -m toy.bench` and `python -m stable_diffusion.bench` (README, *Choosing a gradient
# strategy*):
#
# - **Checkpoint** first. It is exact for what you sampled and keeps one state per step plus a
#   single step's activations; its cost is one recomputed forward per step.
# - **AdjointDEIS in the data form** (`AdjointDEIS(1)`, the default form) when even one state
#   per step is too much: one VJP per step, memory flat in steps, at cosine 0.98 to the
#   sampler's gradient from 20 DDIM steps on the learned DDPM++ (relative error 0.27; at 10 steps only 0.54: section
#   9). Behind DDIM on stored states it *is* the sampler's gradient.
# - **ReversibleAdjoint** behind the reversible sampler (section 11) when memory must be flat and
#   the gradient exact: two model calls per step.
# - **Adjoint** (RK4 on eq. 11) behind a fine sampler, where the ODE's gradient is the one you
#   want: each of its steps costs four model calls *and* four VJPs.
# - **The noise form** (`form="noise"`, the poster's eq. 12 as written) only with many steps;
#   it is there to show why the form matters.
# - **Backprop** only when steps are few and memory is plentiful.
#
# ## 9. The two forms on a learned network
#
# The toy's scores are exact and smooth; a learned network's are not. `python -m
# cifar.adjoint_accuracy` measures every strategy on the DDPM++ trained on real digits (notebook
# 02), against the sampler's exact gradient and against a converged solve's, at 1, 2 and 4 times
# the sampler's steps (`results/cifar/adjoint_accuracy.md`; the same for the digits text-to-image
# model in `results/stable_diffusion/digits/`). Read from its committed results: the cosine of
# `dL/dx_T` to DDIM's exact gradient, for the flat (re-solved) adjoints of both forms.

# %%
import json
from pathlib import Path

ROOT = Path(apps.__file__).resolve().parents[1]  # the repository, where the committed results are
learned = json.loads((ROOT / "results" / "cifar" / "adjoint_accuracy.json").read_text())["rows"]
cell = {(r["solver"], r["steps"], r["strategy"], r["adjoint_steps"], r["loss"]): r for r in learned}
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
for ax, loss in zip(axes, ("smooth", "projection")):
    for name, style in (("AdjointDEIS-1 data", "o-"), ("AdjointDEIS-2 data", "s-"),
                        ("AdjointDEIS-1 noise", "o--"), ("AdjointDEIS-2 noise", "s--")):
        for k, n in enumerate((10, 20, 50)):
            pts = [(m * n, cell["dpm1", n, name, m * n, loss]["cos_exact"]) for m in (1, 2, 4)]
            ax.semilogx(*zip(*pts), style, color=f"C{k}", label=f"{name}, {n} DDIM steps")
    ax.axhline(0, color="k", linewidth=0.5)
    ax.set(xlabel="adjoint steps", title=f"loss `{loss}`", ylim=(-0.3, 1.02))
axes[0].set_ylabel("cosine to DDIM's exact gradient")
axes[1].legend(fontsize=6, ncol=2)
plt.tight_layout(); plt.show()
for n in (10, 20):
    print(f"{n} DDIM steps, as many adjoint steps: " + "; ".join(
        f"{name} cos {min(cell['dpm1', n, name, n, l]['cos_exact'] for l in ('smooth', 'projection')):.2f}, "
        f"error {max(cell['dpm1', n, name, n, l]['rel_exact'] for l in ('smooth', 'projection')):.2g}"
        for name in ("AdjointDEIS-1 noise", "AdjointDEIS-2 noise", "AdjointDEIS-1 data", "AdjointDEIS-2 data")))
worst = lambda n, name, key: [cell["dpm1", n, name, n, l][key] for l in ("smooth", "projection")]  # noqa: E731
assert max(worst(10, "AdjointDEIS-2 noise", "rel_exact")) > 1e4                      # blows up
assert max(worst(10, "AdjointDEIS-1 noise", "cos_exact")) < 0.2 and min(worst(10, "AdjointDEIS-1 noise", "rel_exact")) > 5
for name in ("AdjointDEIS-1 data", "AdjointDEIS-2 data"):
    assert max(worst(10, name, "rel_exact")) < 1.1 and max(worst(10, name, "cos_exact")) < 0.8  # bounded, not near
    assert min(worst(20, name, "cos_exact")) > 0.98                                     # near from 20 steps
assert max(worst(10, "AdjointDEIS-1 data, stored", "rel_exact")) < 1e-5  # DDIM's transposed step: its exact gradient

# %% [markdown]
# At 10 DDIM steps the poster's noise form returns a gradient uncorrelated with the one asked
# for (order 1: cosine -0.22 and 0.13, relative error 10 to 40) or up to 1.6 million times too
# large (order 2). The data form never blows up at the sampler's steps: its error stays about the gradient's own length
# (0.84 for order 1, at most 1.04 for order 2). But at 10 steps it is not near the sampler's
# gradient either (cosine 0.54 to 0.73). From 20 steps both orders reach cosine 0.98, with relative
# errors 0.27 (order 1) and 0.72 (order 2). On the stored states, order 1 is DDIM's exact gradient, to
# round-off. More adjoint steps rarely bring the data form nearer DDIM's gradient on this model
# (1 and 2 of 12 cells): they solve the continuous adjoint more finely, and that is not what a
# 10-step DDIM computed. Where the gradient must be right at 10 steps, use Checkpoint or the
# reversible sampler (section 11).

# %% [markdown]
# ## 10. The diffusion SDE, and why its adjoint is an ODE
#
# Diffusion models also sample with the reverse **SDE** (AdjointDEIS poster eq. 1), which has
# twice the ODE's score term plus fresh noise. In `(y, rho)` it reads
# `dy = 2 eps(alpha y, t) drho + dW` with `Var(dW) = |d(rho^2)|`, and SDE-DPM-Solver-1 integrates
# it exactly except for freezing `eps` over the step:
# `y_t = y_s + (rho_t - rho_s) 2 eps + sqrt(rho_s^2 - rho_t^2) z`.
#
# The noise is *additive*: it does not depend on `x`. So the gradient of the end state with
# respect to an earlier state only sees the drift, and the adjoint `a_x = dL/dx_t` obeys an
# **ODE** (poster Theorem 2): `da_x = -a_x^T (d drift/dx) dt`, evaluated along the path that was
# sampled. In `(y, rho)` that is eq. 11 with `2 eps` in place of `eps` (poster Proposition 2).
# The library samples with `solver="sde-dpm1", noise_seed=...`. The seed fixes the Brownian
# path, step by step, so every gradient strategy differentiates the same sample, and the
# backward pass can regenerate any step's noise instead of storing it.

# %%
x_T8 = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), **f64)
with torch.no_grad():
    ode_samples = sample(mixture, x_T8, schedule, steps=50, solver="dpm2m")
    sde_samples = sample(mixture, x_T8, schedule, steps=50, solver="sde-dpm1", noise_seed=0)
fig, axes = plt.subplots(1, 2, figsize=(9, 4.2), sharex=True, sharey=True)
for ax, x, title in zip(axes, (ode_samples, sde_samples), ("ODE (dpm2m, 50 steps)", "SDE (sde-dpm1, 50 steps)")):
    ax.scatter(*x.T, s=2, alpha=0.4)
    ax.set(title=title, aspect="equal")
fig.suptitle("The same x_T, two samplers: both reach the eight modes")
plt.show()

x_small = x_T8[:8].clone()
same = [sample(mixture, x_small.clone().requires_grad_(), schedule, steps=10, solver="sde-dpm1", noise_seed=0,
               gradient=g) for g in (Backprop(), Checkpoint(), Adjoint(), Adjoint(states="reuse"))]
assert all(torch.equal(s, same[0]) for s in same)  # one seed, one sample, whatever the strategy

# %% [markdown]
# For one Gaussian `N(mu, diag(s^2))` the reverse SDE is linear with additive noise. Its end
# point is affine in `x_T`, with a slope that does not depend on the noise: the slope of the
# posterior mean, `k = (alpha_T / alpha_end) v_end / v_T` with `v_t = alpha_t^2 s^2 + sigma_t^2`
# (`toy.gaussian`). The ODE's slope is `sqrt(v_end / v_T)`. Below, the x_T gradient of the
# discrete sampler (Backprop, exact for what was sampled) against these closed forms, as the
# steps grow.

# %%
from toy import sde_map_vjp

mu, s = torch.tensor([0.5, -1.0], **f64), torch.tensor([0.3, 1.5], **f64)
gaussian1 = GaussianMixture(torch.ones(1, **f64), mu[None], s[None], schedule)
x_Tg = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), **f64)
target = torch.tensor([1.0, 2.0], **f64)

def x_T_error(steps, sde, strategy=None):
    x = x_Tg.clone().requires_grad_()
    kwargs = dict(solver="sde-dpm1", noise_seed=0) if sde else dict(solver="dpm1")
    x0 = sample(gaussian1, x, schedule, steps=steps, gradient=strategy or Backprop(), **kwargs)
    ((x0 - target) ** 2).sum().backward()
    G = 2 * (x0.detach() - target)
    exact = (sde_map_vjp(mu, s.log(), G, schedule, 1.0, 1e-3)["x_T"] if sde
             else flow_map_vjp(x_Tg, mu, s.log(), G, schedule, 1.0, 1e-3)["x_T"])
    return float((x.grad - exact).norm() / exact.norm())

steps_list = [10, 20, 40, 80, 160, 320]
ode_err = [x_T_error(n, sde=False) for n in steps_list]
sde_err = [x_T_error(n, sde=True) for n in steps_list]
adjoint_err = [x_T_error(10, sde=True, strategy=Adjoint(10 * m, "rk4")) for m in (2, 4, 8, 16)]
fig, ax = plt.subplots(figsize=(6.5, 4))
ax.loglog(steps_list, ode_err, "o-", label="ODE sampler (dpm1): Backprop")
ax.loglog(steps_list, sde_err, "s-", label="SDE sampler (sde-dpm1): Backprop")
ax.loglog([20, 40, 80, 160], adjoint_err, "^--", label="behind 10 SDE steps: Adjoint RK4, its own steps")
ax.set(xlabel="steps", ylabel="relative error of dL/dx_T vs closed form", title="The SDE's x_T gradient converges slowly")
ax.legend(fontsize=8)
plt.show()
print("ODE  ", " ".join(f"{e:.1e}" for e in ode_err))
print("SDE  ", " ".join(f"{e:.1e}" for e in sde_err))
print("Adj. ", " ".join(f"{e:.1e}" for e in adjoint_err))
assert sde_err[-1] < sde_err[0] and adjoint_err[-1] < 1e-3
assert sde_err[-1] / sde_err[-2] > 0.4  # first order at best: halving the step less than halves the error
h10 = float(schedule.lambda_(torch.tensor(1e-3)) - schedule.lambda_(torch.tensor(1.0))) / 10
assert h10 > math.log(2)               # 10 logSNR steps: 2 e^{-h} - 1 < 0, the per-step factor changes sign

# %% [markdown]
# Two things to read there. The SDE sampler's own gradient converges at first order and
# slowly: the SDE forgets `x_T` (the slope is about `6e-4` here), and SDE-DPM-Solver-1's
# per-step factor on `y - mu` is about `2 e^{-h} - 1`, which even changes sign when a logSNR
# step `h` exceeds `ln 2` (10 steps here have `h = 0.96`). The adjoint, instead, solves the
# *continuous* SDE's adjoint: for a Gaussian its Jacobians do not depend on the path, so
# behind only 10 sampler steps it reaches the closed form at RK4's order as its own steps grow.
#
# On a nonlinear model the adjoint needs the sampled path `x_t`. There are two ways to get it.
# `Adjoint(states="reuse")` keeps the states between steps: one state per step.
# `Adjoint()` re-solves the SDE backwards from the end, subtracting each regenerated
# increment where the forward added it: memory flat in steps. On the eight-mode mixture, off the
# sampler's exact gradient (`Checkpoint`):

# %%
def sde_gradient(strategy, steps):
    mixture.zero_grad()
    x = x_T[:64].clone().requires_grad_()
    x0 = sample(mixture, x, schedule, steps=steps, solver="sde-dpm1", noise_seed=0, gradient=strategy)
    (x0 ** 2).sum().backward()
    return torch.cat([x.grad.flatten(), mixture.means.grad.flatten()])

print("sampler steps | stored states (RK4) | re-solved (RK4, 1x) | re-solved (RK4, 8x)   (off Checkpoint)")
off = {}
for n in (10, 20, 50):
    exact_grad = sde_gradient(Checkpoint(), n)
    off[n] = [float((sde_gradient(g, n) - exact_grad).norm() / exact_grad.norm())
              for g in (Adjoint(solver="rk4", states="reuse"), Adjoint(solver="rk4"), Adjoint(8 * n, "rk4"))]
    print(f"{n:13d} | " + " | ".join(f"{e:19.1e}" for e in off[n]))
assert min(off[10]) >= 1.0 and off[10][2] > off[10][1]          # 10 steps: at least 100 % off; more steps, worse
assert all(0.03 < e < 0.2 for n in (20, 50) for e in off[n][:2])  # from 20 steps: within 3-20 %, both ways

# %% [markdown]
# At 10 steps every adjoint is at least 100 % off, and eight times the adjoint steps make it
# worse. That is not the adjoint's own error: it converges to the *continuous* SDE's gradient,
# and a 10-step SDE sampler's gradient is far from that (the first plot). From 20 steps on both
# ways of getting the path are within 3-20 % and close to each other here. On the MLP of
# `python -m toy.bench` (the `SDE` rows), re-solving costs more: the weight gradient of the
# re-solved adjoint is about ten times further off than the stored-state one (0.24 against
# 0.024 at 100 steps), at the same flat memory.
#
# So for an SDE sampler: **Checkpoint** (exact, one state per step) remains the default; an
# adjoint should use the stored states unless memory forbids it, and only behind a fine
# sampler, where the sampler's gradient is the SDE's.

# %% [markdown]
# ## 11. Exact gradients at flat memory: a reversible sampler
#
# So far a gradient was either exact with memory that grows (Backprop; Checkpoint, one state per
# step) or flat in memory and approximate (the adjoints, which re-solve the path and integrate a
# *continuous* adjoint). There is a third kind: a sampler whose every step can be **undone
# algebraically**, so that backward *reconstructs* each state from the next instead of storing or
# re-solving it, and then takes that step's exact transpose. McCallum and Foster (2024) make any
# explicit step reversible by carrying a pair `(y, z)` and a coupling `l`. With DDIM's step in
# DPM-Solver++'s variables `v = y / rho`, `u = 1 / rho` and the data prediction
# `D(w, s) = w - s eps(w, s)`, one step of `solver="reversible-dpm1"` from `s0` to `s1` is
#
# $$ v_{y_1} = l\,v_{y_0} + (1 - l)\,v_{z_0} + (u_1 - u_0)\,D(z_0, s_0), \qquad
#    v_{z_1} = v_{z_0} + (u_1 - u_0)\,D(y_1, s_1). $$
#
# Each line changes one component by a function of the *other* component only, so it is undone by
# subtraction, in the opposite order: first `z0` from `(y1, z1)`, then `y0` from `y1` and `z0`
# (dividing by `l`). No model is inverted; the same two evaluations are simply taken again. From
# `y0 = z0` the first line is DDIM's step; `l < 1` pulls `y` and `z` together. Below, on the
# mixture, a trajectory is run forward keeping every pair (only to compare), then undone from the
# last pair alone.

# %%
from adjointdpm import ReversibleAdjoint
from adjointdpm.solvers import ReversibleDPM1

x_Tr = torch.randn(8, 2, generator=torch.Generator().manual_seed(7), **f64)

def eps_in_y(z, rho):  # eq. 10's field dy/drho = eps(alpha y, t), with t the time of rho
    t = float(schedule.time_of_rho(rho))
    return (mixture(float(schedule.alpha(t)) * z[0], torch.full((z[0].shape[0],), t, **f64)),)

times = schedule.grid(10)
rhos = [float(schedule.rho(t)) for t in times]
step = ReversibleDPM1(coupling=1.0)
y0 = x_Tr / float(schedule.alpha(times[0]))
pairs = [(y0, y0)]
with torch.no_grad():  # no gradient here: only the states
    for i in range(10):
        pairs.append(step.forward(eps_in_y, *pairs[-1], rhos[i], rhos[i + 1]))
    undone = [pairs[-1]]  # from the last pair alone
    for i in reversed(range(10)):
        undone.insert(0, step.inverse(eps_in_y, *undone[0], rhos[i], rhos[i + 1]))
drift = max(float((a[0] - b[0]).norm() / b[0].norm()) for a, b in zip(undone, pairs))
# round-off's scale: float64's epsilon in each of the 10 steps, at the largest y (y_T = x_T / alpha_T) against the smallest
scale = 10 * torch.finfo(torch.float64).eps * float(schedule.alpha(times[-1]) / schedule.alpha(times[0]))
print(f"largest relative distance of an undone state from the forward's: {drift:.1e} (round-off's scale: {scale:.1e})")
x_path = lambda states: torch.stack([float(schedule.alpha(t)) * p[0] for t, p in zip(times, states)])  # noqa: E731
fwd, back = x_path(pairs), x_path(undone)
plt.figure(figsize=(4.5, 4.5))
for k in range(8):
    plt.plot(fwd[:, k, 0], fwd[:, k, 1], "-", color="C0", linewidth=3, alpha=0.4, label="forward" if k == 0 else None)
    plt.plot(back[:, k, 0], back[:, k, 1], "o--", color="C3", markersize=3, label="undone" if k == 0 else None)
plt.title("x along 10 reversible steps: forward, and undone from the end")
plt.legend(); plt.show()
assert drift < 100 * scale  # round-off: the undo is exact arithmetic up to the last bits
assert torch.allclose(sample(mixture, x_Tr, schedule, steps=1, t_end=times[1], solver="reversible-dpm1"),
                      sample(mixture, x_Tr, schedule, steps=1, t_end=times[1], solver="dpm1"), atol=1e-13)

# %% [markdown]
# `ReversibleAdjoint()` does exactly this backward: it keeps only the final pair, undoes each step
# and applies its transpose there (two evaluations and two VJPs per step, Checkpoint's
# recomputation), so its gradient is the sampler's exact gradient, at memory flat in steps. The
# three kinds side by side, on the same sampler, against its exact gradient (Checkpoint), with the
# bytes autograd keeps; and for comparison the flat adjoint behind DDIM, the one-evaluation
# sampler it would otherwise be.

# %%
def kind_of_gradient(strategy, steps, solver="reversible-dpm1"):
    mixture.zero_grad()
    x = x_T.clone().requires_grad_()
    x0, kept = saved_bytes_during(lambda: sample(mixture, x, schedule, steps=steps, solver=solver, gradient=strategy))
    (x0 ** 2).sum().backward()
    return torch.cat([x.grad.flatten(), mixture.means.grad.flatten()]), kept

kinds = {"Backprop": (Backprop, "reversible-dpm1"), "Checkpoint": (Checkpoint, "reversible-dpm1"),
         "ReversibleAdjoint": (ReversibleAdjoint, "reversible-dpm1"),
         "AdjointDEIS(1) behind DDIM": (AdjointDEIS, "dpm1")}
rows = {}
for n in (10, 20, 50):
    exact = {solver: kind_of_gradient(Checkpoint(), n, solver)[0] for solver in ("reversible-dpm1", "dpm1")}
    for name, (make, solver) in kinds.items():
        g, kept = kind_of_gradient(make(), n, solver)
        rows[n, name] = (float((g - exact[solver]).norm() / exact[solver].norm()), kept)
print(f"{'strategy':>28s} | " + " | ".join(f"{n:3d} steps: off exact, KiB kept" for n in (10, 20, 50)))
for name in kinds:
    print(f"{name:>28s} | " + " | ".join(f"{rows[n, name][0]:9.1e}, {rows[n, name][1] / 1024:8.0f}" for n in (10, 20, 50)))
assert all(rows[n, "ReversibleAdjoint"][0] < 1e-10 for n in (10, 20, 50))              # exact
assert rows[10, "ReversibleAdjoint"][1] == rows[50, "ReversibleAdjoint"][1]          # flat
assert rows[50, "Backprop"][1] > 4 * rows[10, "Backprop"][1]                          # grows
assert rows[10, "AdjointDEIS(1) behind DDIM"][0] > 1e3 * rows[10, "ReversibleAdjoint"][0]

# %% [markdown]
# What it costs is the sampler: two evaluations per step, and a different sample. With `l = 1`
# the pair is a leapfrog and the sample is second order (the tests measure it on the Gaussian);
# `l < 1` adds a bias of order `1 - l` that steps do not remove. On the learned digits DDPM++
# (`python -m cifar.reversible`, `results/cifar/reversible.md`) the reversible sampler is compared
# with DDIM at equal evaluations and equal steps, the reconstruction's drift is measured, and the
# gradient is checked against the exact one for `x_T` and every weight. One subtlety shows there:
# undoing a step *expands* round-off in the directions the forward step contracts (by up to
# `e^{2h}` per step), so the library holds the pair in float64 even when the model runs in float32.
#
# So: **Checkpoint** remains the default when one state per step fits; **ReversibleAdjoint** when
# it does not and you need the exact gradient of what you sampled, at twice the model calls per
# step; an **adjoint** when you want the continuous ODE's gradient or cannot change the sampler.

# %% [markdown]
# ## Summary
#
# - Backprop through a sampler keeps every model evaluation's activations: memory linear in
#   steps. `Checkpoint` keeps one state per step; the adjoint (eq. 11) keeps nothing per step.
# - Eq. 11 is the adjoint of eq. 10 in `(y, rho)`; it starts from `alpha_end dL/dx_end` and
#   returns `dL/dx_T = a_y(rho_T) / alpha_T`. AdjointDEIS is the exponential integrator of the
#   same adjoint in `lambda`, one VJP per step. In the poster's noise form it extrapolates the
#   identity-like part of `sigma d eps/dx` and breaks down at few steps; the data form integrates
#   that part exactly, and its order 1 on the stored states is DDIM's exact gradient.
# - The adjoints give the *continuous* ODE's (or SDE's) gradient: their own solver's error plus
#   the gap between the sampler and the ODE. `Checkpoint` gives the sampler's exact gradient.
# - A reversible sampler (`reversible-dpm1`) is undone step by step, so `ReversibleAdjoint` gives
#   its exact gradient at flat memory, for two model calls per step.
#
# **Try it.**
# 1. In section 5, give `Adjoint(solver="euler")` 10, 20, 40, ... 320 steps. What does the error
#    do per doubling, and from where?
# 2. In section 8, replace the `dpm2m` sampler by `rk4`. What happens to the adjoints' gap at 10
#    steps, and why?
# 3. In section 2, call `saved_bytes(..., batch=2048)`. What happens to each strategy's bytes?
#
# **Answers** (measured on this notebook's problems; run them to see):
# 1. 0.88, 0.97, 0.70, 0.41, 0.22, 0.11 at 10 to 320 steps. At 10-40 steps Euler on eq. 11 is not
#    yet in its asymptotic range (the field changes fast near the data end), so the error hardly
#    falls; from 80 steps on it halves per doubling: order 1, against RK4's 16x (assignment 1).
# 2. It shrinks by two orders: `Adjoint(3n)` is 0.32 off the sampler's gradient behind DPM-Solver-2M
#    at 10 steps and 0.0041 behind RK4 (at 50 steps, 0.0057 and 1.2e-5). The adjoints compute the
#    ODE's gradient, and a 4-stage sampler is much closer to that ODE than a 2-step multistep one.
# 3. Every strategy keeps 4.00x the bytes, to two decimals (Backprop 3245 -> 12965 KiB at 10 steps;
#    the steps' times are saved too, and do not grow with the batch); the adjoint's stay flat in
#    steps (16 KiB at 5 to 40 steps).
#
# **Next.** Notebook 02 runs the paper's Table 1 on a learned network; notebook 03 the
# applications on a text-to-image model. Assignment 1 (`notebooks/assignments/a1_adjoint_step.py`)
# builds the adjoint step of section 3, assignment 2 the reparameterization of section 4.
