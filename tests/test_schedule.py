import math

import pytest
import torch

from adjointdpm import VPSchedule

SCHEDULES = {
    "linear": VPSchedule.linear(),
    "cosine": VPSchedule.cosine(),
    "discrete": VPSchedule.discrete(torch.linspace(1e-4, 0.02, 1000)),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_variance_preserving_and_lambda_inverse(name):
    sched = SCHEDULES[name]
    t = torch.linspace(max(sched.t_min, 1e-3), sched.T, 257, dtype=torch.float64)
    assert torch.allclose(sched.alpha(t) ** 2 + sched.sigma(t) ** 2, torch.ones_like(t), atol=1e-12)
    assert torch.allclose(sched.lambda_(t), torch.log(sched.alpha(t) / sched.sigma(t)), atol=1e-10)
    assert torch.allclose(sched.inverse_lambda(sched.lambda_(t)), t, atol=1e-9, rtol=0)
    assert bool((sched.lambda_(t).diff() < 0).all())  # SNR falls with time


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_drift_is_derivative_of_log_alpha(name):
    sched, h = SCHEDULES[name], 1e-6
    t = torch.linspace(0.01, 0.98, 50, dtype=torch.float64)
    fd = (sched.log_alpha(t + h) - sched.log_alpha(t - h)) / (2 * h)
    assert torch.allclose(sched.dlog_alpha_dt(t), fd, rtol=1e-7, atol=1e-8)


def test_linear_closed_form():
    sched = VPSchedule.linear(0.1, 20.0)
    t = torch.tensor([0.3], dtype=torch.float64)
    # alpha_t = exp(-int_0^t beta / 2) with beta(t) = 0.1 + 19.9 t
    assert torch.allclose(sched.alpha(t), torch.exp(-0.5 * (0.1 * t + 19.9 * t ** 2 / 2)))


def test_discrete_reproduces_its_betas():
    betas = torch.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=torch.float64) ** 2
    sched = VPSchedule.discrete(betas)
    t_n = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alpha2 = sched.alpha(t_n) ** 2
    recovered = torch.cat([1 - alpha2[:1], 1 - alpha2[1:] / alpha2[:-1]])
    assert torch.allclose(recovered, betas, rtol=1e-9, atol=1e-12)
    # the network's timestep at each training time is that step's index, 0..N-1
    assert torch.allclose(sched.model_time(t_n), torch.arange(1000, dtype=torch.float64), atol=1e-9)
    assert sched.t_min == float(t_n[0])


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("spacing", ["uniform", "logSNR", "quadratic"])
def test_grids_monotone_with_exact_ends(name, spacing):
    sched = SCHEDULES[name]
    t_end = max(1e-3, sched.t_min)
    ts = sched.grid(7, spacing, t_end=t_end)
    assert ts.shape == (8,) and ts.dtype == torch.float64
    assert float(ts[0]) == sched.T and float(ts[-1]) == t_end
    assert bool((ts.diff() < 0).all())
    if spacing == "logSNR":
        assert torch.allclose(sched.lambda_(ts).diff(), sched.lambda_(ts).diff()[0].expand(7), atol=1e-8)
    if spacing == "quadratic":
        assert torch.allclose(ts.sqrt().diff(), ts.sqrt().diff()[0].expand(7), atol=1e-12)
