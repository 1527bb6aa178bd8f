"""The real handwritten digits the digits model is trained on (scikit-learn's bundled
``load_digits``: 1797 8x8 images from 43 writers, nothing downloaded), and the prompts.

Image convention, stated once: ``pixel = intensity / 16`` (ink bright on black), upsampled
bilinearly (``align_corners=False``) from 8x8 to 32x32, the same gray value in all three RGB
channels, then scaled to ``[-1, 1]`` as Stable Diffusion's VAE expects (``[0, 1]`` is what
classifiers and figures see: :func:`to_unit`).

The split is fixed: 30 % of each class, drawn with a seeded permutation, is held out for
evaluation and never trained on. The digit **nine is held out of the diffusion model's
training** altogether: its prompt exists, its images are never seen (the analogue of Stable
Diffusion not knowing a fine-grained dog breed, which guided sampling must teach it).
"""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATE = "a handwritten digit {}"
UNSEEN = 9           # the digit the diffusion model never sees
SIZE = 32            # image side
HELD_OUT = 0.3       # share of each class kept for evaluation
SPLIT_SEED = 0


def prompt(label: int) -> str:
    """``a handwritten digit {name}``: the only prompts the model was trained on (and "")."""
    return TEMPLATE.format(NAMES[label])


def to_images(raw: torch.Tensor) -> torch.Tensor:
    """``(n, 8, 8)`` intensities 0..16 to ``(n, 3, 32, 32)`` images in ``[-1, 1]``."""
    x = (raw.float() / 16.0)[:, None]
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x * 2 - 1).expand(-1, 3, -1, -1).contiguous()


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """``[-1, 1]`` to ``[0, 1]`` (what classifiers, features and figures take)."""
    return (images / 2 + 0.5).clamp(0, 1)


@lru_cache(maxsize=None)
def _all() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits
    digits = load_digits()
    raw = torch.as_tensor(digits.images, dtype=torch.float32)
    labels = torch.as_tensor(digits.target, dtype=torch.long)
    held = torch.zeros(len(labels), dtype=torch.bool)
    gen = torch.Generator().manual_seed(SPLIT_SEED)
    for k in range(10):
        idx = torch.nonzero(labels == k).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        held[idx[: round(HELD_OUT * len(idx))]] = True
    return to_images(raw), labels, held


def load(split: str, classes=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in ``[-1, 1]`` and labels of ``split`` (``"train"`` or ``"heldout"``),
    optionally only ``classes``."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    images, labels, held = _all()
    keep = held if split == "heldout" else ~held
    if classes is not None:
        keep = keep & torch.isin(labels, torch.as_tensor(list(classes)))
    return images[keep], labels[keep]


def diffusion_training_set() -> tuple[torch.Tensor, torch.Tensor]:
    """The training split without the unseen digit: all the diffusion model ever sees."""
    return load("train", [k for k in range(10) if k != UNSEEN])
