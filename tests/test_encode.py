"""Encoding: the ODE run from data up to noise (t_start < t_end), against the closed form, and
its gradients through every strategy."""
import pytest
import torch

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, VPSchedule, sample
from helpers import MEAN, SCALE, gaussian, loss_fn, noise, rel
from toy import flow_map, flow_map_vjp

SCHED = VPSchedule.linear()
LOW, HIGH = 1e-3, 1.0
MU, LOG_S = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(SCALE, dtype=torch.float64).log()


def test_encoding_is_the_flow_map_upwards_and_decoding_inverts_it():
    x0 = flow_map(noise(), MU, LOG_S, SCHED, HIGH, LOW)  # data-like points
    x_T = sample(gaussian(), x0, SCHED, steps=60, solver="rk4", t_start=LOW, t_end=HIGH)
    assert rel(x_T, flow_map(x0, MU, LOG_S, SCHED, LOW, HIGH)) < 1e-5  # RK4, 60 steps
    back = sample(gaussian(), x_T, SCHED, steps=60, solver="rk4", t_start=HIGH, t_end=LOW)
    assert rel(back, x0) < 1e-5
    ddim = sample(gaussian(), x0, SCHED, steps=200, solver="dpm1", t_start=LOW, t_end=HIGH)  # DDIM inversion
    assert rel(ddim, x_T) < 2e-2  # first order: 1.2 % at 200 steps


@pytest.mark.parametrize("strategy", [Backprop(), Checkpoint(), Adjoint(), Adjoint(states="reuse"),
                                      AdjointDEIS(2, steps=400)], ids=repr)
def test_gradients_through_encoding_match_the_closed_form(strategy):
    x0 = noise().requires_grad_()
    model = gaussian()
    x_T = sample(model, x0, SCHED, steps=80, solver="dpm2m" if isinstance(strategy, AdjointDEIS) else "rk4",
                 t_start=LOW, t_end=HIGH, gradient=strategy)
    loss_fn(x_T).backward()
    exact = flow_map_vjp(x0.detach(), MU, LOG_S, 2 * (x_T.detach() - torch.tensor([1.0, 2.0], dtype=torch.float64)),
                         SCHED, LOW, HIGH)
    tol = 1e-2 if isinstance(strategy, AdjointDEIS) else 1e-5
    assert rel(x0.grad, exact["x_T"]) < tol and rel(model.means.grad[0], exact["mean"]) < tol


def test_the_sde_does_not_encode():
    with pytest.raises(ValueError, match="encode with an ODE solver"):
        sample(gaussian(), noise(2), SCHED, steps=3, t_start=LOW, t_end=HIGH, solver="sde-dpm1", noise_seed=0)
