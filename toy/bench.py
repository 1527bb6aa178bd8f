"""Benchmark the gradient strategies on the toy MLP epsilon-network.

    python -m toy.bench [--out results/toy] [--quick] [--device cpu|cuda]

For each strategy and steps: relative gradient error against a fine-step reference and
against the exact gradient of the same sampler (Checkpoint at the same steps), wall time per
gradient (median of repeats), peak memory above the set-up level (each case in a fresh process:
the resident high-water mark VmHWM on Linux CPU, ``torch.cuda.max_memory_allocated`` on CUDA) and NFE forward/backward. Writes ``bench.json``, ``bench.md`` (ratios against
Backprop) and ``bench.png`` (memory vs steps, error vs time).

The "SDE" rows sample the diffusion SDE (``sde-dpm1``, one fixed ``noise_seed``) and compare its
adjoint on stored states with the one that re-solves the SDE backwards. They have no fine-step
reference: another grid draws another Brownian path, so only the distance from the same
sampler's exact gradient is defined. The "Reversible" rows put the three kinds of gradient side
by side on one sampler (``reversible-dpm1``): exact and growing (Backprop), exact with one state
per step (Checkpoint), exact and flat (ReversibleAdjoint).
"""
from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from adjointdpm import Checkpoint, VPSchedule, make_gradient, sample
from adjointdpm.tools import cli, files
from adjointdpm.tools.memory import (case_process, load_note, machine_load, peak as peak_bytes, reset_peak,
                                     run_in_fresh_process, synchronize)
from adjointdpm.tools.report import markdown_table, write_result
from toy.mixture import eight_modes
from toy.mlp import EpsMLP, train_eps_mlp
from toy.reproduce import STRATEGIES

SOLVER = "rk4"
HIDDEN, DEPTH = 256, 3
SDE = dict(solver="sde-dpm1", noise_seed=0)
SDE_STRATEGIES = {  # label -> name in adjointdpm.GRADIENTS; the adjoints solve with RK4 at the forward's steps
    "SDE Backprop": "backprop",
    "SDE Checkpoint": "checkpoint",
    "SDE Adjoint (stored states)": "adjoint-stored",
    "SDE Adjoint (re-solved)": "adjoint",
    "SDE AdjointDEIS-1 (data)": "adjointdeis",
    "SDE AdjointDEIS-1 (noise)": "adjointdeis-noise",
}
REVERSIBLE = dict(solver="reversible-dpm1")
REVERSIBLE_STRATEGIES = {  # the three kinds of gradient through one sampler: exact and growing, exact and flat
    "Reversible Backprop": "backprop",
    "Reversible Checkpoint": "checkpoint",
    "ReversibleAdjoint": "reversible",
}
# each family: its strategies, the sampler they differentiate, and its baseline row (ratios are against it)
FAMILIES = {"ODE": (STRATEGIES, {"solver": SOLVER}, "Backprop"), "SDE": (SDE_STRATEGIES, SDE, "SDE Backprop"),
            "Reversible": (REVERSIBLE_STRATEGIES, REVERSIBLE, "Reversible Backprop")}


def family(name: str) -> str:
    return next(f for f, (strategies, _, _) in FAMILIES.items() if name in strategies)


def case(name: str):
    """What builds the strategy of ``name``, and the sampler it differentiates (``sample``'s keyword arguments)."""
    strategies, sampler, _ = FAMILIES[family(name)]
    return functools.partial(make_gradient, strategies[name]), sampler


def _problem(setup: Path, device: str):
    model = EpsMLP(hidden=HIDDEN, depth=DEPTH).to(device)
    model.load_state_dict(torch.load(setup / "model.pt", weights_only=True))
    x_T = torch.load(setup / "x_T.pt", weights_only=True).to(device)
    return model, x_T


def gradient(model, x_T, strategy, steps, sampler=None):
    """One gradient of ``mean |x0|^2`` w.r.t. ``x_T`` and the weights; returns (grads, info)."""
    model.zero_grad()
    x = x_T.clone().requires_grad_()
    x0, info = sample(model, x, VPSchedule.linear(), steps=steps, gradient=strategy, return_info=True,
                      **(sampler or {"solver": SOLVER}))
    (x0 ** 2).sum(1).mean().backward()
    return (x.grad.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])), info


def worker(setup: Path, name: str, steps: int, repeats: int, device: str) -> dict:
    """One case, in its own process so the memory high-water mark is its own."""
    model, x_T = _problem(setup, device)
    make, sampler = case(name)
    base = reset_peak(device)
    (g_x, g_theta), info = gradient(model, x_T, make(), steps, sampler)
    peak = peak_bytes(device) - base
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        gradient(model, x_T, make(), steps, sampler)
        synchronize(device)
        times.append(time.perf_counter() - start)
    ref_x, ref_theta = torch.load(setup / "reference.pt", weights_only=True)
    (ck_x, ck_theta), _ = gradient(model, x_T, Checkpoint(), steps, sampler)  # the exact gradient of this sampler
    rel = lambda a, b: float((a.cpu() - b.cpu()).norm() / b.norm())
    ode = family(name) != "SDE"  # an SDE has no fine-step reference on its Brownian path
    return {"strategy": name, "steps": steps, "err_x_T": rel(g_x, ref_x) if ode else None,
            "err_theta": rel(g_theta, ref_theta) if ode else None,
            "vs_checkpoint_x_T": rel(g_x, ck_x), "vs_checkpoint_theta": rel(g_theta, ck_theta),
            "seconds": statistics.median(times), "peak_bytes": peak, "nfe_forward": info.nfe_forward,
            "nfe_backward": info.nfe_backward, "device": device}


def prepare(setup: Path, batch: int, train_iters: int, ref_steps: int, device: str):
    """Train the MLP, draw x_T and compute the reference gradient (Checkpoint, fine steps)."""
    schedule = VPSchedule.linear()
    mix = eight_modes(schedule)
    model = train_eps_mlp(lambda n, c, g: mix.sample_data(n, generator=g), schedule, iters=train_iters,
                          hidden=HIDDEN, depth=DEPTH, progress=False)
    files.save_atomic(model.state_dict(), setup / "model.pt")
    files.save_atomic(torch.randn(batch, 2, generator=torch.Generator().manual_seed(0)), setup / "x_T.pt")
    model, x_T = _problem(setup, device)
    (g_x, g_theta), _ = gradient(model, x_T, Checkpoint(), ref_steps)
    files.save_atomic((g_x.cpu(), g_theta.cpu()), setup / "reference.pt")  # last: the set-up is whole


def _unit(meta: dict) -> str:
    return "CUDA max allocated" if meta["device"] == "cuda" else "resident memory above set-up"


def markdown(rows, meta: dict) -> str:
    """``bench.md`` from the records (``bench.json``'s ``rows`` and ``meta``)."""
    baselines = {b for _, _, b in FAMILIES.values()}
    base = {(family(r["strategy"]), r["steps"]): r for r in rows if r["strategy"] in baselines}
    err = lambda v: "-" if v is None else f"{v:.2e}"
    header = ["strategy", "steps", "rel. err dL/dx_T", "rel. err dL/dtheta", "off Checkpoint dL/dx_T",
              "off Checkpoint dL/dtheta", "ms (median)", "time / Backprop", f"peak MiB ({_unit(meta)})",
              "memory / Backprop", "NFE fwd", "NFE bwd"]
    table = []
    for r in rows:
        b = base[(family(r["strategy"]), r["steps"])]
        table.append([r["strategy"], r["steps"], err(r["err_x_T"]), err(r["err_theta"]),
                      f"{r['vs_checkpoint_x_T']:.1e}", f"{r['vs_checkpoint_theta']:.1e}", f"{r['seconds'] * 1e3:.0f}",
                      f"{r['seconds'] / b['seconds']:.2f}",
                      f"{r['peak_bytes'] / 2**20:.1f}", f"{r['peak_bytes'] / max(b['peak_bytes'], 1):.2f}",
                      r["nfe_forward"], r["nfe_backward"]])
    return (f"# Gradient strategies on the toy MLP (forward {SOLVER}, batch {meta['batch']}, MLP {DEPTH}x{HIDDEN}, "
            f"{meta['device']}, {meta['threads']} threads)\n\nErrors against Checkpoint() with {meta['ref_steps']} "
            "steps (the sampler's own error included), and how far each strategy is off the exact gradient of the "
            "same sampler (Checkpoint() at the same steps: the backward solver's own error). "
            f"Time: median of {meta['repeats']} repeats. Memory: each case in a process of its own "
            f"({meta.get('process', 'new interpreter')}). Ratios against "
            "Backprop of the same sampler. SDE rows: `sde-dpm1` with one noise_seed; no fine-step reference exists "
            "for them (another grid is another Brownian path). Reversible rows: `reversible-dpm1` (two model "
            "evaluations per step), its exact gradient by Backprop, Checkpoint and ReversibleAdjoint.\n\n"
            + (f"{busy}\n\n" if (busy := load_note([meta.get("machine_load", {})])) else "")
            + markdown_table(header, table) + "\n")


def write(rows, out: Path, meta: dict):
    """``bench.md``, ``bench.json`` and ``bench.png``; returns the Markdown."""
    return write_result(out, "bench", {"meta": meta, "rows": rows}, markdown(rows, meta),
                        lambda path: figure(rows, meta, path))


def figure(rows, meta: dict, path: Path) -> None:
    """Peak memory against steps, and the gradient's error against its time, per strategy."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter
    unit = _unit(meta)
    fig = Figure(figsize=(12, 4.5), layout="tight")
    axes = fig.subplots(1, 2)
    for name in [n for strategies, _, _ in FAMILIES.values() for n in strategies]:
        rs = [r for r in rows if r["strategy"] == name]
        if rs:
            style = dict(marker="o", label=name, linestyle={"ODE": "-", "SDE": "--", "Reversible": ":"}[family(name)])
            axes[0].plot([r["steps"] for r in rs], [r["peak_bytes"] / 2**20 for r in rs], **style)
            if family(name) != "SDE":
                axes[1].loglog([r["seconds"] for r in rs], [r["err_x_T"] for r in rs], **style)
    axes[0].set(xlabel="steps", ylabel=f"peak MiB ({unit})",
                title="Memory vs steps (dashed: SDE sampler; dotted: reversible)")
    axes[1].set(xlabel="seconds per gradient", ylabel="relative error of dL/dx_T", title="Error vs time (ODE)")
    axes[1].xaxis.set_minor_formatter(NullFormatter())  # log-axis minor labels overlap
    axes[0].legend(fontsize=7)
    files.save_figure(fig, path, dpi=120)


# How each argument reaches the stored work (the work folder's key and each case's file), or why it cannot
# change a measurement; tests/test_keys.py fails for an argument in neither table.
KEYED = {"quick": "the key's sizes", "device": "the key", "repeats": "the key"}
UNKEYED = {"out": "where the work goes: the key lives in it", "worker": "internal: one case in a fresh process"}


def main(argv=None):
    parser = cli.Parser(prog="python -m toy.bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=cli.folder, default=Path("results/toy"),
                        help="output folder (default results/toy)")
    parser.add_argument("--quick", action="store_true", help="small sizes, two strategies (for tests)")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    parser.add_argument("--repeats", type=cli.count("repeats"), default=None,
                        help="timed repeats per case (default 3; quick 1; " + cli.bound_help("repeats") + ")")
    parser.add_argument("--worker", nargs=3, metavar=("SETUP", "STRATEGY", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = (1 if args.quick else 3) if args.repeats is None else args.repeats
    args.device = str(args.device)
    if args.worker:
        setup, name, steps = args.worker
        print(json.dumps(worker(Path(setup), name, int(steps), repeats, args.device)))
        return
    with cli.one_line_errors(parser, resumes=True):
        run(args.out, args.quick, repeats, args.device)


def run(out: Path, quick: bool, repeats: int, device: str) -> list[dict]:
    """Every case, each in a fresh process, resumable: the set-up and each finished case are kept under
    ``out/.bench-work/KEY/`` (KEY: every setting that changes a result), which is removed once the tables
    are written. Returns the rows."""
    batch, steps_list = (256, (10, 20)) if quick else (1024, (10, 20, 50, 100))
    names = (["Backprop", "Adjoint", "SDE Backprop", "SDE Adjoint (re-solved)"] if quick
             else [n for strategies, _, _ in FAMILIES.values() for n in strategies])
    train_iters = 200 if quick else 1500
    meta = {"batch": batch, "repeats": repeats, "device": device, "threads": torch.get_num_threads(),
            "ref_steps": 100 if quick else 400, "process": case_process(device)}
    key = dict(meta, train_iters=train_iters, hidden=HIDDEN, depth=DEPTH, solver=SOLVER)
    with files.exclusive(out, ".bench.lock"):
        meta["machine_load"] = machine_load()  # before this run's own work, which would count itself
        work = files.claim(out / ".bench-work" / files.fingerprint(key), key, "bench work folder")
        if not (work / "reference.pt").exists():  # written last by prepare: the set-up is whole
            prepare(work, batch, train_iters, meta["ref_steps"], device)
        rows = []
        for name, steps in tqdm([(n, s) for n in names for s in steps_list], desc="bench"):
            done = work / f"case-{files.fingerprint([name, steps])}.json"
            if not done.exists():
                files.write_json(done, run_in_fresh_process("toy.bench", "--worker", work, name, steps,
                                                            "--device", device, "--repeats", repeats, device=device))
            rows.append(json.loads(done.read_text()))
        print(write(rows, out, meta))
        shutil.rmtree(out / ".bench-work")
    print(f"wrote bench.md, bench.json, bench.png to {out}/")
    return rows

if __name__ == "__main__":
    main()
