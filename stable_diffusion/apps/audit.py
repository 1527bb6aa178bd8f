"""Auditing a classifier with bounded initial noise (paper Sec. 4.1.2, App. C, Table 3): search
``x_T + delta`` with ``||delta||_inf <= tau`` that changes the classifier's decision on the image."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..components import SDComponents
from ..model import decode, encode_prompt, eps_model
from ..nets import check_target
from .common import Sampler, noise, percent, save_images, write_result


def audit(comps: SDComponents, classifier, classes: dict[int, str], seeds, *, tau: float = 0.8,
          target: int | None = None, iters: int = 10, step: float | None = None,
          sampler: Sampler = Sampler(), out: Path | None = None, progress: bool = True) -> dict:
    """For each class label -> prompt, generate one image per seed; for those the classifier
    labels correctly, search ``x_T + delta`` with ``||delta||_inf <= tau`` by projected
    signed-gradient steps (PGD) that change its decision: away from the label (untargeted)
    or to ``target``. Returns counts and success rates per class."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    for label in classes:
        check_target(classifier, label, comps.device)
    if target is not None:
        check_target(classifier, target, comps.device)
    step = step or 2.5 * tau / iters  # PGD's usual step: the box is crossable in iters / 2.5 steps
    model = eps_model(comps, sampler.guidance_scale)
    rows, pairs = [], {}
    for label, prompt in classes.items():
        with torch.no_grad():
            cond = encode_prompt(comps, [prompt] * len(seeds))
            x_T = noise(comps, seeds)
            clean = decode(comps, sampler.run(comps, model, x_T, cond, grad=False))
            correct = classifier(clean).argmax(1) == label
        x_T, cond = x_T[correct], cond[correct]
        delta = torch.zeros_like(x_T, requires_grad=True)
        goal = torch.full((len(x_T),), label if target is None else target, device=x_T.device)
        losses = []  # mean cross-entropy toward the label (untargeted) or the target
        for _ in tqdm(range(iters if len(x_T) else 0), desc=f"audit class {label}", disable=not progress):
            logits = classifier(decode(comps, sampler.run(comps, model, x_T + delta, cond)))
            ce = F.cross_entropy(logits.float(), goal, reduction="sum")
            losses.append(ce.item() / len(x_T))
            (grad,) = torch.autograd.grad(ce if target is None else -ce, delta)  # ascend (untargeted) / descend
            with torch.no_grad():
                delta += step * grad.sign()
                delta.clamp_(-tau, tau)  # the projection onto the L-infinity ball
        with torch.no_grad():
            attacked = decode(comps, sampler.run(comps, model, x_T + delta, cond, grad=False))
            pred = classifier(attacked).argmax(1)
        success = (pred != label) if target is None else (pred == target)
        rows.append({"label": label, "prompt": prompt, "seeds": len(seeds), "correct": int(correct.sum()),
                     "changed": int(success.sum()), "rate": float(success.float().mean()) if len(x_T) else None,
                     "max_abs_delta": float(delta.detach().abs().max()) if len(x_T) else 0.0, "losses": losses})
        pairs[f"class {label} clean"], pairs[f"class {label} attacked"] = clean[correct][:6], attacked[:6]
    audited = sum(r["correct"] for r in rows)
    result = {"tau": tau, "target": target, "iters": iters, "step": step, "rows": rows,
              "rate": sum(r["changed"] for r in rows) / audited if audited else None, **asdict(sampler)}
    if out is not None:
        save_images(out / "audit.png", {k: v for k, v in pairs.items() if len(v)} or {"none audited": clean[:0]})
        lines = ["| class | prompt | seeds | labelled correctly | decision changed | rate |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['label']} | {r['prompt']} | {r['seeds']} | {r['correct']} | {r['changed']} | "
                  f"{percent(r['rate'])} |" for r in rows]
        (out / "audit.md").write_text(f"# Audit: ||delta||_inf <= {tau}, "
                                      f"{'untargeted' if target is None else f'target {target}'}\n\n"
                                      + "\n".join(lines) + "\n")
        write_result(out, "audit", result)
    return result
