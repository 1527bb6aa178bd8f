"""Diffusion SDE sampling (SDE-DPM-Solver-1) and its gradients (AdjointDEIS poster, Theorem 2,
Proposition 2) against the closed form of a Gaussian and against each other."""
import math

import pytest
import torch

from adjointdpm import (Adjoint, AdjointDEIS, Backprop, Checkpoint, TorchdiffeqAdjoint, TorchsdeAdjoint, VPSchedule,
                        sample)
from helpers import MEAN, SCALE, T, T_END, gaussian, loss_fn, noise, rel
from toy import EpsMLP, sde_map_vjp

SCHED = VPSchedule.linear()
SDE = dict(solver="sde-dpm1", noise_seed=7)


def grads(strategy, steps, seed=7, n=16):
    model, x_T = gaussian(), noise(n).requires_grad_()
    cond = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    x = sample(model, x_T, SCHED, cond, steps=steps, solver="sde-dpm1", noise_seed=seed, gradient=strategy)
    loss_fn(x).backward()
    exact = sde_map_vjp(torch.tensor(MEAN, dtype=torch.float64), torch.tensor(SCALE, dtype=torch.float64).log(),
                        2 * (x.detach() - torch.tensor([1.0, 2.0], dtype=torch.float64)), SCHED, T, T_END)
    return {"x_T": x_T.grad, "cond": cond.grad, "mean": model.means.grad[0]}, {**exact, "cond": exact["mean"]}, x


def slopes(errors):
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]


def test_noise_seed_is_required_for_sde_and_refused_for_ode():
    with pytest.raises(ValueError, match="solver 'sde-dpm1' samples an SDE: give noise_seed"):
        sample(gaussian(), noise(2), SCHED, steps=3, solver="sde-dpm1")
    with pytest.raises(ValueError, match="noise_seed is for the SDE solvers"):
        sample(gaussian(), noise(2), SCHED, steps=3, solver="rk4", noise_seed=1)
    with pytest.raises(ValueError, match="needs space='reparam'"):
        sample(gaussian(), noise(2), SCHED, steps=3, space="original", **SDE)
    with pytest.raises(ValueError, match="TorchdiffeqAdjoint solves ODEs"):
        sample(gaussian(), noise(2).requires_grad_(), SCHED, steps=3, gradient=TorchdiffeqAdjoint(), **SDE)
    with pytest.raises(ValueError, match="a multiple of the forward's 4"):
        sample(gaussian(), noise(2).requires_grad_(), SCHED, steps=4, gradient=Adjoint(steps=6), **SDE)


def test_one_step_is_sde_dpm_solver_1_in_x():
    """x_t = (alpha_t/alpha_s) x_s - 2 sigma_t (e^h - 1) eps(x_s, s) + sigma_t sqrt(e^{2h} - 1) z."""
    from adjointdpm.brownian import BrownianPath
    model, x_s, s, t = gaussian(), noise(4), 0.6, 0.3
    x_t = sample(model, x_s, SCHED, steps=1, t_start=s, t_end=t, **SDE)
    a_s, a_t, sig_t = float(SCHED.alpha(s)), float(SCHED.alpha(t)), float(SCHED.sigma(t))
    h = float(SCHED.lambda_(t) - SCHED.lambda_(s))
    rho = [float(SCHED.sigma(u) / SCHED.alpha(u)) for u in (s, t)]
    z = BrownianPath(7, rho, x_s).z(0)
    eps = model(x_s, torch.full((4,), s, dtype=x_s.dtype))
    expected = a_t / a_s * x_s - 2 * sig_t * math.expm1(h) * eps + sig_t * math.sqrt(math.expm1(2 * h)) * z
    assert torch.allclose(x_t, expected, rtol=1e-12, atol=1e-12)


def test_the_same_seed_gives_the_same_sample_under_every_strategy():
    x_T = noise(4)
    ref = sample(gaussian(), x_T, SCHED, steps=6, **SDE)
    for strategy in (Backprop(), Checkpoint(), Adjoint(), Adjoint(states="reuse"), AdjointDEIS(1, form="data"),
                     AdjointDEIS(1, states="reuse", form="data")):
        assert torch.equal(sample(gaussian(), x_T.clone().requires_grad_(), SCHED, steps=6, gradient=strategy, **SDE),
                           ref)
    assert not torch.allclose(sample(gaussian(), x_T, SCHED, steps=6, solver="sde-dpm1", noise_seed=8), ref)


def test_samples_have_the_marginal_of_the_reverse_sde():
    """x_T ~ N(0, I): x_end = alpha_e mu + k (x_T - alpha_T mu) + noise of variance v_e - k^2 v_T, so its
    mean is alpha_e mu - k alpha_T mu and its variance k^2 + v_e - k^2 v_T (per dimension)."""
    from toy.gaussian import sde_slope
    mean, log_scale = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(SCALE, dtype=torch.float64).log()
    k, a_T, a_e, v_T, v_e = sde_slope(log_scale, SCHED, T, T_END)
    x = sample(gaussian(), noise(20000, seed=1), SCHED, steps=200, **SDE)
    assert torch.allclose(x.mean(0), a_e * mean - k * a_T * mean, atol=0.03)
    assert torch.allclose(x.var(0), k ** 2 + v_e - k ** 2 * v_T, rtol=0.04)


def test_backprop_converges_to_the_closed_form_and_checkpoint_equals_it():
    errors = {k: [] for k in ("x_T", "cond", "mean")}
    for steps in (40, 80, 160, 320):
        g, ref, _ = grads(Backprop(), steps)
        for k in errors:
            errors[k].append(rel(g[k], ref[k]))
        c, _, _ = grads(Checkpoint(), steps)
        for k in errors:
            assert torch.allclose(c[k], g[k], rtol=1e-12, atol=1e-14), k
    for k in errors:  # first order in the step
        assert all(s > 0.7 for s in slopes(errors[k])), (k, errors[k])


@pytest.mark.parametrize("make,order,own_steps", [
    (lambda m: Adjoint(steps=m, solver="rk4"), 4, (20, 40, 80, 160)),
    (lambda m: AdjointDEIS(1, steps=m, form="noise"), 1, (200, 400, 800)),
    (lambda m: AdjointDEIS(2, steps=m, form="noise"), 2, (80, 160, 320)),
    (lambda m: AdjointDEIS(2, steps=m, form="data"), 2, (80, 160, 320)),
], ids=["Adjoint-rk4", "AdjointDEIS-1-noise", "AdjointDEIS-2-noise", "AdjointDEIS-2"])
def test_adjoints_converge_to_the_closed_form_with_their_own_steps(make, order, own_steps):
    """Behind a coarse 10-step SDE sampler. For a Gaussian the adjoint's Jacobians do not depend
    on the path, so the adjoint solves the continuous SDE's gradient (the slope k), whatever the
    forward's steps and noise, and converges to it as its own steps grow (re-solving the SDE
    backwards with the regenerated increments)."""
    errors = {k: [] for k in ("x_T", "cond", "mean")}
    for m in own_steps:
        g, ref, _ = grads(make(m), 10)
        for k in errors:
            errors[k].append(rel(g[k], ref[k]))
    for k in errors:
        assert all(s > order - 0.3 for s in slopes(errors[k])), (k, errors[k])


def test_data_form_order_1_solves_a_gaussians_sde_adjoint_exactly():
    """For a Gaussian of variance c per dimension, ``sigma u^{1-k} d x0_hat/dx = c/(1 + c m)`` with ``m = u^2``
    behind the SDE, so the data form's adjoint obeys ``db/dm = -c b/(1 + c m)`` and ``d a_mean/dm = -b/(1 + c m)``:
    a first-order step with the Jacobian at the step's far end, ``b_s = b_t (1 + (m_t - m_s) c/(1 + c m_s))
    = b_t (1 + c m_t)/(1 + c m_s)``, is the exact solution (and so is the mean's). Whatever the steps,
    stored or re-solved, it gives the continuous SDE's gradients."""
    for steps in (3, 10):
        for states in ("reuse", "reintegrate"):
            g, ref, _ = grads(AdjointDEIS(1, states=states, form="data"), steps)
            for k in g:
                assert torch.allclose(g[k], ref[k], rtol=1e-10, atol=1e-13), (steps, states, k)


def test_adjoint_on_stored_states_equals_the_reintegrated_one_for_a_gaussian():
    """Stored (reuse) and re-solved states give the same gradient when the Jacobian ignores the
    state; both converge at RK4's order as the grid refines."""
    errors = []
    for n in (20, 40, 80):
        g, ref, _ = grads(Adjoint(solver="rk4", states="reuse"), n)
        h, _, _ = grads(Adjoint(steps=n, solver="rk4"), n)
        for k in g:
            assert torch.allclose(g[k], h[k], rtol=1e-9, atol=1e-15), k
        d, _, _ = grads(AdjointDEIS(1, states="reuse", form="noise"), n)  # the poster's AdjointDEIS-1 on the path
        e, _, _ = grads(AdjointDEIS(1, steps=n, form="noise"), n)
        for k in d:
            assert torch.allclose(d[k], e[k], rtol=1e-9, atol=1e-15), k
        errors.append(rel(g["x_T"], ref["x_T"]))
    assert all(s > 3.7 for s in slopes(errors)), errors


def test_sde_dynamics_double_the_drift_and_undo_their_noise_backwards():
    """The SDE's three parts (adjointdpm.dynamics): the drift 2F; after each forward step its Brownian
    increment; and a backward of twice the steps subtracting, at every forward grid point, the increment of
    the forward step it enters, so it returns to the start. The ODE has none of them."""
    from adjointdpm.brownian import BrownianPath
    from adjointdpm.dynamics import ODE, SDE
    z0 = torch.randn(2, 3, dtype=torch.float64)
    sde = SDE(BrownianPath(3, [1.0, 0.5, 0.2, 0.1], z0))
    assert torch.equal(sde.drift(lambda z, s: z * s)(z0, 0.5), z0)
    add, z = sde.after_step(), (z0,)
    for i in range(3):
        z = add(i, z)
    undo = sde.reverse(6)
    for j in range(6):
        z = undo(j, z)
    torch.testing.assert_close(z[0], z0, rtol=0, atol=1e-15)
    assert not torch.allclose(add(0, (z0,))[0], z0)
    with pytest.raises(ValueError, match="a multiple of the forward's 3"):
        sde.reverse(4)
    ode = ODE()
    assert ode.after_step() is None and ode.reverse(7) is None and ode.drift(abs) is abs


def _mlp(seed=0):
    torch.manual_seed(seed)
    model = EpsMLP(dim=2, cond_dim=3, hidden=32, depth=2).double()
    return model, torch.randn(5, 2, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)


def _mlp_grads(strategy, steps):
    model, x_T, cond = _mlp()
    x_T.requires_grad_(), cond.requires_grad_()
    x = sample(model, x_T, SCHED, cond, steps=steps, gradient=strategy, **SDE)
    ((x ** 2).sum() + x[:, 0].sum()).backward()
    return torch.cat([x_T.grad.flatten(), cond.grad.flatten(), model.net[0].weight.grad.flatten()])


@pytest.mark.parametrize("order", [1, 2])
def test_the_data_form_on_stored_states_approaches_backprop_as_the_sampler_refines(order):
    """A nonlinear eps behind the SDE: on the stored path (the model's evaluation points, the Brownian
    increments added back) the data form's gradient meets the sampler's exact one at first order as both
    refine; with the increments dropped it would not."""
    errors = [rel(_mlp_grads(AdjointDEIS(order, states="reuse", form="data"), n), _mlp_grads(Backprop(), n))
              for n in (40, 80, 160)]
    assert all(s > 0.8 for s in slopes(errors)), errors


@pytest.mark.parametrize("states", ["reuse", "reintegrate"])
def test_adjoints_on_the_mlp_approach_backprop_as_the_sampler_refines(states):
    """A nonlinear eps: the adjoint gives the continuous SDE's gradient along the sampled path,
    which the sampler's exact gradient approaches at first order as both refine (RK4 adjoint,
    one step per forward step on stored states, four on re-solved ones)."""
    per = 1 if states == "reuse" else 4
    errors = [rel(_mlp_grads(Adjoint(steps=per * n, solver="rk4", states=states), n), _mlp_grads(Backprop(), n))
              for n in (20, 40, 80)]
    assert all(s > 0.8 for s in slopes(errors)), errors


def test_torchsde_route_samples_the_same_path_and_converges_to_the_closed_form():
    """``TorchsdeAdjoint()``: torchsde's Euler on the step-indexed SDE is SDE-DPM-Solver-1
    on the same noise, and its adjoint (re-solving the path, first order) reaches the closed form."""
    x_T = noise(4)
    ours = sample(gaussian(), x_T, SCHED, steps=10, **SDE)
    with torch.no_grad():
        theirs = sample(gaussian(), x_T.clone().requires_grad_(), SCHED, steps=10, gradient=TorchsdeAdjoint(),
                        **SDE)
    assert torch.allclose(theirs, ours, rtol=1e-13, atol=1e-13)
    errors = {k: [] for k in ("x_T", "cond", "mean")}
    for steps in (40, 160, 640):
        g, ref, _ = grads(TorchsdeAdjoint(), steps)
        for k in errors:
            errors[k].append(rel(g[k], ref[k]))
    for k in errors:  # first order: a factor 4 in steps gains more than 4^0.8
        assert all(errors[k][i] / errors[k][i + 1] > 4 ** 0.8 for i in range(2)), (k, errors[k])
    with pytest.raises(ValueError, match="TorchsdeAdjoint solves the SDE solvers' problems"):
        sample(gaussian(), x_T.clone().requires_grad_(), SCHED, steps=4, gradient=TorchsdeAdjoint())
