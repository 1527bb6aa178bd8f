"""How far each gradient strategy is from the gradient that was asked for, on a learned model.

For each sampler (``dpm1`` = DDIM, ``dpm2m``; a number of steps), strategy and number of adjoint
steps (a multiple of the sampler's), and each loss on the generated images: the relative error
``|g - g_ref| / |g_ref|`` and the cosine of ``g = dL/dx_T`` against two references,

* the sampler's **exact** gradient (:class:`~adjointdpm.Checkpoint` at the same steps): what the
  sampled images actually depend on;
* a **converged** solve's gradient (Checkpoint through ``FINE``): the probability-flow ODE's own,
  which an adjoint approaches as its path and its own steps refine;

with the seconds of the forward and one backward, and the backward's model VJPs. A scale's command
(``python -m cifar.adjoint_accuracy``, ``python -m stable_diffusion.digits.accuracy``) gives the model,
the noises and the losses as a :class:`Setup`; :func:`command` does the rest and writes
``adjoint_accuracy.md/json/png``. Every case is appended to ``OUT/adjoint_accuracy.work/cases.jsonl`` as
it finishes (the folder keyed by the setup), so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..grad import Checkpoint, Gradient
from ..gradients import deis_name, make_gradient
from ..sampling import sample
from . import cli, files
from .memory import synchronize
from .report import markdown_table, write_result

# each row's label -> its strategy's name in GRADIENTS (built at a number of adjoint steps). "stored": the
# forward's states at its grid points.
STRATEGIES: dict[str, str] = {
    "Checkpoint": "checkpoint",
    "Adjoint RK4": "adjoint",
    "Adjoint RK4, stored": "adjoint-stored",
    **{f"AdjointDEIS-{order} {form}{stored}": deis_name(order, form, states)
       for form in ("data", "noise") for order in (1, 2) for stored, states in (("", "reintegrate"), (", stored", "reuse"))},
}
FLAT = [name for name in STRATEGIES if name != "Checkpoint" and not name.endswith("stored")]  # memory flat in steps
FINE = dict(solver="dpm3", steps=200)  # the converged solve (DPM-Solver-3: third order)
SOLVERS, STEPS, MULTIPLES = ("dpm1", "dpm2m"), (10, 20, 50), (1, 2, 4)
QUICK = dict(solvers=("dpm1",), steps=(2, 4), multiples=(1, 2))
QUICK_FINE = dict(solver="dpm3", steps=20)


@dataclass
class Setup:
    """One model and its problem: ``model(x, t, cond)``, the noises ``x_T``, the losses on the sampled
    ``x_0`` (name -> function, and name -> what it is), where sampling ends, and what keys the results
    (every other setting that changes a number, e.g. the model's fingerprint)."""
    title: str
    model: Callable
    x_T: torch.Tensor
    schedule: object
    losses: dict[str, Callable[[torch.Tensor], torch.Tensor]]
    loss_about: dict[str, str]
    key: dict
    cond: torch.Tensor | None = None
    t_end: float = 1e-3
    about: str = ""
    sampling: dict = field(default_factory=dict)  # other sample() arguments (e.g. a spacing)

    def gradients(self, strategy: Gradient, solver: str, steps: int):
        """``dL/dx_T`` for every loss through one forward; with the seconds of the forward and the first
        loss's backward, and that backward's VJPs through the model."""
        x = self.x_T.clone().requires_grad_()
        synchronize(x.device)
        start = time.perf_counter()
        x0, info = sample(self.model, x, self.schedule, self.cond, steps=steps, solver=solver, t_end=self.t_end,
                          gradient=strategy, return_info=True, **self.sampling)
        grads, seconds, nfe = {}, None, None
        for i, (name, loss) in enumerate(self.losses.items()):
            grads[name], = torch.autograd.grad(loss(x0), x, retain_graph=i < len(self.losses) - 1)
            if seconds is None:
                synchronize(x.device)
                seconds, nfe = time.perf_counter() - start, info.nfe_backward
        return grads, seconds, nfe


def compare(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(relative error, cosine) of ``g`` against ``ref``, over the whole batch."""
    g, ref = g.double().flatten(), ref.double().flatten()
    return float((g - ref).norm() / ref.norm()), float(g @ ref / (g.norm() * ref.norm()))


def cases(solvers=SOLVERS, steps=STEPS, multiples=MULTIPLES, strategies=tuple(STRATEGIES)):
    """(solver, steps, strategy, adjoint steps): Checkpoint once per sampler, every other at each multiple."""
    return [(solver, n, name, n * m) for solver in solvers for n in steps for name in strategies
            for m in ((1,) if name == "Checkpoint" else multiples)]


def measure(setup: Setup, work: Path, todo: list, fine: dict = FINE, progress: bool = True) -> list[dict]:
    """The rows of every case of ``todo`` (see :func:`cases`), resuming from ``work``."""
    from tqdm import tqdm
    work = files.claim(work, dict(setup.key, x_T=files.fingerprint(setup.x_T), losses=setup.loss_about, fine=fine,
                                  t_end=setup.t_end, sampling=setup.sampling), "accuracy work folder")
    with files.exclusive(work):
        log = work / "cases.jsonl"
        done = files.read_cases(log, lambda r: (r["solver"], r["steps"], r["strategy"], r["adjoint_steps"], r["loss"]))
        converged = files.cached(work / "converged.pt", "converged gradients",
                                 lambda: setup.gradients(Checkpoint(), fine["solver"], fine["steps"])[0])
        exact, rows = {}, []
        for solver, n, name, m in tqdm(todo, desc=setup.title, disable=not progress):
            keys = [(solver, n, name, m, loss) for loss in setup.losses]
            if all(k in done for k in keys):
                rows += [done[k] for k in keys]
                continue
            if (solver, n) not in exact:
                exact[solver, n] = files.cached(work / f"exact-{solver}-{n}.pt", "exact gradients",
                                                lambda: setup.gradients(Checkpoint(), solver, n)[0])
            grads, seconds, nfe = setup.gradients(make_gradient(STRATEGIES[name], m), solver, n)
            new = []
            for loss, g in grads.items():
                (rel_e, cos_e), (rel_c, cos_c) = compare(g, exact[solver, n][loss]), compare(g, converged[loss])
                new.append(dict(solver=solver, steps=n, strategy=name, adjoint_steps=m, loss=loss,
                                rel_exact=rel_e, cos_exact=cos_e, rel_converged=rel_c, cos_converged=cos_c,
                                seconds=seconds, nfe_backward=nfe))
            files.append_cases(log, new)
            rows += new
    return rows


# -- reading the rows --------------------------------------------------------------------------------
def _rel(v) -> str:
    return "blow-up" if v > 1e3 else f"{v:.2g}"


def findings(rows: list[dict]) -> list[str]:
    """Sentences written from the numbers: for each sampler, at its own steps, the strategy nearest its
    exact gradient among the memory-flat ones and among those on stored states (the worst loss decides),
    the strategies more than 100 % off on some loss, and what more adjoint steps do."""
    out = []
    losses = sorted({r["loss"] for r in rows})
    index = {(r["solver"], r["steps"], r["strategy"], r["adjoint_steps"], r["loss"]): r for r in rows}
    names = lambda group: ", ".join(f"`{n}`" for n in group)  # noqa: E731
    for solver, n in sorted({(r["solver"], r["steps"]) for r in rows}):
        own = {name: [index[solver, n, name, n, loss] for loss in losses] for name in STRATEGIES
               if name != "Checkpoint" and all((solver, n, name, n, loss) in index for loss in losses)}
        if not own:
            continue
        sentence = f"Behind {n} `{solver}` steps, with as many adjoint steps:"
        for label, group in (("memory-flat strategy", [k for k in own if k in FLAT]),
                             ("strategy on stored states", [k for k in own if k not in FLAT])):
            if group:
                best = max(group, key=lambda k: min(r["cos_exact"] for r in own[k]))
                sentence += (f" the nearest {label} is `{best}` (cosine at least "
                             f"{min(r['cos_exact'] for r in own[best]):.3f} to the sampler's exact gradient, relative "
                             f"error at most {max(r['rel_exact'] for r in own[best]):.2g});")
        blown = [k for k in own if max(r["rel_exact"] for r in own[k]) > 1]
        out.append(sentence.rstrip(";") + "." + (f" More than 100 % off on some loss: {names(blown)}." if blown else ""))
        sampler = [index[solver, n, "Checkpoint", n, loss] for loss in losses if (solver, n, "Checkpoint", n, loss) in index]
        if sampler:
            nearest = max(own, key=lambda k: min(r["cos_converged"] for r in own[k]))
            out.append(f"Against the converged gradient, behind {n} `{solver}` steps: the sampler's own exact gradient "
                       f"has cosine {min(r['cos_converged'] for r in sampler):.3f} (worst loss); the nearest adjoint "
                       f"at the sampler's steps, `{nearest}`, {min(r['cos_converged'] for r in own[nearest]):.3f}.")
    for name in ("AdjointDEIS-1 data", "AdjointDEIS-2 data"):
        pairs = [(r, index[k[:3] + (k[1], k[4])]) for k, r in index.items()
                 if k[2] == name and k[3] != k[1] and k[:3] + (k[1], k[4]) in index]
        if pairs:
            closer = sum(r["rel_converged"] < same["rel_converged"] for r, same in pairs)
            away = sum(r["rel_exact"] > same["rel_exact"] for r, same in pairs)
            out.append(f"`{name}` with 2 or 4 times the sampler's steps, against the same at the sampler's: nearer "
                       f"the converged gradient in {closer} of {len(pairs)} cells, further from the sampler's exact "
                       f"one in {away} of {len(pairs)}.")
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    """``adjoint_accuracy.md`` from the rows and ``meta`` alone."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    samplers = list(dict.fromkeys((r["solver"], r["steps"]) for r in rows))
    index = {(r["solver"], r["steps"], r["strategy"], r["adjoint_steps"], r["loss"]): r for r in rows}
    parts = [f"# Gradient strategies on {meta['title']}\n\n{meta['about']}\n\n"
             f"`dL/dx_T` of {meta['batch']} fixed noises, sampled on a logSNR grid to t = {meta['t_end']:g}, against "
             f"two references: the sampler's exact gradient (Checkpoint at the same steps) and a converged solve's "
             f"({meta['fine']['steps']} `{meta['fine']['solver']}` steps). Each cell: cosine (relative error). \"stored\": the states "
             "the sampler stored at its grid points (one per step); the others re-solve the path backwards (memory "
             f"flat in steps). Losses: {', '.join(f'`{k}` ({v})' for k, v in meta['losses'].items())}. "
             f"Command: `{meta['command']}`.\n\n## Findings\n\n"
             + "\n".join(f"- {s}" for s in findings(rows)) + "\n"]
    for reference, key in (("the sampler's exact gradient", "exact"), ("the converged gradient", "converged")):
        for loss in losses:
            header = ["strategy", "adjoint steps / sampler's"] + [f"{s} x{n}" for s, n in samplers]
            table = []
            names = list(dict.fromkeys(r["strategy"] for r in rows))
            multiples = sorted({r["adjoint_steps"] // r["steps"] for r in rows})
            for name in names:
                for m in multiples:
                    cells = [index.get((s, n, name, n * m, loss)) for s, n in samplers]
                    if any(c is not None for c in cells):
                        table.append([name, m] + ["-" if c is None else
                                                  f"{c[f'cos_{key}']:.3f} ({_rel(c[f'rel_{key}'])})" for c in cells])
            parts.append(f"## Against {reference}: loss `{loss}`\n\n" + markdown_table(header, table) + "\n")
    header = ["strategy", "adjoint steps / sampler's"] + [f"{s} x{n}" for s, n in samplers]
    cost = []
    first = losses[0]
    for name in dict.fromkeys(r["strategy"] for r in rows):
        for m in sorted({r["adjoint_steps"] // r["steps"] for r in rows}):
            cells = [index.get((s, n, name, n * m, first)) for s, n in samplers]
            if any(c is not None for c in cells):
                cost.append([name, m] + ["-" if c is None else f"{c['seconds']:.2f} s, {c['nfe_backward']}"
                                         for c in cells])
    parts.append(f"## Cost: seconds of the forward and one backward, and the backward's VJPs through the model "
                 f"({meta['device']}, {meta['threads']} threads)\n\n" + markdown_table(header, cost) + "\n")
    return "\n".join(parts)


def figure(rows: list[dict], meta: dict, path: Path) -> None:
    """1 - cosine against adjoint steps, per sampler (rows) and reference (columns), for the memory-flat
    strategies on the first loss: one line per sampler step count."""
    from matplotlib.figure import Figure
    loss = rows[0]["loss"]
    solvers = list(dict.fromkeys(r["solver"] for r in rows))
    fig = Figure(figsize=(11, 3.6 * len(solvers)), layout="constrained")
    axes = fig.subplots(len(solvers), 2, squeeze=False)
    colors = dict(zip(FLAT, ("tab:gray", "tab:blue", "tab:cyan", "tab:red", "tab:orange")))
    for i, solver in enumerate(solvers):
        for j, key in enumerate(("exact", "converged")):
            ax = axes[i][j]
            for name in FLAT:
                for k, n in enumerate(sorted({r["steps"] for r in rows if r["solver"] == solver})):
                    pts = sorted((r["adjoint_steps"], max(1 - r[f"cos_{key}"], 1e-7)) for r in rows
                                 if r["solver"] == solver and r["steps"] == n and r["strategy"] == name
                                 and r["loss"] == loss)
                    if pts:
                        ax.loglog(*zip(*pts), marker="o", color=colors[name], label=name if k == 0 else None,
                                  linestyle="-" if "data" in name or "RK4" in name else "--")
            ax.set(xlabel="adjoint steps (a line per sampler step count)", ylabel="1 - cosine",
                   title=f"{solver}: against the {'sampler' if key == 'exact' else 'converged solve'}'s gradient")
            ax.axhline(1, color="k", linewidth=0.5)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{meta['title']}: loss `{loss}` (1 - cosine = 1: uncorrelated)")
    files.save_figure(fig, path, dpi=110)


def write(rows: list[dict], meta: dict, out: Path) -> str:
    """``adjoint_accuracy.md/json/png`` in ``out``; returns the Markdown."""
    return write_result(out, "adjoint_accuracy", {"meta": meta, "rows": rows}, markdown(rows, meta),
                        lambda path: figure(rows, meta, path), significant=4)


# How each argument of :func:`command` reaches the stored work (the work folder's key), or why it cannot
# change it; tests/test_keys.py fails for an argument in neither table.
KEYED = {"batch": "the key's x_T fingerprint", "quick": "the key's fine solve; each case is a row of its own"}
UNKEYED = {"out": "where the work goes: the key lives in it", "device": "round-off only: work resumed on another device continues to round-off"}


def command(prog: str, description: str, build: Callable[..., Setup], default_out: Path, argv=None):
    """The command line every scale shares: ``build(device, batch, quick)`` makes the :class:`Setup`."""
    parser = cli.Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--batch", type=cli.count("batch"), default=4, help="noises (default 4; " + cli.bound_help("batch") + ")")
    parser.add_argument("--quick", action="store_true",
                        help=f"small sizes for tests: {', '.join(QUICK['solvers'])} at steps {QUICK['steps']}, "
                             f"multiples {QUICK['multiples']}, the converged solve {QUICK_FINE['steps']} "
                             f"{QUICK_FINE['solver']} steps")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    args = parser.parse_args(argv)
    with cli.one_line_errors(parser, resumes=True):
        setup = build(args.device, args.batch, args.quick)
        todo = cases(**QUICK) if args.quick else cases()
        args.out.mkdir(parents=True, exist_ok=True)
        fine = QUICK_FINE if args.quick else FINE
        work = args.out / "adjoint_accuracy.work"
        try:
            rows = measure(setup, work, todo, fine)
        except KeyboardInterrupt:
            parser.exit(130, f"{prog}: interrupted; the finished cases are kept in {work}, and the same command "
                             "resumes from them\n")
    meta = {"title": setup.title, "about": setup.about, "batch": args.batch, "t_end": setup.t_end, "fine": fine,
            "losses": setup.loss_about, "device": str(args.device), "threads": torch.get_num_threads(),
            "command": " ".join([prog, *(sys.argv[1:] if argv is None else argv)])}
    print(write(rows, meta, args.out))
    print(f"wrote adjoint_accuracy.md, .json, .png to {args.out}/")
    return rows
