"""The paper's four applications in 2-D (Sec. 4.1.1, 4.1.2, 4.2 and App. A), and the AdjointDEIS
poster's morphing.

Each optimises with a standard torch optimiser through ``sample(..., gradient=...)``,
returns its numbers as a dict, and (through ``python -m toy.apps NAME``) writes a
before/after figure and JSON to ``results/toy/``.

The classifier everywhere is the Bayes posterior of the mixture,
``p(k | x) = softmax_k(log w_k + log N(x; mu_k, s_k^2))``: fixed, exact and differentiable.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from adjointdpm import Adjoint, AdjointDEIS, GaussianMixture, Gradient, VPSchedule, sample
from adjointdpm.tools import cli, files
from adjointdpm.noise import slerp
from adjointdpm.tools.report import markdown_table
from toy.mixture import eight_modes, three_modes
from toy.mlp import train_eps_mlp

SCHEDULE = VPSchedule.linear()
SAMPLING = dict(steps=10, solver="dpm2")  # a cheap, accurate sampler for every application


def class_log_probs(mix: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """``log p(k | x)`` under the mixture itself, shape ``(batch, components)``."""
    var = torch.exp(2 * mix.log_scales)
    comp = -0.5 * (((x[:, None, :] - mix.means) ** 2) / var + torch.log(var)).sum(-1)
    return torch.log_softmax(torch.log_softmax(mix.logits, 0) + comp, dim=1)


def _noise(n: int, seed: int, dim: int = 2) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


# -- 1. guided sampling ------------------------------------------------------------------
def guided_sampling(target: int = 2, n: int = 64, iters: int = 30, lr: float = 0.1,
                    gradient: Gradient | None = None, seed: int = 0) -> dict:
    """Optimise ``x_T`` so that generated points land in component ``target`` (Sec. 4.1.1)."""
    mix = three_modes(SCHEDULE)
    mix.requires_grad_(False)
    if not 0 <= target < mix.means.shape[0]:
        raise ValueError(f"target must be a class in [0, {mix.means.shape[0]}), got {target}")
    x_T = _noise(n, seed).requires_grad_()
    x_before = sample(mix, x_T.detach(), SCHEDULE, **SAMPLING)
    opt = torch.optim.AdamW([x_T], lr=lr, weight_decay=0.0)
    losses = []
    for _ in tqdm(range(iters), desc="guided sampling", leave=False):
        x0 = sample(mix, x_T, SCHEDULE, **SAMPLING, gradient=gradient or Adjoint())
        loss = -class_log_probs(mix, x0)[:, target].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    x_after = sample(mix, x_T.detach(), SCHEDULE, **SAMPLING)
    prob = lambda x: float(class_log_probs(mix, x)[:, target].exp().mean())
    return {"target": target, "prob_before": prob(x_before), "prob_after": prob(x_after), "losses": losses,
            "x_before": x_before, "x_after": x_after, "mixture": mix}


# -- 2. auditing with bounded noise ----------------------------------------------------------
def audit(taus=(0.25, 0.5), n: int = 300, iters: int = 20, gradient: Gradient | None = None, seed: int = 0) -> dict:
    """For each generated point, search ``||delta||_inf <= tau`` on ``x_T`` that changes the
    classifier's decision on ``x_0`` (Sec. 4.1.2, App. C), by projected sign-gradient steps.

    Returns the success rate per class (the class of the unperturbed sample) for each tau.
    """
    mix = three_modes(SCHEDULE)
    mix.requires_grad_(False)
    x_T = _noise(n, seed)
    labels = class_log_probs(mix, sample(mix, x_T, SCHEDULE, **SAMPLING)).argmax(1)
    result = {"taus": list(taus), "per_class": {}, "overall": {}}
    for tau in taus:
        if not tau > 0:
            raise ValueError(f"every tau must be > 0, got {tau}")
        delta = torch.zeros_like(x_T, requires_grad=True)
        for _ in tqdm(range(iters), desc=f"audit tau={tau}", leave=False):
            x0 = sample(mix, x_T + delta, SCHEDULE, **SAMPLING, gradient=gradient or Adjoint())
            # untargeted: push down the log-probability of the original label
            loss = class_log_probs(mix, x0).gather(1, labels[:, None]).sum()
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta -= (tau / 4) * grad.sign()
                delta.clamp_(-tau, tau)  # projection onto the L-infinity ball
        flipped = class_log_probs(mix, sample(mix, x_T + delta, SCHEDULE, **SAMPLING)).argmax(1) != labels
        assert float(delta.detach().abs().max()) <= tau + 1e-6  # the constraint holds exactly
        result["overall"][tau] = float(flipped.float().mean())
        result["per_class"][tau] = {int(k): float(flipped[labels == k].float().mean())
                                    for k in labels.unique()}
        result.setdefault("counts", {int(k): int((labels == k).sum()) for k in labels.unique()})
    return result


# -- 3. fine-tuning weights toward a style (eq. 13) ------------------------------------------
def second_moment(x: torch.Tensor) -> torch.Tensor:
    """The 2-D analogue of a Gram matrix: ``E[x x^T]`` over the cloud."""
    return x.T @ x / x.shape[0]


def finetune(n: int = 128, iters: int = 40, lr: float = 1e-3, content_weight: float = 0.5,
             train_iters: int = 1500, gradient: Gradient | None = None, seed: int = 0) -> dict:
    """Fine-tune a trained MLP epsilon-network so its samples take the second-moment
    matrix of a reference cloud (style) while each sample stays near where the original
    model put it (content): ``|M(x0) - M_ref|_F^2 + w * mean |x0 - x0_orig|^2`` (eq. 13)."""
    mix = eight_modes(SCHEDULE, radius=2.0, scale=0.2)
    model = train_eps_mlp(lambda m, c, g: mix.sample_data(m, generator=g), SCHEDULE, iters=train_iters,
                          seed=seed, progress=False)
    reference = mix.sample_data(2000, generator=torch.Generator().manual_seed(seed + 1)) * torch.tensor([1.6, 0.6])
    m_ref = second_moment(reference)
    x_T, x_T_unseen = _noise(n, seed + 2), _noise(n, seed + 3)
    content, content_unseen = (sample(model, z, SCHEDULE, **SAMPLING) for z in (x_T, x_T_unseen))

    def terms(x0, original):
        return float(((second_moment(x0) - m_ref) ** 2).sum()), float(((x0 - original) ** 2).sum(1).mean())
    before = terms(content, content)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for _ in tqdm(range(iters), desc="fine-tune", leave=False):
        x0 = sample(model, x_T, SCHEDULE, **SAMPLING, gradient=gradient or Adjoint())
        style = ((second_moment(x0) - m_ref) ** 2).sum()
        loss = style + content_weight * ((x0 - content) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after, unseen_after = (sample(model, z, SCHEDULE, **SAMPLING) for z in (x_T, x_T_unseen))
    return {"style_before": before[0], "style_after": terms(after, content)[0],
            "content_after": terms(after, content)[1],
            "unseen_style_before": terms(content_unseen, content_unseen)[0],
            "unseen_style_after": terms(unseen_after, content_unseen)[0],
            "m_ref": m_ref.tolist(), "x_before": content_unseen, "x_after": unseen_after, "reference": reference}


# -- 4. inverting a conditioning embedding (App. A) --------------------------------------------
def invert_embedding(n: int = 64, iters: int = 60, lr: float = 0.1, train_iters: int = 2000,
                     gradient: Gradient | None = None, seed: int = 0) -> dict:
    """A conditional MLP (the condition shifts the mixture) generates targets from fixed
    noises with a hidden embedding ``c*``; recover it from zero by the MSE to the targets."""
    mix = three_modes(SCHEDULE)
    model = train_eps_mlp(lambda m, c, g: mix.sample_data(m, cond=c, generator=g), SCHEDULE, cond_dim=2,
                          cond_sampler=lambda m, g: torch.randn(m, 2, generator=g), iters=train_iters,
                          seed=seed, progress=False)
    model.requires_grad_(False)
    hidden = torch.tensor([0.8, -0.6])
    x_T = _noise(n, seed + 4)
    targets = sample(model, x_T, SCHEDULE, hidden.expand(n, 2), **SAMPLING)
    emb = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([emb], lr=lr)
    history = []
    for _ in tqdm(range(iters), desc="invert embedding", leave=False):
        x0 = sample(model, x_T, SCHEDULE, emb.expand(n, 2), **SAMPLING, gradient=gradient or Adjoint())
        loss = ((x0 - targets) ** 2).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    final = sample(model, x_T, SCHEDULE, emb.expand(n, 2), **SAMPLING)
    return {"hidden": hidden.tolist(), "found": emb.detach().tolist(),
            "embedding_error": float((emb.detach() - hidden).norm()), "initial_embedding_error": float(hidden.norm()),
            "sample_error": float(((final - targets) ** 2).sum(1).mean().sqrt()), "losses": history,
            "targets": targets, "x_after": final}


# -- 5. morphing (AdjointDEIS poster, Table 1; the DiM pipeline) ----------------------------
POSTER_MMPMR = {  # FMR 0.1 %, SYN-MAD 2022: AdaFace / ArcFace / ElasticFace, and NFE
    "DiM (no optimisation)": ((92.23, 90.18, 93.05), 350),  # the poster's DiM-A
    "DiM + AdjointDEIS-1 (ODE)": ((99.8, 98.77, 99.39), 2250),
    "DiM + AdjointDEIS-1 (SDE)": ((98.57, 97.96, 97.75), 2250),
}
MORPH_SAMPLING = dict(steps=20, solver="dpm1")  # DDIM, as DiM decodes; the SDE rows use sde-dpm1


def similarity(F, x, y) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(F(x), F(y), dim=-1)


def match_threshold(F, mix: GaussianMixture, fmr: float = 1e-3, pairs: int = 20000, seed: int = 0) -> float:
    """The similarity above which F falsely matches a share ``fmr`` of impostor pairs: real samples
    of different modes (the identities here)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = mix.sample_data(pairs, generator=gen), mix.sample_data(pairs, generator=gen)
    impostor = class_log_probs(mix, x).argmax(1) != class_log_probs(mix, y).argmax(1)
    return float(torch.quantile(similarity(F, x[impostor], y[impostor]), 1 - fmr))


def morph(n: int = 64, iters: int = 60, lr: float = 0.05, seed: int = 0, progress: bool = False,
          ode_gradient=lambda: AdjointDEIS(1, form="data"),
          sde_gradient=lambda: AdjointDEIS(1, states="reuse", form="data")) -> dict:
    """DiM morphing of pairs of real points from neighbouring modes (two identities), then the
    poster's optimisation of ``(x_T, c)`` on ``L = (1 - cos(F(x0), F(a))) + (1 - cos(F(x0), F(b)))``
    through the ODE sampler (AdjointDEIS-1) and the SDE sampler (AdjointDEIS-1 on the stored SDE
    path). A morph succeeds when F matches it to both at the threshold where it falsely matches
    0.1 % of impostor pairs (MMPMR).

    The identity model F is the mixture's Bayes posterior over its eight modes, ``p(k | x)``: a
    perfect recogniser of the eight identities, under which a point between two modes resembles
    both, as a face morph does."""
    mix = eight_modes(SCHEDULE).double()
    mix.requires_grad_(False)
    F = lambda x: class_log_probs(mix, x).exp()
    threshold = match_threshold(F, mix, seed=seed)
    gen = torch.Generator().manual_seed(seed + 7)
    modes = torch.randint(0, 8, (n,), generator=gen)
    scale = float(mix.log_scales.exp()[0, 0])
    a = mix.means[modes] + scale * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    b = mix.means[(modes + 1) % 8] + scale * torch.randn(n, 2, generator=gen, dtype=torch.float64)
    # DiM: encode both by the ODE (DDIM inversion), interpolate noise and condition, decode
    encode = dict(steps=MORPH_SAMPLING["steps"], solver="dpm1", t_start=1e-3, t_end=SCHEDULE.T)
    x_T0 = slerp(sample(mix, a, SCHEDULE, **encode), sample(mix, b, SCHEDULE, **encode))
    c0 = torch.zeros(n, 2, dtype=torch.float64)  # the mixture's condition shifts its means: (a's 0 + b's 0) / 2
    runs = {"DiM (no optimisation)": (dict(MORPH_SAMPLING), None),
            "DiM + AdjointDEIS-1 (ODE)": (dict(MORPH_SAMPLING), ode_gradient),
            "DiM + AdjointDEIS-1 (SDE)": (dict(MORPH_SAMPLING, solver="sde-dpm1", noise_seed=seed), sde_gradient)}
    steps = MORPH_SAMPLING["steps"]
    rows, points = [], {}
    for name, (sampler, strategy) in runs.items():
        x_T, c = x_T0.clone().requires_grad_(), c0.clone().requires_grad_()
        nfe = 2 * steps + steps  # two encodings and the final decode
        if strategy is not None:
            opt = torch.optim.AdamW([x_T, c], lr=lr, weight_decay=0.0)
            for _ in tqdm(range(iters), desc=name, leave=False, disable=not progress):
                x0, info = sample(mix, x_T, SCHEDULE, c, gradient=strategy(), return_info=True, **sampler)
                loss = ((1 - similarity(F, x0, a)) + (1 - similarity(F, x0, b))).sum()
                opt.zero_grad()
                loss.backward()
                opt.step()
                nfe += info.nfe_forward + info.nfe_backward
        with torch.no_grad():
            x0 = sample(mix, x_T, SCHEDULE, c, **sampler)
            s_a, s_b = similarity(F, x0, a), similarity(F, x0, b)
        points[name] = x0
        rows.append({"attack": name, "nfe": nfe, "mmpmr": float((torch.minimum(s_a, s_b) >= threshold).double().mean()),
                     "mean_similarity_a": float(s_a.mean()), "mean_similarity_b": float(s_b.mean()),
                     "poster": POSTER_MMPMR[name][0]})
    return {"pairs": n, "iters": iters, "lr": lr, "threshold": threshold, "fmr": 1e-3, "rows": rows,
            "a": a, "b": b, "points": points, "mixture": mix}


def morph_markdown(r: dict) -> str:
    """``app_morph.md`` from the measured data (what ``app_morph.json`` holds)."""
    header = ["attack", "NFE per morph", "MMPMR (ours, toy)", "mean cos to a / b",
              "poster MMPMR (AdaFace / ArcFace / ElasticFace)"]
    rows = [[row["attack"], row["nfe"], f"{100 * row['mmpmr']:.1f}%",
             f"{row['mean_similarity_a']:.3f} / {row['mean_similarity_b']:.3f}",
             " / ".join(f"{v:.2f}" for v in row["poster"]) if row["poster"] else "-"] for row in r["rows"]]
    return (f"# Morphing on the toy (AdjointDEIS poster, Table 1)\n\n{r['pairs']} pairs of real points from "
            "neighbouring modes of the eight-Gaussian mixture (two identities each); F: the mixture's posterior "
            f"over its modes, p(k | x); success when F matches the morph to both at the threshold "
            f"{r['threshold']:.3f}, where it falsely matches 0.1 % of real impostor pairs. DiM: DDIM-encode both, "
            f"slerp the noises, decode ({MORPH_SAMPLING['steps']} steps). The optimised rows run {r['iters']} AdamW "
            f"steps (lr {r['lr']}) on (x_T, c): ODE with AdjointDEIS-1 (data-prediction form), SDE (sde-dpm1, one "
            "noise seed) with the same rule on the stored SDE path. NFE per morph counts model evaluations and VJPs. The poster's "
            "MMPMR is on faces (SYN-MAD 2022), beside for its ordering only.\n\n" + markdown_table(header, rows) + "\n")


def write_morph(r: dict, out: Path) -> str:
    text = morph_markdown(r)
    files.write_text(out / "app_morph.md", text)
    fig = Figure(figsize=(7, 6.5), layout="tight")
    ax = fig.subplots()
    plot_density(ax, r["mixture"])
    ax.scatter(*r["a"].T, s=14, c="k", marker="x", label="reference a")
    ax.scatter(*r["b"].T, s=14, c="k", marker="+", label="reference b")
    for name, pts in r["points"].items():
        ax.scatter(*pts.T, s=10, label=name)
    ax.set(aspect="equal", title="Morphs between neighbouring modes")
    ax.legend(fontsize=7)
    files.save_figure(fig, out / "app_morph.png", dpi=110)
    return text


# -- the command -------------------------------------------------------------------------------
def plot_density(ax, mix: GaussianMixture, lim: float = 4.0):
    g = torch.linspace(-lim, lim, 200)
    xx, yy = torch.meshgrid(g, g, indexing="xy")
    with torch.no_grad():
        dens = mix.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(200, 200)
    ax.contour(xx, yy, dens, levels=8, colors="0.7", linewidths=0.6)


def _scatter_pair(path: Path, title: str, before, after, labels=("before", "after"), mix=None, extra=None):
    fig = Figure(figsize=(9, 4.2), layout="tight")
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    for ax, pts, label in zip(axes, (before, after), labels):
        if mix is not None:
            plot_density(ax, mix)
        if extra is not None:
            ax.scatter(*extra.T, s=3, c="0.8", label="reference")
        ax.scatter(*pts.detach().T, s=8, label=label)
        ax.set_title(label)
        ax.set_aspect("equal")
    fig.suptitle(title)
    files.save_figure(fig, path, dpi=110)


def main(argv=None):
    parser = cli.Parser(
        prog="python -m toy.apps", description="Run one toy application (guided sampling, bounded-noise audit, weight fine-tuning, "
                    "embedding inversion) through adjointdpm.sample(..., gradient=Adjoint()); write "
                    "app_<name>.json and app_<name>.png to --out.")
    parser.add_argument("name", choices=["guided", "audit", "finetune", "invert", "morph", "all"])
    parser.add_argument("--out", type=cli.folder, default=Path("results/toy"), help="output folder (default results/toy)")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    parser.add_argument("--iters", type=cli.count("iters"), default=None,
                        help="optimisation steps (default: the function's; " + cli.bound_help("iters") + ")")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser):
        args.out.mkdir(parents=True, exist_ok=True)
        extra = {} if args.iters is None else {"iters": args.iters}
        for name in (["guided", "audit", "finetune", "invert", "morph"] if args.name == "all" else [args.name]):
            if name == "guided":
                r = guided_sampling(seed=args.seed, **extra)
                _scatter_pair(args.out / "app_guided.png",
                              f"Guided sampling toward class {r['target']}: p(target) "
                              f"{r['prob_before']:.2f} -> {r['prob_after']:.2f}", r["x_before"], r["x_after"], mix=r["mixture"])
                summary = {k: r[k] for k in ("target", "prob_before", "prob_after", "losses")}
            elif name == "audit":
                summary = audit(seed=args.seed, **extra)
                fig = Figure(figsize=(6, 3.5), layout="tight")
                ax = fig.subplots()
                classes = sorted(summary["counts"])
                for i, tau in enumerate(summary["taus"]):
                    ax.bar([c + 0.35 * i for c in classes], [summary["per_class"][tau][c] for c in classes], 0.35,
                           label=f"tau = {tau}")
                ax.set(xlabel="class of the unperturbed sample", ylabel="success rate", ylim=(0, 1),
                       title="Bounded-noise audit: decisions changed")
                ax.legend()
                files.save_figure(fig, args.out / "app_audit.png", dpi=110)
            elif name == "finetune":
                r = finetune(seed=args.seed, **extra)
                _scatter_pair(args.out / "app_finetune.png",
                              f"Fine-tuned weights, unseen noises: style loss {r['unseen_style_before']:.2f} -> "
                              f"{r['unseen_style_after']:.2f}", r["x_before"], r["x_after"],
                              labels=("original model", "fine-tuned model"), extra=r["reference"])
                summary = {k: v for k, v in r.items() if not torch.is_tensor(v)}
            elif name == "morph":
                r = morph(seed=args.seed, progress=True, **extra)
                print(write_morph(r, args.out))
                summary = {k: v for k, v in r.items() if k in ("pairs", "iters", "lr", "threshold", "fmr", "rows")}
            else:
                r = invert_embedding(seed=args.seed, **extra)
                _scatter_pair(args.out / "app_invert.png",
                              f"Embedding inversion: |c - c*| {r['initial_embedding_error']:.2f} -> "
                              f"{r['embedding_error']:.3f}", r["targets"], r["x_after"],
                              labels=("targets (hidden c*)", "samples with the found c"))
                summary = {k: v for k, v in r.items() if not torch.is_tensor(v)}
            files.write_json(args.out / f"app_{name}.json", summary)
            print(json.dumps({k: v for k, v in summary.items() if k != "losses"}, default=str))
            print(f"wrote {args.out / f'app_{name}.json'} and {args.out / f'app_{name}.png'}")


if __name__ == "__main__":
    main()
