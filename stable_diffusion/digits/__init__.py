"""The digits model: a small text-to-image latent diffusion model of the real diffusers
classes, trained here on scikit-learn's bundled handwritten digits so that every Stable
Diffusion application shows its real effect on a CPU. Nines are held out of its training.

    python -m stable_diffusion.digits train --out DIR     # retrain (about 17 minutes, 2 CPU cores)
    python -m stable_diffusion.digits quality             # does it draw the prompted digits?
    python -m stable_diffusion.digits results             # the four applications and the morph, Tables 2 and 3

The trained pipeline is committed at ``stable_diffusion/weights/digits/`` (what
``StableDiffusionPipeline.save_pretrained`` writes) with its classifier beside it; every
``python -m stable_diffusion`` command takes it as ``--model digits``.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..components import SDComponents, load_components
from .classifier import ConvFeatures, DigitClassifier

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
PIPELINE = WEIGHTS / "digits"
CLASSIFIER = WEIGHTS / "digit_classifier.safetensors"


def load_model(folder=PIPELINE, device="cpu") -> SDComponents:
    """The committed digits model (or the one trained in ``folder``), float32, frozen."""
    return load_components(folder, device, torch.float32)


def load_digit_classifier(path=CLASSIFIER) -> DigitClassifier:
    """The committed digit classifier (or one at ``path``), eval mode, frozen."""
    from adjointdpm.tools import files
    return files.load_weights(DigitClassifier(), path, "digit classifier weights").eval().requires_grad_(False)


__all__ = ["PIPELINE", "CLASSIFIER", "DigitClassifier", "ConvFeatures", "load_model", "load_digit_classifier"]
