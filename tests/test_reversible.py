"""The reversible sampler (reversible-dpm1) and ReversibleAdjoint: undone exactly, differentiated exactly,
at memory flat in steps."""
import math

import pytest
import torch

from adjointdpm import CFG, Adjoint, Backprop, Checkpoint, ReversibleAdjoint, VPSchedule, sample
from adjointdpm.tools.memory import saved_bytes_during
from adjointdpm.solvers import ReversibleDPM1
from helpers import exact, gaussian, noise, rel
from toy import EpsMLP

SCHED = VPSchedule.linear()


def mlp_problem(dtype=torch.float64):
    torch.manual_seed(0)
    net = EpsMLP(dim=2, cond_dim=3, hidden=32, depth=2).to(dtype)
    model = CFG(net, 2.0, torch.zeros(3, dtype=dtype))
    return net, model, torch.randn(5, 2, dtype=dtype), torch.randn(5, 3, dtype=dtype)


def all_grads(net, model, x_T, cond, gradient, steps, coupling=None):
    x, c = x_T.clone().requires_grad_(), cond.clone().requires_grad_()
    net.zero_grad()
    out = sample(model, x, SCHED, c, steps=steps, solver="reversible-dpm1", coupling=coupling, gradient=gradient)
    ((out ** 2).sum() + out[:, 0].sum()).backward()
    return [x.grad, c.grad] + [p.grad.clone() for p in net.parameters()]


def test_a_step_is_undone_exactly_and_its_first_is_ddim():
    """The inverse returns the pair it started from (float64 round-off), whatever the coupling; from
    y0 = z0, one step is DDIM's step."""
    model, x = gaussian(), noise(8)
    f = lambda state, s: (model(state[0], torch.full((8,), float(SCHED.time_of_rho(s)), dtype=x.dtype)),)  # noqa
    rho = [float(SCHED.rho(t)) for t in (0.7, 0.4)]
    for coupling in (1.0, 0.99, 0.5):
        method = ReversibleDPM1(coupling)
        y, z = x, x + 0.1 * noise(8, seed=1)
        y1, z1 = method.forward(f, y, z, *rho)
        y0, z0 = method.inverse(f, y1, z1, *rho)
        assert rel(y0, y) < 1e-12 and rel(z0, z) < 1e-12, coupling
    one = sample(model, x, SCHED, steps=1, t_start=0.7, t_end=0.4, solver="reversible-dpm1", coupling=0.9)
    assert torch.allclose(one, sample(model, x, SCHED, steps=1, t_start=0.7, t_end=0.4, solver="dpm1"), atol=1e-14)


@pytest.mark.parametrize("steps", [5, 40])
def test_reversible_adjoint_is_backprops_gradient(steps):
    """x_T, cond and every weight of a CFG-wrapped MLP: float64 to 1e-8, a float32 model to 1e-5 (the pair is
    held in float64; without that, float32 round-off in the reconstruction put these 5-12 % off)."""
    for dtype, tol in ((torch.float64, 1e-8), (torch.float32, 1e-5)):
        problem = mlp_problem(dtype)
        expected = all_grads(*problem, Backprop(), steps)
        for coupling in (None, 0.9):
            got = all_grads(*problem, ReversibleAdjoint(), steps, coupling)
            reference = expected if coupling is None else all_grads(*problem, Backprop(), steps, coupling)
            for g, e in zip(got, reference):
                assert rel(g, e) < tol, (dtype, coupling)


def test_with_coupling_one_it_is_of_order_two():
    """On the Gaussian's closed-form flow map: l = 1 converges at second order (DDIM at first); l < 1 adds a
    bias of order 1 - l that more steps do not remove."""
    x_T = noise(64)
    x_end, _ = exact(x_T)
    err = lambda n, l: rel(sample(gaussian(), x_T, SCHED, steps=n, solver="reversible-dpm1", coupling=l), x_end)  # noqa
    errors = [err(n, 1.0) for n in (20, 40, 80)]
    assert all(math.log2(a / b) > 1.8 for a, b in zip(errors, errors[1:])), errors
    assert err(320, 0.9) > 10 * err(320, 1.0)


def test_memory_is_flat_in_steps():
    torch.manual_seed(0)
    model = EpsMLP(dim=2, hidden=64, depth=3)
    x_T = torch.randn(256, 2, requires_grad=True)

    def kept(gradient, steps):
        x, total = saved_bytes_during(lambda: sample(model, x_T, SCHED, steps=steps, solver="reversible-dpm1",
                                                     gradient=gradient))
        x.sum().backward()
        return total
    assert kept(ReversibleAdjoint(), 40) == kept(ReversibleAdjoint(), 10)
    assert kept(Backprop(), 40) > 3 * kept(Backprop(), 10) > 10 * kept(ReversibleAdjoint(), 40)


def test_refusals():
    x = noise(2).requires_grad_()
    with pytest.raises(ValueError, match="ReversibleAdjoint differentiates a reversible solver"):
        sample(gaussian(), x, SCHED, steps=3, solver="dpm1", gradient=ReversibleAdjoint())
    with pytest.raises(ValueError, match="behind reversible-dpm1 use ReversibleAdjoint"):
        sample(gaussian(), x, SCHED, steps=3, solver="reversible-dpm1", gradient=Adjoint())
    with pytest.raises(ValueError, match="coupling is for the reversible solvers"):
        sample(gaussian(), x, SCHED, steps=3, solver="dpm1", coupling=0.9)
    with pytest.raises(ValueError, match="coupling must be a number in \\(0, 1\\]"):
        sample(gaussian(), x, SCHED, steps=3, solver="reversible-dpm1", coupling=0.0)
    with pytest.raises(ValueError, match="needs space='reparam'"):
        sample(gaussian(), x, SCHED, steps=3, solver="reversible-dpm1", space="original")
    assert Checkpoint  # Checkpoint and Backprop run through the same step (test above)


def _flat_grads(leaves, params, run):
    """``run()``'s loss differentiated w.r.t. ``leaves`` (tensors) and ``params`` (weights), as one list."""
    for p in params:
        p.requires_grad_(True).grad = None
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    run(*leaves).backward()
    return [t.grad for t in leaves] + [torch.cat([p.grad.flatten() for p in params])]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-6), (torch.float32, 1e-4)])
def test_exact_on_the_learned_digits_ddpmpp(dtype, tol):
    """The committed DDPM++: x_T and every weight, against Backprop through the same sampler; its saved
    tensors do not grow with steps."""
    from cifar.adjoint_accuracy import CHECKPOINT
    from cifar.checkpoint import load_score_sde
    model = load_score_sde(CHECKPOINT, "digits_ddpmpp").to(dtype).eval()
    params = list(model.parameters())
    x_T = torch.randn(1, 3, 16, 16, dtype=dtype, generator=torch.Generator().manual_seed(0))

    def run(gradient, steps=3):
        return lambda x: sample(model, x, SCHED, steps=steps, solver="reversible-dpm1",
                                gradient=gradient)[..., 4:12, 4:12].mean()
    expected = _flat_grads([x_T], params, run(Backprop()))
    got = _flat_grads([x_T], params, run(ReversibleAdjoint()))
    assert all(rel(g, e) < tol for g, e in zip(got, expected)), [rel(g, e) for g, e in zip(got, expected)]
    if dtype == torch.float64:
        model.requires_grad_(False)
        kept = [saved_bytes_during(lambda n=n: sample(model, x_T.clone().requires_grad_(), SCHED, steps=n,
                                                       solver="reversible-dpm1", gradient=ReversibleAdjoint()))[1]
                for n in (2, 6)]
        assert kept[0] == kept[1]


def test_exact_on_tiny_stable_diffusion_components():
    """A tiny UNet, VAE and text encoder of the real architectures (float64): x_T, a learned token's
    embedding row and the cross-attention weights, against Backprop through the same sampler."""
    from stable_diffusion import add_token, decode, encode_prompt, eps_model, tiny_components
    from stable_diffusion.apps import cross_attention_parameters
    comps = tiny_components(sample_size=8)
    for net in (comps.unet, comps.vae, comps.text_encoder):
        net.double()
    model = eps_model(comps, 3.0)
    token = add_token(comps, "<new>", "dog")
    row = comps.text_encoder.get_input_embeddings().weight[token].detach()
    params = list(cross_attention_parameters(comps.unet).values())
    x_T = torch.randn(1, *comps.latent_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def run(gradient):
        def loss(x, r):
            cond = encode_prompt(comps, ["a photo of <new>"], r, token)
            x0 = sample(model, x, comps.schedule, cond, steps=3, solver="reversible-dpm1", t_end=1e-3,
                        gradient=gradient)
            return decode(comps, x0).square().mean()
        return loss
    expected = _flat_grads([x_T, row], params, run(Backprop()))
    got = _flat_grads([x_T, row], params, run(ReversibleAdjoint()))
    assert all(e.abs().sum() > 0 for e in expected)
    assert all(rel(g, e) < 1e-6 for g, e in zip(got, expected)), [rel(g, e) for g, e in zip(got, expected)]


def test_the_command_measures_and_resumes(tmp_path):
    """``python -m cifar.reversible --quick``: the float64 pair's gradient is the exact one, its memory is flat,
    and a second run reads every case back instead of measuring it again."""
    from unittest import mock

    from cifar import reversible
    rows = reversible.main(["--quick", "--out", str(tmp_path)])
    assert {p.name for p in tmp_path.iterdir()} >= {"reversible.md", "reversible.json", "reversible.png"}
    grads = [r for r in rows if r["kind"] == "gradient" and r["which"] == "float64"]
    assert grads and all(r["rel_x_T"] < 1e-5 and r["rel_theta"] < 1e-5 for r in grads)
    kept = {(r["which"], r["steps"]): r["saved_bytes"] for r in rows if r["kind"] == "cost"}
    assert kept["ReversibleAdjoint", 2] == kept["ReversibleAdjoint", 4] < kept["Backprop", 2] < kept["Backprop", 4]
    with mock.patch.object(reversible.Study, "run", side_effect=AssertionError("measured again")):
        assert reversible.main(["--quick", "--out", str(tmp_path)]) == rows
