"""The paper's four applications on Stable Diffusion (Sec. 4, App. A-D), each a function
here and a subcommand of ``python -m stable_diffusion`` (see ``--help``).

Every one optimises through ``adjointdpm.sample(..., gradient=...)``: the guided sampler
runs forward without a graph, and the gradient strategy (``Adjoint`` by default) gives
``dL/dx_T``, ``dL/d(embedding)`` or ``dL/d(cross-attention weights)`` with memory that does
not grow with the number of steps.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, sample

from .components import SDComponents
from .model import add_token, check_latents, decode, encode_prompt, eps_model
from .nets import VGGFeatures, check_target, gram

# The adjoint's backward solver is RK4 on eq. 11 in (y, rho): on the tiny SD components the
# exponential multistep rule (dpm2m, AdjointDEIS-2's) gave attention-weight gradients 30-90 %
# off Checkpoint's at 2-8 steps, RK4 0.05-0.7 % (tests/test_stable_diffusion.py checks RK4).
GRADIENTS = {
    "adjoint": lambda steps: Adjoint(steps=steps, solver="rk4"),
    "adjointdeis": lambda steps: AdjointDEIS(order=1, steps=steps),
    "checkpoint": lambda steps: Checkpoint(),
    "backprop": lambda steps: Backprop(),
}


@dataclass
class Sampler:
    """How every application samples: ``steps`` of ``solver`` on eq. 10 (logSNR grid, from
    t = 1 to 1/N), guidance scale, and the gradient strategy by name (:data:`GRADIENTS`:
    ``adjoint`` solves the adjoint ODE backwards with ``steps`` RK4 steps)."""
    steps: int = 20
    solver: str = "dpm2m"
    guidance_scale: float = 7.5
    gradient: str = "adjoint"

    def __post_init__(self):
        if self.gradient not in GRADIENTS:
            raise ValueError(f"gradient must be one of {tuple(GRADIENTS)}, got {self.gradient!r}")

    def run(self, comps: SDComponents, model, x_T, cond, grad: bool = True):
        check_latents(comps, x_T)
        # down to the first training step: the UNet is not defined below it
        return sample(model, x_T, comps.schedule, cond, steps=self.steps, solver=self.solver, t_end=comps.schedule.t_min,
                      gradient=GRADIENTS[self.gradient](self.steps) if grad else None)


def noise(comps: SDComponents, seeds, dtype=torch.float32) -> torch.Tensor:
    """One latent ``x_T`` per seed, the same on every device."""
    return torch.stack([torch.randn(comps.latent_shape, generator=torch.Generator().manual_seed(int(s)),
                                    dtype=dtype) for s in seeds]).to(comps.device)


def save_images(path: Path, rows: dict[str, torch.Tensor]) -> None:
    """A grid: one row per entry of ``rows`` (images in [0, 1])."""
    from matplotlib.figure import Figure
    n = max(len(v) for v in rows.values())
    fig = Figure(figsize=(2 * n, 2 * len(rows)), layout="tight")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (title, images) in enumerate(rows.items()):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].detach().float().permute(1, 2, 0).cpu().clamp(0, 1).numpy())
        axes[r][0].set_title(title, fontsize=8, loc="left")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def _percent(rate) -> str:
    return "-" if rate is None else f"{100 * rate:.1f}%"


def _write(out: Path, name: str, result: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return result


# ---------------------------------------------------------------------------------------
# 1. Guided sampling / vocabulary expansion (Sec. 4.1.1, App. B)
# ---------------------------------------------------------------------------------------
def guided_sampling(comps: SDComponents, classifier, prompt: str, target: int, seeds, *, iters: int = 30,
                    lr: float = 0.05, sampler: Sampler = Sampler(), out: Path | None = None,
                    progress: bool = True) -> dict:
    """Optimise ``x_T`` with AdamW to raise ``log p(target | decode(x_0))`` under ``classifier``."""
    check_target(classifier, target, comps.device)
    model = eps_model(comps, sampler.guidance_scale)
    with torch.no_grad():
        cond = encode_prompt(comps, [prompt] * len(seeds))
    x_T = noise(comps, seeds).requires_grad_()
    opt = torch.optim.AdamW([x_T], lr=lr)

    def log_prob(images):
        return torch.log_softmax(classifier(images).float(), 1)[:, target]

    with torch.no_grad():
        before = decode(comps, sampler.run(comps, model, x_T, cond, grad=False))
        p_before = log_prob(before).exp()
    losses = []
    for _ in tqdm(range(iters), desc="guided sampling", disable=not progress):
        opt.zero_grad()
        loss = -log_prob(decode(comps, sampler.run(comps, model, x_T, cond))).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = decode(comps, sampler.run(comps, model, x_T, cond, grad=False))
        p_after = log_prob(after).exp()
    result = {"prompt": prompt, "target": target, "seeds": list(map(int, seeds)), "losses": losses,
              "p_target_before": p_before.tolist(), "p_target_after": p_after.tolist(), **asdict(sampler)}
    if out is not None:
        save_images(out / "guided.png", {"before": before, f"after (target {target})": after})
        _write(out, "guided", result)
    return result


# ---------------------------------------------------------------------------------------
# 2. Auditing a classifier with bounded initial noise (Sec. 4.1.2, App. C, Table 3)
# ---------------------------------------------------------------------------------------
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
                  f"{_percent(r['rate'])} |" for r in rows]
        (out / "audit.md").write_text(f"# Audit: ||delta||_inf <= {tau}, "
                                      f"{'untargeted' if target is None else f'target {target}'}\n\n"
                                      + "\n".join(lines) + "\n")
        _write(out, "audit", result)
    return result


def generate(comps: SDComponents, prompts: list[str], seeds, sampler: Sampler = Sampler(), model=None,
             embedding_row=None, token_id=None) -> torch.Tensor:
    """Images in [0, 1] for ``prompts[i]`` from seed ``seeds[i]``, no graph."""
    model = model or eps_model(comps, sampler.guidance_scale)
    with torch.no_grad():
        cond = encode_prompt(comps, list(prompts), embedding_row, token_id)
        return decode(comps, sampler.run(comps, model, noise(comps, seeds), cond, grad=False))


# ---------------------------------------------------------------------------------------
# 3. Stylization from one reference image (Sec. 4.2, eq. 13, App. D)
# ---------------------------------------------------------------------------------------
def cross_attention_parameters(unet) -> dict[str, torch.nn.Parameter]:
    """The UNet's cross-attention projections (``attn2``: to_q, to_k, to_v, to_out)."""
    params = {n: p for n, p in unet.named_parameters() if ".attn2." in n}
    if not params:
        raise ValueError("this UNet has no cross-attention (attn2) parameters")
    return params


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def stylize(comps: SDComponents, vgg: VGGFeatures, style_image: torch.Tensor, prompts: list[str], seeds, *,
            epochs: int = 8, lr: float = 1e-4, w_style: float = 1e3, w_content: float = 1.0,
            sampler: Sampler = Sampler(), out: Path, save_every: int = 10, accelerator=None,
            progress: bool = True) -> dict:
    """Eq. 13: fine-tune the cross-attention weights so generated images take the Gram-matrix
    style of ``style_image`` ((1, 3, H, W) in [0, 1]) while keeping their VGG content, over
    the noise-prompt pairs ``prompts x seeds``; AdamW, one pair per step and process.

    Resumable: ``out/checkpoint.pt`` (weights, optimizer, step) is written every ``save_every``
    steps and read back on the next call; the original model's images (the content targets)
    are cached under ``out/content/``. Under ``accelerate launch`` each process takes every
    ``world``-th pair and gradients are averaged across processes before each step.
    Writes the fine-tuned UNet with ``save_pretrained`` to ``out/unet``.
    """
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    main = rank == 0
    out.mkdir(parents=True, exist_ok=True)
    (out / "content").mkdir(exist_ok=True)
    comps.unet.float()  # AdamW on half-precision weights loses the small updates
    params = cross_attention_parameters(comps.unet)
    model = eps_model(comps, sampler.guidance_scale)
    pairs = [(p, s) for p in prompts for s in seeds]
    mine = list(range(rank, len(pairs), world))
    if not mine:
        raise ValueError(f"{len(pairs)} noise-prompt pairs for {world} processes: give at least one per process")
    for i in mine:  # content targets from the original weights, before any update
        path = out / "content" / f"pair_{i:05d}.pt"
        if not path.exists():
            _save_atomic(generate(comps, [pairs[i][0]], [pairs[i][1]], sampler, model).cpu(), path)
    if accelerator:
        accelerator.wait_for_everyone()
    with torch.no_grad():
        style_target = [gram(f) for f in vgg(style_image.to(comps.device))[0]]

    opt = torch.optim.AdamW(params.values(), lr=lr)
    state, step, losses = out / "checkpoint.pt", 0, []
    if state.exists():
        saved = torch.load(state, map_location=comps.device, weights_only=True)
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(saved["params"][name])
        opt.load_state_dict(saved["optimizer"])
        step, losses = saved["step"], saved["losses"]
    for p in params.values():
        p.requires_grad_(True)
    total = epochs * len(mine)
    bar = tqdm(total=total, initial=step, desc="stylize", disable=not (progress and main))
    while step < total:
        prompt, seed = pairs[mine[step % len(mine)]]
        content_image = torch.load(out / "content" / f"pair_{mine[step % len(mine)]:05d}.pt",
                                   weights_only=True).to(comps.device)
        with torch.no_grad():
            cond, content_target = encode_prompt(comps, [prompt]), vgg(content_image)[1]
        images = decode(comps, sampler.run(comps, model, noise(comps, [seed]), cond))
        style, content = vgg(images)
        loss = (w_style * sum(F.mse_loss(gram(f), g) for f, g in zip(style, style_target))
                + w_content * F.mse_loss(content, content_target))
        opt.zero_grad()
        loss.backward()
        if accelerator and world > 1:
            for p in params.values():
                p.grad = accelerator.reduce(p.grad, reduction="mean")
        opt.step()
        step += 1
        losses.append(loss.item())
        bar.update()
        if main and (step % save_every == 0 or step == total):
            _save_atomic({"step": step, "losses": losses, "optimizer": opt.state_dict(),
                          "params": {n: p.detach() for n, p in params.items()}}, state)
    bar.close()
    for p in params.values():
        p.requires_grad_(False)
    result = {"pairs": len(pairs), "epochs": epochs, "lr": lr, "w_style": w_style, "w_content": w_content,
              "losses": losses, "trained_parameters": sum(p.numel() for p in params.values()), **asdict(sampler)}
    if main:
        comps.unet.save_pretrained(out / "unet")
        _write(out, "stylize", result)
    return result


# ---------------------------------------------------------------------------------------
# 4. Text-embedding inversion (App. A)
# ---------------------------------------------------------------------------------------
def invert_embedding(comps: SDComponents, targets: torch.Tensor, seeds, *, token: str = "<effect>",
                     init_token: str | None = None, template: str = "a photo of {}", iters: int = 100,
                     lr: float = 5e-3, sampler: Sampler = Sampler(), reuse_prompts=(), out: Path | None = None,
                     progress: bool = True) -> dict:
    """Optimise a new token's embedding row so that ``template.format(token)`` generated from
    the fixed noises ``seeds`` matches ``targets`` (images in [0, 1], MSE). Saves
    ``learned_embeds.safetensors`` (``{token: row}``, loadable by diffusers'
    ``load_textual_inversion``) and images of the token reused in ``reuse_prompts``."""
    if "{}" not in template:
        raise ValueError(f"template must contain '{{}}' where the token goes, got {template!r}")
    if len(targets) != len(seeds):
        raise ValueError(f"{len(targets)} target images for {len(seeds)} seeds: give one seed per target")
    token_id = add_token(comps, token, init_token)
    row = comps.text_encoder.get_input_embeddings().weight[token_id].detach().clone().requires_grad_()
    model = eps_model(comps, sampler.guidance_scale)
    x_T, targets = noise(comps, seeds), targets.to(comps.device).float()
    prompts = [template.format(token)] * len(seeds)
    opt = torch.optim.AdamW([row], lr=lr, weight_decay=0.0)
    losses = []
    for _ in tqdm(range(iters), desc="invert embedding", disable=not progress):
        opt.zero_grad()
        cond = encode_prompt(comps, prompts, row, token_id)
        images = decode(comps, sampler.run(comps, model, x_T, cond))
        loss = F.mse_loss(F.interpolate(images, size=targets.shape[-2:], mode="bilinear", align_corners=False)
                          if images.shape[-2:] != targets.shape[-2:] else images, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        comps.text_encoder.get_input_embeddings().weight[token_id] = row.detach()
    result = {"token": token, "template": template, "losses": losses, **asdict(sampler)}
    if out is not None:
        from safetensors.torch import save_file
        out.mkdir(parents=True, exist_ok=True)
        save_file({token: row.detach().float().cpu().contiguous()}, out / "learned_embeds.safetensors")
        rows = {"targets": targets, "learned": generate(comps, prompts, seeds, sampler, model)}
        for prompt in reuse_prompts:
            rows[prompt.format(token)] = generate(comps, [prompt.format(token)] * len(seeds), seeds, sampler, model)
        save_images(out / "invert.png", rows)
        _write(out, "invert", result)
    return result
