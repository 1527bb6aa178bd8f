"""The toy reproduction (what `make demo` runs): gradient accuracy of every strategy
against closed forms, convergence orders, and the paper's Table 1 on a 2-D mixture.

    python -m toy.reproduce [--out results/toy] [--quick]

Writes Markdown tables, JSON and PNG plots to ``--out`` and prints where.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from tqdm import tqdm

from adjointdpm import GaussianMixture, VPSchedule, make_gradient, sample, steps_for_nfe
from adjointdpm.tools import cli, files
from adjointdpm.tools.memory import saved_bytes_during
from adjointdpm.tools.report import markdown_table
from toy.gaussian import flow_map, flow_map_vjp
from toy.mixture import eight_modes

F64 = dict(dtype=torch.float64)
MEAN, SCALE, TARGET = [0.5, -1.0], [0.3, 1.5], [1.0, 2.0]
# each curve's label -> its strategy's name in adjointdpm.GRADIENTS (the adjoints at the forward's RK4 steps)
STRATEGIES = {
    "Backprop": "backprop",
    "Checkpoint": "checkpoint",
    "Adjoint": "adjoint",
    "Adjoint (reuse states)": "adjoint-stored",
    "Adjoint (torchdiffeq)": "torchdiffeq",
    "AdjointDEIS-1 (data)": "adjointdeis",
    "AdjointDEIS-2 (data)": "adjointdeis-2",
    "AdjointDEIS-1 (noise)": "adjointdeis-noise",
    "AdjointDEIS-2 (noise)": "adjointdeis-2-noise",
}
FORWARD_SOLVERS = ("euler", "heun", "rk4", "adams4", "dpm1", "dpm2", "dpm3", "dpm2m")


def relative_error(a, b) -> float:
    return float((a - b).norm() / b.norm())


def gradient_accuracy(steps_list, batch: int, schedule: VPSchedule, t_end: float = 1e-3):
    """Each strategy x steps on the single Gaussian: errors against the closed forms."""
    x_T0 = torch.randn(batch, 2, generator=torch.Generator().manual_seed(0), **F64)
    mean, log_scale, target = torch.tensor(MEAN, **F64), torch.tensor(SCALE, **F64).log(), torch.tensor(TARGET, **F64)
    x_end = flow_map(x_T0, mean, log_scale, schedule, schedule.T, t_end)
    exact = flow_map_vjp(x_T0, mean, log_scale, 2 * (x_end - target) / batch, schedule, schedule.T, t_end)

    def run(name, steps):
        model = GaussianMixture(torch.ones(1, **F64), mean[None], torch.tensor([SCALE], **F64), schedule)
        x_T = x_T0.clone().requires_grad_()
        cond = torch.zeros(2, **F64, requires_grad=True)
        (x, info), saved = saved_bytes_during(lambda: sample(
            model, x_T, schedule, cond, steps=steps, solver="rk4", t_end=t_end, gradient=make_gradient(STRATEGIES[name]),
            return_info=True))
        (((x - target) ** 2).sum() / batch).backward()
        theta = torch.cat([model.means.grad[0], model.log_scales.grad[0]])
        return {
            "strategy": name, "steps": steps,
            "err_x_T": relative_error(x_T.grad, exact["x_T"]),
            "err_cond": relative_error(cond.grad, exact["mean"]),
            "err_theta": relative_error(theta, torch.cat([exact["mean"], exact["log_scale"]])),
            "nfe_forward": info.nfe_forward, "nfe_backward": info.nfe_backward,
            "saved_bytes": saved,
        }

    rows = []
    for name in tqdm(STRATEGIES, desc="gradient accuracy", leave=False):
        rows += [run(name, steps) for steps in steps_list]
    return rows


def solver_convergence(steps_list, schedule: VPSchedule, t_end: float = 1e-3):
    """Forward error of every solver against the closed-form flow map, in both spaces."""
    x_T = torch.randn(256, 2, generator=torch.Generator().manual_seed(1), **F64)
    model = GaussianMixture(torch.ones(1, **F64), torch.tensor([MEAN], **F64), torch.tensor([SCALE], **F64), schedule)
    exact = flow_map(x_T, model.means[0].detach(), model.log_scales[0].detach(), schedule, schedule.T, t_end)
    rows = []
    for space in ("original", "reparam"):
        for solver in FORWARD_SOLVERS:
            if solver.startswith("dpm") and space == "original":
                continue
            for steps in steps_list:
                x, info = sample(model, x_T, schedule, steps=steps, solver=solver, space=space, t_end=t_end,
                                 return_info=True)
                rows.append({"space": space, "solver": solver, "steps": steps, "nfe": info.nfe_forward,
                             "error": relative_error(x, exact)})
    return rows


def fitted_order(rows, key="error"):
    """Least-squares slope of -log(error) against log(steps)."""
    xs = [math.log(r["steps"]) for r in rows]
    ys = [-math.log(r[key]) for r in rows]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def sliced_wasserstein(a, b, projections: int = 256, seed: int = 0) -> float:
    """Sliced 2-Wasserstein distance between two equal-size point clouds."""
    dirs = torch.randn(projections, a.shape[1], generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    dirs = dirs / dirs.norm(dim=1, keepdim=True)
    pa, pb = (a @ dirs.T).sort(0).values, (b @ dirs.T).sort(0).values
    return float(((pa - pb) ** 2).mean().sqrt())


@torch.no_grad()
def _nll(mix, x) -> float:
    return float(-mix.log_prob(x).mean())


# Table 1's three samplers, each run at an exact NFE budget (steps_for_nfe).
TABLE1 = {
    "eq. 4 (original), Adams-Bashforth 4": dict(space="original", solver="adams4"),
    "DPM-Solver-2": dict(space="reparam", solver="dpm2"),
    "eq. 10 (reparam), Adams-Bashforth 4": dict(space="reparam", solver="adams4"),
}


def table1(nfes, n: int, schedule: VPSchedule, spacings, t_end: float = 1e-3):
    """Sample quality at equal NFE on eight 2-D Gaussians (scale 0.1), x_T drawn from the exact p_T."""
    mix = eight_modes(schedule, scale=0.1).double()
    gen = torch.Generator().manual_seed(2)
    alpha_T, sigma_T = float(schedule.alpha(schedule.T)), float(schedule.sigma(schedule.T))
    x_T = alpha_T * mix.sample_data(n, generator=gen) + sigma_T * torch.randn(n, 2, generator=gen, **F64)
    data = mix.sample_data(n, generator=gen)
    floor = sliced_wasserstein(mix.sample_data(n, generator=gen), data)
    rows = []
    for spacing in spacings:
        exact = sample(mix, x_T, schedule, steps=400, solver="dpm3", spacing=spacing, t_end=t_end)
        check = sample(mix, x_T, schedule, steps=800, solver="dpm3", spacing=spacing, t_end=t_end)
        for nfe in nfes:
            for name, cfg in TABLE1.items():
                x = sample(mix, x_T, schedule, steps=steps_for_nfe(cfg["solver"], nfe), **cfg, spacing=spacing,
                           t_end=t_end)
                rows.append({"spacing": spacing, "nfe": nfe, "sampler": name,
                             "sliced_w2": sliced_wasserstein(x, data),
                             "flow_map_error": float((x - exact).norm(dim=1).mean()),
                             "nll": _nll(mix, x)})
        rows.append({"spacing": spacing, "reference_error": float((exact - check).norm(dim=1).mean()),
                     "sliced_w2_floor": floor, "exact_nll": _nll(mix, data)})
    return rows


def write_gradients(rows, out: Path):
    lines = [(r["strategy"], r["steps"], f"{r['err_x_T']:.2e}", f"{r['err_cond']:.2e}", f"{r['err_theta']:.2e}",
              r["nfe_forward"], r["nfe_backward"], f"{r['saved_bytes'] / 1024:.0f}")
             for r in rows]
    header = ["strategy", "steps", "rel. err dL/dx_T", "rel. err dL/dc", "rel. err dL/dtheta", "NFE fwd", "NFE bwd",
              "saved for backward (KiB)"]
    text = ("# Gradient accuracy against the closed form (single Gaussian, forward RK4 in (y, rho))\n\n"
            "Loss: mean squared distance of x_end to a target; batch of 256; float64. `theta` = mean and "
            "log-scales of the Gaussian; `c` shifts the mean. Memory = bytes autograd keeps for backward. "
            "Time and peak memory are measured by `python -m toy.bench` (bench.md).\n\n"
            + markdown_table(header, lines) + "\n")
    files.write_text(out / "gradients.md", text)
    files.write_json(out / "gradients.json", rows, significant=6)
    return text


def write_convergence(solver_rows, grad_rows, out: Path):
    fig = Figure(figsize=(12, 4.5), layout="tight")  # no pyplot: writing a figure changes no global state
    axes = fig.subplots(1, 2)
    orders = []
    colors = dict(zip(FORWARD_SOLVERS, colormaps["tab10"].colors))
    for space, style in (("original", "--"), ("reparam", "-")):
        for solver in FORWARD_SOLVERS:
            rows = [r for r in solver_rows if r["space"] == space and r["solver"] == solver]
            if rows:
                axes[0].loglog([r["steps"] for r in rows], [r["error"] for r in rows], style, marker="o",
                               color=colors[solver], label=f"{solver} ({space})")
                orders.append((space, solver, f"{fitted_order(rows[-3:]):.2f}"))
    axes[0].set(xlabel="steps", ylabel="relative error vs exact flow map", title="Forward solvers (single Gaussian)")
    axes[0].legend(fontsize=7, ncol=2)
    for name in STRATEGIES:
        rows = [r for r in grad_rows if r["strategy"] == name]
        axes[1].loglog([r["steps"] for r in rows], [r["err_x_T"] for r in rows], marker="o", label=name)
    axes[1].set(xlabel="steps (forward = adjoint)", ylabel="relative error of dL/dx_T",
                title="Gradient strategies (forward RK4)")
    axes[1].legend(fontsize=7)
    files.save_figure(fig, out / "convergence.png", dpi=120)
    text = ("# Measured convergence orders (slope over the three finest step counts)\n\n"
            + markdown_table(["space", "solver", "order"], orders) + "\n")
    files.write_text(out / "convergence.md", text)
    files.write_json(out / "convergence.json", solver_rows, significant=6)
    return text


def write_table1(rows, out: Path):
    parts = ["# Table 1 on a 2-D mixture: sample quality at equal NFE\n",
             "Eight Gaussians (scale 0.1) on a circle, exact epsilon, linear VP schedule, t_end = 1e-3, "
             "x_T drawn from the exact p_T so all error is the solver's. Sliced W2 against exact data "
             "samples; flow-map error = mean |x - x_exact| against a 400-step DPM-Solver-3 solve; NLL under the "
             "true density.\n"]
    for spacing in dict.fromkeys(r["spacing"] for r in rows):
        meta = next(r for r in rows if r["spacing"] == spacing and "reference_error" in r)
        data = [r for r in rows if r["spacing"] == spacing and "sampler" in r]
        nfes = list(dict.fromkeys(r["nfe"] for r in data))
        samplers = list(TABLE1)
        lines = []
        for nfe in nfes:
            cell = {r["sampler"]: r for r in data if r["nfe"] == nfe}
            lines.append([nfe] + [f"{cell[s]['sliced_w2']:.4f} / {cell[s]['flow_map_error']:.4f} / {cell[s]['nll']:.3f}"
                                  for s in samplers])
        parts.append(f"\n## time grid: {spacing}\n\nEach cell: sliced W2 / flow-map error / NLL. "
                     f"Floors: sliced W2 between two exact sample sets {meta['sliced_w2_floor']:.4f}; "
                     f"exact NLL {meta['exact_nll']:.3f}; reference error {meta['reference_error']:.1e}.\n\n"
                     + markdown_table(["NFE"] + samplers, lines) + "\n")
    text = "".join(parts)
    files.write_text(out / "table1.md", text)
    files.write_json(out / "table1.json", rows, significant=6)
    return text


def main(argv=None):
    parser = cli.Parser(prog="python -m toy.reproduce", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=Path("results/toy"), help="output folder (default results/toy)")
    parser.add_argument("--quick", action="store_true", help="small sizes, for tests (seconds)")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser):
        args.out.mkdir(parents=True, exist_ok=True)
        schedule = VPSchedule.linear()
        steps = (10, 20) if args.quick else (10, 20, 50, 100)
        grad_rows = gradient_accuracy(steps, batch=64 if args.quick else 256, schedule=schedule)
        solver_rows = solver_convergence((10, 20, 40) if args.quick else (10, 20, 40, 80, 160, 320), schedule)
        t1_rows = table1((10, 20) if args.quick else (10, 20, 50), n=2000 if args.quick else 20000, schedule=schedule,
                         spacings=("logSNR",) if args.quick else ("logSNR", "uniform"))
        print(write_gradients(grad_rows, args.out))
        print(write_convergence(solver_rows, grad_rows, args.out))
        print(write_table1(t1_rows, args.out))
        print(f"wrote {', '.join(sorted(p.name for p in args.out.iterdir()))} to {args.out}/")


if __name__ == "__main__":
    main()
