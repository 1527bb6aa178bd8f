"""Morphing (AdjointDEIS poster, Table 1; the DiM pipeline): a sample that an identity model F
matches to two references at once.

DiM encodes both references to noise by the probability-flow ODE (DDIM inversion, run from data
up to noise), interpolates the noises spherically and the conditions linearly, and decodes.
The poster then optimises ``(x_T, c)`` through the sampler on
``L = (1 - cos(F(x0), F(a))) + (1 - cos(F(x0), F(b)))``, with the ODE or the SDE sampler. A morph
succeeds when F matches it to both references at the threshold where F falsely matches 0.1 %
of impostor pairs (MMPMR).
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm import tqdm

from adjointdpm import Adjoint, AdjointDEIS, sample

from ..components import SDComponents
from ..model import decode, eps_model


def encode_images(comps: SDComponents, images: torch.Tensor) -> torch.Tensor:
    """VAE latents (the mean of the posterior, scaled as the UNet expects) of images in [0, 1]."""
    vae = comps.vae
    latents = vae.encode((images * 2 - 1).to(comps.device, vae.dtype)).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


def slerp(a: torch.Tensor, b: torch.Tensor, w: float = 0.5) -> torch.Tensor:
    """Spherical interpolation of each row (flattened), as DiM interpolates its encoded noises."""
    fa, fb = a.flatten(1), b.flatten(1)
    cos = (fa * fb).sum(1) / (fa.norm(dim=1) * fb.norm(dim=1))
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7)).view(-1, *[1] * (a.dim() - 1))
    return (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.sin(omega)


def cosine(F, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(F(x).flatten(1), F(y).flatten(1), dim=1)


def match_threshold(F, images: torch.Tensor, identities: torch.Tensor, fmr: float = 1e-3) -> float:
    """The similarity above which F falsely matches a share ``fmr`` of impostor pairs (every pair of
    ``images`` with different ``identities``)."""
    with torch.no_grad():
        feats = torch.nn.functional.normalize(F(images).flatten(1).float(), dim=1)
    sims = feats @ feats.T
    impostor = identities[:, None] != identities[None, :]
    impostor &= torch.ones_like(impostor).triu(1)
    return float(torch.quantile(sims[impostor], 1 - fmr))


STRATEGIES = {  # the poster's AdjointDEIS-1; behind the SDE on its stored path (re-solving an SDE backwards
    "ode": lambda: AdjointDEIS(1),  # is unusable at few steps: notebook 01, section 9)
    "sde": lambda: Adjoint(solver="dpm1", states="reuse"),
}


def morph(comps: SDComponents, F: Callable, a: torch.Tensor, b: torch.Tensor, cond_a: torch.Tensor,
          cond_b: torch.Tensor, *, steps: int = 10, iters: int = 20, lr: float = 0.05, sde: bool | None = None,
          noise_seed: int = 0, progress: bool = True) -> dict:
    """Morphs of the references ``a``, ``b`` (images in [0, 1]) whose prompts encode to ``cond_a``,
    ``cond_b``. ``sde=None`` returns DiM's morphs (no optimisation); ``False``/``True`` optimise
    ``(x_T, c)`` with AdamW through the ODE (``dpm1``) or SDE (``sde-dpm1``) sampler for ``iters``
    steps. Guidance scale 1 throughout, so the decoder inverts the encoder. Returns the images,
    each one's similarity to ``a`` and ``b``, and the NFE per morph (model evaluations and
    vector-Jacobian products)."""
    model, schedule = eps_model(comps, 1.0), comps.schedule
    ends = dict(t_start=schedule.T, t_end=schedule.t_min)
    with torch.no_grad():
        encoded = [sample(model, encode_images(comps, img), schedule, cond, steps=steps, solver="dpm1",
                          t_start=schedule.t_min, t_end=schedule.T) for img, cond in ((a, cond_a), (b, cond_b))]
    x_T = slerp(*encoded).requires_grad_()
    cond = ((cond_a + cond_b) / 2).detach().requires_grad_()
    sampler = dict(steps=steps, solver="sde-dpm1", noise_seed=noise_seed) if sde else dict(steps=steps, solver="dpm1")
    nfe = 3 * steps  # two encodings and the final decode
    if sde is not None:
        opt = torch.optim.AdamW([x_T, cond], lr=lr, weight_decay=0.0)
        for _ in tqdm(range(iters), desc=f"morph ({'SDE' if sde else 'ODE'})", disable=not progress):
            x0, info = sample(model, x_T, schedule, cond, gradient=STRATEGIES["sde" if sde else "ode"](),
                              return_info=True, **ends, **sampler)
            images = decode(comps, x0)
            loss = ((1 - cosine(F, images, a)) + (1 - cosine(F, images, b))).sum()
            opt.zero_grad()
            loss.backward()
            opt.step()
            nfe += info.nfe_forward + info.nfe_backward
    with torch.no_grad():
        images = decode(comps, sample(model, x_T, schedule, cond, **ends, **sampler))
        return {"images": images, "similarity_a": cosine(F, images, a), "similarity_b": cosine(F, images, b),
                "nfe": nfe}
