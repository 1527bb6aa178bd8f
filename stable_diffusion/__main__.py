"""python -m stable_diffusion {guided,audit,stylize,invert} --model DIR_OR_CACHED_ID ...

The paper's applications on a local Stable Diffusion v1.x (diffusers layout, or an id in
the Hugging Face cache; nothing is downloaded). ``--model tiny`` uses randomly initialised
tiny components built in code: it runs on a CPU in seconds and shows the plumbing, not
pictures. Every subcommand writes JSON and PNG results to ``--out``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from . import apps
from .components import open_model
from .nets import load_classifier, load_vgg19


def _read_image(path, size: int) -> torch.Tensor:
    """An image file as (1, 3, size, size) in [0, 1]."""
    from torchvision.io import ImageReadMode, read_image
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"image {path} is not a file")
    image = read_image(str(path), ImageReadMode.RGB).float().div(255)[None]
    return torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)


def _parse_classes(items) -> dict[int, str]:
    classes = {}
    for item in items:
        label, sep, prompt = item.partition("=")
        if not sep or not label.strip().isdigit():
            raise SystemExit(f"--classes takes LABEL=PROMPT items, got {item!r}")
        classes[int(label)] = prompt
    return classes


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and sampling")
    g.add_argument("--model", required=True, help="local diffusers directory, a cached model id, or 'tiny'")
    g.add_argument("--device", help="default: cuda if available, else cpu")
    g.add_argument("--steps", type=int, default=20, help="sampler steps (default 20)")
    g.add_argument("--solver", default="dpm2m", help="adjointdpm solver on eq. 10 (default dpm2m)")
    g.add_argument("--guidance-scale", type=float, default=7.5)
    g.add_argument("--gradient", default="adjoint", choices=list(apps.GRADIENTS), help="gradient strategy")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one x_T per seed")
    g.add_argument("--out", type=Path, default=Path("results/stable_diffusion"))
    g.add_argument("--no-progress", action="store_true")
    clf = argparse.ArgumentParser(add_help=False)
    c = clf.add_argument_group("classifier (torchvision architecture + local weights)")
    c.add_argument("--classifier-arch", default="resnet50", help="torchvision model name (default resnet50)")
    c.add_argument("--classifier-weights", type=Path, required=True, help="state_dict file, e.g. resnet50-*.pth")
    c.add_argument("--num-classes", type=int, default=1000)
    c.add_argument("--classifier-size", type=int, default=224, help="input resolution (default 224)")

    top = argparse.ArgumentParser(prog="python -m stable_diffusion", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="app", required=True)
    p = sub.add_parser("guided", parents=[common, clf], help="guided sampling toward a classifier's class (Sec. 4.1.1)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--target", type=int, required=True, help="target class index")
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.05)
    p = sub.add_parser("audit", parents=[common, clf], help="bounded-noise audit of a classifier (Sec. 4.1.2)")
    p.add_argument("--classes", nargs="+", required=True, metavar="LABEL=PROMPT",
                   help="the classes to audit, each with a prompt that generates it, e.g. '207=a golden retriever'")
    p.add_argument("--tau", type=float, default=0.8, help="||delta||_inf bound on x_T (paper: 0.8)")
    p.add_argument("--target", type=int, help="targeted attack toward this class (default: untargeted)")
    p.add_argument("--iters", type=int, default=10)
    p = sub.add_parser("stylize", parents=[common], help="fine-tune cross-attention to a reference style (Sec. 4.2)")
    p.add_argument("--style-image", type=Path, required=True)
    p.add_argument("--vgg-weights", type=Path, required=True, help="torchvision vgg19 state_dict (vgg19-dcbb9e9d.pth)")
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--w-style", type=float, default=1e3)
    p.add_argument("--w-content", type=float, default=1.0)
    p.add_argument("--save-every", type=int, default=10, help="checkpoint every N steps (resume reads it)")
    p = sub.add_parser("invert", parents=[common], help="invert images into a new token's embedding (App. A)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--target-images", type=Path, nargs="+", help="one image file per seed")
    src.add_argument("--target-prompt", help="simulate targets: generate them from this prompt at the same seeds")
    p.add_argument("--token", default="<effect>")
    p.add_argument("--init-token", help="existing token whose embedding starts the new one (default: mean)")
    p.add_argument("--template", default="a photo of {}")
    p.add_argument("--reuse-prompts", nargs="*", default=[], help="prompts with {} for the token, shown after")
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--lr", type=float, default=5e-3)
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = None
    if args.app == "stylize":  # data-parallel under `accelerate launch`, a single process otherwise
        from accelerate import Accelerator
        accelerator = Accelerator(cpu=device.type == "cpu")
        device = accelerator.device
    try:
        comps = open_model(args.model, device)
        sampler = apps.Sampler(args.steps, args.solver, args.guidance_scale, args.gradient)
        progress, out = not args.no_progress, args.out
        if args.app in ("guided", "audit"):
            classifier = load_classifier(args.classifier_arch, args.classifier_weights, args.num_classes,
                                         args.classifier_size).to(device)
        if args.app == "guided":
            result = apps.guided_sampling(comps, classifier, args.prompt, args.target, args.seeds, iters=args.iters,
                                          lr=args.lr, sampler=sampler, out=out, progress=progress)
            summary = f"p(target) before {result['p_target_before']}, after {result['p_target_after']}"
        elif args.app == "audit":
            result = apps.audit(comps, classifier, _parse_classes(args.classes), args.seeds, tau=args.tau,
                                target=args.target, iters=args.iters, sampler=sampler, out=out, progress=progress)
            summary = (out / "audit.md").read_text()
        elif args.app == "stylize":
            style = _read_image(args.style_image, comps.image_size)
            result = apps.stylize(comps, load_vgg19(args.vgg_weights).to(device), style,
                                  args.prompts, args.seeds, epochs=args.epochs, lr=args.lr, w_style=args.w_style,
                                  w_content=args.w_content, sampler=sampler, out=out, save_every=args.save_every,
                                  accelerator=accelerator, progress=progress)
            summary = f"loss {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; UNet saved to {out / 'unet'}"
        else:
            if args.target_prompt:
                targets = apps.generate(comps, [args.target_prompt] * len(args.seeds), args.seeds, sampler)
            else:
                if len(args.target_images) != len(args.seeds):
                    raise SystemExit(f"{len(args.target_images)} target images for {len(args.seeds)} seeds")
                targets = torch.cat([_read_image(p, comps.image_size) for p in args.target_images])
            result = apps.invert_embedding(comps, targets, args.seeds, token=args.token, init_token=args.init_token,
                                           template=args.template, iters=args.iters, lr=args.lr, sampler=sampler,
                                           reuse_prompts=args.reuse_prompts, out=out, progress=progress)
            summary = (f"MSE {result['losses'][0]:.4g} -> {result['losses'][-1]:.4g}; "
                       f"embedding saved to {out / 'learned_embeds.safetensors'}")
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if accelerator is None or accelerator.is_main_process:
        print(summary)
        print(f"results in {out}/")


if __name__ == "__main__":
    main()
