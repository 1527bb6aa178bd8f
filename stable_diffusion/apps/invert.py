"""Text-embedding inversion (paper App. A): a new token whose embedding row makes
``template.format(token)`` generate target images from fixed noises."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adjointdpm.tools import cli, files
from adjointdpm.seeds import mix_seed

from ..components import SDComponents
from ..latent import add_token
from .common import Command, Pipeline, Sampler, read_image, save_images, write_record


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
        write_record(out, "invert", result, figure=lambda path: save_images(path, rows))
    return result


def _template(text: str) -> str:
    try:
        return check_template(text, "it")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _arguments(p):
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target-images", type=cli.existing_file, nargs="+", help="one image file per seed")
    src.add_argument("--target-prompt", help="simulate targets: generate them from this prompt at the same seeds")
    src.add_argument("--target-digit", type=int, choices=range(10), metavar="0-9",
                     help="with --model digits: real training images of this digit, one per seed")
    p.add_argument("--token", default="<effect>", help="the new token (default <effect>)")
    p.add_argument("--init-token", help="existing token whose embedding starts the new one (default: the mean row)")
    p.add_argument("--template", type=_template, default="a photo of {}", help="prompt with {} for the token")
    p.add_argument("--reuse-prompts", type=_template, nargs="*", default=[], help="prompts with {} for the token, "
                   "drawn after training")
    p.add_argument("--iters", type=cli.count("iters"), default=100, help="AdamW steps (default 100; " + cli.bound_help("iters") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=5e-3, help="learning rate (default 5e-3)")


def _check(args, model):
    if args.target_images and len(args.target_images) != len(args.seeds):
        raise ValueError(f"argument --target-images: {len(args.target_images)} images for {len(args.seeds)} seeds "
                         "(give one seed per image)")
    if args.target_digit is not None and model.digit_images is None:
        raise ValueError("argument --target-digit: only with a model of digits (--model digits)")


def _run(args, comps, sampler, model, classifier, features) -> str:
    if args.target_prompt:
        targets = Pipeline(comps, sampler).generate([args.target_prompt] * len(args.seeds), args.seeds)
    elif args.target_digit is not None:
        targets = model.digit_images(args.target_digit, len(args.seeds))
    else:
        targets = torch.cat([read_image(str(p), comps.image_size) for p in args.target_images])
    result = invert_embedding(comps, targets, args.seeds, token=args.token, init_token=args.init_token,
                              template=args.template, iters=args.iters, lr=args.lr, sampler=sampler,
                              reuse_prompts=args.reuse_prompts, out=args.out, progress=not args.no_progress)
    return (f"MSE {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; "
            f"embedding saved to {args.out / 'learned_embeds.safetensors'}")


COMMAND = Command("invert images into a new token's embedding (App. A)", _arguments, _run, check=_check)
