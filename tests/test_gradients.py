"""Gradients of every strategy against closed forms, finite differences and each other."""
import math

import pytest
import torch

from adjointdpm import (CFG, Adjoint, AdjointDEIS, Backprop, Checkpoint, GaussianMixture, TorchdiffeqAdjoint,
                        VPSchedule, sample)
from helpers import T, T_END, exact, gaussian, loss_fn, noise, rel
from toy import EpsMLP, flow_map, flow_map_vjp

SCHED = VPSchedule.linear()
KEYS = ("x_T", "cond", "mean", "log_scale")


def grads(strategy, steps, solver="rk4", space="reparam", tol=1e-8):
    """Gradients of loss_fn w.r.t. x_T, a mean-shifting cond, the mean and log-scales."""
    model = gaussian()
    x_T = noise().requires_grad_()
    cond = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    loss_fn(sample(model, x_T, SCHED, cond, steps=steps, solver=solver, space=space, gradient=strategy, rtol=tol,
                   atol=tol)).backward()
    return {"x_T": x_T.grad, "cond": cond.grad, "mean": model.means.grad[0], "log_scale": model.log_scales.grad[0]}


def reference():
    _, ref = exact(noise())
    return {**ref, "cond": ref["mean"]}


def slopes(errors):
    return [math.log2(errors[i] / errors[i + 1]) for i in range(len(errors) - 1)]


def test_closed_form_gradients_match_autograd_of_the_flow_map():
    x_T = noise().requires_grad_()
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([0.3, 1.5], dtype=torch.float64).log().requires_grad_()
    x_end = flow_map(x_T, mean, log_scale, SCHED, T, T_END)
    loss_fn(x_end).backward()
    explicit = flow_map_vjp(x_T, mean, log_scale, 2 * (x_end - torch.tensor([1.0, 2.0], dtype=torch.float64)),
                            SCHED, T, T_END)
    for key, tensor in (("x_T", x_T), ("mean", mean), ("log_scale", log_scale)):
        assert torch.allclose(tensor.grad, explicit[key], rtol=1e-12, atol=1e-12)


# strategy factory, forward solver, order, steps in the asymptotic range
CONVERGENCE = {
    "Backprop": (Backprop, "rk4", 4, (10, 20, 40)),
    "Checkpoint": (Checkpoint, "rk4", 4, (10, 20, 40)),
    "Adjoint": (Adjoint, "rk4", 4, (10, 20, 40)),
    "Adjoint-reuse": (lambda: Adjoint(states="reuse"), "rk4", 4, (10, 20, 40)),
    "Adjoint-torchdiffeq": (TorchdiffeqAdjoint, "rk4", 4, (10, 20, 40)),
    "AdjointDEIS-1": (lambda: AdjointDEIS(1, form="data"), "dpm1", 1, (80, 160, 320)),
    "AdjointDEIS-2": (lambda: AdjointDEIS(2, form="data"), "dpm2m", 2, (80, 160, 320)),
    "AdjointDEIS-1-reuse": (lambda: AdjointDEIS(1, states="reuse", form="data"), "dpm1", 1, (80, 160, 320)),
    "AdjointDEIS-2-reuse": (lambda: AdjointDEIS(2, states="reuse", form="data"), "dpm2m", 2, (80, 160, 320)),
    "AdjointDEIS-1-noise": (lambda: AdjointDEIS(1, form="noise"), "dpm1", 1, (80, 160, 320)),
    "AdjointDEIS-2-noise": (lambda: AdjointDEIS(2, form="noise"), "dpm2m", 2, (80, 160, 320)),
}


@pytest.mark.parametrize("name", CONVERGENCE)
def test_gradients_converge_to_the_closed_form(name):
    make, solver, order, steps = CONVERGENCE[name]
    ref = reference()
    errors = {k: [] for k in KEYS}
    for n in steps:
        g = grads(make(), n, solver)
        for k in KEYS:
            errors[k].append(rel(g[k], ref[k]))
    for k in KEYS:
        assert all(s > order - 0.3 for s in slopes(errors[k])), (k, errors[k])
    assert max(e[-1] for e in errors.values()) < (1e-3 if order == 4 else 0.15)


@pytest.mark.parametrize("solver", ["rk4", "adams4", "dpm3", "dopri5"])
def test_checkpoint_equals_backprop(solver):
    a, b = grads(Backprop(), 12, solver), grads(Checkpoint(), 12, solver)
    for k in KEYS:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-14), k


@pytest.mark.parametrize("make,order,own_steps", [
    (lambda m: Adjoint(steps=m), 4, (10, 20, 40)),
    (lambda m: Adjoint(steps=m, solver="heun"), 2, (20, 40, 80)),
    (lambda m: AdjointDEIS(1, steps=m, form="data"), 1, (100, 200, 400)),
    (lambda m: AdjointDEIS(2, steps=m, form="data"), 2, (50, 100, 200)),
    (lambda m: AdjointDEIS(1, steps=m, form="noise"), 1, (100, 200, 400)),
    (lambda m: AdjointDEIS(2, steps=m, form="noise"), 2, (50, 100, 200)),
    (lambda m: AdjointDEIS(2, steps=m, states="reuse", form="data"), 2, (200, 400, 800)),
], ids=["Adjoint-rk4", "Adjoint-heun", "AdjointDEIS-1", "AdjointDEIS-2", "AdjointDEIS-1-noise",
        "AdjointDEIS-2-noise", "AdjointDEIS-2-reuse-multiples"])
def test_adjoints_converge_to_backprop_with_their_own_steps(make, order, own_steps):
    """Forward fixed (200 RK4 steps, error ~1e-9); only the adjoint's steps grow."""
    bp = grads(Backprop(), 200)
    for k in KEYS:
        errors = [rel(grads(make(m), 200)[k], bp[k]) for m in own_steps]
        assert all(s > order - 0.3 for s in slopes(errors)), (k, errors)


def test_adjoint_deis_1_is_eq_12():
    """One AdjointDEIS-1 step in the noise form, written in x as poster eq. 12, against the library's step."""
    model, x_T = gaussian(), noise(4)
    t, s = 0.05, 0.2  # t closer to the data than s
    lam = lambda u: float(SCHED.lambda_(u))
    a_t, a_s, sig_s, h = float(SCHED.alpha(t)), float(SCHED.alpha(s)), float(SCHED.sigma(s)), lam(s) - lam(t)
    x_t = sample(model, x_T, SCHED, steps=40, t_start=s, t_end=t, solver="rk4")
    a_x = torch.randn_like(x_t)
    x = x_t.clone().requires_grad_()
    eps = model(x, torch.full((4,), t, dtype=x.dtype))
    vjp_x, vjp_mean = torch.autograd.grad(eps, (x, model.means), a_x)
    a_x_s = a_t / a_s * a_x + sig_s * math.expm1(h) * a_t ** 2 / a_s ** 2 * vjp_x
    a_mean_s = sig_s * math.expm1(h) * a_t / a_s * vjp_mean

    # the library: one backward step from t to s via the gradient of <a_x, x_t> w.r.t. x_s
    x_s = x_T.clone().requires_grad_()
    model.zero_grad()
    out = sample(model, x_s, SCHED, steps=1, t_start=s, t_end=t, solver="dpm1",
                 gradient=AdjointDEIS(1, form="noise"))
    (out * a_x).sum().backward()
    assert torch.allclose(x_s.grad, a_x_s, rtol=1e-10, atol=1e-12)
    # eq. 12 evaluates the Jacobian at x_t; the library at its re-integrated x_t, equal here because
    # the forward step is the same DPM-Solver-1 step that the backward undoes exactly for a linear eps
    assert torch.allclose(model.means.grad, a_mean_s, rtol=1e-6, atol=1e-9)


def test_adjoint_deis_1_is_euler_on_eq_11():
    a = grads(AdjointDEIS(1, steps=30, form="noise"), 30, "dpm1")
    b = grads(Adjoint(steps=30, solver="euler"), 30, "dpm1")
    for k in KEYS:
        assert torch.allclose(a[k], b[k], rtol=1e-12, atol=1e-14), k


@pytest.mark.parametrize("t_start,t_end", [(None, 1e-3), (1e-3, 0.9)], ids=["sampling", "encoding"])
def test_data_form_order_1_on_stored_states_is_the_exact_gradient_of_ddim(t_start, t_end):
    """The data form's first-order step takes its VJP where the DDIM step evaluated the model, with the
    adjoint carried from the step's other end: it is DDIM's transposed step. On the stored states it is
    Checkpoint's gradient (the sampler's exact one) to round-off, for x_T, cond and the weights of a
    CFG-wrapped network, either way in time."""
    net, x_T, cond = _mlp_problem()
    model = CFG(net, 2.0, torch.zeros(3, dtype=torch.float64))
    results = []
    for gradient in (Checkpoint(), AdjointDEIS(1, states="reuse", form="data")):
        x, c = x_T.clone().requires_grad_(), cond.clone().requires_grad_()
        net.zero_grad()
        out = sample(model, x, SCHED, c, steps=7, solver="dpm1", t_start=t_start, t_end=t_end, gradient=gradient)
        ((out ** 2).sum() + out[:, 0].sum()).backward()
        results.append([x.grad, c.grad] + [p.grad.clone() for p in net.parameters()])
    for exact_grad, adjoint_grad in zip(*results):
        assert torch.allclose(adjoint_grad, exact_grad, rtol=1e-10, atol=1e-13)


def test_the_data_form_is_stable_where_the_noise_form_is_not():
    """On a rate-1 mode of the adjoint (sigma d eps/dx = I: a Gaussian of tiny variance), one step of
    h = 1 in lambda: the solution multiplies a_y by e^-h. The noise form's explicit step multiplies it
    by 2 - e^h (negative); the data form integrates that part exactly."""
    f64 = dict(dtype=torch.float64)
    point = GaussianMixture(torch.ones(1, **f64), torch.zeros(1, 2, **f64), torch.full((1, 2), 1e-6, **f64), SCHED)
    s, t = (float(SCHED.inverse_lambda(torch.tensor(lam, **f64))) for lam in (-1.0, 0.0))
    x_s = noise(3).requires_grad_()
    results = {}
    for form in ("noise", "data"):
        x_s.grad = None
        out = sample(point, x_s, SCHED, steps=1, t_start=s, t_end=t, solver="dpm1",
                     gradient=AdjointDEIS(1, form=form))
        out.sum().backward()
        # d x_t / d x_s of the continuous flow map: a_x(s) = (alpha_t / alpha_s) e^-h a_x(t) per unit a_x(t)
        results[form] = x_s.grad / (float(SCHED.alpha(t) / SCHED.alpha(s)))
    assert torch.allclose(results["data"], torch.full_like(x_s, math.exp(-1)), rtol=1e-4)
    assert torch.allclose(results["noise"], torch.full_like(x_s, 2 - math.e), rtol=1e-4)


def test_stored_states_need_a_multiple_of_the_forward_steps():
    for make in (lambda m: AdjointDEIS(2, m, states="reuse", form="data"), lambda m: Adjoint(m, states="reuse")):
        with pytest.raises(ValueError, match="a multiple of the forward's 4 \\(got 6\\)"):
            sample(gaussian(), noise(2).requires_grad_(), SCHED, steps=4, solver="dpm1", gradient=make(6))


@pytest.mark.parametrize("make,tol", [(lambda m: Adjoint(m, "rk4", states="reuse"), 1e-5),
                                      (lambda m: AdjointDEIS(2, m, states="reuse", form="data"), 5e-3),
                                      (lambda m: AdjointDEIS(1, m, states="reuse", form="noise"), 5e-2)],
                         ids=["Adjoint-rk4", "AdjointDEIS-2-data", "AdjointDEIS-1-noise"])
def test_stored_states_restart_the_adjoint_at_the_forward_grid_points(make, tol):
    """Behind a converged forward (200 RK4 steps) on the MLP, an adjoint of twice the steps restarting from the
    stored states lands within its own solver's error of the exact gradient: a state restored at the wrong
    grid point would be off by the whole change of the state over a step."""
    net, x_T, cond = _mlp_problem()
    results = []
    for gradient in (Checkpoint(), make(400)):
        x, c = x_T.clone().requires_grad_(), cond.clone().requires_grad_()
        net.zero_grad()
        _mlp_loss(net, x, c, gradient, steps=200).backward()
        results.append((x.grad, c.grad, net.net[0].weight.grad.clone()))
    for exact_grad, adjoint_grad in zip(*results):
        assert rel(adjoint_grad, exact_grad) < tol


@pytest.mark.parametrize("order", [1, 2])
def test_the_data_form_encodes_too(order):
    """Encoding (t_start < t_end): the data form converges to Backprop at its order with its own steps, and
    at 10 steps it is near (the order-2 rule that took J linear in lambda was 130 times off there)."""
    net, x_T, cond = _mlp_problem()

    def grad(gradient, steps=200):
        x = x_T.clone().requires_grad_()
        out = sample(net, x, SCHED, cond, steps=steps, solver="rk4", t_start=1e-3, t_end=0.9, gradient=gradient)
        (out ** 2).sum().backward()
        return x.grad
    exact_grad = grad(Backprop())
    errors = [rel(grad(AdjointDEIS(order, m, form="data")), exact_grad) for m in (50, 100, 200)]
    assert all(s > order - 0.3 for s in slopes(errors)), errors
    assert rel(grad(AdjointDEIS(order, form="data"), 10), grad(Backprop(), 10)) < 0.2


def _mlp_problem(seed=0):
    torch.manual_seed(seed)
    model = EpsMLP(dim=2, cond_dim=3, hidden=32, depth=2).double()
    x_T = torch.randn(5, 2, dtype=torch.float64)
    cond = torch.randn(5, 3, dtype=torch.float64)
    return model, x_T, cond


def _mlp_loss(model, x_T, cond, gradient=None, steps=8):
    x = sample(model, x_T, SCHED, cond, steps=steps, solver="rk4", gradient=gradient)
    return (x ** 2).sum() + x[:, 0].sum()


def test_backprop_on_the_mlp_agrees_with_finite_differences():
    model, x_T, cond = _mlp_problem()
    weight = model.net[0].weight
    x_T.requires_grad_(), cond.requires_grad_()
    _mlp_loss(model, x_T, cond, Backprop()).backward()
    gen = torch.Generator().manual_seed(1)
    for tensor in (x_T, cond, weight):
        direction = torch.randn(tensor.shape, generator=gen, dtype=torch.float64)
        eps = 1e-6
        with torch.no_grad():
            tensor += eps * direction
            up = _mlp_loss(model, x_T, cond)
            tensor -= 2 * eps * direction
            down = _mlp_loss(model, x_T, cond)
            tensor += eps * direction
        fd = float((up - down) / (2 * eps))
        assert abs(float((tensor.grad * direction).sum()) - fd) < 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("make,tol", [(lambda: Adjoint(steps=64), 1e-3),
                                      (lambda: AdjointDEIS(2, steps=256, form="data"), 5e-3),
                                      (lambda: AdjointDEIS(2, steps=256, form="noise"), 5e-3)],
                         ids=["Adjoint", "AdjointDEIS-2", "AdjointDEIS-2-noise"])
def test_adjoint_on_the_mlp_with_cfg_approaches_checkpoint(make, tol):
    """Weights, conditioning and x_T through a CFG-wrapped network."""
    net, x_T, cond = _mlp_problem()
    model = CFG(net, 2.0, torch.zeros(3, dtype=torch.float64))
    results = []
    for gradient in (Checkpoint(), make()):
        x, c = x_T.clone().requires_grad_(), cond.clone().requires_grad_()
        model.zero_grad()
        _mlp_loss(model, x, c, gradient, steps=64).backward()
        results.append((x.grad, c.grad, net.net[-1].weight.grad.clone()))
    for exact_grad, adjoint_grad in zip(*results):
        assert rel(adjoint_grad, exact_grad) < tol


def test_cfg_is_the_papers_combination():
    net, x, cond = _mlp_problem()
    t = torch.full((5,), 0.3, dtype=torch.float64)
    null = torch.zeros(3, dtype=torch.float64)
    expected = 3.0 * net(x, t, cond) + (1 - 3.0) * net(x, t, null.expand(5, 3))
    assert torch.allclose(CFG(net, 3.0, null)(x, t, cond), expected, atol=1e-12)


@pytest.mark.parametrize("make,solver,backward", [
    (Backprop, "rk4", lambda n: 4 * n), (Checkpoint, "rk4", lambda n: 4 * n),
    (lambda: Adjoint(steps=3), "rk4", lambda n: 4 * 3), (lambda: Adjoint(steps=5, solver="heun"), "rk4", lambda n: 10),
    (lambda: Adjoint(states="reuse"), "dpm2", lambda n: 2 * n), (TorchdiffeqAdjoint, "rk4",
                                                                   lambda n: 4 * n),
    (lambda: AdjointDEIS(2, steps=7, form="noise"), "dpm2", lambda n: 7),
    (lambda: AdjointDEIS(1, steps=7, form="data"), "dpm2", lambda n: 7),
    (lambda: AdjointDEIS(2, steps=7, form="data"), "dpm2", lambda n: 8)],  # the data form's order 2: one more at t_end
    ids=["Backprop", "Checkpoint", "Adjoint", "Adjoint-heun", "Adjoint-reuse", "Adjoint-torchdiffeq",
         "AdjointDEIS-2-noise", "AdjointDEIS-1", "AdjointDEIS-2"])
def test_nfe_backward_counts_the_vector_jacobian_products(make, solver, backward):
    """One count: model calls of the sampling solve forward, VJPs through the model backward."""
    x_T = noise(4).requires_grad_()
    x, info = sample(gaussian(), x_T, SCHED, steps=6, solver=solver, gradient=make(), return_info=True)
    assert (info.nfe_forward, info.nfe_backward) == ({"rk4": 24, "dpm2": 12}[solver], 0)
    x.sum().backward()
    assert info.nfe_backward == backward(6)


@pytest.mark.parametrize("make", [Backprop, Checkpoint, Adjoint, TorchdiffeqAdjoint,
                                  lambda: AdjointDEIS(2, steps=6, form="data")],
                         ids=["Backprop", "Checkpoint", "Adjoint", "Adjoint-torchdiffeq", "AdjointDEIS-2"])
def test_a_plain_function_is_a_model_without_parameters(make):
    """Every strategy takes a function ``eps(x, t, cond)``; gradients reach x_T and cond."""
    module = gaussian().requires_grad_(False)
    function = lambda x, t, cond: module(x, t, cond)  # noqa: E731
    results = []
    for model in (module, function):
        x_T, cond = noise(4).requires_grad_(), torch.zeros(2, dtype=torch.float64, requires_grad=True)
        loss_fn(sample(model, x_T, SCHED, cond, steps=6, solver="rk4", gradient=make())).backward()
        results.append((x_T.grad, cond.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("make", [Backprop, Adjoint], ids=["Backprop", "Adjoint"])
def test_gradients_reach_the_tensors_of_the_forward_call(make):
    """The tensors that receive gradients are fixed when sample() runs: a parameter that stops
    requiring grad before backward() gets none (autograd's rule), the others get theirs."""
    model, reference = gaussian(), gaussian()
    x = sample(model, noise(4).requires_grad_(), SCHED, steps=4, solver="dpm2", gradient=make())
    model.means.requires_grad_(False)
    loss_fn(x).backward()
    loss_fn(sample(reference, noise(4).requires_grad_(), SCHED, steps=4, solver="dpm2", gradient=make())).backward()
    assert model.means.grad is None
    assert torch.equal(model.log_scales.grad, reference.log_scales.grad)


@pytest.mark.parametrize("make", [Adjoint, TorchdiffeqAdjoint])
def test_adaptive_adjoint_meets_its_tolerance(make):
    g = grads(make(), 4, "dopri5")
    ref = reference()
    assert max(rel(g[k], ref[k]) for k in KEYS) < 1e-5
