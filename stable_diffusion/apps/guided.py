"""Guided sampling, or vocabulary expansion (paper Sec. 4.1.1, App. B): optimise the initial
latents ``x_T`` so that a classifier recognises its target class in the decoded images.

A classifier's gradient alone finds images it reads as the target without the target being drawn
(adversarial images): the loss a network defines can be satisfied without the thing it stands for.
:class:`Restraints` are what the anchors use against that (DOODL; Shen et al., NeurIPS 2024); the
results are read by judges that never guided anything (:mod:`handwritten.judges` on the digits).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from adjointdpm.tools import cli

from ..components import SDComponents
from ..latent import as_read
from ..nets import check_target
from .common import Command, Pipeline, Sampler, save_images, write_record


@dataclass(frozen=True)
class Restraints:
    """How the descent on ``x_T`` is held back from adversarial images.

    * ``keep_norm``: rescale each ``x_T`` to its initial norm after every step (DOODL): Gaussian noise
      lives near that sphere, and off it the model draws out-of-distribution images.
    * ``momentum``: ``None`` descends with AdamW (the paper's optimiser); a number descends with SGD and
      that momentum (DOODL's 0.9).
    * ``clip``: clip each element of the gradient to ``[-clip, clip]`` before the step (DOODL's
      ``clip_grad_val``).
    * ``kick``: add ``kick * N(0, I)`` to ``x_T`` after every step (DOODL's ``perturb_grad_scale``): a
      small random walk that keeps the descent from settling into a narrow adversarial pocket.
    * ``shifts``: average the guide's loss over this many random translations of the decoded image, by
      up to ``max_shift`` pixels each way (Shen et al.'s augmentation): a digit is a nine wherever it
      sits, an adversarial pattern is usually not.
    """
    keep_norm: bool = True
    momentum: float | None = None
    clip: float | None = None
    kick: float = 0.0
    shifts: int = 0
    max_shift: int = 3

    def __post_init__(self):
        if self.momentum is not None and not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1) or None (AdamW), got {self.momentum}")
        if self.clip is not None and not self.clip > 0:
            raise ValueError(f"clip must be > 0 or None, got {self.clip}")
        if self.kick < 0 or self.shifts < 0 or self.max_shift < 0:
            raise ValueError(f"kick, shifts and max_shift must be >= 0, got {self.kick}, {self.shifts}, {self.max_shift}")

    def optimizer(self, x_T: torch.Tensor, lr: float) -> torch.optim.Optimizer:
        if self.momentum is None:
            return torch.optim.AdamW([x_T], lr=lr, weight_decay=0.0)
        return torch.optim.SGD([x_T], lr=lr, momentum=self.momentum)

    def views(self, images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """The images the guide reads: themselves, or ``shifts`` random translations of each
        (zero-padded, so ink never wraps around), stacked along the batch."""
        if not self.shifts:
            return images
        m, pad = self.max_shift, torch.nn.functional.pad(images, (self.max_shift,) * 4)
        h, w = images.shape[-2:]
        views = []
        for _ in range(self.shifts):
            dy, dx = (int(v) for v in torch.randint(0, 2 * m + 1, (2,), generator=gen))
            views.append(pad[..., dy:dy + h, dx:dx + w])
        return torch.cat(views)


def guided_sampling(comps: SDComponents, classifier, prompt: str, target: int, seeds, *, iters: int = 30,
                    lr: float = 0.05, restraints: Restraints = Restraints(), sampler: Sampler = Sampler(),
                    out: Path | None = None, progress: bool = True) -> dict:
    """Descend on ``x_T`` to raise ``log p(target | decode(x_0))`` under ``classifier``, with
    ``restraints``; the images before and after are in the result under ``images``. Each ``x_T``
    descends on its own image's loss (the sum over the batch), so ``lr`` and ``clip`` mean the same at
    any batch size. The step's randomness (shifts, kicks) comes from a generator seeded by the step,
    so a run is repeatable."""
    check_target(classifier, target, comps.device)
    pipe = Pipeline(comps, sampler)
    with torch.no_grad():
        cond = pipe.encode([prompt] * len(seeds))
    x_T = pipe.noise(seeds).requires_grad_()
    norm = x_T.detach().flatten(1).norm(dim=1).view(-1, *[1] * (x_T.dim() - 1))
    opt = restraints.optimizer(x_T, lr)

    def log_prob(images):
        return torch.log_softmax(classifier(images).float(), 1)[:, target]

    with torch.no_grad():
        before = pipe.images(x_T, cond, grad=False)
        p_before = log_prob(before).exp()
    losses = []
    for step in tqdm(range(iters), desc="guided sampling", disable=not progress):
        gen = torch.Generator().manual_seed(step)
        opt.zero_grad()
        images = pipe.images(x_T, cond)
        per_image = -log_prob(restraints.views(images, gen)).view(-1, len(seeds)).mean(0)
        per_image.sum().backward()  # each x_T's gradient is its own image's, whatever the batch size
        loss = per_image.mean()
        if restraints.clip is not None:
            x_T.grad.clamp_(-restraints.clip, restraints.clip)
        opt.step()
        with torch.no_grad():
            if restraints.kick:
                x_T.add_(restraints.kick * torch.randn(x_T.shape, generator=gen).to(x_T))
            if restraints.keep_norm:
                x_T.mul_(norm / x_T.flatten(1).norm(dim=1).view_as(norm))
        losses.append(loss.item())
    with torch.no_grad():
        after = pipe.images(x_T, cond, grad=False)
        p_after = log_prob(after).exp()
    result = {"prompt": as_read(comps, prompt), "target": target, "seeds": list(map(int, seeds)), "lr": lr, "iters": iters,
              "restraints": asdict(restraints), "losses": losses,
              "p_target_before": p_before.tolist(), "p_target_after": p_after.tolist(), **asdict(sampler),
              "images": {"before": before, "after": after}}
    if out is not None:
        write_record(out, "guided", result,
                     figure=lambda path: save_images(path, {"before": before, f"after (target {target})": after}))
    return result


def _arguments(p):
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


def _run(args, comps, sampler, model, classifier, features) -> str:
    restraints = Restraints(**(dict(momentum=0.9, clip=0.01, kick=1e-3) if args.restraints == "doodl" else {}),
                            shifts=args.shifts, max_shift=max(1, 3 * comps.image_size // 32))
    result = guided_sampling(comps, classifier, args.prompt, args.target, args.seeds, iters=args.iters, lr=args.lr,
                             restraints=restraints, sampler=sampler, out=args.out, progress=not args.no_progress)
    return (f"mean p(target) {sum(result['p_target_before']) / len(args.seeds):.3f} -> "
            f"{sum(result['p_target_after']) / len(args.seeds):.3f}")


COMMAND = Command("guided sampling toward a classifier's class (Sec. 4.1.1)", _arguments, _run, classifier="classifier")
