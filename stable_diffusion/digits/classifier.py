"""The digit classifier: a small CNN trained here on the real digits (all ten, nines included,
as the paper's classifiers know the breed the diffusion model does not).

It plays three parts, for which ImageNet networks cannot be downloaded here:

* the classifier that guided sampling and the audit differentiate through (``forward``);
* its penultimate features define a Frechet distance between image sets, "digit-FID"
  (``embed``), in place of Inception's pool_3;
* its convolutional activations are the style and content features of stylization
  (:class:`ConvFeatures`), in place of VGG-19's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DigitClassifier(nn.Module):
    """Images ``(n, 3, H, W)`` in ``[0, 1]`` (resized to 32x32) -> logits over the ten digits."""

    def __init__(self, width: int = 32, features: int = 32):
        super().__init__()
        conv = lambda cin, cout: nn.Conv2d(cin, cout, 3, padding=1)  # noqa: E731
        self.block1 = nn.Sequential(conv(3, width), nn.ReLU(), conv(width, width), nn.ReLU())                # 32x32
        self.block2 = nn.Sequential(conv(width, 2 * width), nn.ReLU(), conv(2 * width, 2 * width), nn.ReLU())  # 16x16
        self.block3 = nn.Sequential(conv(2 * width, 4 * width), nn.ReLU())                                  # 8x8
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 16, features), nn.ReLU())
        self.out = nn.Linear(features, 10)

    def activations(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The three blocks' outputs (32x32, 16x16, 8x8), then the penultimate features."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape (n, 3, H, W), got {tuple(images.shape)}")
        if images.shape[-2:] != (32, 32):
            images = F.interpolate(images, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
        h1 = self.block1(images * 2 - 1)
        h2 = self.block2(F.max_pool2d(h1, 2))
        h3 = self.block3(F.max_pool2d(h2, 2))
        return [h1, h2, h3, self.head(F.max_pool2d(h3, 2))]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features, the space of digit-FID."""
        return self.activations(images)[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.embed(images))


class ConvFeatures(nn.Module):
    """Style and content features from the classifier's convolutions, in the interface of
    :class:`~stable_diffusion.nets.VGGFeatures`: ``(style activations, content activation)``,
    style at the three blocks (Gatys' shallow-to-deep layers), content at the deepest."""

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, images):
        h1, h2, h3, _ = self.classifier.activations(images)
        return [h1, h2, h3], h3
