"""scikit-learn's real handwritten digits (``load_digits``: 1797 8x8 scans from 43 writers, bundled in
the wheel, nothing downloaded), the image convention both learned digit models use, and one fixed split.

Image convention, stated once: ``pixel = intensity / 16`` (ink bright on black), upsampled bilinearly
(``align_corners=False``) from 8x8 to ``size x size``, the same gray value in all three RGB channels, then
scaled to ``[-1, 1]`` as the diffusion models and Stable Diffusion's VAE expect (``[0, 1]`` is what
classifiers, judges and figures see: :func:`to_unit`). :func:`to_scan` is the way back to an 8x8 scan.

The split is fixed, per class, by one seeded permutation, three ways with no image in two parts:

* ``heldout`` (30 %): never trained on by anything; the reference of every Frechet distance and KID;
* ``guide`` (35 %): the images the guide (the digit classifier that guided sampling and the audit
  differentiate through) is trained on;
* ``judge`` (35 %): the images the independent judges (:mod:`handwritten.judges`) are trained on.

``train`` is ``guide`` and ``judge`` together: what the generative models are trained on.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "guide", "judge", "heldout")
HELD_OUT = 0.3   # share of each class kept for evaluation
SPLIT_SEED = 0


def to_images(raw: torch.Tensor, size: int = 32) -> torch.Tensor:
    """``(n, 8, 8)`` intensities 0..16 to ``(n, 3, size, size)`` images in ``[-1, 1]``."""
    x = (raw.float() / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` to ``[0, 1]`` (what classifiers, judges and figures take)."""
    return (images / 2 + 0.5).clamp(0, 1)


def to_scan(images: torch.Tensor) -> torch.Tensor:
    """Images ``(n, 3, H, W)`` in ``[0, 1]`` (``H, W`` multiples of 8) back to ``(n, 8, 8)`` scans of
    intensities 0..16: the channels' mean, averaged over ``H/8 x W/8`` blocks. Real scans come back
    close, not equal (:func:`to_images` blurs them a little): the judges report that round trip."""
    if images.dim() != 4 or images.shape[-1] % 8 or images.shape[-2] % 8:
        raise ValueError(f"images must have shape (n, C, H, W) with H and W multiples of 8, got {tuple(images.shape)}")
    gray = images.float().mean(1, keepdim=True)
    return 16 * F.adaptive_avg_pool2d(gray, 8)[:, 0]


@lru_cache(maxsize=None)
def scans() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 1797 raw scans ``(n, 8, 8)`` (0..16), their labels, and each one's part of the split
    (an index into ``("heldout", "guide", "judge")``)."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    raw = torch.as_tensor(digits.images, dtype=torch.float32)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    part = torch.empty(len(labels), dtype=torch.long)
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    for k in range(10):
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        held = round(HELD_OUT * len(idx))
        guide = held + (len(idx) - held) // 2
        part[idx[:held]], part[idx[held:guide]], part[idx[guide:]] = 0, 1, 2
    return raw, labels, part


def _mask(split: str, classes=None) -> torch.Tensor:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _, labels, part = scans()
    keep = part > 0 if split == "train" else part == ("heldout", "guide", "judge").index(split)
    if classes is not None:
        keep = keep & torch.isin(labels, torch.as_tensor(list(classes)))
    return keep


def load(split: str, classes=None, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``(n, 3, size, size)`` in ``[-1, 1]`` and labels of ``split`` (one of :data:`SPLITS`),
    optionally only ``classes``."""
    raw, labels, _ = scans()
    keep = _mask(split, classes)
    return _images(size)[keep], labels[keep]


def load_scans(split: str, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The raw 8x8 scans (0..16) and labels of ``split``."""
    raw, labels, _ = scans()
    keep = _mask(split, classes)
    return raw[keep], labels[keep]


@lru_cache(maxsize=4)
def _images(size: int) -> torch.Tensor:
    return to_images(scans()[0], size)


def augment(images: torch.Tensor, gen: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Small random rotations, scalings and shifts, brightness and noise (images in ``[0, 1]``): what
    lets a network trained on the scans read generated digits as well as the scanned ones. At
    ``strength`` 1: rotations up to 12 degrees, scalings and brightness up to 10 % and 20 %, shifts up
    to 2 pixels of 32, noise of standard deviation 0.05; every range scales with ``strength``."""
    n = images.shape[0]
    angle = (torch.rand(n, generator=gen) - 0.5) * math.radians(24) * strength
    scale = 1 + (torch.rand(n, generator=gen) - 0.5) * 0.2 * strength
    shift = (torch.rand(n, 2, generator=gen) - 0.5) * 0.25 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")
    out = out * (1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4 * strength)
    return (out + 0.05 * strength * torch.randn(out.shape, generator=gen)).clamp(0, 1)
