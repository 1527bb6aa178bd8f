"""The models, classifiers and style features this project builds or ships, by the names the
commands take (``--model digits``, ``--classifier-arch digits``, ``--features vgg19``).

Floors: :mod:`.components`, :mod:`.model` and :mod:`.nets` build and load any Stable Diffusion
and any torchvision classifier and know no model by name; :mod:`.apps` uses them; the digits
package (:mod:`.digits`) trains and reads one model with them. This module sits above all of
them and is imported only by the commands (``python -m stable_diffusion``, the bench). Adding a
model the project builds is one entry in :data:`MODELS`.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from adjointdpm.tools import files

from . import digits
from .components import (SDComponents, check_model_dir, default_device, freeze, load_components,
                         sd15_random_components, tiny_components)


@dataclass(frozen=True)
class Model:
    """One model the commands know by name, with the defaults its applications take."""
    about: str
    build: Callable[[], SDComponents] | None  # float32 components on the CPU (None: loaded from a folder)
    guidance_scale: float = 7.5
    classifier: str = "resnet50"       # the default classifier (guided, audit) and identity model (morph)
    features: str = "vgg19"            # the default style features
    # what a model of handwritten digits offers the commands: real training images of a digit
    # (invert --target-digit) and the poster's morphing on pairs of its held-out digits
    digit_images: Callable[[int, int], torch.Tensor] | None = None
    morph_heldout: Callable[..., dict] | None = None


def _digit_images(digit: int, n: int) -> torch.Tensor:
    """``n`` real training images of ``digit`` in [0, 1]."""
    from .digits import data
    real, _ = data.load("train", [digit])
    if len(real) < n:
        raise ValueError(f"--target-digit {digit}: {len(real)} training images for {n} seeds")
    return data.to_unit(real[:n])


def _morph_heldout(comps: SDComponents, out: Path, **kwargs) -> dict:
    from .digits.experiments import morph_heldout
    return morph_heldout(comps, out, **kwargs)


MODELS = {
    "digits": Model("the small text-to-image model trained here on real handwritten digits (CPU, seconds to "
                    "minutes; its digit classifier is the default classifier and its convolutions the default "
                    "style features)", digits.load_model, guidance_scale=4.0, classifier="digits", features="digits",
                    digit_images=_digit_images, morph_heldout=_morph_heldout),
    "tiny": Model("tiny randomly initialised components (shows the plumbing, not pictures)",
                  tiny_components),
    "sd15-random": Model("Stable Diffusion 1.5's architecture with random weights (memory and time at the real "
                         "shapes)", sd15_random_components),
}
OTHER = Model("a Stable Diffusion v1.x loaded from a folder or the Hugging Face cache", build=None)


def models_help() -> str:
    """The named models as ``--help`` lists them."""
    import textwrap
    return "\n".join(textwrap.fill(m.about, 90, initial_indent=f"  {name:<11} ", subsequent_indent=" " * 14)
                     for name, m in MODELS.items())


def describe(model: str) -> Model:
    """The entry for ``--model``: a named model, or :data:`OTHER`'s defaults for a folder or cache id."""
    return MODELS.get(str(model), OTHER)


def model_argument(text: str) -> str:
    """``--model``'s type: a name in :data:`MODELS`, a folder with diffusers' layout, or a Hugging Face cache
    id (checked when it loads)."""
    if text not in MODELS and Path(text).exists():
        try:
            check_model_dir(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    return text


def open_model(model: str | Path, device=None, dtype: torch.dtype | None = None) -> SDComponents:
    """What ``--model`` names: a model of :data:`MODELS` (UNet and VAE in ``dtype``, default float32)
    or anything :func:`~stable_diffusion.components.load_components` reads, on ``device``."""
    if str(model) not in MODELS:
        return load_components(model, device, dtype)
    comps = freeze(MODELS[str(model)].build(), default_device(device))
    for net in (comps.unet, comps.vae):
        if net.dtype != (dtype or torch.float32):  # diffusers warns on every cast, even a no-op one
            net.to(dtype or torch.float32)
    return comps


def fingerprint(model: str | Path) -> str:
    """What a measurement of ``--model`` depends on, by content: a named model's built weights and betas,
    or every file of a folder (or of a cached id's snapshot). Another model under the same name or path
    fingerprints differently, so a bench record never outlives the weights it measured."""
    if str(model) in MODELS:
        comps = MODELS[str(model)].build()
        return files.fingerprint(comps.unet, comps.vae, comps.text_encoder, comps.betas)
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download
        try:
            folder = Path(snapshot_download(str(model), local_files_only=True))
        except Exception as err:  # the hub's many offline and not-found errors
            raise ValueError(f"{model} is neither a folder nor a model id in the Hugging Face cache "
                             f"({type(err).__name__}); nothing is downloaded") from None
    return files.fingerprint_files(folder)


# Classifiers shipped with their weights, by name: ``weights=None`` takes the committed file. Any other
# name is a torchvision architecture with a local weights file (:func:`stable_diffusion.nets.load_torchvision_classifier`).
CLASSIFIERS = {"digits": lambda weights: digits.load_digit_classifier(weights or digits.CLASSIFIER)}


def load_classifier(arch: str, weights=None, num_classes: int = 1000, size: int = 224) -> torch.nn.Module:
    """A classifier of :data:`CLASSIFIERS`, or torchvision's ``arch`` with a local weights file."""
    if arch in CLASSIFIERS:
        return CLASSIFIERS[arch](weights)
    from .nets import load_torchvision_classifier as load_torchvision
    return load_torchvision(arch, weights, num_classes, size)


def _vgg19(vgg_weights):
    from .nets import load_vgg19
    return load_vgg19(vgg_weights)


# Style features by name: the digit classifier's convolutions, or VGG-19's (a local weights file).
FEATURES = {"digits": lambda vgg_weights: digits.ConvFeatures(digits.load_digit_classifier()), "vgg19": _vgg19}


def load_features(name: str, vgg_weights=None) -> torch.nn.Module:
    """Style features of :data:`FEATURES` (``vgg_weights`` for VGG-19's)."""
    return FEATURES[name](vgg_weights)
