"""Gaussian mixtures (any dimension) with the exact epsilon of their noised marginals:
a reference eps-model that needs no training (the toy and the CIFAR stand-in use it).

Data ``x_0 ~ sum_k w_k N(mu_k + c, diag(s_k^2))`` where the optional condition ``c``
shifts every mean. Under a VP schedule ``x_t = alpha_t x_0 + sigma_t n`` has the marginal
``sum_k w_k N(alpha_t (mu_k + c), diag(v_k))`` with ``v_k = alpha_t^2 s_k^2 + sigma_t^2``, so::

    eps(x, t) = -sigma_t grad log p_t(x) = sigma_t sum_k r_k(x) (x - alpha_t (mu_k + c)) / v_k

with ``r_k`` the posterior responsibilities. The weights (as logits), means and log
scales are ``nn.Parameter``s: they play the role of the network weights ``theta``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .schedule import VPSchedule


class GaussianMixture(nn.Module):
    """An exact epsilon-model ``model(x, t, cond)`` for a Gaussian mixture under ``schedule``."""

    def __init__(self, weights, means, scales, schedule: VPSchedule):
        super().__init__()
        dtype = means.dtype if torch.is_tensor(means) else torch.get_default_dtype()
        means = torch.as_tensor(means, dtype=dtype)
        if means.dim() != 2:
            raise ValueError(f"means must have shape (components, dim), got {tuple(means.shape)}")
        weights = torch.as_tensor(weights, dtype=means.dtype).reshape(-1)
        scales = torch.as_tensor(scales, dtype=means.dtype).expand_as(means)
        if weights.numel() != means.shape[0] or not bool((weights > 0).all()) or not bool((scales > 0).all()):
            raise ValueError("need one positive weight per component and positive scales")
        self.logits = nn.Parameter(torch.log(weights / weights.sum()))
        self.means = nn.Parameter(means.clone())
        self.log_scales = nn.Parameter(torch.log(scales).clone())
        self.schedule = schedule

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def _shifted_means(self, cond, batch: int):
        means = self.means.unsqueeze(0)                          # (1, K, d)
        if cond is not None:
            means = means + cond.reshape(-1, 1, self.dim).to(means)  # (B or 1, K, d)
        return means.expand(batch, -1, -1)

    def _components(self, x, t, cond):
        """Per component: ``w = (x - alpha_t (mu_k + c)) / v_k`` and the log-density up to
        its ``2 pi`` term. Shapes ``(B, K, d)`` and ``(B, K)``."""
        log_alpha = self.schedule.log_alpha(t).to(x).reshape(-1, 1, 1)
        if log_alpha.shape[0] > 1 and bool((log_alpha == log_alpha[0]).all()):
            log_alpha = log_alpha[:1]  # one time for the batch (every sampler step): share v_k
        alpha2 = torch.exp(2 * log_alpha)
        var = alpha2 * torch.exp(2 * self.log_scales) + (1 - alpha2)           # (1 or B, K, d)
        diff = x[:, None, :] - torch.exp(log_alpha) * self._shifted_means(cond, x.shape[0])
        w = diff / var
        comp = -0.5 * (torch.einsum("bkd,bkd->bk", w, diff) + torch.log(var).sum(-1))
        return log_alpha, w, comp

    def log_prob_t(self, x, t, cond=None):
        """``log p_t(x)`` of the noised marginal; ``t`` of shape ``(batch,)`` or scalar."""
        _, _, comp = self._components(x, t, cond)
        comp = comp - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return torch.logsumexp(torch.log_softmax(self.logits, 0) + comp, dim=1)

    def forward(self, x, t, cond=None):
        log_alpha, w, comp = self._components(x, t, cond)
        sigma = torch.sqrt(-torch.expm1(2 * log_alpha)).reshape(-1, 1)
        resp = torch.softmax(torch.log_softmax(self.logits, 0) + comp, dim=1)  # (B, K)
        return sigma * torch.einsum("bk,bkd->bd", resp, w)

    @torch.no_grad()
    def sample_data(self, n: int, cond=None, generator=None):
        """Exact samples of ``x_0`` (the data distribution)."""
        k = torch.multinomial(torch.softmax(self.logits, 0), n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=self.means.dtype)
        x = self.means[k] + torch.exp(self.log_scales[k]) * noise
        return x if cond is None else x + cond.reshape(-1, self.dim).to(x)

    def log_prob(self, x, cond=None):
        """``log p_0(x)``: the data density (``t = 0``)."""
        return self.log_prob_t(x, torch.zeros(x.shape[0], dtype=x.dtype), cond)
