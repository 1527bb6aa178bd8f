"""Every gradient strategy measured on the learned digits DDPM++ (``cifar/weights/digits_ddpmpp``).

    python -m cifar.adjoint_accuracy [--out results/cifar] [--batch 4] [--quick] [--device cuda]

Writes ``adjoint_accuracy.md/json/png`` (:mod:`adjointdpm.tools.accuracy`): for DDIM (``dpm1``) and
DPM-Solver-2M at 10, 20 and 50 steps, every strategy and form at 1, 2 and 4 times the sampler's
steps, how far ``dL/dx_T`` is from the sampler's exact gradient and from a converged solve's, for
two losses on the 16x16 digits in [-1, 1]: a smooth one (the mean intensity of the central 8x8) and
a random projection. About 30 minutes on 2 CPU cores; an interrupted run resumes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm import VPSchedule
from adjointdpm.tools import accuracy, files

from .checkpoint import load_score_sde
from .train_digits import EXPORT

CHECKPOINT = EXPORT / "checkpoint.pth"


def build(device, batch: int, quick: bool, checkpoint: Path = CHECKPOINT) -> accuracy.Setup:
    """The DDPM++ of ``checkpoint`` (config ``digits_ddpmpp``), ``batch`` noises (seed 0) and the two losses."""
    model = load_score_sde(checkpoint, "digits_ddpmpp").to(device).eval().requires_grad_(False)
    size = model.net.image_size
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(batch, 3, size, size, generator=gen).to(device)
    direction = torch.randn(batch, 3, size, size, generator=gen).to(device)
    centre = slice(size // 4, size - size // 4)
    losses = {"smooth": lambda x: x[..., centre, centre].mean(),
              "projection": lambda x: (x * direction).sum() / direction.numel() ** 0.5}
    about = {"smooth": "the mean intensity of the central half of each side",
             "projection": "the images' inner product with a fixed random direction (seed 0)"}
    return accuracy.Setup(
        title="the learned digits DDPM++", model=model, x_T=x_T, schedule=VPSchedule.linear(), losses=losses,
        loss_about=about, key={"model": files.fingerprint(model)},
        about=f"score_sde's DDPM++ (`digits_ddpmpp`, {size}x{size}) trained on the real handwritten digits "
              "(`cifar/weights/digits_ddpmpp`), continuous VP (linear betas 0.1 to 20).")


def main(argv=None):
    return accuracy.command("python -m cifar.adjoint_accuracy", __doc__, build, Path("results/cifar"), argv)


if __name__ == "__main__":
    main()
