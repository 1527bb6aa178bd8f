"""CPU stand-ins for the Table 1 pipeline: an exact-epsilon mixture of 3x32x32 images in
place of the DDPM++ checkpoint, and a small fixed random network in place of Inception.
The sampler comparison they give is real (errors against the exact flow map, Frechet
distances against exact samples); the numbers are not CIFAR-10 FIDs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adjointdpm import GaussianMixture, VPSchedule


class ImageMixture(nn.Module):
    """``eps(x, t)`` exact for a mixture of ``components`` Gaussians over images: smooth
    random mean images in [-0.8, 0.8], per-pixel scales in [0.05, 0.3]."""

    def __init__(self, schedule: VPSchedule, components: int = 10, shape=(3, 32, 32), seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        c, h, w = shape
        coarse = torch.randn(components, c, 4, 4, generator=gen)
        means = 0.8 * torch.tanh(F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False))
        scales = 0.05 + 0.25 * torch.rand(components, c * h * w, generator=gen)
        self.shape = tuple(shape)
        self.mixture = GaussianMixture(torch.ones(components), means.flatten(1), scales, schedule)

    def forward(self, x, t, cond=None):
        return self.mixture(x.flatten(1), t).view_as(x)

    def sample_data(self, n: int, generator=None) -> torch.Tensor:
        return self.mixture.sample_data(n, generator=generator).view(n, *self.shape)


class RandomFeatures(nn.Module):
    """A fixed, seeded two-layer conv net + pooling: 64 features per image in [-1, 1]."""

    def __init__(self, dim: int = 64, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(32, 3, 3, 3, generator=gen) / 27 ** 0.5, requires_grad=False)
        self.w2 = nn.Parameter(torch.randn(dim, 32, 3, 3, generator=gen) / 288 ** 0.5, requires_grad=False)

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor) -> torch.Tensor:
        x = images_uint8.float() / 127.5 - 1
        x = F.relu(F.conv2d(x, self.w1, stride=2, padding=1))
        x = F.relu(F.conv2d(x, self.w2, stride=2, padding=1))
        return x.mean((2, 3))
