"""Stylization from one reference image (paper Sec. 4.2, eq. 13, App. D): fine-tune the UNet's
cross-attention weights so generated images take the reference's Gram-matrix style while
keeping their own content."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from adjointdpm import files

from ..components import SDComponents
from ..model import decode, encode_prompt, eps_model
from ..nets import gram
from ..training import Training
from .common import Sampler, generate, noise, write_result


def cross_attention_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """The UNet's cross-attention projections (``attn2``: to_q, to_k, to_v, to_out)."""
    params = {n: p for n, p in unet.named_parameters() if ".attn2." in n}
    if not params:
        raise ValueError("this UNet has no cross-attention (attn2) parameters")
    return params


def stylize(comps: SDComponents, features, style_image: torch.Tensor, prompts: list[str], seeds, *,
            epochs: int = 8, lr: float = 1e-4, w_style: float = 1e3, w_content: float = 1.0,
            sampler: Sampler = Sampler(), out: Path, save_every: int = 10, accelerator=None,
            progress: bool = True) -> dict:
    """Eq. 13: fine-tune the cross-attention weights so generated images take the Gram-matrix
    style of ``style_image`` ((1, 3, H, W) in [0, 1]) while keeping their content, over the
    noise-prompt pairs ``prompts x seeds``; AdamW, one pair per step and process.

    ``features(images) -> (style activations, content activation)`` is the feature network
    (VGG-19's, :class:`~stable_diffusion.nets.VGGFeatures`, on a real SD). ``out`` is keyed by
    everything that determines the result (weights, style, prompts, seeds, lr, weights of the
    terms, sampler, processes): a rerun with the same settings resumes from ``out/checkpoint.pt``
    (more ``epochs`` continue the training), one with other settings is refused. The original
    model's images (the content targets) are cached under ``out/content/``. Under ``accelerate
    launch`` each process takes every ``world``-th pair and gradients are averaged across
    processes. Writes the fine-tuned UNet with ``save_pretrained`` to ``out/unet``.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    pairs = [(p, s) for p in prompts for s in seeds]
    mine = list(range(rank, len(pairs), world))
    if not mine:
        raise ValueError(f"{len(pairs)} noise-prompt pairs for {world} processes: give at least one per process")
    comps.unet.float()  # AdamW on half-precision weights loses the small updates
    params = cross_attention_parameters(comps.unet)
    settings = {"unet": files.fingerprint(comps.unet), "features": files.fingerprint(features),
                "style": files.fingerprint(style_image), "prompts": list(prompts), "seeds": list(map(int, seeds)),
                "lr": lr, "w_style": w_style, "w_content": w_content, "sampler": asdict(sampler), "processes": world}
    files.claim(out, settings, "stylization folder")
    with files.exclusive(out, f".lock.{rank}"):
        model = eps_model(comps, sampler.guidance_scale)
        (out / "content").mkdir(exist_ok=True)
        content = {}
        for i in mine:  # content targets from the original weights, before any update
            image = files.cached(out / "content" / f"pair_{i:05d}.pt", "content target",
                                 lambda: generate(comps, [pairs[i][0]], [pairs[i][1]], sampler, model).cpu())
            with torch.no_grad():
                content[i] = features(image.to(comps.device))[1]
        if accelerator:
            accelerator.wait_for_everyone()
        with torch.no_grad():
            style_target = [gram(f) for f in features(style_image.to(comps.device))[0]]

        def loss_fn(step: int) -> torch.Tensor:
            i = mine[step % len(mine)]
            prompt, seed = pairs[i]
            with torch.no_grad():
                cond = encode_prompt(comps, [prompt])
            style, content_now = features(decode(comps, sampler.run(comps, model, noise(comps, [seed]), cond)))
            return (w_style * sum(F.mse_loss(gram(f), g) for f, g in zip(style, style_target))
                    + w_content * F.mse_loss(content_now, content[i]))

        training = Training(params, torch.optim.AdamW(params.values(), lr=lr), out / "checkpoint.pt",
                            save_every=save_every, accelerator=accelerator, desc="stylize")
        losses = training.run(epochs * len(mine), loss_fn, progress)
        result = {"pairs": len(pairs), "epochs": epochs, "lr": lr, "w_style": w_style, "w_content": w_content,
                  "losses": losses, "trained_parameters": sum(p.numel() for p in params.values()), **asdict(sampler)}
        if training.main:
            comps.unet.save_pretrained(out / "unet")
            write_result(out, "stylize", result)
    return result
