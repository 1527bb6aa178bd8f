"""A small MLP epsilon-network and its denoising score matching trainer, so gradients
w.r.t. real network weights are exercised on the toy scale."""
from __future__ import annotations

import math

import torch
from torch import nn
from tqdm import tqdm

from adjointdpm import VPSchedule


class EpsMLP(nn.Module):
    """``eps_theta(x, t, c)``: an MLP on ``[x, sinusoidal(t), c]``.

    ``cond_dim = 0`` makes it unconditional (``cond`` must then be ``None``).
    """

    def __init__(self, dim: int = 2, cond_dim: int = 0, hidden: int = 128, depth: int = 3, freqs: int = 8):
        super().__init__()
        self.dim, self.cond_dim = dim, cond_dim
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(200.0), freqs)))
        layers, width = [], dim + 2 * freqs + cond_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x, t, cond=None):
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (batch, {self.dim}), got {tuple(x.shape)}")
        angles = t.to(x)[:, None] * self.freqs.to(x)
        parts = [x, torch.sin(angles), torch.cos(angles)]
        if self.cond_dim:
            if cond is None:
                raise ValueError(f"this EpsMLP is conditional: cond of shape (batch, {self.cond_dim}) is required")
            parts.append(cond.to(x).expand(x.shape[0], self.cond_dim))
        elif cond is not None:
            raise ValueError("this EpsMLP is unconditional (cond_dim=0): pass cond=None")
        return self.net(torch.cat(parts, 1))


def train_eps_mlp(data_sampler, schedule: VPSchedule, *, dim: int = 2, cond_sampler=None, cond_dim: int = 0,
                  iters: int = 3000, batch: int = 512, lr: float = 2e-3, hidden: int = 128, depth: int = 3,
                  t_min: float = 1e-3, seed: int = 0, progress: bool = True) -> EpsMLP:
    """Denoising score matching: minimise ``|eps_theta(alpha x0 + sigma n, t, c) - n|^2``.

    ``data_sampler(n, cond, generator)`` returns ``n`` data points (given the condition
    batch when ``cond_sampler(n, generator)`` is set). Returns the trained model in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = EpsMLP(dim, cond_dim, hidden, depth)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, iters)
    t_max = schedule.T
    for _ in tqdm(range(iters), desc="train EpsMLP", disable=not progress, leave=False):
        cond = cond_sampler(batch, gen) if cond_sampler is not None else None
        x0 = data_sampler(batch, cond, gen)
        t = t_min + (t_max - t_min) * torch.rand(batch, generator=gen)
        noise = torch.randn(batch, dim, generator=gen)
        alpha, sigma = schedule.alpha(t).float()[:, None], schedule.sigma(t).float()[:, None]
        loss = ((model(alpha * x0 + sigma * noise, t, cond) - noise) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()
