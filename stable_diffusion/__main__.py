"""python -m stable_diffusion {guided,audit,stylize,invert,morph} --model MODEL ...

The paper's applications through adjointdpm.sample(..., gradient=...). MODEL is

{models}
  DIR or ID   a local Stable Diffusion v1.x in diffusers' layout, or a model id already in
              the Hugging Face cache (nothing is downloaded; CUDA recommended)

Every subcommand writes JSON and PNG results to --out. Arguments are checked before any
compute: a mistake gets one line naming the argument.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from adjointdpm import GRADIENTS, SOLVERS, cli

from . import apps, registry
from .components import save_memory
from .registry import model_argument, open_model

ODE_SOLVERS = [s for s in SOLVERS if s != "dopri5"]  # a fixed grid: the applications' budgets are NFE counts
APP_SAVINGS = ("unet", "vae", "vae-resnets", "allocator")


def class_prompt(text: str) -> tuple[int, str]:
    label, sep, prompt = text.partition("=")
    if not sep or not label.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"takes LABEL=PROMPT, e.g. '3=a handwritten digit three', got {text!r}")
    return int(label), prompt


def style_image(text: str) -> str:
    """A local image file, or ``sklearn:china.jpg`` / ``sklearn:flower.jpg`` (bundled photographs)."""
    if text in ("sklearn:china.jpg", "sklearn:flower.jpg"):
        return text
    cli.existing_file(text)
    try:
        apps.read_image(text, 8)  # decodes at the door, not after the model has loaded
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def template(text: str) -> str:
    from .apps.invert import check_template
    try:
        return check_template(text, "it")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# How each argument of ``stylize`` (the one resumable application) reaches its folder's key
# (:func:`stable_diffusion.apps.stylize`), or why it cannot change the result; tests/test_keys.py fails for
# an argument in neither table.
STYLIZE_KEYED = {"model": "the UNet's weights fingerprint", "style_image": "the style image's fingerprint",
                 "features": "the features' fingerprint", "vgg_weights": "the features' fingerprint",
                 "prompts": "the key", "seeds": "the key", "lr": "the key", "w_style": "the key", "w_content": "the key",
                 "steps": "the sampler in the key", "solver": "the sampler in the key",
                 "guidance_scale": "the sampler in the key", "gradient": "the sampler in the key",
                 "lora_rank": "the key (when given)", "batch": "the key (when not one pair per process)"}
STYLIZE_UNKEYED = {"epochs": "more epochs continue the training; fewer than the folder holds are refused",
                   "save_every": "the checkpoint's interval: a step's loss depends only on its index",
                   "save_memory": "savings that keep the gradient exact (round-off only)",
                   "device": "round-off only", "out": "where the work goes: the key lives in it",
                   "no_progress": "display only"}


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and sampling")
    g.add_argument("--model", required=True, type=model_argument, help=f"{', '.join(registry.MODELS)}, a local diffusers "
                   "folder, or a cached model id")
    g.add_argument("--device", type=cli.device, default=cli.default_device(),
                   help="cpu, cuda or cuda:N (default: cuda if present)")
    g.add_argument("--steps", type=cli.count("steps"), default=20,
                   help="sampler steps (default 20; " + cli.bound_help("steps") + ")")
    g.add_argument("--solver", default="dpm2m", choices=ODE_SOLVERS, help="adjointdpm solver on eq. 10 (default dpm2m)")
    g.add_argument("--guidance-scale", type=cli.finite_float, default=None,
                   help="classifier-free guidance scale (default: the model's, "
                   + ", ".join(f"{m.guidance_scale:g} for {n}" for n, m in registry.MODELS.items()) + "; 7.5 otherwise)")
    g.add_argument("--gradient", default="adjoint", choices=list(GRADIENTS), metavar="NAME",
                   help=f"gradient strategy, one of {', '.join(GRADIENTS)} (adjointdpm.GRADIENTS; default adjoint: RK4 on the adjoint ODE, as many steps as the sampler; "
                   "reversible: exact at flat memory, with --solver reversible-dpm1)")
    g.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=[0, 1], help="one x_T per seed")
    g.add_argument("--save-memory", nargs="+", default=[], choices=[*APP_SAVINGS, "all"], metavar="SAVING",
                   help="memory savings that keep the gradient exact (python -m stable_diffusion.bench --help has "
                   "their costs): unet (checkpoint the UNet's blocks), vae or vae-resnets (checkpoint the VAE "
                   "decoder per up block or per residual block), allocator (return freed memory at once); all: "
                   "unet, vae-resnets and allocator. Releasing the text encoder is the bench's only: the "
                   "applications encode prompts (and inversion trains through it) as they go")
    g.add_argument("--out", type=cli.folder, default=Path("results/stable_diffusion"), help="results folder")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    clf = argparse.ArgumentParser(add_help=False)
    c = clf.add_argument_group("classifier")
    c.add_argument("--classifier-arch", help="'digits' (default with --model digits) or a torchvision model name "
                   "(default otherwise: resnet50)")
    c.add_argument("--classifier-weights", type=cli.existing_file,
                   help="its state_dict file (required unless the digits classifier), e.g. resnet50-11ad3fa6.pth")
    c.add_argument("--num-classes", type=cli.positive_int, default=1000, help="torchvision classifier's classes")
    c.add_argument("--classifier-size", type=cli.count("resolution"), default=224,
                   help="its input resolution (default 224; " + cli.bound_help("resolution") + ")")

    top = cli.Parser(prog="python -m stable_diffusion", description=__doc__.replace("{models}", registry.models_help()),
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="app", required=True)
    p = sub.add_parser("guided", parents=[common, clf], help="guided sampling toward a classifier's class (Sec. 4.1.1)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", type=cli.nonnegative_int, required=True, help="target class index")
    p.add_argument("--iters", type=cli.count("iters"), default=30, help="AdamW steps on x_T (default 30; " + cli.bound_help("iters") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=0.05, help="learning rate (default 0.05; DOODL's "
                   "restraints take larger ones: Table 2 on the digits model uses 2)")
    p.add_argument("--restraints", choices=["none", "doodl"], default="none",
                   help="doodl: SGD with momentum 0.9 on gradients clipped to +-0.01 and a 1e-3 random kick per step "
                   "(DOODL's); none: AdamW (the paper's). x_T is renormalised to its initial norm either way")
    p.add_argument("--shifts", type=cli.count("shifts", lower=0), default=0,
                   help="average the classifier's loss over this many random shifts (up to 3 pixels at 32x32, scaled "
                   "to the image) of the decoded image (default 0; " + cli.bound_help("shifts") + ")")
    p = sub.add_parser("audit", parents=[common, clf], help="bounded-noise audit of a classifier (Sec. 4.1.2)")
    p.add_argument("--classes", type=class_prompt, nargs="+", required=True, metavar="LABEL=PROMPT",
                   help="the classes to audit, each with a prompt that generates it, e.g. '207=a golden retriever'")
    p.add_argument("--tau", type=cli.positive_float, default=0.8, help="||delta||_inf bound on x_T (paper: 0.8)")
    p.add_argument("--target", type=cli.nonnegative_int, help="targeted attack toward this class (default: untargeted)")
    p.add_argument("--iters", type=cli.count("iters"), default=10,
                   help="projected gradient steps (default 10; " + cli.bound_help("iters") + ")")
    p = sub.add_parser("stylize", parents=[common], help="fine-tune cross-attention to a reference style (Sec. 4.2)")
    p.add_argument("--style-image", type=style_image, required=True,
                   help="an image file, or sklearn:china.jpg / sklearn:flower.jpg (photographs bundled with scikit-learn)")
    p.add_argument("--features", choices=list(registry.FEATURES), help="style features: VGG-19 (needs --vgg-weights; "
                   "default for SD) or the digit classifier's convolutions (default with --model digits)")
    p.add_argument("--vgg-weights", type=cli.existing_file, help="torchvision vgg19 state_dict (vgg19-dcbb9e9d.pth)")
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
    p = sub.add_parser("invert", parents=[common], help="invert images into a new token's embedding (App. A)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target-images", type=cli.existing_file, nargs="+", help="one image file per seed")
    src.add_argument("--target-prompt", help="simulate targets: generate them from this prompt at the same seeds")
    src.add_argument("--target-digit", type=int, choices=range(10), metavar="0-9",
                     help="with --model digits: real training images of this digit, one per seed")
    p.add_argument("--token", default="<effect>", help="the new token (default <effect>)")
    p.add_argument("--init-token", help="existing token whose embedding starts the new one (default: the mean row)")
    p.add_argument("--template", type=template, default="a photo of {}", help="prompt with {} for the token")
    p.add_argument("--reuse-prompts", type=template, nargs="*", default=[], help="prompts with {} for the token, "
                   "drawn after training")
    p.add_argument("--iters", type=cli.count("iters"), default=100, help="AdamW steps (default 100; " + cli.bound_help("iters") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=5e-3, help="learning rate (default 5e-3)")
    p = sub.add_parser("morph", parents=[common, clf], help="the AdjointDEIS poster's morphing, ODE and SDE (its "
                       "Table 1); --model digits: pairs of same-class held-out digits, identity models F and F' of "
                       "handwritten.identity")
    p.add_argument("--pairs", type=cli.count("pairs"), default=18,
                   help="with --model digits: morph pairs (default 18: two per class, zero to eight; "
                   + cli.bound_help("pairs") + ")")
    p.add_argument("--image-a", type=cli.existing_file, nargs="+", help="other models: the first reference of each pair")
    p.add_argument("--image-b", type=cli.existing_file, nargs="+", help="other models: the second reference of each pair")
    p.add_argument("--prompt-a", default="", help="other models: the prompt of the a references (default empty)")
    p.add_argument("--prompt-b", default="", help="other models: the prompt of the b references (default empty)")
    p.add_argument("--threshold", type=cli.finite_float, help="other models: F's cosine at 0.1 %% false matches, "
                   "measured on your impostor pairs (without it, no MMPMR: the similarities only)")
    p.add_argument("--iters", type=cli.count("iters"), default=60, help="AdamW steps on (x_T, c) (default 60; " + cli.bound_help("iters") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=0.1, help="learning rate (default 0.1)")
    return top


def _check(args, parser_):
    """The constraints between arguments, before anything loads."""
    model = registry.describe(args.model)
    if args.app in ("guided", "audit"):
        args.classifier_arch = args.classifier_arch or model.classifier
        if args.classifier_arch not in registry.CLASSIFIERS and args.classifier_weights is None:
            parser_.error(f"argument --classifier-weights: required for the {args.classifier_arch} classifier")
    if args.app == "stylize":
        args.features = args.features or model.features
        if args.features == "vgg19" and args.vgg_weights is None:
            parser_.error("argument --vgg-weights: required for VGG-19 style features (or --features digits)")
    if args.app == "invert":
        if args.target_images and len(args.target_images) != len(args.seeds):
            parser_.error(f"argument --target-images: {len(args.target_images)} images for {len(args.seeds)} seeds "
                          "(give one seed per image)")
        if args.target_digit is not None and model.digit_images is None:
            parser_.error("argument --target-digit: only with a model of digits (--model digits)")
    if args.app == "morph":
        if model.morph_heldout and (args.image_a or args.image_b):
            parser_.error("argument --image-a: with --model digits the references are held-out digits")
        if not model.morph_heldout and (not args.image_a or not args.image_b or len(args.image_a) != len(args.image_b)):
            parser_.error("argument --image-a/--image-b: give the same number of reference images for a and b")
        args.classifier_arch = args.classifier_arch or model.classifier
        if args.classifier_arch not in registry.CLASSIFIERS and args.classifier_weights is None:
            parser_.error(f"argument --classifier-weights: required for the {args.classifier_arch} identity model")
    if args.guidance_scale is None:
        args.guidance_scale = model.guidance_scale
    if "all" in args.save_memory:
        args.save_memory = ["unet", "vae-resnets", "allocator"]
    if {"vae", "vae-resnets"} <= set(args.save_memory):
        parser_.error("argument --save-memory: 'vae' and 'vae-resnets' are two grains of one saving; choose one")
    try:  # the sampler's own checks (e.g. which gradient goes with which solver), before anything loads
        apps.Sampler(args.steps, args.solver, args.guidance_scale, args.gradient)
    except ValueError as err:
        parser_.error(f"argument --gradient: {err}")


def main(argv=None):
    parser_ = parser()
    args = parser_.parse_args(argv)
    _check(args, parser_)
    model = registry.describe(args.model)
    accelerator = None
    if args.app == "stylize":  # data-parallel under `accelerate launch`, a single process otherwise
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=args.device.type == "cpu")
        args.device = accelerator.device
    with cli.one_line_errors(parser_, resumes=args.app == "stylize"):
        if "allocator" in args.save_memory:
            from adjointdpm.memory import return_freed_memory
            return_freed_memory()
        comps = save_memory(open_model(args.model, args.device), "sdpa",
                            [s for s in args.save_memory if s != "allocator"])
        sampler = apps.Sampler(args.steps, args.solver, args.guidance_scale, args.gradient)
        progress, out = not args.no_progress, args.out
        if args.app in ("guided", "audit"):
            classifier = registry.load_classifier(args.classifier_arch, args.classifier_weights, args.num_classes,
                                                  args.classifier_size).to(args.device)
        if args.app == "guided":
            restraints = apps.Restraints(**(dict(momentum=0.9, clip=0.01, kick=1e-3) if args.restraints == "doodl"
                                            else {}), shifts=args.shifts, max_shift=max(1, 3 * comps.image_size // 32))
            result = apps.guided_sampling(comps, classifier, args.prompt, args.target, args.seeds, iters=args.iters,
                                          lr=args.lr, restraints=restraints, sampler=sampler, out=out,
                                          progress=progress)
            summary = (f"mean p(target) {sum(result['p_target_before']) / len(args.seeds):.3f} -> "
                       f"{sum(result['p_target_after']) / len(args.seeds):.3f}")
        elif args.app == "audit":
            apps.audit(comps, classifier, dict(args.classes), args.seeds, tau=args.tau, target=args.target,
                       iters=args.iters, sampler=sampler, out=out, progress=progress)
            summary = (out / "audit.md").read_text()
        elif args.app == "stylize":
            style = apps.read_image(args.style_image, comps.image_size)
            features = registry.load_features(args.features, args.vgg_weights)
            result = apps.stylize(comps, features.to(args.device), style, args.prompts, args.seeds,
                                  epochs=args.epochs, lr=args.lr, w_style=args.w_style, w_content=args.w_content,
                                  sampler=sampler, out=out, save_every=args.save_every, accelerator=accelerator,
                                  lora_rank=args.lora_rank, batch=args.batch, progress=progress)
            saved = f"LoRA saved to {out / 'lora'}" if args.lora_rank else f"UNet saved to {out / 'unet'}"
            summary = f"loss {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; {saved}"
        elif args.app == "morph" and model.morph_heldout:
            model.morph_heldout(comps, out, pairs=args.pairs, iters=args.iters, lr=args.lr, steps=args.steps,
                                seed=args.seeds[0], progress=progress)
            summary = (out / "morph.md").read_text()
        elif args.app == "morph":
            from .apps.morph import embedding, morph_table
            from .model import encode_prompt
            F = embedding(registry.load_classifier(args.classifier_arch, args.classifier_weights, args.num_classes,
                                                   args.classifier_size).to(args.device))
            a, b = (torch.cat([apps.read_image(str(p), comps.image_size) for p in paths]).to(args.device)
                    for paths in (args.image_a, args.image_b))
            with torch.no_grad():
                cond_a, cond_b = (encode_prompt(comps, [prompt] * len(a)) for prompt in (args.prompt_a, args.prompt_b))
            morph_table(comps, {"F": (F, args.threshold)}, a, b, cond_a, cond_b, out, what="of your reference images",
                        steps=args.steps, iters=args.iters, lr=args.lr, seed=args.seeds[0], progress=progress)
            summary = (out / "morph.md").read_text()
        else:
            if args.target_prompt:
                targets = apps.Pipeline(comps, sampler).generate([args.target_prompt] * len(args.seeds), args.seeds)
            elif args.target_digit is not None:
                targets = model.digit_images(args.target_digit, len(args.seeds))
            else:
                targets = torch.cat([apps.read_image(str(p), comps.image_size) for p in args.target_images])
            result = apps.invert_embedding(comps, targets, args.seeds, token=args.token, init_token=args.init_token,
                                           template=args.template, iters=args.iters, lr=args.lr, sampler=sampler,
                                           reuse_prompts=args.reuse_prompts, out=out, progress=progress)
            summary = (f"MSE {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; "
                       f"embedding saved to {out / 'learned_embeds.safetensors'}")
    if accelerator is None or accelerator.is_main_process:
        print(summary)
        print(f"results in {out}/")


if __name__ == "__main__":
    main()
