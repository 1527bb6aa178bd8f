"""Shared test helpers: the single Gaussian whose flow map and gradients are closed-form.

Plain functions and constants; fixtures and pytest hooks live in conftest.py.
"""
import pytest
import torch

from adjointdpm import GaussianMixture, VPSchedule
from toy import flow_map, flow_map_vjp

T, T_END = 1.0, 1e-3
MEAN, SCALE = [0.5, -1.0], [0.3, 1.5]
TARGET = torch.tensor([1.0, 2.0], dtype=torch.float64)


def gaussian(schedule=None):
    """A one-component mixture (float64): the exact epsilon of N(MEAN, diag(SCALE^2))."""
    f64 = dict(dtype=torch.float64)
    return GaussianMixture(torch.ones(1, **f64), torch.tensor([MEAN], **f64), torch.tensor([SCALE], **f64),
                           schedule or VPSchedule.linear())


def noise(n=16, seed=0):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def loss_fn(x):
    return ((x - TARGET.to(x)) ** 2).sum()  # the target follows x's device and dtype (tests/test_cuda.py)


def exact(x_T, schedule=None, t_end=T_END):
    """Closed-form x_end and the gradients of loss_fn w.r.t. x_T, mean and log-scale."""
    schedule = schedule or VPSchedule.linear()
    mean, log_scale = torch.tensor(MEAN, dtype=torch.float64), torch.log(torch.tensor(SCALE, dtype=torch.float64))
    x_end = flow_map(x_T, mean, log_scale, schedule, T, t_end)
    return x_end, flow_map_vjp(x_T, mean, log_scale, 2 * (x_end - TARGET), schedule, T, t_end)


def rel(a, b):
    return float((a - b).norm() / b.norm())


def one_line_error(main, argv, capsys, message: str) -> str:
    """``main(argv)`` stops with exit status 2 and one line on stderr that contains ``message``."""
    with pytest.raises(SystemExit) as err:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1 and message in lines[0], lines
    return lines[0]
