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

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from adjointdpm.tools import cli
from adjointdpm.tools.report import markdown_table, percent, write_result
from adjointdpm.noise import slerp
from handwritten.identity import FMR, cosine

from ..components import SDComponents
from ..latent import decode, encode_prompt
from .common import Command, Pipeline, Sampler, read_image, save_images

PIXEL_AVERAGE = "pixel average (no model)"
POSTER = {  # AdjointDEIS poster Table 1 (SYN-MAD 2022, FMR 0.1 %): MMPMR AdaFace / ArcFace / ElasticFace, NFE
    PIXEL_AVERAGE: ((97.96, 96.93, 98.36), None),  # its nearest row: Webmorph, a landmark morph (no model either)
    "DiM (no optimisation)": ((92.23, 90.18, 93.05), 350),
    "DiM + AdjointDEIS-1 (ODE)": ((99.8, 98.77, 99.39), 2250),
    "DiM + AdjointDEIS-1 (SDE)": ((98.57, 97.96, 97.75), 2250),
}
ARRAYS = {PIXEL_AVERAGE: "average", "DiM (no optimisation)": "dim", "DiM + AdjointDEIS-1 (ODE)": "ode",
          "DiM + AdjointDEIS-1 (SDE)": "sde"}  # each row's key in morph_images.npz


# The SDE sampler's steps per ODE step. A first-order SDE step is coarser than the ODE's: on the digits model,
# from fresh noises with the named prompts (guidance 1), the judges read the prompted digit in 64-69 % of
# sde-dpm1's samples at 10 steps, 92 % at 20, against 89-92 % for dpm1 at 10.
SDE_STEPS = 2


def attacks(steps: int, iters: int, seed: int) -> dict[str, tuple[Sampler, int]]:
    """The poster's rows, each a sampler and its optimisation steps: DiM (none), then ``(x_T, c)``
    optimised through the ODE sampler (``dpm1`` at ``steps``, AdjointDEIS-1 in the data form re-solving
    the path) and the SDE sampler (``sde-dpm1`` at :data:`SDE_STEPS` times ``steps``, seeded ``seed``, the
    same rule on the stored path: re-solving an SDE backwards is unusable at few steps, notebook 01
    section 10). Guidance scale 1 throughout, so the decoder inverts the encoder."""
    ode = Sampler(steps, "dpm1", 1.0, "adjointdeis")
    sde = Sampler(SDE_STEPS * steps, "sde-dpm1", 1.0, "adjointdeis-stored", noise_seed=seed)
    return {"DiM (no optimisation)": (ode, 0), "DiM + AdjointDEIS-1 (ODE)": (ode, iters),
            "DiM + AdjointDEIS-1 (SDE)": (sde, iters)}


def morph_identities(pipe: Pipeline, F: Callable, a: torch.Tensor, b: torch.Tensor, cond_a: torch.Tensor,
                     cond_b: torch.Tensor, *, iters: int = 20, lr: float = 0.05, progress: bool = True) -> dict:
    """Morphs of the references ``a``, ``b`` (images in [0, 1]) whose prompts encode to ``cond_a``,
    ``cond_b``: DiM's (both inverted to noise by :meth:`Pipeline.invert`, the noises slerped, the
    conditions averaged), then ``(x_T, c)`` optimised with AdamW for ``iters`` steps through ``pipe``'s
    sampler and gradient on ``L = (1 - cos(F(x0), F(a))) + (1 - cos(F(x0), F(b)))``. Returns the images
    and the NFE per morph (model evaluations and vector-Jacobian products, the two inversions included)."""
    steps = pipe.sampler.steps
    x_T = slerp(pipe.invert(a, cond_a), pipe.invert(b, cond_b)).requires_grad_()
    cond = ((cond_a + cond_b) / 2).detach().requires_grad_()
    nfe = 3 * steps  # two inversions and the final decode
    opt = torch.optim.AdamW([x_T, cond], lr=lr, weight_decay=0.0)
    for _ in tqdm(range(iters), desc=f"morph ({pipe.sampler.solver})", disable=not progress):
        x0, info = pipe.latents(x_T, cond, return_info=True)
        images = decode(pipe.comps, x0)
        loss = ((1 - cosine(F, images, a)) + (1 - cosine(F, images, b))).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        nfe += info.nfe_forward + info.nfe_backward
    with torch.no_grad():
        return {"images": pipe.images(x_T, cond, grad=False), "nfe": nfe}


def morph_table(comps: SDComponents, verifiers: dict, a: torch.Tensor, b: torch.Tensor, cond_a: torch.Tensor,
                cond_b: torch.Tensor, out: Path, *, what: str = "", steps: int = 10, iters: int = 60,
                lr: float = 0.1, seed: int = 0, record: dict | None = None, labels: torch.Tensor | None = None,
                judge: Callable[[torch.Tensor], dict] | None = None, progress: bool = True) -> dict:
    """The poster's Table 1, with the pixel average as a reference row: each attack's morphs and,
    under each verifier of ``verifiers`` (name -> ``(F, threshold)``; the first is the one attacked,
    a threshold of ``None`` gives no MMPMR), its MMPMR and mean similarity to ``a`` and ``b``; with
    ``judge`` (the morphs -> ``{column: value}``) each row's reading by readers other than F. Writes
    ``morph.md``, ``morph.json`` (with the caller's ``record``), ``morph.png`` (references and morphs) and
    ``morph_images.npz`` (float32 N x H x W x 3 in [0, 1]: ``a``, ``b``, one array per row, ``labels``)."""
    attacked = next(iter(verifiers.values()))[0]
    morphs = {PIXEL_AVERAGE: {"images": (a + b) / 2, "nfe": 0}}
    for name, (sampler, steps_of_adamw) in attacks(steps, iters, seed).items():
        morphs[name] = morph_identities(Pipeline(comps, sampler), attacked, a, b, cond_a, cond_b, iters=steps_of_adamw,
                                        lr=lr, progress=progress)
    rows = []
    with torch.no_grad():
        for name, r in morphs.items():
            row = {"attack": name, "nfe": r["nfe"], "mmpmr": {}, "mean_similarity": {},
                   "poster": POSTER.get(name, (None, None))[0], "poster_nfe": POSTER.get(name, (None, None))[1],
                   "judged": judge(r["images"]) if judge else {}}
            for who, (F, threshold) in verifiers.items():
                sim_a, sim_b = cosine(F, r["images"], a), cosine(F, r["images"], b)
                row["mmpmr"][who] = None if threshold is None else float(
                    (torch.minimum(sim_a, sim_b) >= threshold).float().mean())
                row["mean_similarity"][who] = [float(sim_a.mean()), float(sim_b.mean())]
            rows.append(row)
        between = {who: cosine(F, a, b) for who, (F, _) in verifiers.items()}  # the references' own similarity
        references = {who: float(c.mean()) for who, c in between.items()}
        # a morph can match both only if a and b are within twice the threshold's angle of each other:
        # cos(m, a), cos(m, b) >= t implies cos(a, b) >= cos(2 arccos t) = 2 t^2 - 1, whatever the morph
        feasible = {who: None if t is None else float((between[who] >= 2 * t * t - 1).float().mean())
                    for who, (_, t) in verifiers.items()}
    result = {"pairs": len(a), "what": what, "iters": iters, "lr": lr, "steps": steps, "seed": seed,
              "thresholds": {who: threshold for who, (_, threshold) in verifiers.items()}, "fmr": FMR,
              "mean_similarity_of_the_references": references, "feasible": feasible, "rows": rows, **(record or {})}
    write_result(out, "morph", result, markdown(result), lambda path: save_images(
        path, {"reference a": a, "reference b": b, **{k: v["images"] for k, v in morphs.items()}}), significant=6)
    arrays = {"a": a, "b": b, **{ARRAYS[k]: v["images"] for k, v in morphs.items()}}
    arrays = {k: v.detach().float().permute(0, 2, 3, 1).cpu().numpy().astype(np.float32) for k, v in arrays.items()}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy()
    np.savez_compressed(out / "morph_images.npz", **arrays)
    return result


def markdown(result: dict) -> str:
    """``morph.md``: the table of :func:`morph_table`'s result, from its data alone."""
    rows, thresholds = result["rows"], result["thresholds"]
    who = list(thresholds)
    judged = list(rows[0]["judged"])
    poster = lambda row: "-" if row["poster"] is None else (  # noqa: E731
        f"{' / '.join(f'{v:.2f}' for v in row['poster'])}, "
        + ("Webmorph (a landmark morph)" if row["poster_nfe"] is None else str(row["poster_nfe"])))
    table = markdown_table(
        ["attack", "NFE per morph", *(f"MMPMR under {w}" for w in who), *(f"mean cos to a / b under {w}" for w in who),
         *judged, "poster MMPMR (AdaFace / ArcFace / ElasticFace), NFE"],
        [[row["attack"], row["nfe"], *(percent(row["mmpmr"][w]) for w in who),
          *(" / ".join(f"{v:.3f}" for v in row["mean_similarity"][w]) for w in who),
          *(row["judged"][c] if isinstance(row["judged"][c], str) else f"{100 * row['judged'][c]:.0f}%" for c in judged),
          poster(row)] for row in rows])
    success = "; ".join(
        f"under {w} a morph succeeds when it matches both at cos >= {t:.3f}" if t is not None else
        f"{w} has no threshold, so no MMPMR under it" for w, t in thresholds.items())
    references = ", ".join(f"{v:.3f} under {w}" for w, v in result["mean_similarity_of_the_references"].items())
    feasible = "; ".join(f"under {w}, {100 * v:.0f} %" for w, v in result["feasible"].items() if v is not None)
    ceiling = (f" No morph at all can match both references of a pair whose own cosine is below 2 t^2 - 1 (t the "
               f"threshold), so the MMPMR cannot exceed the share of pairs above it: {feasible}." if feasible else "")
    return (f"# Morphing (AdjointDEIS poster, Table 1)\n\n{result['pairs']} pairs {result['what']}; {success} "
            f"(thresholds at {100 * result['fmr']:g} % false matches; the references themselves have mean cos {references}). DiM: invert "
            f"both to noise with their prompts (DDIM at the row's steps, guidance 1), slerp the noises, average "
            f"the prompt embeddings, decode. Optimised: {result['iters']} AdamW steps (lr {result['lr']}) on (x_T, c) "
            f"against the first model, {who[0]}; ODE ({result['steps']} dpm1 steps) with AdjointDEIS-1 (data-prediction "
            f"form), SDE ({SDE_STEPS * result['steps']} sde-dpm1 steps: its first-order steps are coarser) with the "
            f"same rule on the stored SDE path. The pixel average is the morph that knows no model.{ceiling} The "
            f"poster's numbers are on faces, beside for their ordering only.\n\n{table}\n")


def embedding(classifier: torch.nn.Module) -> Callable:
    """F for morphing: the digit classifier's penultimate features, or a torchvision classifier
    (``nets.Classifier``) with its last linear layer removed."""
    if hasattr(classifier, "embed"):
        return classifier.embed
    import copy
    net = copy.deepcopy(classifier)
    name = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    parent = net.get_submodule(name.rpartition(".")[0]) if "." in name else net
    setattr(parent, name.rpartition(".")[2], torch.nn.Identity())
    return net


def _arguments(p):
    p.add_argument("--pairs", type=cli.count("pairs"), default=18,
                   help="with --model digits: morph pairs (default 18: two per class, zero to eight; "
                   + cli.bound_help("pairs") + ")")
    p.add_argument("--image-a", type=cli.existing_file, nargs="+", help="other models: the first reference of each pair")
    p.add_argument("--image-b", type=cli.existing_file, nargs="+", help="other models: the second reference of each pair")
    p.add_argument("--prompt-a", default="", help="other models: the prompt of the a references (default empty)")
    p.add_argument("--prompt-b", default="", help="other models: the prompt of the b references (default empty)")
    p.add_argument("--threshold", type=cli.finite_float, help=f"other models: F's cosine at {100 * FMR:g} %% false matches, "
                   "measured on your impostor pairs (without it, no MMPMR: the similarities only)")
    p.add_argument("--iters", type=cli.count("iters"), default=60, help="AdamW steps on (x_T, c) (default 60; " + cli.bound_help("iters") + ")")
    p.add_argument("--lr", type=cli.positive_float, default=0.1, help="learning rate (default 0.1)")


def _check(args, model):
    if model.morph_heldout and (args.image_a or args.image_b):
        raise ValueError("argument --image-a: with --model digits the references are held-out digits")
    if not model.morph_heldout and (not args.image_a or not args.image_b or len(args.image_a) != len(args.image_b)):
        raise ValueError("argument --image-a/--image-b: give the same number of reference images for a and b")


def _run(args, comps, sampler, model, classifier, features) -> str:
    progress = not args.no_progress
    if model.morph_heldout:
        model.morph_heldout(comps, args.out, pairs=args.pairs, iters=args.iters, lr=args.lr, steps=args.steps,
                            seed=args.seeds[0], progress=progress)
    else:
        a, b = (torch.cat([read_image(str(p), comps.image_size) for p in paths]).to(comps.device)
                for paths in (args.image_a, args.image_b))
        with torch.no_grad():
            cond_a, cond_b = (encode_prompt(comps, [prompt] * len(a)) for prompt in (args.prompt_a, args.prompt_b))
        morph_table(comps, {"F": (embedding(classifier), args.threshold)}, a, b, cond_a, cond_b, args.out,
                    what="of your reference images", steps=args.steps, iters=args.iters, lr=args.lr,
                    seed=args.seeds[0], progress=progress)
    return (args.out / "morph.md").read_text()


COMMAND = Command("the AdjointDEIS poster's morphing, ODE and SDE (its Table 1; its samplers and strategy are the "
                  "poster's: --steps of dpm1 with AdjointDEIS-1, twice as many of sde-dpm1, guidance 1); --model "
                  "digits: pairs of same-class held-out digits, identity models F and F' of handwritten.identity",
                  _arguments, _run, check=_check, classifier="identity model",
                  takes_classifier=lambda model: model.morph_heldout is None,  # the digits' route: their own F and F'
                  samples=False)
