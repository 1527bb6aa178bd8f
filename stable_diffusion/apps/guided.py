"""Guided sampling, or vocabulary expansion (paper Sec. 4.1.1, App. B): optimise the initial
latents ``x_T`` so that a classifier recognises its target class in the decoded images."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from ..components import SDComponents
from ..model import decode, encode_prompt, eps_model
from ..nets import check_target
from .common import Sampler, noise, save_images, write_result


def guided_sampling(comps: SDComponents, classifier, prompt: str, target: int, seeds, *, iters: int = 30,
                    lr: float = 0.05, keep_norm: bool = True, sampler: Sampler = Sampler(), out: Path | None = None,
                    progress: bool = True) -> dict:
    """AdamW on ``x_T`` to raise ``log p(target | decode(x_0))`` under ``classifier``; the images
    before and after are in the result under ``images``.

    ``keep_norm`` rescales each ``x_T`` to its initial norm after every step (as DOODL
    renormalises its noise): Gaussian noise lives near that sphere, and off it the model draws
    out-of-distribution images that fool the classifier without looking like the class."""
    check_target(classifier, target, comps.device)
    model = eps_model(comps, sampler.guidance_scale)
    with torch.no_grad():
        cond = encode_prompt(comps, [prompt] * len(seeds))
    x_T = noise(comps, seeds).requires_grad_()
    norm = x_T.detach().flatten(1).norm(dim=1)
    opt = torch.optim.AdamW([x_T], lr=lr, weight_decay=0.0)

    def log_prob(images):
        return torch.log_softmax(classifier(images).float(), 1)[:, target]

    with torch.no_grad():
        before = decode(comps, sampler.run(comps, model, x_T, cond, grad=False))
        p_before = log_prob(before).exp()
    losses = []
    for _ in tqdm(range(iters), desc="guided sampling", disable=not progress):
        opt.zero_grad()
        loss = -log_prob(decode(comps, sampler.run(comps, model, x_T, cond))).mean()
        loss.backward()
        opt.step()
        if keep_norm:
            with torch.no_grad():
                x_T.mul_((norm / x_T.flatten(1).norm(dim=1)).view(-1, *[1] * (x_T.dim() - 1)))
        losses.append(loss.item())
    with torch.no_grad():
        after = decode(comps, sampler.run(comps, model, x_T, cond, grad=False))
        p_after = log_prob(after).exp()
    result = {"prompt": prompt, "target": target, "seeds": list(map(int, seeds)), "lr": lr, "keep_norm": keep_norm,
              "losses": losses,
              "p_target_before": p_before.tolist(), "p_target_after": p_after.tolist(), **asdict(sampler),
              "images": {"before": before, "after": after}}
    if out is not None:
        save_images(out / "guided.png", {"before": before, f"after (target {target})": after})
        write_result(out, "guided", result)
    return result
