"""python -m stable_diffusion.digits {train,quality,results,ablation}

  train     train the digits model (the guide classifier, VAE, UNet + text encoder) in --out;
            resumable, about 17 minutes on 2 CPU cores; writes a StableDiffusionPipeline folder
  quality   sample every prompt with diffusers' own pipeline; read the digits with the guide and
            the two independent judges (results/stable_diffusion/digits/quality.md)
  results   the four applications and the poster's morphing on the digits model, Tables 2 and 3 beside the paper's,
            read by judges that never guided them (results/stable_diffusion/digits/)
  ablation  Table 2's routes and controls side by side (table2_ablation.md)

The judges (handwritten.judges) are an SVC on the 8x8 pixels and a LeNet-5, both trained on
digits the guide never saw; none is ever used as a loss.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from adjointdpm.tools import cli

from . import CLASSIFIER, PIPELINE

RESULTS = Path("results/stable_diffusion/digits")


# How each argument of ``train`` reaches its folder's key (the recipe), or why it cannot change the result;
# tests/test_keys.py fails for an argument in neither table.
TRAIN_KEYED = {"seed": "the recipe"}
TRAIN_UNKEYED = {"out": "where the work goes: the key lives in it", "export": "where a copy of the result goes",
                 "no_progress": "display only"}


def parser() -> argparse.ArgumentParser:
    top = cli.Parser(prog="python -m stable_diffusion.digits", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train the digits model (resumable)")
    p.add_argument("--out", type=cli.folder, required=True,
                   help="training folder: checkpoints, and the finished pipeline in OUT/pipeline")
    p.add_argument("--export", type=cli.folder, help="write the pipeline here instead of OUT/pipeline (the "
                   "committed one is stable_diffusion/weights/digits); the classifier goes beside it")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="the recipe's seed (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p = sub.add_parser("quality", help="per-prompt recognition rate and digit-FID of diffusers' own sampling")
    p.add_argument("--model", type=cli.existing_folder, default=PIPELINE,
                   help="pipeline folder (default: the committed stable_diffusion/weights/digits)")
    p.add_argument("--classifier", type=cli.existing_file, default=CLASSIFIER,
                   help="classifier weights (default: the committed digit_classifier.safetensors)")
    p.add_argument("--samples", type=cli.count("samples"), default=64,
                   help="samples per prompt (default 64; " + cli.bound_help("samples") + ")")
    p.add_argument("--seed", type=cli.nonnegative_int, default=0, help="noise seed (default 0)")
    p.add_argument("--out", type=cli.folder, default=RESULTS, help=f"results folder (default {RESULTS})")
    for name, text in (("results", "the four applications and the morph, Tables 2 and 3, judged"),
                       ("ablation", "Table 2's routes (prompts, optimisers, restraints) and controls, judged")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--out", type=cli.folder, default=RESULTS, help=f"results folder (default {RESULTS})")
        p.add_argument("--quick", action="store_true", help="small sizes (tests): minutes become seconds")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return top


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser_ = parser()
    args = parser_.parse_args(argv)
    with cli.one_line_errors(parser_, resumes=args.command == "train"):
        if args.command == "train":
            from .train import Recipe, train
            record = train(args.out, Recipe(seed=args.seed), args.export, progress=not args.no_progress,
                           command="python -m stable_diffusion.digits " + shlex.join(argv))
            print(f"trained in {record['timing']['seconds'] / 60:.1f} min; classifier held-out accuracy "
                  f"{100 * record['classifier']['heldout_accuracy']:.1f}%; pipeline in {args.export or args.out / 'pipeline'}")
        elif args.command == "quality":
            from . import load_digit_classifier
            from .quality import evaluate, pipeline, write
            result, grids = evaluate(pipeline(args.model), load_digit_classifier(args.classifier), args.samples, args.seed)
            print(write(result, grids, args.out))
        elif args.command == "results":
            from .experiments import run_all
            print(run_all(args.out, quick=args.quick, progress=not args.no_progress))
        else:
            from .experiments import run_ablation
            print(run_ablation(args.out, quick=args.quick, progress=not args.no_progress))


if __name__ == "__main__":
    main()
