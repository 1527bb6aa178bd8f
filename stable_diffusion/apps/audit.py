"""Auditing a classifier with bounded initial noise (paper Sec. 4.1.2, App. C, Table 3): search
``x_T + delta`` with ``||delta||_inf <= tau`` that changes the classifier's decision on the image."""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adjointdpm.tools import cli
from adjointdpm.tools.report import markdown_table, percent

from ..components import SDComponents
from ..latent import as_read
from ..nets import check_target
from .common import Command, Pipeline, Sampler, save_images, write_record


def audit_classifier(comps: SDComponents, classifier, classes: dict[int, str], seeds, *, tau: float = 0.8,
                     target: int | None = None, iters: int = 10, step: float | None = None,
                     per_class: int | None = None, sampler: Sampler = Sampler(), out: Path | None = None,
                     progress: bool = True) -> dict:
    """For each class label -> prompt, generate one image per seed and keep those the classifier
    labels correctly (the first ``per_class`` of them, if given); then search ``x_T + delta``
    with ``||delta||_inf <= tau`` by projected signed-gradient steps (PGD), all classes in one
    batch, that change its decision: away from the label (untargeted) or to ``target``. A
    sample stops as soon as its decision changes, keeping the smallest perturbation found (and
    the batch shrinks). Returns counts, success rates and the mean absolute pixel change per
    class (and the images, under ``images``)."""
    if not tau > 0:
        raise ValueError(f"tau must be a number > 0, got {tau}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    for label in classes:
        check_target(classifier, label, comps.device)
    if target is not None:
        check_target(classifier, target, comps.device)
    step = step or 2.5 * tau / iters  # PGD's usual step: the box is crossable in iters / 2.5 steps
    pipe = Pipeline(comps, sampler)
    x_T, cond, labels, clean, counts = [], [], [], [], {}
    with torch.no_grad():
        for label, prompt in classes.items():
            c, z = pipe.encode([prompt] * len(seeds)), pipe.noise(seeds)
            images = pipe.images(z, c, grad=False)
            keep = torch.nonzero(classifier(images).argmax(1) == label).flatten()[:per_class]
            counts[label] = len(keep)
            x_T.append(z[keep]), cond.append(c[keep]), clean.append(images[keep])
            labels += [label] * len(keep)
    x_T, cond, clean = torch.cat(x_T), torch.cat(cond), torch.cat(clean)
    labels = torch.tensor(labels, dtype=torch.long, device=x_T.device)
    goal = labels if target is None else torch.full_like(labels, target)
    delta = torch.zeros_like(x_T)
    active = torch.arange(len(x_T), device=x_T.device)  # samples whose decision has not changed yet
    history = []  # per step: how many were still searched, how many flipped, their mean cross-entropy
    for _ in tqdm(range(iters if len(x_T) else 0), desc=f"audit tau={tau}", disable=not progress):
        d = delta[active].requires_grad_()
        logits = classifier(pipe.images(x_T[active] + d, cond[active])).float()
        done = (logits.argmax(1) != labels[active]) if target is None else (logits.argmax(1) == target)
        ce = F.cross_entropy(logits, goal[active], reduction="sum")
        history.append({"searched": len(active), "flipped": int(done.sum()), "ce": ce.item() / len(active)})
        (grad,) = torch.autograd.grad(ce if target is None else -ce, d)  # ascend (untargeted) / descend
        with torch.no_grad():  # a sample whose decision changed keeps its delta: the smallest change found
            keep = active[~done]
            delta[keep] = (delta[keep] + step * grad[~done].sign()).clamp(-tau, tau)  # PGD step, projection
        active = keep
        if not len(active):
            break
    with torch.no_grad():
        attacked = pipe.images(x_T + delta, cond, grad=False) if len(x_T) else clean
        pred = classifier(attacked).argmax(1) if len(x_T) else labels
    success = (pred != labels) if target is None else (pred == target)
    rows = []
    for label, prompt in classes.items():
        mine = labels == label
        rows.append({"label": label, "prompt": as_read(comps, prompt), "seeds": len(seeds), "audited": counts[label],
                     "changed": int(success[mine].sum()),
                     "image_change": float((attacked[mine] - clean[mine]).abs().mean()) if counts[label] else None,
                     "rate": float(success[mine].float().mean()) if counts[label] else None,
                     "read_as_after": torch.bincount(pred[mine], minlength=int(pred.max()) + 1 if len(pred) else 0
                                                     ).tolist()})
    audited = len(labels)
    result = {"tau": tau, "target": target, "iters": iters, "step": step, "rows": rows, "history": history,
              "max_abs_delta": float(delta.abs().max()) if audited else 0.0,
              "rate": float(success.float().mean()) if audited else None, **asdict(sampler),
              "images": {"clean": clean, "attacked": attacked, "labels": labels, "read_as": pred}}
    if out is not None:
        grid = {}
        for label in classes:
            mine = labels == label
            grid[f"class {label} clean"], grid[f"class {label} attacked"] = clean[mine][:6], attacked[mine][:6]
        write_record(out, "audit", result, markdown(result), lambda path: save_images(
            path, {k: v for k, v in grid.items() if len(v)} or {"none audited": clean[:0]}))
    return result


def markdown(result: dict) -> str:
    """``audit.md``: one row per class, from the result's data alone."""
    change = lambda r: "-" if r["image_change"] is None else f"{r['image_change']:.3f}"  # noqa: E731
    table = markdown_table(
        ["class", "prompt", "seeds", "audited (labelled correctly)", "decision changed", "rate", "mean pixel change"],
        [[r["label"], r["prompt"], r["seeds"], r["audited"], r["changed"], percent(r["rate"]), change(r)]
         for r in result["rows"]])
    target = result["target"]
    return (f"# Audit: ||delta||_inf <= {result['tau']}, {'untargeted' if target is None else f'target {target}'}"
            f"\n\n{table}\n")


def class_prompt(text: str) -> tuple[int, str]:
    """``LABEL=PROMPT`` on the command line."""
    label, sep, prompt = text.partition("=")
    if not sep or not label.strip().isdigit() or not prompt.strip():
        raise argparse.ArgumentTypeError(f"takes LABEL=PROMPT, e.g. '3=a handwritten digit three', got {text!r}")
    return int(label), prompt


def _arguments(p):
    p.add_argument("--classes", type=class_prompt, nargs="+", required=True, metavar="LABEL=PROMPT",
                   help="the classes to audit, each with a prompt that generates it, e.g. '207=a golden retriever'")
    p.add_argument("--tau", type=cli.positive_float, default=0.8, help="||delta||_inf bound on x_T (paper: 0.8)")
    p.add_argument("--target", type=cli.nonnegative_int, help="targeted attack toward this class (default: untargeted)")
    p.add_argument("--iters", type=cli.count("iters"), default=10,
                   help="projected gradient steps (default 10; " + cli.bound_help("iters") + ")")


def _run(args, comps, sampler, model, classifier, features) -> str:
    audit_classifier(comps, classifier, dict(args.classes), args.seeds, tau=args.tau, target=args.target,
                     iters=args.iters, sampler=sampler, out=args.out, progress=not args.no_progress)
    return (args.out / "audit.md").read_text()


COMMAND = Command("bounded-noise audit of a classifier (Sec. 4.1.2)", _arguments, _run, classifier="classifier")
