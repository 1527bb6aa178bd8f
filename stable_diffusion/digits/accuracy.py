"""Every gradient strategy measured on the digits text-to-image model (``stable_diffusion/weights/digits``).

    python -m stable_diffusion.digits.accuracy [--out results/stable_diffusion/digits] [--batch 4] [--quick]

Writes ``adjoint_accuracy.md/json/png`` (:mod:`adjointdpm.tools.accuracy`): for DDIM (``dpm1``) and
DPM-Solver-2M at 10, 20 and 50 steps on the 8x8x4 latents (guidance 4, as the applications sample),
every strategy and form at 1, 2 and 4 times the sampler's steps, how far ``dL/dx_T`` is from the
sampler's exact gradient and from a converged solve's, for three losses on the decoded 32x32 images:
a smooth one (the mean intensity of the centre), a random projection, and an application's: the
guide's log-probability of the prompted digit (the classifier that guided sampling and the audit
climb). Noise ``i`` is seed ``i`` with the prompt "a handwritten digit <i mod 9>". About 45 minutes
on 2 CPU cores; an interrupted run resumes.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm.tools import accuracy, files

from ..apps import Pipeline, Sampler
from ..latent import decode
from . import data, load_digit_classifier, load_model
from .experiments import SAMPLER


def build(device, batch: int, quick: bool) -> accuracy.Setup:
    """The digits model with the applications' guidance, ``batch`` noises and prompts, three losses."""
    comps = load_model(device=device)
    pipe = Pipeline(comps, Sampler(guidance_scale=SAMPLER.guidance_scale))  # as the applications sample
    labels = torch.arange(batch) % data.UNSEEN  # the digits the model was taught by name: 0 to 8
    with torch.no_grad():
        cond = pipe.encode([data.prompt(int(k)) for k in labels])
    x_T = pipe.noise(range(batch))
    guide = load_digit_classifier().to(device)
    gen = torch.Generator().manual_seed(0)
    images = lambda x0: decode(comps, x0)  # noqa: E731
    direction = torch.randn(batch, 3, data.SIZE, data.SIZE, generator=gen).to(device)
    centre = slice(data.SIZE // 4, data.SIZE - data.SIZE // 4)
    picked = labels.to(device)
    losses = {"smooth": lambda x0: images(x0)[..., centre, centre].mean(),
              "projection": lambda x0: (images(x0) * direction).sum() / direction.numel() ** 0.5,
              "guide": lambda x0: torch.log_softmax(guide(images(x0)), 1)[torch.arange(batch), picked].sum()}
    about = {"smooth": "the mean intensity of the decoded images' central half of each side",
             "projection": "the decoded images' inner product with a fixed random direction (seed 0)",
             "guide": "the guide classifier's log-probability of the prompted digit"}
    return accuracy.Setup(
        title="the digits text-to-image model", model=pipe.model, x_T=x_T, schedule=comps.schedule, losses=losses,
        loss_about=about, cond=cond, t_end=comps.schedule.t_min,
        key={"model": files.fingerprint(comps.unet, comps.vae, comps.text_encoder), "guide": files.fingerprint(guide),
             "guidance": pipe.sampler.guidance_scale, "prompts": [data.prompt(int(k)) for k in labels]},
        about=f"The latent diffusion model of diffusers' classes trained here on the real handwritten digits "
              f"(`stable_diffusion/weights/digits`: 8x8x4 latents, SD's scaled-linear betas), classifier-free "
              f"guidance {pipe.sampler.guidance_scale:g}, prompts \"a handwritten digit <name>\".")


def main(argv=None):
    return accuracy.command("python -m stable_diffusion.digits.accuracy", __doc__, build,
                            Path("results/stable_diffusion/digits"), argv)


if __name__ == "__main__":
    main()
