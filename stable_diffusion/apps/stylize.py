"""Stylization from one reference image (paper Sec. 4.2, eq. 13, App. D): fine-tune the UNet's
cross-attention weights so generated images take the reference's Gram-matrix style while
keeping their own content."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from adjointdpm.tools import cli, files
from adjointdpm.tools.training import Training

from ..components import SDComponents
from ..latent import as_read
from ..nets import gram
from .common import Command, Pipeline, Sampler, read_image, write_record


# The paper's target modules (App. D): the cross-attention projections of every transformer block.
LORA_TARGETS = ("attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")


def cross_attention_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """The UNet's cross-attention projections (``attn2``: to_q, to_k, to_v, to_out)."""
    params = {n: p for n, p in unet.named_parameters() if ".attn2." in n and "lora_" not in n}
    if not params:
        raise ValueError("this UNet has no cross-attention (attn2) parameters")
    return params


def add_lora(unet, rank: int) -> dict[str, torch.nn.Parameter]:
    """peft LoRA adapters of ``rank`` on :data:`LORA_TARGETS` (``lora_alpha = rank``: scale 1;
    B starts at zero, so the UNet's output is unchanged until training); returns their
    parameters. A UNet without these linear layers in every cross-attention block is refused."""
    from peft import LoraConfig
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    blocks = [n for n, m in unet.named_modules() if n.endswith(".attn2")]
    missing = [f"{b}.{t.split('.', 1)[1]}" for b in blocks for t in LORA_TARGETS
               if not _is_linear(unet, f"{b}.{t.split('.', 1)[1]}")]
    if not blocks or missing:
        raise ValueError("--lora-rank needs cross-attention blocks (attn2) with linear to_q, to_k, to_v and to_out.0 "
                         f"in the UNet; {'it has no attn2 block' if not blocks else 'missing: ' + ', '.join(missing[:4])}")
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=list(LORA_TARGETS))
    with torch.random.fork_rng(devices=[unet.device] if unet.device.type == "cuda" else []):
        torch.manual_seed(0)  # A's initialisation: a fresh run and a resumed one start alike
        unet.add_adapter(config)
    return {n: p for n, p in unet.named_parameters() if "lora_" in n}


def _is_linear(module, name: str) -> bool:
    try:
        return isinstance(module.get_submodule(name), torch.nn.Linear)
    except AttributeError:
        return False


def save_lora(unet, folder: Path) -> Path:
    """``folder/pytorch_lora_weights.safetensors`` in diffusers' LoRA format, as diffusers'
    ``train_text_to_image_lora.py`` writes it: ``StableDiffusionPipeline.load_lora_weights(folder)``
    loads it into a pipeline of the same base model."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict
    StableDiffusionPipeline.save_lora_weights(
        folder, unet_lora_layers=convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)), safe_serialization=True)
    return folder / "pytorch_lora_weights.safetensors"


def fine_tune_style(comps: SDComponents, features, style_image: torch.Tensor, prompts: list[str], seeds, *,
                    epochs: int = 8, lr: float = 1e-4, w_style: float = 1e3, w_content: float = 1.0,
                    sampler: Sampler = Sampler(), out: Path, save_every: int = 10, accelerator=None,
                    lora_rank: int | None = None, batch: int | None = None, progress: bool = True) -> dict:
    """Eq. 13: fine-tune the cross-attention weights so generated images take the Gram-matrix
    style of ``style_image`` ((1, 3, H, W) in [0, 1]) while keeping their content, over the
    noise-prompt pairs ``prompts x seeds``; AdamW on the mean loss of ``batch`` pairs per step (default: one
    per process), pairs ``k * batch .. (k + 1) * batch - 1`` (mod their number) at step ``k``.

    ``features(images) -> (style activations, content activation)`` is the feature network
    (VGG-19's, :class:`~stable_diffusion.nets.VGGFeatures`, on a real SD). ``out`` is keyed by
    everything that determines the result (weights, style, prompts, seeds, lr, weights of the
    terms, sampler, processes): a rerun with the same settings resumes from ``out/checkpoint.pt``
    (more ``epochs`` continue the training), one with other settings is refused. The original
    model's images (the content targets) are cached under ``out/content/``. Under ``accelerate
    launch`` each process takes every ``world``-th pair of a step's batch and the gradients are averaged
    across processes, so N processes train what one process trains with the same ``batch`` (to round-off);
    only the main process writes files. Writes the fine-tuned UNet with ``save_pretrained`` to ``out/unet``.

    With ``lora_rank``, rank-``lora_rank`` LoRA adapters on the same projections are trained
    instead of the weights (:func:`add_lora`) and written in diffusers' LoRA format to
    ``out/lora`` (:func:`save_lora`); ``comps.unet`` keeps them.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    pairs = [(p, s) for p in prompts for s in seeds]
    batch = world if batch is None else batch
    if batch < 1 or batch % world or len(pairs) % batch:
        raise ValueError(f"batch {batch}: a step's pairs must be shared evenly by the {world} processes and divide the "
                         f"{len(pairs)} noise-prompt pairs into whole steps")
    mine = list(range(rank, len(pairs), world))  # the pairs of this process's share of every step
    settings = {"unet": files.fingerprint(comps.unet), "features": files.fingerprint(features),
                "style": files.fingerprint(style_image), "prompts": list(prompts), "seeds": list(map(int, seeds)),
                "lr": lr, "w_style": w_style, "w_content": w_content, "sampler": asdict(sampler), "processes": world}
    if lora_rank is not None:  # a new key only when used: folders made before LoRA keep resuming
        settings["lora_rank"] = lora_rank
    if batch != world:  # the same: folders made with one pair per process keep resuming
        settings["batch"] = batch
    params = add_lora(comps.unet, lora_rank) if lora_rank else cross_attention_parameters(comps.unet)
    for p in params.values():  # AdamW on half-precision weights loses the small updates: the trained ones
        p.data = p.data.float()  # alone go to float32, as diffusers' cast_training_params (LatentEps autocasts)
    files.claim(out, settings, "stylization folder")
    with files.exclusive(out, f".lock.{rank}"):
        pipe = Pipeline(comps, sampler)
        (out / "content").mkdir(exist_ok=True)
        content = {}
        for i in mine:  # content targets from the original weights, before any update; cached by the main process
            make = lambda: pipe.generate([pairs[i][0]], [pairs[i][1]]).cpu()  # noqa: E731
            image = (files.cached(out / "content" / f"pair_{i:05d}.pt", "content target", make) if rank == 0
                     else make())
            with torch.no_grad():
                content[i] = features(image.to(comps.device))[1]
        if accelerator:
            accelerator.wait_for_everyone()
        with torch.no_grad():
            style_target = [gram(f) for f in features(style_image.to(comps.device))[0]]

        def pair_loss(i: int) -> torch.Tensor:
            prompt, seed = pairs[i]
            with torch.no_grad():
                cond = pipe.encode([prompt])
            style, content_now = features(pipe.images(pipe.noise([seed]), cond))
            return (w_style * sum(F.mse_loss(gram(f), g) for f, g in zip(style, style_target))
                    + w_content * F.mse_loss(content_now, content[i]))

        def loss_fn(step: int) -> torch.Tensor:  # this process's share of the step's batch, as a mean
            share = [(step * batch + j) % len(pairs) for j in range(rank, batch, world)]
            return sum(pair_loss(i) for i in share) / len(share)

        training = Training(params, torch.optim.AdamW(params.values(), lr=lr), out / "checkpoint.pt",
                            save_every=save_every, accelerator=accelerator, desc="stylize")
        losses = training.run(epochs * len(pairs) // batch, loss_fn, progress)
        result = {"prompts": [as_read(comps, p) for p in prompts], "pairs": len(pairs), "batch": batch, "epochs": epochs,
                  "processes": world, "lr": lr, "w_style": w_style, "w_content": w_content,
                  "losses": losses, "trained_parameters": sum(p.numel() for p in params.values()), **asdict(sampler)}
        if lora_rank is not None:
            result["lora_rank"] = lora_rank
        if training.main:
            if lora_rank:
                save_lora(comps.unet, out / "lora")
            else:
                comps.unet.save_pretrained(out / "unet")
            write_record(out, "stylize", result)
    return result


# How each argument of ``stylize`` (the one resumable application) reaches its folder's key
# (:func:`fine_tune_style`), or why it cannot change the result; tests/test_keys.py fails for an argument in neither
# table.
KEYED = {"model": "the UNet's weights fingerprint", "style_image": "the style image's fingerprint",
         "features": "the features' fingerprint", "vgg_weights": "the features' fingerprint",
         "prompts": "the key", "seeds": "the key", "lr": "the key", "w_style": "the key", "w_content": "the key",
         "steps": "the sampler in the key", "solver": "the sampler in the key",
         "guidance_scale": "the sampler in the key", "gradient": "the sampler in the key",
         "lora_rank": "the key (when given)", "batch": "the key (when not one pair per process)"}
UNKEYED = {"epochs": "more epochs continue the training; fewer than the folder holds are refused",
           "save_every": "the checkpoint's interval: a step's loss depends only on its index",
           "save_memory": "savings that keep the gradient exact (round-off only)",
           "device": "round-off only", "out": "where the work goes: the key lives in it",
           "no_progress": "display only"}


def style_image(text: str) -> str:
    """A local image file, or ``sklearn:china.jpg`` / ``sklearn:flower.jpg`` (bundled photographs)."""
    if text in ("sklearn:china.jpg", "sklearn:flower.jpg"):
        return text
    cli.existing_file(text)
    try:
        read_image(text, 8)  # decodes at the door, not after the model has loaded
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _arguments(p):
    p.add_argument("--style-image", type=style_image, required=True,
                   help="an image file, or sklearn:china.jpg / sklearn:flower.jpg (photographs bundled with scikit-learn)")
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--epochs", type=cli.count("epochs"), default=8,
                   help="passes over the noise-prompt pairs (default 8; a rerun with more continues the training, "
                   "one with fewer than a folder holds is refused; " + cli.bound_help("epochs") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=1e-4, help="AdamW learning rate (default 1e-4)")
    p.add_argument("--w-style", type=cli.nonnegative_float, default=1e3, help="weight of the style term (default 1e3)")
    p.add_argument("--w-content", type=cli.nonnegative_float, default=1.0, help="weight of the content term")
    p.add_argument("--save-every", type=cli.positive_int, default=10, help="checkpoint every N steps (resume reads it)")
    p.add_argument("--batch", type=cli.count("batch"), help="noise-prompt pairs per optimiser step, shared by the "
                   "processes (default: one per process); N processes train what one trains with the same batch; "
                   + cli.bound_help("batch"))
    p.add_argument("--lora-rank", type=cli.positive_int, help="train rank-R LoRA adapters on the cross-attention "
                   "projections instead of their weights; writes OUT/lora/pytorch_lora_weights.safetensors, which "
                   "StableDiffusionPipeline.load_lora_weights(OUT/lora) loads (default: fine-tune the weights)")


def _run(args, comps, sampler, model, classifier, features) -> str:
    style = read_image(args.style_image, comps.image_size)
    result = fine_tune_style(comps, features, style, args.prompts, args.seeds, epochs=args.epochs, lr=args.lr,
                             w_style=args.w_style, w_content=args.w_content, sampler=sampler, out=args.out,
                             save_every=args.save_every, accelerator=args.accelerator, lora_rank=args.lora_rank,
                             batch=args.batch, progress=not args.no_progress)
    saved = f"LoRA saved to {args.out / 'lora'}" if args.lora_rank else f"UNet saved to {args.out / 'unet'}"
    return f"loss {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; {saved}"


COMMAND = Command("fine-tune cross-attention to a reference style (Sec. 4.2)", _arguments, _run, features=True,
                  resumes=True)
