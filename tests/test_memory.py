"""Bytes autograd keeps for backward (saved-tensor hooks): flat in steps for the adjoint,
linear for backprop."""
import pytest
import torch

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, VPSchedule, sample
from adjointdpm.memory import saved_bytes_during
from toy import EpsMLP


def saved_bytes(gradient, steps, solver="dpm2"):
    torch.manual_seed(0)
    model = EpsMLP(dim=2, hidden=64, depth=3)
    x_T = torch.randn(256, 2, requires_grad=True)
    x, total = saved_bytes_during(
        lambda: sample(model, x_T, VPSchedule.linear(), steps=steps, solver=solver, gradient=gradient))
    x.sum().backward()  # the graph is usable
    assert x_T.grad is not None and model.net[0].weight.grad is not None
    return total


@pytest.mark.parametrize("make,solver", [(Adjoint, "dpm2"), (lambda: AdjointDEIS(2), "dpm2"),
                                         (lambda: Adjoint(backend="torchdiffeq"), "rk4")],
                         ids=["Adjoint", "AdjointDEIS", "Adjoint-torchdiffeq"])
def test_adjoint_memory_is_flat_in_steps(make, solver):
    assert saved_bytes(make(), 40, solver) == saved_bytes(make(), 10, solver)


def test_backprop_memory_grows_linearly_in_steps():
    b10, b20, b40 = (saved_bytes(Backprop(), n) for n in (10, 20, 40))
    assert (b40 - b20) == 2 * (b20 - b10)  # every step stores the same activations
    assert b40 > 3 * saved_bytes(Adjoint(), 40)


def test_checkpoint_stores_states_not_activations():
    ckpt = saved_bytes(Checkpoint(), 40)
    assert ckpt < saved_bytes(Backprop(), 40) / 5
