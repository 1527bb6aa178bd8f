"""The reversible sampler (``reversible-dpm1``) and its exact gradient measured on the learned digits DDPM++.

    python -m cifar.reversible [--out results/cifar] [--batch 8] [--quick] [--device cuda]

Writes ``reversible.md/json/png``, four measurements on ``cifar/weights/digits_ddpmpp`` (x_T from seed 0,
a logSNR grid from t = 1 to 1e-3):

* **quality**: the median per-image RMSE (images in [-1, 1]) against a converged solve (200 DPM-Solver-3
  steps) of DDIM (``dpm1``, the step the reversible one couples), DPM-Solver-2M (second order, one
  evaluation per step) and the reversible sampler at couplings 1, 0.999, 0.99 and 0.9, read at equal
  NFE and at equal steps (the reversible step evaluates the model twice);
* **reconstruction**: each step undone from the last state back to x_T, the pair held in float64 (the
  library's choice) or in float32 (the model's dtype): the largest relative distance of a reconstructed
  state from the forward's, at 10 to 100 steps;
* **gradient**: ``dL/dx_T`` and ``dL/dtheta`` (every weight; L the mean intensity of the central 8x8) by
  ``ReversibleAdjoint`` against the same sampler's exact gradient (``Checkpoint``), with either pair;
* **cost**: the bytes autograd keeps (saved-tensor hooks, the weights themselves excluded) and the seconds
  of a forward and backward for Backprop, Checkpoint and ReversibleAdjoint.

Every case is appended to ``OUT/reversible.work/cases.jsonl`` as it finishes (the folder keyed by the
model, the noises and the sizes), so an interrupted run resumes. About 10 minutes on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from unittest import mock

import torch

from adjointdpm import Checkpoint, ReversibleAdjoint, VPSchedule, make_gradient, sample
from adjointdpm.tools import accuracy, cli, files
from adjointdpm.tools.memory import saved_bytes_during, synchronize
from adjointdpm.ode import ProbabilityFlow, ReparamSpace, SolveInfo
from adjointdpm.tools.report import markdown_table
from adjointdpm.solvers import ReversibleDPM1
from adjointdpm.trajectory import median_rmse

from .adjoint_accuracy import CHECKPOINT
from .checkpoint import load_score_sde

SCHEDULE, T_END = VPSchedule.linear(), 1e-3
FINE = dict(solver="dpm3", steps=200)
COUPLINGS = (1.0, 0.999, 0.99, 0.9)
SIZES = dict(quality=(5, 10, 20, 25, 50, 100), baseline=(5, 10, 20, 25, 50, 100, 200), drift=(10, 20, 50, 100),
             gradient=(10, 20, 50, 100), gradient_batch=4)
QUICK = dict(quality=(2, 4), baseline=(2, 4, 8), drift=(2, 4), gradient=(2, 4), gradient_batch=1)
QUICK_FINE = dict(solver="dpm3", steps=10)
STRATEGIES = {"Backprop": "backprop", "Checkpoint": "checkpoint", "ReversibleAdjoint": "reversible"}  # label -> GRADIENTS name
PAIRS = ("float64", "float32")  # the precision the reversible pair is held in
BASELINES = {"dpm1": "DDIM", "dpm2m": "DPM-Solver-2M"}  # one evaluation per step: first and second order
COLORS = dict(zip(COUPLINGS, ("tab:blue", "tab:orange", "tab:green", "tab:red")))  # one colour per coupling


@contextlib.contextmanager
def pair_precision(name: str):
    """Hold the reversible pair in ``name``: float64 is the library's :meth:`ReversibleDPM1.wide`; float32
    (the model's dtype) replaces it for the duration, to show what the wide pair avoids."""
    if name == "float64":
        yield
    else:
        with mock.patch.object(ReversibleDPM1, "wide", staticmethod(lambda w: w)):
            yield


class Study:
    """The model, its noises and every measurement as a function of one case's settings."""

    def __init__(self, device, batch: int, sizes: dict, fine: dict, checkpoint: Path = CHECKPOINT):
        self.model = load_score_sde(checkpoint, "digits_ddpmpp").to(device).eval().requires_grad_(False)
        size = self.model.net.image_size
        self.x_T = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        self.sizes, self.fine = sizes, fine
        self.centre = slice(size // 4, size - size // 4)
        self._reference = None

    def loss(self, x):
        return x[..., self.centre, self.centre].mean()

    @torch.no_grad()
    def draw(self, solver: str, steps: int, coupling=None, x_T=None) -> torch.Tensor:
        return sample(self.model, self.x_T if x_T is None else x_T, SCHEDULE, steps=steps, solver=solver,
                      coupling=coupling, t_end=T_END)

    def cases(self) -> list[tuple]:
        s = self.sizes
        return ([("quality", solver, None, n) for solver in BASELINES for n in s["baseline"]]
                + [("quality", "reversible-dpm1", c, n) for c in COUPLINGS for n in s["quality"]]
                + [("drift", pair, c, n) for pair in PAIRS for c in (1.0, 0.999, 0.9) for n in s["drift"]]
                + [("gradient", pair, c, n) for pair in PAIRS for c in (1.0, 0.999) for n in s["gradient"]]
                + [("cost", name, None, n) for name in STRATEGIES for n in s["gradient"]])

    def run(self, kind: str, which, coupling, steps: int) -> dict:
        return getattr(self, kind)(which, coupling, steps)

    def quality(self, solver, coupling, steps):
        if self._reference is None:
            self._reference = self.draw(self.fine["solver"], self.fine["steps"])
        nfe = steps * (2 if solver == "reversible-dpm1" else 1)
        return {"nfe": nfe, "rmse": median_rmse(self.draw(solver, steps, coupling).double(), self._reference.double())}

    @torch.no_grad()
    def drift(self, pair, coupling, steps):
        """Forward with every pair kept, then every step undone from the last pair alone."""
        space, dtype = ReparamSpace(SCHEDULE), self.x_T.dtype
        times = SCHEDULE.grid(steps, t_end=T_END)
        info = SolveInfo(solver="reversible-dpm1", space=space.name, steps=steps, times=times)
        field = space.field(ProbabilityFlow(self.model, SCHEDULE, None, info, dtype))
        f = lambda z, s: (field(z[0], s),)  # noqa: E731
        grid = space.grid(times)
        method = ReversibleDPM1(coupling)
        with pair_precision(pair):
            y = method.wide(self.x_T / space.scale(1.0))
            states = [(y, y)]
            for i in range(steps):
                states.append(method.forward(f, *states[-1], grid[i], grid[i + 1]))
            y, z = states[-1]
            worst = 0.0
            for i in reversed(range(steps)):
                y, z = method.inverse(f, y, z, grid[i], grid[i + 1])
                worst = max(worst, float((y - states[i][0]).norm() / states[i][0].norm()))
        return {"max_rel_state": worst, "rel_x_T": float((y - states[0][0]).norm() / states[0][0].norm())}

    def gradients(self, strategy, steps, coupling=None, batch=None):
        """``(dL/dx_T, dL/dtheta flattened, seconds, saved bytes)`` through the reversible sampler."""
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(True).grad = None
        x = self.x_T[: batch or self.sizes["gradient_batch"]].clone().requires_grad_()
        weights = {p.data_ptr() for p in params}
        start = time.perf_counter()
        out, kept = saved_bytes_during(lambda: sample(self.model, x, SCHEDULE, steps=steps, solver="reversible-dpm1",
                                                      coupling=coupling, t_end=T_END, gradient=strategy),
                                       exclude=weights)
        self.loss(out).backward()
        synchronize(x.device)
        seconds = time.perf_counter() - start
        theta = torch.cat([p.grad.flatten() for p in params])
        self.model.requires_grad_(False)
        return x.grad, theta, seconds, kept

    def gradient(self, pair, coupling, steps):
        exact_x, exact_theta, _, _ = self.gradients(Checkpoint(), steps, coupling)
        with pair_precision(pair):
            g_x, g_theta, _, _ = self.gradients(ReversibleAdjoint(), steps, coupling)
        return {"rel_x_T": accuracy.compare(g_x, exact_x)[0], "rel_theta": accuracy.compare(g_theta, exact_theta)[0]}

    def cost(self, name, coupling, steps):
        strategy = make_gradient(STRATEGIES[name])
        self.gradients(strategy, steps)  # warm-up
        runs = [self.gradients(strategy, steps) for _ in range(3)]
        return {"seconds": sorted(r[2] for r in runs)[1], "saved_bytes": runs[0][3]}


def measure(study: Study, work: Path, key: dict, progress: bool = True) -> list[dict]:
    """Every case's row, resuming from ``work``."""
    from tqdm import tqdm
    work = files.claim(work, key, "reversible work folder")
    with files.exclusive(work):
        log = work / "cases.jsonl"
        done = files.read_cases(log, lambda r: (r["kind"], r["which"], r["coupling"], r["steps"]))
        rows = []
        for case in tqdm(study.cases(), desc="reversible sampler", disable=not progress):
            if case not in done:
                row = dict(zip(("kind", "which", "coupling", "steps"), case), **study.run(*case))
                files.append_cases(log, [row])
                done[case] = row
            rows.append(done[case])
    return rows


def _sampler(which: str, coupling) -> str:
    return BASELINES.get(which) or f"reversible, l = {coupling:g}"


def findings(rows: list[dict]) -> list[str]:
    """Sentences written from the rows."""
    out = []
    q = {(r["which"], r["coupling"], r["nfe"]): r["rmse"] for r in rows if r["kind"] == "quality"}
    for c in COUPLINGS:
        mine = {nfe: v for (w, cc, nfe), v in q.items() if w == "reversible-dpm1" and cc == c}
        if not mine:
            continue
        parts = []
        for solver, name in BASELINES.items():
            base = {nfe: v for (w, _, nfe), v in q.items() if w == solver}
            same_nfe = [(n, mine[n] < base[n]) for n in mine if n in base]
            same_steps = [mine[n] < base[n // 2] for n in mine if n // 2 in base]
            won = [n for n, better in same_nfe if better]
            parts.append(f"than {name} at {len(won)} of {len(same_nfe)} equal NFE budgets"
                         + (f" (NFE {', '.join(map(str, sorted(won)))})" if won and len(won) < len(same_nfe) else "")
                         + f" and at {sum(same_steps)} of {len(same_steps)} equal step counts")
        out.append(f"Coupling {c:g}: the reversible sampler is nearer the converged solve " + "; ".join(parts) + ".")
    drift = [r for r in rows if r["kind"] == "drift"]
    for pair in PAIRS:
        rs = [r for r in drift if r["which"] == pair]
        if rs:
            out.append(f"A {pair} pair returns to its forward states within {max(r['max_rel_state'] for r in rs):.1e} "
                       f"(relative, worst over couplings and {min(r['steps'] for r in rs)}-{max(r['steps'] for r in rs)} "
                       "steps).")
    grads = [r for r in rows if r["kind"] == "gradient"]
    for pair in PAIRS:
        rs = [r for r in grads if r["which"] == pair]
        if rs:
            out.append(f"ReversibleAdjoint with a {pair} pair: within {max(r['rel_x_T'] for r in rs):.1e} of the "
                       f"sampler's exact dL/dx_T and {max(r['rel_theta'] for r in rs):.1e} of its dL/dtheta.")
    cost = {(r["which"], r["steps"]): r for r in rows if r["kind"] == "cost"}
    steps = sorted({n for _, n in cost})
    if steps and all((name, n) in cost for name in STRATEGIES for n in (steps[0], steps[-1])):
        grow = lambda name: cost[name, steps[-1]]["saved_bytes"] / max(cost[name, steps[0]]["saved_bytes"], 1)  # noqa
        out.append(f"From {steps[0]} to {steps[-1]} steps the bytes kept for backward grow {grow('Backprop'):.1f}x "
                   f"(Backprop), {grow('Checkpoint'):.1f}x (Checkpoint) and {grow('ReversibleAdjoint'):.1f}x "
                   f"(ReversibleAdjoint); at {steps[-1]} steps ReversibleAdjoint takes "
                   f"{cost['ReversibleAdjoint', steps[-1]]['seconds'] / cost['Checkpoint', steps[-1]]['seconds']:.2f}x "
                   "Checkpoint's time.")
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    parts = [f"# The reversible sampler on the learned digits DDPM++\n\n{meta['about']} Command: "
             f"`{meta['command']}` ({meta['device']}, {meta['threads']} threads).\n\n## Findings\n\n"
             + "\n".join(f"- {s}" for s in findings(rows)) + "\n"]
    q = [r for r in rows if r["kind"] == "quality"]
    nfes = sorted({r["nfe"] for r in q})
    index = {(r["which"], r["coupling"], r["nfe"]): r for r in q}
    samplers = list(dict.fromkeys((r["which"], r["coupling"]) for r in q))
    table = [[_sampler(*k)] + [f"{index[(*k, n)]['rmse']:.4f}" if (*k, n) in index else "-" for n in nfes]
             for k in samplers]
    parts.append(f"## Quality: median per-image RMSE against {meta['fine']['steps']} `{meta['fine']['solver']}` "
                 f"steps, by NFE ({meta['batch']} images; the reversible sampler makes NFE / 2 steps)\n\n"
                 + markdown_table(["sampler"] + [f"NFE {n}" for n in nfes], table) + "\n")
    for kind, title, cols in (
            ("drift", "Reconstruction: the largest relative distance of an undone state from the forward's "
                      "(every step undone from the last pair)", (("max_rel_state", "states"),)),
            ("gradient", "Gradient: ReversibleAdjoint against the same sampler's exact gradient (Checkpoint), "
                         "relative error", (("rel_x_T", "dL/dx_T"), ("rel_theta", "dL/dtheta")))):
        rs = [r for r in rows if r["kind"] == kind]
        steps = sorted({r["steps"] for r in rs})
        idx = {(r["which"], r["coupling"], r["steps"]): r for r in rs}
        table = [[f"{pair} pair", f"{c:g}", what] + [f"{idx[pair, c, n][col]:.1e}" if (pair, c, n) in idx else "-"
                                                      for n in steps]
                 for pair, c in dict.fromkeys((r["which"], r["coupling"]) for r in rs) for col, what in cols]
        parts.append(f"## {title}\n\n" + markdown_table(["pair", "coupling", "of"] + [f"{n} steps" for n in steps],
                                                        table) + "\n")
    rs = [r for r in rows if r["kind"] == "cost"]
    steps = sorted({r["steps"] for r in rs})
    idx = {(r["which"], r["steps"]): r for r in rs}
    table = [[name] + [f"{idx[name, n]['saved_bytes'] / 2**10:,.0f} KiB, {idx[name, n]['seconds']:.2f} s"
                       if (name, n) in idx else "-" for n in steps] for name in STRATEGIES]
    parts.append(f"## Cost through `reversible-dpm1` (coupling {ReversibleDPM1.DEFAULT_COUPLING:g}, "
                 f"{meta['gradient_batch']} images): bytes autograd keeps (weights excluded), median seconds of a "
                 "forward and backward (3 repeats)\n\n"
                 + markdown_table(["strategy"] + [f"{n} steps" for n in steps], table) + "\n")
    return "\n".join(parts)


def figure(rows: list[dict], path: Path) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(12, 4), layout="constrained")
    ax = fig.subplots(1, 3)
    q = [r for r in rows if r["kind"] == "quality"]
    for which, c in dict.fromkeys((r["which"], r["coupling"]) for r in q):
        pts = sorted((r["nfe"], r["rmse"]) for r in q if r["which"] == which and r["coupling"] == c)
        ax[0].loglog(*zip(*pts), marker="o", label=_sampler(which, c),
                     color={"dpm1": "k", "dpm2m": "0.5"}.get(which) or COLORS[c],
                     linestyle="--" if which in BASELINES else "-")
    ax[0].set(xlabel="NFE", ylabel="median RMSE to the converged solve", title="Quality at equal NFE")
    ax[0].legend(fontsize=8)
    for j, (kind, col, title) in enumerate((("drift", "max_rel_state", "Reconstruction drift"),
                                            ("gradient", "rel_x_T", "ReversibleAdjoint vs exact dL/dx_T")), 1):
        rs = [r for r in rows if r["kind"] == kind]
        for pair, c in dict.fromkeys((r["which"], r["coupling"]) for r in rs):
            pts = sorted((r["steps"], max(r[col], 1e-17)) for r in rs if r["which"] == pair and r["coupling"] == c)
            ax[j].loglog(*zip(*pts), marker="o", linestyle="-" if pair == "float64" else "--", color=COLORS[c],
                         label=f"{pair} pair, l = {c:g}")
        ax[j].set(xlabel="steps", ylabel="relative error", title=title)
        ax[j].legend(fontsize=7)
    files.save_figure(fig, path, dpi=110)


# How each argument reaches the stored work (the work folder's key), or why it cannot change it;
# tests/test_keys.py fails for an argument in neither table.
KEYED = {"batch": "the key's x_T fingerprint", "quick": "the key's sizes and fine solve"}
UNKEYED = {"out": "where the work goes: the key lives in it", "device": "round-off only: work resumed on another device continues to round-off"}


def main(argv=None):
    parser = cli.Parser(prog="python -m cifar.reversible", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=Path("results/cifar"), help="output folder "
                        "(default results/cifar)")
    parser.add_argument("--batch", type=cli.count("batch"), default=8, help="noises for the quality and drift "
                        "measurements (default 8; the gradients take the first 4; " + cli.bound_help("batch") + ")")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for tests")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    args = parser.parse_args(argv)
    prog = parser.prog
    sizes, fine = (QUICK, QUICK_FINE) if args.quick else (SIZES, FINE)
    with cli.one_line_errors(parser, resumes=True):
        study = Study(args.device, args.batch, sizes, fine)
        args.out.mkdir(parents=True, exist_ok=True)
        work = args.out / "reversible.work"
        key = {"model": files.fingerprint(study.model), "x_T": files.fingerprint(study.x_T), "sizes": sizes,
               "fine": fine, "t_end": T_END, "device": str(args.device)}
        try:
            rows = measure(study, work, key)
        except KeyboardInterrupt:
            parser.exit(130, f"{prog}: interrupted; the finished cases are kept in {work}, and the same command "
                             "resumes from them\n")
    meta = {"about": "score_sde's DDPM++ (`digits_ddpmpp`) trained on the real handwritten digits "
                     f"(`cifar/weights/digits_ddpmpp`), continuous VP (linear betas 0.1 to 20), {args.batch} noises "
                     f"(seed 0), logSNR grid from t = 1 to {T_END:g}.",
            "batch": args.batch, "gradient_batch": sizes["gradient_batch"], "fine": fine, "device": str(args.device),
            "threads": torch.get_num_threads(), "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)])}
    text = markdown(rows, meta)
    files.write_text(args.out / "reversible.md", text)
    files.write_json(args.out / "reversible.json", {"meta": meta, "rows": rows}, significant=4)
    figure(rows, args.out / "reversible.png")
    print(text)
    print(f"wrote reversible.md, .json, .png to {args.out}/")
    return rows


if __name__ == "__main__":
    main()
