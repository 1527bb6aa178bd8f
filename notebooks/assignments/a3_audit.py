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
# name: a3_audit
# export_cell: false
# run_tests: false
# check_all_cell: false
# generate: true

# %% [markdown]
# # Assignment 3 · Auditing a classifier with bounded initial noise
#
# *Builds on notebook 01, sections 7 and 8 (an application through the sampler; which gradient
# strategy to use), and on notebook 03, section 2 (the audit on the digits model). Paper:
# Pan et al., "AdjointDPM: Adjoint Sensitivity Method for Gradient Backpropagation of Diffusion
# Probabilistic Models", ICLR 2024, Sec. 4.1.2 and App. C ([arXiv:2307.10711](https://arxiv.org/abs/2307.10711)).*
#
# Section 4.1.2 of the paper asks: can a small change `delta` of the initial noise, with
# `‖delta‖∞ ≤ tau`, make a generator produce something a classifier labels differently?
# The search needs `d(loss on x_0)/d(delta)` through the whole sampler, which is exactly
# what `sample(..., gradient=...)` gives. Here the generator is a mixture of three 2-D
# Gaussians with exact `eps`, and the classifier is the mixture's own posterior over its
# three components (`classifier(x)` returns log-probabilities).

# %%
import torch

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, Gradient, VPSchedule, sample
from toy import three_modes
from toy.apps import class_log_probs

torch.manual_seed(0)
schedule = VPSchedule.linear()
model = three_modes(schedule).requires_grad_(False)
SAMPLER = dict(steps=10, solver="dpm2")  # accurate at 20 model calls


def classifier(x):
    """log p(class | x) for the three components, shape (batch, 3)."""
    return class_log_probs(model, x)


def generate(x_T, gradient=None):
    return sample(model, x_T, schedule, **SAMPLER, gradient=gradient)


x_T = torch.randn(128, 2, generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    labels = classifier(generate(x_T)).argmax(1)  # the decision on the unperturbed samples
print("samples per class:", torch.bincount(labels).tolist())

# %% [raw]
# # BEGIN QUESTION
# name: q1
# points: 2
# all_or_nothing: true

# %% [markdown]
# ## Question 1 (2 points): the projection
#
# Write `project(delta, tau)`: the closest point to `delta` in the box `‖delta‖∞ ≤ tau`
# (elementwise). It must hold *exactly*: no `delta` component may exceed `tau` (as a number of
# `delta`'s dtype) in magnitude.

# %% [raw]
# # BEGIN SOLUTION

# %%
def project(delta, tau):
    # BEGIN SOLUTION
    return delta.clamp(-tau, tau)
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert torch.equal(project(torch.tensor([0.1, -2.0, 3.0]), 0.5), torch.tensor([0.1, -0.5, 0.5]))

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q2
# points: 3
# all_or_nothing: true

# %% [markdown]
# ## Question 2 (3 points): the search
#
# Write `audit(x_T, labels, tau, iters=20, gradient=None, project=project)` returning `delta`
# (same shape as `x_T`, no graph): projected gradient *ascent* of the loss "negative
# log-probability of the original label" on the generated points, with signed steps of
# size `tau / 4` (the sign of the gradient: the usual step for an `L-infinity` box). Start
# from `delta = 0`; after each step apply `project`. Generate with
# `generate(x_T + delta, gradient=gradient)`, and use `gradient or Adjoint()` when
# `gradient` is `None`. Use the argument `project` (the grader passes its own).
#
# The success rate is the fraction of points whose decision changes. The grader runs your
# `audit` on seeds you never see and expects at least 40 % at `tau = 0.5` (the reference
# solution reaches about 55-60 %), with every component of `delta` within `tau + 1e-6` (float
# round-off, e.g. from `(x_T + delta) - x_T`, is allowed; more is not). It also passes a
# projection of its own, which is not the box, and checks that your `delta` is what that
# projection returns. Not allowed: the library's `toy.apps.audit`.

# %% [raw]
# # BEGIN SOLUTION

# %%
def audit(x_T, labels, tau, iters=20, gradient=None, project=project):
    # BEGIN SOLUTION
    delta = torch.zeros_like(x_T, requires_grad=True)
    for _ in range(iters):
        loss = -classifier(generate(x_T + delta, gradient or Adjoint())).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(loss, delta)
        with torch.no_grad():
            delta.copy_(project(delta + tau / 4 * grad.sign(), tau))
    return delta.detach()
    # END SOLUTION

# %% [raw]
# # END SOLUTION

# %%
def success_rate(x_T, labels, delta):
    with torch.no_grad():
        return float((classifier(generate(x_T + delta)).argmax(1) != labels).float().mean())


delta = audit(x_T, labels, 0.5)
print(f"tau 0.5: success {success_rate(x_T, labels, delta):.2f}, max |delta| {float(delta.abs().max()):.3f}")

# %% [raw]
# # BEGIN TESTS

# %%
# a projection that sends every delta to 0: audit must return zeros, without a graph
_zero = audit(x_T[:8], labels[:8], 0.5, iters=2, project=lambda d, tau: torch.zeros_like(d))
assert _zero.shape == (8, 2) and not _zero.requires_grad and not _zero.any()

# %% [raw]
# # END TESTS

# %% [raw]
# # END QUESTION

# %% [raw]
# # BEGIN QUESTION
# name: q3
# points: 2
# all_or_nothing: true

# %% [markdown]
# ## Question 3 (2 points): choose the gradient strategy
#
# On a large model whose sampler has so many steps that even one stored state per step does
# not fit, the search needs a strategy **whose memory for backward is flat in the number of
# steps**. Set `strategy` to one (an instance: `Backprop()`, `Checkpoint()`, `Adjoint()` or
# `AdjointDEIS(1)`). It is graded on the memory it keeps: at most 20 % more at 40 steps than at
# 10. (`Checkpoint()`, the course's default when a state per step fits, keeps one state per
# step, so it does not qualify here.) Question 4 asks what your choice costs.

# %% [raw]
# # BEGIN SOLUTION

# %%
strategy = Adjoint()  # SOLUTION

# %% [raw]
# # END SOLUTION

# %% [raw]
# # BEGIN TESTS

# %%
assert isinstance(strategy, Gradient)

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
# ## Question 4 (1 point, graded by hand): justify the strategy
#
# In three sentences at most: why your `strategy`'s memory is flat in steps, and what it
# costs compared with the others (`Checkpoint()` above all) in accuracy of the gradient,
# memory and time.

# %% [raw]
# # BEGIN SOLUTION

# %% [markdown]
# **Model answer.** `Adjoint()`: it stores no state per step, re-solving the sample backwards alongside
# the adjoint, so its memory is flat in the number of steps (`AdjointDEIS(1)` is flat too). It pays in
# accuracy, because its gradient is the continuous ODE's, approximated by its own solver (not exactly
# the sampler's), and in time, because an RK4 adjoint makes four model evaluations and four
# vector-Jacobian products per step (several times Backprop's time). `Checkpoint()` gives the sampler's
# exact gradient more cheaply and is the better choice whenever one stored state per step fits; it was
# excluded here because that state per step still grows with the steps.
#
# **Rubric (1 point).** 0.5: why the memory is flat (no per-step storage; the state re-integrated
# backwards). 0.5: a correct cost against the others: the gradient approximates the continuous ODE's
# (error of its own solver and the sampler-vs-ODE gap) and more time per step than Checkpoint or
# Backprop; and that Checkpoint is exact and preferable when a state per step fits. `AdjointDEIS(1)`
# is accepted with the same reasoning (one VJP per step instead of four), noting that its accuracy
# depends on its form: the default data form never blows up and comes near the sampler's gradient
# with steps (cosine 0.98 at 20 DDIM steps on the learned DDPM++, only 0.54 at 10), the poster's
# noise form breaks down at few steps.

# %% [raw]
# # END SOLUTION

# %% [raw]
# # END QUESTION
