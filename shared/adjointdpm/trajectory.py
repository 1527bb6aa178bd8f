"""Where on its trajectory a sampler makes its error: the state after each step against a converged
solve to the same time, followed from time to time.

Each of the three time grids (``uniform`` in t, ``logSNR`` uniform in lambda = log(alpha/sigma),
``quadratic`` uniform in sqrt(t)) is uniform in some function of t, so the first ``i`` steps of an
``N``-step grid are the ``i``-step grid from ``t_start`` to ``t_i``; and every solver takes its first
``i`` steps the same way whatever follows (Adams-Bashforth's start-up included). So the sampler's
state after ``i`` steps is ``sample(..., steps=i, t_end=t_i)``, and no solver needs a hook.
"""
from __future__ import annotations

import torch

from .sampling import sample
from .schedule import VPSchedule


def per_image_rmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each image's root-mean-square difference, ``sqrt(mean_pixels (x - y)^2)``, shape ``(batch,)``."""
    return (x - y).flatten(1).square().mean(1).sqrt()


def median_rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    """The median over images of :func:`per_image_rmse`: a sampler's error robust to a few outliers."""
    return float(per_image_rmse(x, y).median())


def errors_along(model, x_T: torch.Tensor, schedule: VPSchedule, sampler: dict, converged: dict,
                 cache: dict | None = None) -> list[dict]:
    """For each time ``t_i`` of ``sampler``'s grid (``sample`` keyword arguments with ``steps`` and
    ``spacing``; ``t_end`` defaults to 1e-3): ``t``, the step's length in lambda ``d_lambda`` and the
    median over samples of the per-sample RMSE between the sampler's state after ``i`` steps and the
    converged state at ``t_i``.

    ``converged`` (keyword arguments of a converged solve) is followed from each time of the grid to the
    next, the piece from ``t_{i-1}`` to ``t_i`` in as many of ``converged``'s steps as a solve from the start to
    ``t_i`` spends on that interval (in lambda: ``steps * (lambda_i - lambda_{i-1}) / (lambda_i - lambda_0)``,
    rounded up; ``converged`` is even in lambda, ``spacing="logSNR"``): no step is longer than that solve's,
    and the path takes about ``steps * (1 + ln N)`` steps on a grid even in lambda, where a solve to each of
    the ``N`` times takes ``steps * N``. ``cache`` (a dict) keeps the converged states by ``t_i`` between calls
    that share times (a state is then the one the first call's path reached, the same to within the
    converged solve's own error)."""
    import math
    if converged.get("spacing") != "logSNR":
        raise ValueError("the converged solve must be even in lambda (spacing='logSNR'), "
                         f"got {converged.get('spacing')!r}")
    cache = {} if cache is None else cache
    times = schedule.grid(sampler["steps"], sampler["spacing"], sampler.get("t_start"), sampler.get("t_end", 1e-3))
    lam = schedule.lambda_(times)
    out = []
    with torch.no_grad():
        state, t_prev = x_T, float(times[0])
        for i in range(1, len(times)):
            t_i = float(times[i])
            if t_i not in cache:
                steps = math.ceil(converged["steps"] * float((lam[i] - lam[i - 1]) / (lam[i] - lam[0])) - 1e-9)
                cache[t_i] = sample(model, state, schedule, **dict(converged, steps=steps, t_start=t_prev, t_end=t_i))
            state, t_prev = cache[t_i], t_i
            x = sample(model, x_T, schedule, **dict(sampler, steps=i, t_end=t_i))
            out.append({"t": t_i, "d_lambda": float(lam[i] - lam[i - 1]), "rmse": median_rmse(x, state)})
    return out
