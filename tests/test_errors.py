"""Every bad input gets a ValueError that names the argument."""
import dataclasses

import pytest
import torch
from torch import nn

from adjointdpm import (CFG, GRADIENTS, Adjoint, AdjointDEIS, Checkpoint, Gradient, TorchdiffeqAdjoint, VPSchedule,
                        make_gradient, sample)
from helpers import gaussian, noise

SCHED = VPSchedule.linear()


@pytest.mark.parametrize("kwargs,match", [
    (dict(t_end=0.0), "t_end must be > 0"),
    (dict(t_end=-1e-3), "t_end must be > 0"),
    (dict(t_start=0.5, t_end=0.5), "t_end must differ from t_start"),
    (dict(t_start=0.0, t_end=0.5), "t_start must be > 0"),
    (dict(t_start=1.5), "t_start must be <="),
    (dict(steps=0), "steps must be an integer >= 1"),
    (dict(steps=2.5), "steps must be an integer >= 1"),
    (dict(solver="rk5"), "solver must be one of"),
    (dict(space="latent"), "space must be one of"),
    (dict(spacing="log"), "spacing must be one of"),
    (dict(solver="dpm2", space="original"), "needs space='reparam'"),
    (dict(gradient="adjoint"), "gradient must be None or a strategy"),
])
def test_bad_arguments(kwargs, match):
    args = dict(steps=4) | kwargs
    with pytest.raises(ValueError, match=match):
        sample(gaussian(), noise(2), SCHED, **args)


def test_discrete_schedule_time_range():
    sched = VPSchedule.discrete(torch.linspace(1e-4, 0.02, 1000))
    with pytest.raises(ValueError, match="t_end must be >= 0.001"):
        sample(gaussian(sched), noise(2), sched, steps=3, t_end=1e-4)


class WrongShape(nn.Module):
    def forward(self, x, t, cond):
        return x[:, :1]


def test_model_output_shape():
    with pytest.raises(ValueError, match=r"model output must have the shape of x \(2, 2\), got \(2, 1\)"):
        sample(WrongShape(), noise(2), SCHED, steps=3)


class BlowsUp(nn.Module):
    """Finite until t drops below 0.6."""

    def forward(self, x, t, cond):
        return torch.where(t[:, None] < 0.6, torch.full_like(x, float("nan")), torch.zeros_like(x))


def test_nan_mid_solve_names_step_and_time():
    # uniform grid 1, 0.75025, 0.5005, 0.25075, 0.001: step 3 evaluates at 0.5005 and lands on 0.25075
    with pytest.raises(ValueError, match=r"non-finite values .* after step 3 of 4 \(t = 0\.25075\)"):
        sample(BlowsUp(), noise(2), SCHED, steps=4, solver="euler", spacing="uniform")


def test_strategy_arguments():
    with pytest.raises(ValueError, match="Adjoint steps must be"):
        Adjoint(steps=0)
    with pytest.raises(ValueError, match="solver must be one of"):
        Adjoint(solver="rk45")
    with pytest.raises(ValueError, match="states must be"):
        Adjoint(states="keep")
    with pytest.raises(ValueError, match="states must be"):
        AdjointDEIS(states="keep")
    with pytest.raises(ValueError, match="its solver must be an ODE rule"):
        Adjoint(solver="sde-dpm1")
    with pytest.raises(TypeError):  # the reference routes solve on the forward grid: nothing to choose
        TorchdiffeqAdjoint(steps=8)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        AdjointDEIS(order=3)
    with pytest.raises(ValueError, match="form must be 'data' or 'noise'"):
        AdjointDEIS(form="x0")
    x_T = noise(2).requires_grad_()
    with pytest.raises(ValueError, match="states='reuse'.*forward's grid points: steps must be a multiple"):
        sample(gaussian(), x_T, SCHED, steps=4, gradient=Adjoint(steps=6, states="reuse"))
    with pytest.raises(ValueError, match="TorchdiffeqAdjoint supports"):
        sample(gaussian(), x_T, SCHED, steps=4, solver="dpm2", gradient=TorchdiffeqAdjoint())
    for forward in ("rk4", "reversible-dpm1"):  # the adjoint's own rule is refused whatever the forward's
        with pytest.raises(ValueError, match="cannot solve the adjoint with a reversible rule"):
            sample(gaussian(), x_T, SCHED, steps=4, solver=forward, gradient=Adjoint(solver="reversible-dpm1"))
    with pytest.raises(dataclasses.FrozenInstanceError):  # a strategy is its settings: they cannot drift after a check
        Adjoint().steps = 3


def test_every_strategy_name_builds_and_every_table_names_only_those():
    """One table of strategies by name (adjointdpm.GRADIENTS); the scales' tables only label its names."""
    for name in GRADIENTS:
        assert isinstance(make_gradient(name, 4), Gradient)
    assert make_gradient("adjointdeis-2-noise-stored", 4) == AdjointDEIS(2, 4, states="reuse", form="noise")
    assert make_gradient("checkpoint", 4) == Checkpoint()  # a strategy without adjoint steps takes none
    with pytest.raises(ValueError, match="gradient must be one of .*'backprop'.*got 'adjiont'"):
        make_gradient("adjiont")
    from adjointdpm.tools.accuracy import STRATEGIES as accuracy
    from cifar.reversible import STRATEGIES as reversible
    from toy.bench import FAMILIES
    from toy.reproduce import STRATEGIES as toy
    labels = [accuracy, reversible, toy, *(strategies for strategies, _, _ in FAMILIES.values())]
    assert {name for table in labels for name in table.values()} <= set(GRADIENTS)


def test_cfg_needs_a_condition_of_matching_shape():
    net = gaussian()
    with pytest.raises(ValueError, match="CFG needs a condition"):
        CFG(net, 2.0, torch.zeros(2))(noise(2), torch.ones(2), None)
    with pytest.raises(ValueError, match="does not broadcast"):
        CFG(net, 2.0, torch.zeros(3))(noise(2), torch.ones(2), torch.zeros(2, 2))
    for scale in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="guidance scale must be a finite number"):
            CFG(net, scale, torch.zeros(2))


def test_integer_like_steps_are_accepted():
    import numpy as np
    x_T = noise(2)
    expected = sample(gaussian(), x_T, SCHED, steps=4)
    for steps in (np.int64(4), torch.tensor(4)):
        assert torch.equal(sample(gaussian(), x_T, SCHED, steps=steps), expected)
    assert Adjoint(steps=np.int32(3)).steps == 3


def test_non_finite_x_T_is_named_before_solving():
    x_T = noise(2)
    x_T[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"x_T has non-finite values"):
        sample(gaussian(), x_T, SCHED, steps=4)


@pytest.mark.parametrize("strategy", [Adjoint(), AdjointDEIS(order=1), AdjointDEIS(order=2)])
def test_backward_twice_through_an_adjoint_is_torchs_usual_error(strategy):
    x_T = noise(2).requires_grad_()
    x = sample(gaussian(), x_T, SCHED, steps=4, solver="dpm1", gradient=strategy)
    loss = x.square().sum()
    loss.backward()
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_no_name_a_package_exports_hides_one_of_its_modules():
    """``import pkg.mod as m`` reads the attribute ``pkg.mod``: a function exported under a module's name (as
    ``apps.audit`` once was) would hand over the function instead of the module. Each package's names are read
    as its ``__init__`` left them, before this test imports any module under it (importing ``pkg/mod.py`` for
    the first time would put the module in that name's place)."""
    import importlib
    import pkgutil
    import types
    hidden, todo = [], ["adjointdpm", "handwritten", "toy", "cifar", "stable_diffusion"]
    while todo:
        package = importlib.import_module(todo.pop())
        names = dict(vars(package))  # before any module under it is imported here
        for info in pkgutil.iter_modules(package.__path__):
            if info.name in names and not isinstance(names[info.name], types.ModuleType):
                hidden.append(f"{package.__name__}.{info.name}")
            if info.ispkg:
                todo.append(f"{package.__name__}.{info.name}")
    assert hidden == []
