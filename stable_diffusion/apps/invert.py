"""Text-embedding inversion (paper App. A): a new token whose embedding row makes
``template.format(token)`` generate target images from fixed noises."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adjointdpm import files
from adjointdpm.seeds import mix_seed

from ..components import SDComponents
from ..model import add_token
from .common import Pipeline, Sampler, save_images, write_result


def check_template(text: str, what: str = "template") -> str:
    """A prompt with one ``{}`` where the new token goes (checked before any optimisation)."""
    try:
        filled = text.format("<token>")
    except (IndexError, KeyError, ValueError):
        filled = None
    if filled is None or text.count("{}") != 1:
        raise ValueError(f"{what} must contain '{{}}' once, where the token goes, and no other braces: got {text!r}")
    return text


def invert_embedding(comps: SDComponents, targets: torch.Tensor, seeds, *, token: str = "<effect>",
                     init_token: str | None = None, template: str = "a photo of {}", iters: int = 100,
                     lr: float = 5e-3, features=None, sampler: Sampler = Sampler(), reuse_prompts=(),
                     out: Path | None = None, progress: bool = True) -> dict:
    """Optimise a new token's embedding row so that ``template.format(token)`` generates the
    ``targets`` (images in [0, 1]). Saves ``learned_embeds.safetensors`` (``{token: row}``,
    loadable by diffusers' ``load_textual_inversion``) and images of the token reused in
    ``reuse_prompts``.

    Without ``features``, the paper's loss (App. A): the MSE between the images generated from the
    fixed noises ``seeds`` and the targets, one target per seed. It fits those pairs; nothing asks
    the token to draw the targets' kind of image from other noises. With ``features`` (images ->
    ``(n, d)``), every step draws ``len(seeds)`` fresh noises and matches the mean of their images'
    features to the targets' (a first-moment distance, as FID's first term): the token must draw
    the targets' kind of image from any noise, so it generalises to noises it never saw."""
    for what, text in [("template", template)] + [("reuse prompt", t) for t in reuse_prompts]:
        check_template(text, what)
    if features is None and len(targets) != len(seeds):
        raise ValueError(f"{len(targets)} target images for {len(seeds)} seeds: give one seed per target")
    token_id = add_token(comps, token, init_token)
    row = comps.text_encoder.get_input_embeddings().weight[token_id].detach().clone().requires_grad_()
    pipe = Pipeline(comps, sampler)
    targets = targets.to(comps.device).float()
    prompts = [template.format(token)] * len(seeds)
    if features is not None:
        with torch.no_grad():
            target_mean = features(targets).mean(0)
    opt = torch.optim.AdamW([row], lr=lr, weight_decay=0.0)
    losses = []
    for step in tqdm(range(iters), desc="invert embedding", disable=not progress):
        opt.zero_grad()
        cond = pipe.encode(prompts, row, token_id)
        fresh = seeds if features is None else [mix_seed(s, step + 1) for s in seeds]
        images = pipe.images(pipe.noise(fresh), cond)
        if features is None:
            loss = F.mse_loss(F.interpolate(images, size=targets.shape[-2:], mode="bilinear", align_corners=False)
                              if images.shape[-2:] != targets.shape[-2:] else images, targets)
        else:
            loss = ((features(images).mean(0) - target_mean) ** 2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        comps.text_encoder.get_input_embeddings().weight[token_id] = row.detach()
    result = {"token": token, "template": template, "losses": losses,
              "loss": "MSE to the targets from fixed noises" if features is None else
                      "distance of mean features from fresh noises to the targets'", **asdict(sampler)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        files.save_tensors({token: row.detach().float().cpu()}, out / "learned_embeds.safetensors")
        rows = {"targets": targets[:len(seeds)], "learned": pipe.generate(prompts, seeds)}
        for prompt in reuse_prompts:
            rows[prompt.format(token)] = pipe.generate([prompt.format(token)] * len(seeds), seeds)
        save_images(out / "invert.png", rows)
        write_result(out, "invert", result)
    return result
