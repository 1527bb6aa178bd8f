"""The library's gradients on a device, in float32: every strategy against the closed forms, and
Checkpoint equal to Backprop. Each test runs on ``cpu`` (always, so the test itself is proved here)
and on ``cuda`` (skipped cleanly without a CUDA device; ``make gpu-check`` runs those).

Tolerances: the float32 run on the device must be the same method as the float64 run on the CPU
to float32 round-off, bounded by ``ROUNDOFF``: 10 ulps of float32 per step (this CPU measures 0.01
to 0.11), and so off the closed form by at most the method's own error plus that.
"""
import pytest
import torch

from adjointdpm import Backprop, Checkpoint, GaussianMixture, VPSchedule, sample
from helpers import MEAN, SCALE, exact, loss_fn, noise, rel
from test_gradients import CONVERGENCE, KEYS

pytestmark = pytest.mark.cuda
SCHED = VPSchedule.linear()
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                    reason="no CUDA device on this machine"))]


def ROUNDOFF(steps: int) -> float:  # noqa: N802 - a named bound, used like a constant
    return 10 * steps * torch.finfo(torch.float32).eps


def grads_on(device, dtype, strategy, steps, solver):
    """loss_fn's gradients w.r.t. x_T, a mean-shifting cond, the mean and log-scales, computed on ``device``."""
    kw = dict(device=device, dtype=dtype)
    model = GaussianMixture(torch.ones(1, **kw), torch.tensor([MEAN], **kw), torch.tensor([SCALE], **kw), SCHED)
    x_T = noise().to(**kw).requires_grad_()
    cond = torch.zeros(2, **kw, requires_grad=True)
    x = sample(model, x_T, SCHED, cond, steps=steps, solver=solver, gradient=strategy)
    assert x.device.type == torch.device(device).type and x.dtype == dtype  # device and dtype follow the inputs
    loss_fn(x.double().cpu()).backward()
    return {"x_T": x_T.grad, "cond": cond.grad, "mean": model.means.grad[0], "log_scale": model.log_scales.grad[0]}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CONVERGENCE)
def test_every_strategy_meets_the_closed_form_in_float32_on_the_device(name, device):
    make, solver, _, steps = CONVERGENCE[name]
    n = steps[-1]
    _, ref = exact(noise())
    ref["cond"] = ref["mean"]
    method = grads_on("cpu", torch.float64, make(), n, solver)  # the method's own error, without round-off
    got = grads_on(device, torch.float32, make(), n, solver)
    for k in KEYS:
        g = got[k].double().cpu()
        assert rel(g, method[k]) < ROUNDOFF(n), (k, rel(g, method[k]))
        assert rel(g, ref[k]) < rel(method[k], ref[k]) + ROUNDOFF(n), k


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", ["rk4", "dpm2m", "sde-dpm1"])
def test_checkpoint_equals_backprop_on_the_device(solver, device):
    """Two routes to the same exact gradient of the same float32 sampler: equal to round-off."""
    extra = {"noise_seed": 0} if solver.startswith("sde") else {}

    def run(strategy):
        kw = dict(device=device, dtype=torch.float32)
        model = GaussianMixture(torch.ones(1, **kw), torch.tensor([MEAN], **kw), torch.tensor([SCALE], **kw), SCHED)
        x_T = noise().to(**kw).requires_grad_()
        loss_fn(sample(model, x_T, SCHED, steps=12, solver=solver, gradient=strategy, **extra).double()).backward()
        return torch.cat([x_T.grad.flatten(), model.means.grad.flatten(), model.log_scales.grad.flatten()])
    a, b = run(Backprop()), run(Checkpoint())
    assert rel(b, a) < ROUNDOFF(12)
