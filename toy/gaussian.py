"""The single Gaussian in closed form: the flow map and its exact gradients.

For data ``N(mu, diag(s^2))`` every noised marginal is ``N(alpha_t mu, diag(v_t))``,
``v_t = alpha_t^2 s^2 + sigma_t^2``, and the probability-flow ODE (eq. 4) is linear in
``x``; its solution keeps the standardised coordinate fixed::

    x_t = alpha_t mu + k (x_T - alpha_T mu),   k = sqrt(v_t / v_T)        (per dimension)

(check: ``dx/dt = f x + (g^2/2)(x - alpha mu)/v`` with ``g^2 = -2f`` and
``dv/dt = 2 f alpha^2 (s^2 - 1)``). For a loss ``L(x_end)`` with ``G = dL/dx_end``::

    dL/dx_T     = k G
    dL/dmu      = (alpha_end - k alpha_T) G
    dL/dlog s   = k (alpha_end^2 s^2 / v_end - alpha_T^2 s^2 / v_T) (x_T - alpha_T mu) G

(the last from ``d v / d log s = 2 alpha^2 s^2``), summed over the batch for ``mu`` and
``log s``. A condition ``c`` that shifts the mean has ``dL/dc = dL/dmu``.

The reverse diffusion SDE (AdjointDEIS poster eq. 1) is linear too, with additive noise: its
solution is affine in ``x_T`` and ``mu`` with a slope that does not depend on the Brownian
path. Started from ``x_T`` it draws ``x_end`` from the forward process's posterior
``p(x_end | x_T)``, so the slope is that of the posterior mean,
``Cov(x_end, x_T) / Var(x_T)``::

    x_end = alpha_end mu + k_sde (x_T - alpha_T mu) + noise,   k_sde = (alpha_T / alpha_end) v_end / v_T

(in ``(y, rho)``: ``dy/drho = 2 rho (y - mu) / (s^2 + rho^2)`` keeps ``(y - mu) / (s^2 + rho^2)``
fixed, against the ODE's ``sqrt(s^2 + rho^2)``). So ``dL/dx_T = k_sde G`` and
``dL/dmu = (alpha_end - k_sde alpha_T) G``, and the noise has variance ``v_end - k_sde^2 v_T``.
"""
from __future__ import annotations

import torch

from adjointdpm import VPSchedule


def _coefficients(schedule: VPSchedule, log_scale, t_start: float, t_end: float):
    a_T, a_e = float(schedule.alpha(t_start)), float(schedule.alpha(t_end))
    s2 = torch.exp(2 * log_scale)
    v_T = a_T ** 2 * s2 + float(schedule.sigma(t_start)) ** 2
    v_e = a_e ** 2 * s2 + float(schedule.sigma(t_end)) ** 2
    return a_T, a_e, s2, v_T, v_e


def sde_slope(log_scale, schedule: VPSchedule, t_start: float, t_end: float):
    """``(k_sde, alpha_T, alpha_end, v_T, v_end)`` of the reverse SDE (per dimension)."""
    a_T, a_e, _, v_T, v_e = _coefficients(schedule, log_scale, t_start, t_end)
    return a_T / a_e * v_e / v_T, a_T, a_e, v_T, v_e


def sde_map_vjp(mean, log_scale, grad_out, schedule: VPSchedule, t_start: float, t_end: float):
    """Exact ``dL/dx_T`` and ``dL/dmean`` through the reverse SDE given ``grad_out = dL/dx_end``."""
    k, a_T, a_e, _, _ = sde_slope(log_scale, schedule, t_start, t_end)
    return {"x_T": k * grad_out, "mean": ((a_e - k * a_T) * grad_out).sum(0)}


def flow_map(x_T, mean, log_scale, schedule: VPSchedule, t_start: float, t_end: float):
    """The exact solution ``x_{t_end}`` of eq. 4 from ``x_T`` at ``t_start``."""
    a_T, a_e, _, v_T, v_e = _coefficients(schedule, log_scale, t_start, t_end)
    return a_e * mean + torch.sqrt(v_e / v_T) * (x_T - a_T * mean)


def flow_map_vjp(x_T, mean, log_scale, grad_out, schedule: VPSchedule, t_start: float, t_end: float):
    """Exact ``dL/dx_T``, ``dL/dmean``, ``dL/dlog_scale`` given ``grad_out = dL/dx_end``."""
    a_T, a_e, s2, v_T, v_e = _coefficients(schedule, log_scale, t_start, t_end)
    k = torch.sqrt(v_e / v_T)
    dk_dlog_s = k * (a_e ** 2 * s2 / v_e - a_T ** 2 * s2 / v_T)
    return {
        "x_T": k * grad_out,
        "mean": ((a_e - k * a_T) * grad_out).sum(0),
        "log_scale": (dk_dlog_s * (x_T - a_T * mean) * grad_out).sum(0),
    }
