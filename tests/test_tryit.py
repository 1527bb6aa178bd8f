"""Notebook 01's "Try it" prompts, run as its answers state them (the same problems as the notebook's
sections 2, 5 and 8): an answer a run no longer confirms fails here."""
import torch

from adjointdpm import Adjoint, Backprop, Checkpoint, GaussianMixture, VPSchedule, sample
from adjointdpm.memory import saved_bytes_during
from toy import eight_modes, flow_map, flow_map_vjp

F64 = dict(dtype=torch.float64)
SCHEDULE = VPSchedule.linear()


def test_answer_1_euler_adjoint_reaches_order_one_only_from_80_steps():
    mean, scale = torch.tensor([0.5, -1.0], **F64), torch.tensor([0.3, 1.5], **F64)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(0), **F64)
    target = torch.tensor([1.0, 2.0], **F64)
    exact = flow_map_vjp(x_T, mean, scale.log(), 2 * (flow_map(x_T, mean, scale.log(), SCHEDULE, 1.0, 1e-3) - target),
                         SCHEDULE, 1.0, 1e-3)["x_T"]

    def error(steps):
        model = GaussianMixture(torch.ones(1, **F64), mean[None], scale[None], SCHEDULE)
        x = x_T.clone().requires_grad_()
        ((sample(model, x, SCHEDULE, steps=steps, solver="rk4", gradient=Adjoint(solver="euler")) - target) ** 2
         ).sum().backward()
        return float((x.grad - exact).norm() / exact.norm())
    e = [error(n) for n in (10, 20, 40, 80, 160, 320)]
    assert all(0.6 < v < 1.0 for v in e[:3])                      # 0.88, 0.97, 0.70: hardly falling
    assert all(1.7 < e[i] / e[i + 1] < 2.1 for i in (3, 4))       # 0.41, 0.22, 0.11: halving, order 1


def test_answer_2_behind_rk4_the_adjoints_gap_at_10_steps_shrinks_by_two_orders():
    mixture = eight_modes(SCHEDULE, scale=0.3).double()
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(3), **F64)

    def gradient(strategy, solver):
        mixture.zero_grad()
        x = x_T.clone().requires_grad_()
        (sample(mixture, x, SCHEDULE, steps=10, solver=solver, gradient=strategy) ** 2).sum().backward()
        return torch.cat([x.grad.flatten(), mixture.means.grad.flatten()])
    gap = {}
    for solver in ("dpm2m", "rk4"):
        exact = gradient(Checkpoint(), solver)
        gap[solver] = float((gradient(Adjoint(30, "rk4"), solver) - exact).norm() / exact.norm())
    assert gap["dpm2m"] > 0.2 and gap["rk4"] < gap["dpm2m"] / 50  # 0.32 and 0.0041


def test_answer_3_four_times_the_batch_keeps_four_times_the_bytes():
    mix = eight_modes(SCHEDULE)

    def saved_bytes(gradient, steps, batch):  # the notebook's section 2, through the library's counter
        x = torch.randn(batch, 2, requires_grad=True)
        x0, total = saved_bytes_during(lambda: sample(mix, x, SCHEDULE, steps=steps, solver="dpm2", gradient=gradient))
        x0.sum().backward()
        return total
    for make in (Backprop, Checkpoint, Adjoint):
        for steps in (5, 40):
            # 4.00x to two decimals: the times of the steps are saved too, and do not grow with the batch
            assert 3.99 < saved_bytes(make(), steps, 2048) / saved_bytes(make(), steps, 512) <= 4
    assert saved_bytes(Adjoint(), 5, 2048) == saved_bytes(Adjoint(), 40, 2048)  # flat in steps
