"""python -m stable_diffusion {commands} --model MODEL ...

The paper's applications through adjointdpm.sample(..., gradient=...). MODEL is

{models}
  DIR or ID   a local Stable Diffusion v1.x in diffusers' layout, or a model id already in
              the Hugging Face cache (nothing is downloaded; CUDA recommended)

Every subcommand writes JSON and PNG results to --out. Arguments are checked before any
compute: a mistake gets one line naming the argument.
"""
from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from adjointdpm import GRADIENTS, SOLVERS
from adjointdpm.tools import cli

from . import apps, registry
from .components import ALL_SAVINGS, CHECKPOINTING, SAVINGS, asked_savings, save_memory
from .registry import model_argument, open_model

# Each application's module under apps/ holds its command record (its arguments, its checks, its run), COMMAND:
# adding an application is its module and its name here.
COMMANDS = {name: importlib.import_module(f"{__package__}.apps.{name}").COMMAND
            for name in ("guided", "audit", "stylize", "invert", "morph")}
ODE_SOLVERS = [s for s in SOLVERS if s != "dopri5"]  # a fixed grid: the applications' budgets are NFE counts
APP_SAVINGS = [name for name, saving in SAVINGS.items() if saving.applications]


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("model and run")
    g.add_argument("--model", required=True, type=model_argument, help=f"{', '.join(registry.MODELS)}, a local diffusers "
                   "folder, or a cached model id")
    g.add_argument("--device", type=cli.device, default=cli.default_device(),
                   help="cpu, cuda or cuda:N (default: cuda if present)")
    g.add_argument("--steps", type=cli.count("steps"), default=20,
                   help="sampler steps (default 20; " + cli.bound_help("steps") + ")")
    sampling = argparse.ArgumentParser(add_help=False)
    s = sampling.add_argument_group("sampler")
    s.add_argument("--solver", default="dpm2m", choices=ODE_SOLVERS, help="adjointdpm solver on eq. 10 (default dpm2m)")
    s.add_argument("--guidance-scale", type=cli.finite_float, default=None,
                   help="classifier-free guidance scale (default: the model's, "
                   + ", ".join(f"{m.guidance_scale:g} for {n}" for n, m in registry.MODELS.items()) + "; 7.5 otherwise)")
    s.add_argument("--gradient", default="adjoint", choices=list(GRADIENTS), metavar="NAME",
                   help=f"gradient strategy, one of {', '.join(GRADIENTS)} (adjointdpm.GRADIENTS; default adjoint: RK4 on the adjoint ODE, as many steps as the sampler; "
                   "reversible: exact at flat memory, with --solver reversible-dpm1)")
    g.add_argument("--seeds", type=cli.nonnegative_int, nargs="+", default=[0, 1], help="one x_T per seed")
    g.add_argument("--save-memory", nargs="+", default=[], choices=[*APP_SAVINGS, "all"], metavar="SAVING",
                   help="memory savings that keep the gradient exact, each with its cost: " + "; ".join(
                       f"{name}: {SAVINGS[name].cost}" for name in APP_SAVINGS) + "; all: " + ", ".join(
                       s for s in ALL_SAVINGS if s in APP_SAVINGS) + ". Releasing the text encoder or the VAE's "
                   "encoder is the bench's only: the applications encode prompts (and inversion trains through it) "
                   "as they go")
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
    feat = argparse.ArgumentParser(add_help=False)
    f = feat.add_argument_group("style features")
    f.add_argument("--features", choices=list(registry.FEATURES), help="style features: VGG-19 (needs --vgg-weights; "
                   "default for SD) or the digit classifier's convolutions (default with --model digits)")
    f.add_argument("--vgg-weights", type=cli.existing_file, help="torchvision vgg19 state_dict (vgg19-dcbb9e9d.pth)")

    top = cli.Parser(prog="python -m stable_diffusion", description=__doc__.replace("{models}", registry.models_help())
                     .replace("{commands}", "{" + ",".join(COMMANDS) + "}"), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="app", required=True)
    for name, command in COMMANDS.items():
        parents = [common, *([sampling] if command.samples else []), *([clf] if command.classifier else []),
                   *([feat] if command.features else [])]
        command.arguments(sub.add_parser(name, parents=parents, help=command.help))
    return top


def _check(args, parser_):
    """The constraints between arguments, before anything loads."""
    model, command = registry.describe(args.model), COMMANDS[args.app]
    try:
        args.save_memory = asked_savings(args.save_memory, applications=True)
        command.check(args, model)
    except ValueError as err:
        parser_.error(str(err))
    args.takes_classifier = command.classifier is not None and command.takes_classifier(model)
    if args.takes_classifier:
        args.classifier_arch = args.classifier_arch or model.classifier
        if args.classifier_arch not in registry.CLASSIFIERS and args.classifier_weights is None:
            parser_.error(f"argument --classifier-weights: required for the {args.classifier_arch} {command.classifier}")
    if command.features:
        args.features = args.features or model.features
        if args.features == "vgg19" and args.vgg_weights is None:
            parser_.error("argument --vgg-weights: required for VGG-19 style features (or --features digits)")
    if command.samples:
        if args.guidance_scale is None:
            args.guidance_scale = model.guidance_scale
        try:  # the sampler's own checks (e.g. which gradient goes with which solver), before anything loads
            apps.Sampler(args.steps, args.solver, args.guidance_scale, args.gradient)
        except ValueError as err:
            parser_.error(f"argument --gradient: {err}")


def main(argv=None):
    parser_ = parser()
    args = parser_.parse_args(argv)
    _check(args, parser_)
    model, command = registry.describe(args.model), COMMANDS[args.app]
    args.accelerator = None
    if command.resumes:  # data-parallel under `accelerate launch`, a single process otherwise
        from accelerate import Accelerator
        args.accelerator = Accelerator(cpu=args.device.type == "cpu")
        args.device = args.accelerator.device
    with cli.one_line_errors(parser_, resumes=command.resumes):
        if "allocator" in args.save_memory:
            from adjointdpm.tools.memory import return_freed_memory
            return_freed_memory()
        comps = save_memory(open_model(args.model, args.device), "sdpa",
                            [s for s in args.save_memory if s in CHECKPOINTING])
        sampler = apps.Sampler(args.steps, args.solver, args.guidance_scale, args.gradient) if command.samples else None
        classifier = registry.load_classifier(args.classifier_arch, args.classifier_weights, args.num_classes,
                                              args.classifier_size).to(args.device) if args.takes_classifier else None
        features = registry.load_features(args.features, args.vgg_weights).to(args.device) if command.features else None
        summary = command.run(args, comps, sampler, model, classifier, features)
    if args.accelerator is None or args.accelerator.is_main_process:
        print(summary)
        print(f"results in {args.out}/")


if __name__ == "__main__":
    main()
