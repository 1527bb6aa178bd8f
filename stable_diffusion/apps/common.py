"""What every application shares: how it samples (:class:`Sampler`, bound to the components as a
:class:`Pipeline`), its initial noise, and how it writes results (image grids, strict JSON)."""
from __future__ import annotations

import argparse
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from adjointdpm import make_gradient, sample
from adjointdpm.tools import files
from adjointdpm.tools.report import write_result
from adjointdpm.solvers import make_method

from ..components import SDComponents
from ..latent import check_latents, decode, encode_prompt, eps_model

# The gradient strategies by name (adjointdpm.GRADIENTS). "adjoint" is RK4 on eq. 11 in (y, rho) at the
# sampler's steps: behind the applications' DPM-Solver-2M it is the most accurate memory-flat strategy on the
# digits model (3.9 % off the sampler's exact gradient at 10 steps, 2.1 % at 20:
# results/stable_diffusion/digits/adjoint_accuracy.md), at four VJPs per step; "adjointdeis" (AdjointDEIS-1, data
# form) makes one per step and is 10-35 % off there. "reversible" is exact at flat memory, behind the reversible
# sampler only (--solver reversible-dpm1). "adjointdeis-stored" takes the states the forward stored, one per step
# (re-solving an SDE backwards is unusable at few steps: notebook 01, section 10), so its memory grows with steps
# as Checkpoint's does.


@dataclass(frozen=True)
class Sampler:
    """How every application samples: ``steps`` of ``solver`` on eq. 10 (logSNR grid, from
    t = 1 down to the first training step), guidance scale, and the gradient strategy by name
    (:data:`adjointdpm.GRADIENTS`: ``adjoint`` solves the adjoint ODE backwards with ``steps`` RK4 steps), and
    for an SDE solver (``sde-dpm1``) the seed of its Brownian path. Settings only, frozen (so it is a
    safe default argument); :class:`Pipeline` binds it to components."""
    steps: int = 20
    solver: str = "dpm2m"
    guidance_scale: float = 7.5
    gradient: str = "adjoint"
    noise_seed: int | None = None

    def __post_init__(self):
        method = make_method(self.solver)
        make_gradient(self.gradient, self.steps).check(method)  # the name, and the sampler it differentiates
        if method.stochastic != (self.noise_seed is not None):
            raise ValueError(f"solver {self.solver!r} {'needs' if method.stochastic else 'takes no'} noise_seed "
                             f"(got {self.noise_seed!r})")
        if method.reversible and self.gradient not in ("reversible", "checkpoint", "backprop"):
            raise ValueError(f"solver {self.solver!r} is differentiated exactly by gradient 'reversible' (or "
                             f"'checkpoint', 'backprop'), not by an adjoint (got {self.gradient!r})")


@dataclass(frozen=True)
class Command:
    """One application as a subcommand of ``python -m stable_diffusion``: its help line, its own
    arguments (``arguments(parser)``), the checks between them before anything loads (``check(args,
    model)`` raises ``ValueError("argument --x: ...")``, ``model`` the :class:`registry.Model` described),
    and its run (``run(args, comps, sampler, model, classifier, features)`` -> the line it prints; the
    command loads the classifier and the style features, so that no application imports the registry).
    ``classifier`` names the classifier it takes in messages (``None``: it takes none), and
    ``takes_classifier(model)`` says whether it takes it with that :class:`registry.Model`; ``features``: it
    takes style features; ``samples`` is false where the application fixes its own samplers (no
    ``--solver``, ``--guidance-scale``, ``--gradient``); ``resumes``: resumable work, data-parallel under
    ``accelerate launch``."""
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[..., str]
    check: Callable[[argparse.Namespace, object], None] = lambda args, model: None
    classifier: str | None = None
    takes_classifier: Callable[[object], bool] = lambda model: True
    features: bool = False
    samples: bool = True
    resumes: bool = False


class Pipeline:
    """A :class:`Sampler` bound to Stable Diffusion's components and its guided model: noise and
    prompts in, latents or images out, with or without a gradient. Each application's body then
    says only what it optimises: ``pipe.images(x_T, pipe.encode(prompts))``."""

    def __init__(self, comps: SDComponents, sampler: Sampler = Sampler()):
        self.comps, self.sampler = comps, sampler
        self.model = eps_model(comps, sampler.guidance_scale)

    def noise(self, seeds, dtype=torch.float32) -> torch.Tensor:
        """One latent ``x_T`` per seed, the same on every device."""
        return latent_noise(self.comps, seeds, dtype)

    def encode(self, prompts: list[str], embedding_row=None, token_id=None) -> torch.Tensor:
        """The prompts' text embeddings (with ``embedding_row`` as token ``token_id``'s, if given)."""
        return encode_prompt(self.comps, list(prompts), embedding_row, token_id)

    def latents(self, x_T: torch.Tensor, cond, grad: bool = True, return_info: bool = False):
        """``x_0``'s latents from ``x_T``; differentiable by the sampler's strategy if ``grad``; with
        ``return_info``, also the solve's :class:`adjointdpm.ode.SolveInfo` (its NFE forward and backward)."""
        check_latents(self.comps, x_T)
        sampler, schedule = self.sampler, self.comps.schedule
        gradient = make_gradient(sampler.gradient, sampler.steps) if grad else None
        return sample(self.model, x_T, schedule, cond, steps=sampler.steps, solver=sampler.solver,
                      t_end=schedule.t_min, gradient=gradient, noise_seed=sampler.noise_seed, return_info=return_info)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, cond) -> torch.Tensor:
        """The ``x_T`` that the probability-flow ODE carries to ``images`` (in [0, 1]): the VAE's
        latents, then DDIM run from data up to noise (``dpm1`` at the sampler's steps, whatever its
        solver: an SDE has no inverse path)."""
        vae, schedule = self.comps.vae, self.comps.schedule
        latents = vae.encode((images * 2 - 1).to(self.comps.device, vae.dtype)).latent_dist.mean
        return sample(self.model, latents.float() * vae.config.scaling_factor, schedule, cond,
                      steps=self.sampler.steps, solver="dpm1", t_start=schedule.t_min, t_end=schedule.T)

    def images(self, x_T: torch.Tensor, cond, grad: bool = True) -> torch.Tensor:
        """The decoded images in [0, 1]."""
        return decode(self.comps, self.latents(x_T, cond, grad))

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds, embedding_row=None, token_id=None) -> torch.Tensor:
        """Images in [0, 1] for ``prompts[i]`` from seed ``seeds[i]``, no graph."""
        return self.images(self.noise(seeds), self.encode(prompts, embedding_row, token_id), grad=False)


def latent_noise(comps: SDComponents, seeds, dtype=torch.float32) -> torch.Tensor:
    """One latent ``x_T`` per seed, the same on every device."""
    return torch.stack([torch.randn(comps.latent_shape, generator=torch.Generator().manual_seed(int(s)),
                                    dtype=dtype) for s in seeds]).to(comps.device)


def save_images(path: Path, rows: dict[str, torch.Tensor]) -> None:
    """A grid: one row per entry of ``rows`` (images in [0, 1])."""
    from matplotlib.figure import Figure
    n = max(len(v) for v in rows.values())
    height = 1.75 * len(rows)  # inches: a 1.5-inch image and a line of title per row
    fig = Figure(figsize=(1.5 * n, height))
    # the row titles run across the row: placed by hand, as a layout engine would shrink the images to fit them
    axes = fig.subplots(len(rows), n, squeeze=False, gridspec_kw=dict(
        left=0.005, right=0.995, bottom=0.005, top=1 - 0.25 / height, wspace=0.04, hspace=0.25 / 1.5))
    for r, (title, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].detach().float().permute(1, 2, 0).cpu().clamp(0, 1).numpy())
        axes[r][0].text(0, 1.04, title, transform=axes[r][0].transAxes, fontsize=9, ha="left", va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    files.save_figure(fig, path, dpi=100)


def write_record(out: Path, name: str, result: dict, markdown: str | None = None,
                 figure: Callable[[Path], object] | None = None) -> dict:
    """An application's files in ``out``, through :func:`adjointdpm.tools.report.write_result`: ``name.json``
    (the result without its tensors: images stay in the returned dict), ``name.md`` and ``name.png``."""
    write_result(out, name, {k: v for k, v in result.items() if k != "images" and not torch.is_tensor(v)}, markdown,
                 figure)
    return result


MAX_PIXELS = 64 * 2 ** 20  # 64 megapixels: a 192 MB RGB decode, 8x a 24-megapixel photograph; PIL's own bomb guard
# warns only above 89 megapixels and refuses above 179


def read_image(source: str, size: int) -> torch.Tensor:
    """A png/jpeg file, or ``sklearn:NAME`` for a photograph bundled with scikit-learn (``china.jpg``,
    ``flower.jpg``), as (1, 3, size, size) in [0, 1], centre-cropped to a square."""
    if source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image
        pixels = load_sample_image(source.removeprefix("sklearn:"))
    else:
        from PIL import Image, UnidentifiedImageError
        too_many = (f"image {source} has more than the {MAX_PIXELS:,} pixels an image here may have (decoded, it "
                    "would take 3 bytes a pixel): give a smaller one")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below, in our words
                with Image.open(source) as file:  # reads the header only: the size is known before decoding
                    if file.size[0] * file.size[1] > MAX_PIXELS:
                        raise ValueError(too_many)
                    pixels = np.asarray(file.convert("RGB"))
        except Image.DecompressionBombError:  # PIL's own guard, at open, above 179 megapixels
            raise ValueError(too_many) from None
        except (OSError, UnidentifiedImageError) as err:
            raise ValueError(f"image {source} cannot be decoded (png or jpeg expected): "
                             f"{str(err).splitlines()[0]}") from None
    image = torch.tensor(pixels).permute(2, 0, 1)[None].float().div(255)
    side = min(image.shape[-2:])  # centre square, as the applications' images are square
    top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
    image = image[..., top:top + side, left:left + side]
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
