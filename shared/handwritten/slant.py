"""Slanted writing: the shear that makes it, and the instrument that measures it.

Coordinates, stated once: ``x`` to the right, ``y`` *up*, both in pixels from the image centre; a positive
slant leans the top of a stroke to the right, as italic writing does.

* :func:`shear` maps the point ``(x, y)`` to ``(x + tan(angle) y, y)``: a vertical stroke becomes one at
  ``angle`` from the vertical.
* :func:`slant` is the instrument: from the ink's second central moments (``g`` the gray value, ``(x, y)``
  about the ink's centroid), ``slant = atan(mu_xy / mu_yy)``, the angle of the least-squares line
  ``x = slope * y`` through the ink (the moment de-skewing of digit recognition). A shear adds exactly
  ``tan(angle)`` to the slope, so a vertical bar sheared by ``angle`` measures ``angle``, and any image's
  slope moves by ``tan(angle)`` (up to pixels lost at the frame and to resampling).
* :func:`deskew` undoes the measured slant, so that a reader can be asked what digit is there
  whatever its slant.

Nothing here is ever differentiated or optimised: the instrument judges the slant that a learned token
produces, so it takes no part in learning it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _affine_shear(images: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """Images ``(n, C, H, W)`` in ``[0, 1]`` sheared by ``slope`` (per image): the output at ``(x, y)``
    samples the input at ``(x - slope y, y)``, bilinearly, zero (no ink) outside the frame."""
    n, _, h, w = images.shape
    slope = slope.to(images).expand(n)
    # affine_grid's coordinates are normalised to [-1, 1] with y *down*: the input's x_n is
    # x_n + slope (h / w) y_n there (y flips sign, and each axis has its own scale).
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 1, 1] = 1.0, 1.0
    theta[:, 0, 1] = slope * h / w
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    return F.grid_sample(images, grid, align_corners=False, padding_mode="zeros")


def shear(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """``images`` (``(n, C, H, W)``, ink bright on black, in ``[0, 1]``) slanted by ``degrees``: each
    point ``(x, y)`` moves to ``(x + tan(degrees) y, y)``."""
    if not -80 <= degrees <= 80:
        raise ValueError(f"shear angle must be within 80 degrees of vertical, got {degrees}")
    return _affine_shear(images, torch.tensor(math.tan(math.radians(degrees))))


def _slope(images: torch.Tensor) -> torch.Tensor:
    if images.dim() != 4:
        raise ValueError(f"images must have shape (n, C, H, W), got {tuple(images.shape)}")
    g = images.detach().double().mean(1)
    _, h, w = g.shape
    y = ((h - 1) / 2 - torch.arange(h, dtype=g.dtype, device=g.device))[:, None]
    x = (torch.arange(w, dtype=g.dtype, device=g.device) - (w - 1) / 2)[None, :]
    mass = g.sum((1, 2)).clamp_min(1e-12)
    cx, cy = (g * x).sum((1, 2)) / mass, (g * y).sum((1, 2)) / mass
    dx, dy = x - cx[:, None, None], y - cy[:, None, None]
    return (g * dx * dy).sum((1, 2)) / (g * dy * dy).sum((1, 2)).clamp_min(1e-12)


def slant(images: torch.Tensor) -> torch.Tensor:
    """Each image's slant in degrees (float64, ``(n,)``): ``atan(mu_xy / mu_yy)`` of its ink."""
    return torch.rad2deg(torch.atan(_slope(images)))


def deskew(images: torch.Tensor) -> torch.Tensor:
    """``images`` with their measured slant sheared away (each image by its own slope)."""
    return _affine_shear(images, -_slope(images).to(images.dtype))
