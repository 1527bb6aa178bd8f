"""The image networks the applications differentiate through: a torchvision classifier and
VGG-19 features, both from local weights files read with ``weights_only=True``."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adjointdpm.tools import files

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class Classifier(nn.Module):
    """Images in [0, 1] -> logits: resize to ``size``, ImageNet normalisation, the network."""

    def __init__(self, net: nn.Module, size: int = 224):
        super().__init__()
        self.net, self.size = net, size
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images):
        images = F.interpolate(images, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net((images - self.mean) / self.std)


def load_torchvision_classifier(arch: str, weights=None, num_classes: int = 1000, size: int = 224) -> nn.Module:
    """``torchvision.models.get_model(arch, num_classes=...)`` with a local weights file;
    a file made for another number of classes gets an error that says so (the classifiers the
    project ships are in :mod:`stable_diffusion.registry`). Every classifier takes images in ``[0, 1]``."""
    if weights is None:
        raise ValueError(f"classifier {arch!r} needs a local weights file (e.g. torchvision's {arch}-*.pth)")
    import torchvision
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except ValueError as err:
        raise ValueError(f"unknown torchvision architecture {arch!r}: {err}") from None
    state = files.load_state_dict(weights, "classifier weights")
    expected = net.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
              for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if shapes:
        raise ValueError(f"classifier weights {weights} do not fit {arch} with num_classes={num_classes} (a "
                         f"classifier with another number of classes?): " + "; ".join(shapes[:4]))
    missing, unexpected = [k for k in expected if k not in state], [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"classifier weights {weights} do not fit {arch}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    net.load_state_dict(state)
    return Classifier(net.eval().requires_grad_(False), size)


def check_target(classifier: nn.Module, target: int, device=None) -> int:
    """The classifier's number of classes; an error if ``target`` is not one of them."""
    with torch.no_grad():
        num = classifier(torch.zeros(1, 3, 32, 32, device=device)).shape[1]
    if not 0 <= target < num:
        raise ValueError(f"target class {target} is not a class of this classifier, which has {num} outputs")
    return num


class VGGFeatures(nn.Module):
    """VGG-19 activations for the Gram-matrix style loss (Gatys et al.): style at relu1_1,
    relu2_1, relu3_1, relu4_1, relu5_1; content at relu4_2. Images in [0, 1]."""
    STYLE, CONTENT = (1, 6, 11, 20, 29), 22  # indices of those ReLUs in torchvision's vgg19().features

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features[: max(self.STYLE) + 1]
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images):
        """``(style activations, content activation)``."""
        h, style, content = (images - self.mean) / self.std, [], None
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.STYLE:
                style.append(h)
            if i == self.CONTENT:
                content = h
        return style, content


def load_vgg19(weights) -> VGGFeatures:
    """torchvision's VGG-19 convolutional features with a local weights file (``vgg19-dcbb9e9d.pth``)."""
    import torchvision
    features = torchvision.models.vgg19(weights=None).features
    state = files.load_state_dict(weights, "VGG-19 weights")
    # only the convolutional part is used: a full file or one holding just features.* both work
    state = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    try:
        features.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"VGG-19 weights {weights} do not fit torchvision's vgg19 features: {err}") from None
    return VGGFeatures(features.eval().requires_grad_(False))


def gram(features: torch.Tensor) -> torch.Tensor:
    """``G = F F^T / (C H W)`` per image, ``F`` the ``(C, HW)`` activations."""
    b, c, h, w = features.shape
    flat = features.reshape(b, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)
