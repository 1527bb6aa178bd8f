"""The paper's Table 1 (FID versus NFE on score_sde's VP CIFAR-10) as one command.

Full run (GPU; the three files are local paths, nothing is downloaded):

    python -m cifar.table1 --checkpoint checkpoint_8.pth --inception weights-inception-2015-12-05-6726825d.pth \\
        --fid-stats cifar10_stats.npz [--config cifar10_ddpmpp_deep_continuous] [--nfe 10 20 50] [--samples 50000]

    several GPUs: torchrun --nproc_per_node 4 -m cifar.table1 <same arguments>

The learned model on a CPU (``--model digits``, 41 minutes on 2 idle cores for the three grids): the DDPM++ trained here on
the real handwritten digits (``cifar.train_digits``, 16x16, score_sde's checkpoint format, read by
``load_score_sde``). FID against the 539 held-out real digits, in the features of the judge network
of :mod:`handwritten.judges` (trained on other digits, never with the generative model), with two
floors beside the table: the FID of a converged solve (the model's own, so the sampler's share is
visible) and that of the real training digits, and the share of the converged samples that
independent judges recognise as digits (``handwritten.judges``). Writes ``table1_digits.md/json/png``
and ``table1_digits_samples.png`` (64 converged samples with the judges' readings).

CPU stand-in (the default when neither a checkpoint nor a model is given): an exact-epsilon
mixture of 3x32x32 images in place of DDPM++ and a small random feature network in place of
Inception (``cifar.standin``). Its sampler comparison is real, but its numbers are Frechet
distances in that feature space, not FIDs, and the output says so.

Three samplers at an exact NFE budget from t = 1 to 1e-3 (DPM-Solver's setting for score_sde's
CIFAR-10), on each of three time grids (``--grids``, default all): uniform in t (score_sde's own ODE
sampler), uniform in lambda = log(alpha/sigma) (``logSNR``, DPM-Solver's) and uniform in sqrt(t)
(``quadratic``): the paper's App. B lists the three and does not say which Table 1 used, and the
ordering of the samplers depends on it. The samplers: eq. 4 with 4th-order Adams-Bashforth (``steps = NFE - 6``:
torchdiffeq's start-up of two RK4 steps), DPM-Solver-2 (``steps = NFE / 2``; singlestep order 3
cannot meet NFE 10 or 20 exactly) and eq. 10 with Adams-Bashforth. Each cell also reports
the median over 64 images of each image's RMSE against a converged solve from the same noise
(200 DPM-Solver-3 steps; for the stand-in the exact flow map to ~1e-5): the sampler's error alone,
free of the model's. The median, because a
mixture's flow map is steep between modes: float32 round-off can send one image of 64 to
another mode, which would dominate a mean. At the smallest NFE the output also shows where each
sampler makes its error: its state after each step against the converged solve to that time. Samples
are written in shards under ``--out/samples/<mode>/<grid>``; a rerun resumes them and never recomputes a finished shard.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from adjointdpm import VPSchedule, sample, steps_for_nfe
from adjointdpm.tools import cli, files
from adjointdpm.tools.frechet import feature_statistics, frechet_distance
from adjointdpm.tools.report import markdown_table, write_result
from adjointdpm.solvers import make_method
from adjointdpm.trajectory import errors_along, median_rmse
from cifar.fid import load_statistics
from cifar.generate import generate, read_shards, shard_noise, to_uint8

PAPER = {  # AdjointDPM Table 1, FID over 50k samples
    "eq. 4 + AB4": {10: 9.50, 20: 8.27, 50: 5.64},
    "DPM-Solver": {10: 4.70, 20: 2.87, 50: 2.62},
    "eq. 10 + AB4": {10: 4.36, 20: 2.90, 50: 2.58},
}
# Eq. 10 + Adams-Bashforth is DEIS's rho-AB (Zhang & Chen, ICLR 2023): its published FIDs on score_sde's
# continuous VP CIFAR-10, from its abstract ("4.17 FID with 10 NFEs, 2.86 with only 20 NFEs").
DEIS = {"eq. 10 + AB4": {10: 4.17, 20: 2.86}}
SAMPLERS = {  # each run at an exact NFE budget: steps_for_nfe(solver, nfe)
    "eq. 4 + AB4": dict(space="original", solver="adams4"),
    "DPM-Solver": dict(space="reparam", solver="dpm2"),
    "eq. 10 + AB4": dict(space="reparam", solver="adams4"),
}
GRIDS = ("uniform", "logSNR", "quadratic")  # App. B's three time grids; the paper does not say which Table 1 used
T_END = 1e-3  # DPM-Solver's end time for score_sde's CIFAR-10
ROOT = Path(__file__).resolve().parents[1]


def shown(path) -> str:
    """A path as the results name it: relative to the repository when inside it (the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sampler(name: str, nfe: int, grid: str = "logSNR") -> dict:
    """The keyword arguments of :func:`adjointdpm.sample` for sampler ``name`` at exactly ``nfe``
    evaluations on time grid ``grid``."""
    return dict(SAMPLERS[name], steps=steps_for_nfe(SAMPLERS[name]["solver"], nfe), spacing=grid, t_end=T_END)


# The reference of each cell's RMSE, whatever the cell's grid (a converged solve does not depend on its
# grid): the flow map to ~1e-6 on the stand-in.
FINE = dict(steps=200, solver="dpm3", spacing="logSNR", t_end=T_END)
# The floor's samples: converged (its RMSE against FINE is reported beside it) at a fifth of FINE's cost.
FLOOR = dict(FINE, steps=40)


def _solver_words(cfg: dict) -> str:
    """``DPM-Solver-3, 40 steps`` for a DPM-Solver configuration: how the tables name a converged solve."""
    return f"DPM-Solver-{make_method(cfg['solver']).order}, {cfg['steps']} steps"


FLOOR_NFE = make_method(FLOOR["solver"]).stages * FLOOR["steps"]
CONVERGED = f"converged ({_solver_words(FLOOR)})"  # also the floor's samples folder: renaming it recomputes them


@dataclass
class Setup:
    """What a Table 1 run measures with: the eps-model, the feature map, the reference statistics."""
    model: torch.nn.Module
    schedule: VPSchedule
    features: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> (n, d) features
    reference: tuple  # (mu, sigma) of the reference features
    shape: tuple
    label: str  # how the output names the run
    mode: str  # a key of MODES
    real: torch.Tensor | None = None  # uint8 training images: the real-vs-reference floor (None: no floors)
    # uint8 images -> (which are recognised, the digit read): the model's sample quality, by independent judges
    recognise: Callable[[torch.Tensor], tuple] | None = None
    heldout: torch.Tensor | None = None  # uint8 held-out real images: what the judges make of real digits


def standin_setup(samples: int, batch: int, seed: int = 0) -> Setup:
    from cifar.standin import ImageMixture, RandomFeatures
    schedule = VPSchedule.linear()
    model, features = ImageMixture(schedule), RandomFeatures()
    data = model.sample_data(samples, generator=torch.Generator().manual_seed(seed + 1))
    reference = feature_statistics(torch.cat([features(to_uint8(d)) for d in data.split(batch)]).numpy())
    return Setup(model, schedule, features, reference, model.shape, "STAND-IN", "stand-in")


def checkpoint_setup(checkpoint, inception, fid_stats, config: str, device, **net_kwargs) -> Setup:
    """``net_kwargs`` go to :func:`cifar.load_score_sde` (tests use a tiny architecture)."""
    from cifar.checkpoint import load_score_sde
    from cifar.inception import load_inception
    reference = load_statistics(fid_stats)  # validate the cheap files before the big one
    features = load_inception(inception, device)
    check_reference(reference, features, (3, 32, 32), device)
    model = load_score_sde(checkpoint, config, **net_kwargs).to(device)
    return Setup(model, VPSchedule.linear(), features, reference, (3, 32, 32), f"{config} ({checkpoint})",
                 "checkpoint")


def digits_setup(checkpoint=None, device="cpu", **net_kwargs) -> Setup:
    """The DDPM++ trained on the digits (the committed checkpoint unless ``checkpoint``), FID in the
    judge network's features against the held-out real digits, floors from the training digits."""
    from cifar.checkpoint import load_score_sde
    from cifar.train_digits import EXPORT
    from handwritten import data
    from handwritten.judges import judges, load_net
    checkpoint = checkpoint or EXPORT / "checkpoint.pth"
    # channels_last: the CPU's convolutions run 15 % faster on it, with the same numbers to ~1e-5
    model = load_score_sde(checkpoint, "digits_ddpmpp", **net_kwargs).to(device, memory_format=torch.channels_last)
    size = model.net.image_size
    judge = load_net()

    def features(images_uint8: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return judge.embed(images_uint8.cpu().float() / 255).double()

    real = {split: to_uint8(data.load(split, size=size)[0]) for split in ("train", "heldout")}
    reference = feature_statistics(features(real["heldout"]).numpy())

    def recognise(images_uint8: torch.Tensor) -> tuple:
        unit = images_uint8.cpu().float() / 255
        return judges().recognised(unit), judges().read(unit)["net"]

    return Setup(model, VPSchedule.linear(), features, reference, (3, size, size),
                 f"digits_ddpmpp ({shown(checkpoint)})", "digits", real=real["train"], recognise=recognise,
                 heldout=real["heldout"])


def _folder(name: str, nfe: int) -> str:
    return f"{name.replace(' ', '').replace('.', '').replace('+', '_')}_nfe{nfe}"


def _features(features, images: torch.Tensor, batch: int):
    return torch.cat([features(b) for b in images.split(batch)]).numpy()


def _statistics(features, images: torch.Tensor, batch: int):
    return feature_statistics(_features(features, images, batch))


def fid_spread(feats, reference, resamples: int = 20, seed: int = 0) -> float:
    """The standard deviation of the FID over bootstrap resamples of the samples' features (the
    reference fixed): how much a cell's FID would move with another draw of as many samples."""
    import numpy as np
    rng = np.random.default_rng(seed)
    values = [frechet_distance(*feature_statistics(feats[rng.integers(0, len(feats), len(feats))]), *reference)
              for _ in range(resamples)]
    return float(np.std(values))


def check_reference(reference, features, shape, device) -> None:
    """Refuse reference statistics that cannot be compared with this feature map, before any sampling."""
    mu, sigma = reference
    with torch.no_grad():
        dim = features(torch.zeros(1, *shape, dtype=torch.uint8, device=device)).shape[-1]
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise ValueError(f"reference statistics have mu {mu.shape} and sigma {sigma.shape}, but the features have "
                         f"{dim} dimensions: statistics of another feature layer (FID uses Inception pool_3, 2048)")


def unrelated_rmse(images: torch.Tensor) -> float:
    """The median RMSE between two different images of a converged solve (pairs ``i``, ``i + 1``): a cell
    whose images lie as far from their own converged images as unrelated images do has lost them."""
    return median_rmse(images[1:], images[:-1])


def trajectory_errors(setup: Setup, x_T: torch.Tensor, nfe: int, grid: str) -> dict:
    """Where on the trajectory each sampler makes its error at ``nfe`` on ``grid``
    (:func:`adjointdpm.trajectory.errors_along`, against the floor's converged solver)."""
    cache = {}
    return {name: errors_along(setup.model, x_T, setup.schedule, sampler(name, nfe, grid), FLOOR, cache)
            for name in SAMPLERS}


def run(setup: Setup, nfes, samples: int, batch: int, out: Path, seed: int = 0, progress: bool = True,
        device=None, grids=GRIDS, trajectory_images: int = 16) -> dict | None:
    """Generate every cell's samples (this rank's shards), one cell per grid, NFE and sampler, then on
    rank 0 measure them. Returns the result dict on rank 0 and ``None`` on the other ranks."""
    if samples < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples per cell, got {samples}")
    if len(set(nfes)) != len(nfes):
        raise ValueError(f"each NFE budget once, got {' '.join(map(str, nfes))}")
    if not grids or len(set(grids)) != len(grids) or not set(grids) <= set(GRIDS):
        raise ValueError(f"grids must be distinct names among {GRIDS}, got {' '.join(grids) or 'none'}")
    device = device or next(setup.model.parameters(), torch.empty(0)).device
    check_reference(setup.reference, setup.features, setup.shape, device)
    cells = [(grid, nfe, name, sampler(name, nfe, grid)) for grid in grids for nfe in nfes for name in SAMPLERS]
    floors = setup.real is not None
    model_key = files.fingerprint(setup.model)  # the samples folders are keyed by the weights that made them
    samples_dir = out / "samples" / setup.mode  # one tree per mode, so the stand-in and a model never collide
    jobs = [(samples_dir / grid / _folder(name, nfe), cfg) for grid, nfe, name, cfg in cells]
    if floors:
        jobs.append((samples_dir / _folder(CONVERGED, FLOOR_NFE), FLOOR))
    for folder, cfg in jobs:
        generate(setup.model, setup.schedule, folder, n=samples, batch=batch, sampler=cfg, seed=seed,
                 shape=setup.shape, device=device, model_key=model_key, progress=progress)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0:
            return None
    x_T = shard_noise(seed, 0, batch, setup.shape)[:min(batch, samples, 64)].to(device)
    fine = sample(setup.model, x_T, setup.schedule, **FINE)
    rows = []
    for grid, nfe, name, cfg in cells:
        images, _ = read_shards(samples_dir / grid / _folder(name, nfe), samples, batch, setup.shape)
        feats = _features(setup.features, images, batch)
        x = sample(setup.model, x_T, setup.schedule, **cfg)
        rows.append({"grid": grid, "nfe": nfe, "sampler": name,
                     "distance": frechet_distance(*feature_statistics(feats), *setup.reference),
                     "rmse_vs_fine": median_rmse(x, fine), "paper_fid": PAPER[name].get(nfe),
                     **{k: cfg[k] for k in ("space", "solver", "steps")}})
        if floors:  # small features: the FID's sampling spread is cheap to measure, and decides what is a tie
            rows[-1]["fid_spread"] = fid_spread(feats, setup.reference)
    result = {"mode": setup.mode, "label": setup.label, "samples": samples, "device": str(device), "grids": list(grids),
              "t_end": T_END, "unrelated_rmse": unrelated_rmse(fine), "rows": rows,
              "trajectory": {"nfe": min(nfes), "images": min(trajectory_images, len(x_T)),
                             "errors": {grid: trajectory_errors(setup, x_T[:trajectory_images], min(nfes), grid)
                                        for grid in grids}}}
    if floors:
        images, _ = read_shards(samples_dir / _folder(CONVERGED, FLOOR_NFE), samples, batch, setup.shape)
        floor_rmse = median_rmse(sample(setup.model, x_T, setup.schedule, **FLOOR), fine)
        result["floors"] = {
            "converged": frechet_distance(*_statistics(setup.features, images, batch), *setup.reference),
            "converged_solver": CONVERGED, "converged_rmse_vs_fine": floor_rmse,
            "real_train": frechet_distance(*_statistics(setup.features, setup.real, batch), *setup.reference),
            "real_train_images": len(setup.real)}
        if setup.recognise is not None:  # the model's own quality, read from the converged samples
            ok, digit = setup.recognise(images)
            result["quality"] = {"recognised": float(ok.float().mean()), "samples": len(images),
                                 "per_digit": torch.bincount(digit[ok], minlength=10).tolist(),
                                 "heldout_recognised": float(setup.recognise(setup.heldout)[0].float().mean()),
                                 "channel_spread": float((images.float() / 255).std(1).mean())}
            sample_sheet(images[:64], ok[:64], digit[:64], out / f"{MODES[setup.mode].filename}_samples.png")
    return result


def sample_sheet(images: torch.Tensor, ok: torch.Tensor, digit: torch.Tensor, path: Path) -> None:
    """The first converged samples in an 8-column grid, each titled with the judges' digit (red with
    a question mark when not recognised)."""
    from matplotlib.figure import Figure
    rows = (len(images) + 7) // 8
    fig = Figure(figsize=(6.4, 0.85 * rows + 0.4), layout="constrained")
    for i, ax in enumerate(fig.subplots(rows, 8, squeeze=False).flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i].permute(1, 2, 0).cpu().numpy())
            ax.set_title(f"{int(digit[i])}" + ("" if ok[i] else "?"), fontsize=8, color="k" if ok[i] else "r")
    fig.suptitle(f"{len(images)} samples, {CONVERGED}: the judges' digit; red '?' = not recognised", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.save_figure(fig, path, dpi=100)


@dataclass(frozen=True)
class Mode:
    """One kind of model Table 1 runs on, the one place it lives: how its run is written up and, for the
    models named by ``--model``, how it is set up (``setup(samples, batch, seed, device)``; the full run's
    model is set up from the three files it names)."""
    title: str
    filename: str  # <filename>.md, .json, .png
    metric: str
    what: str  # the model and the features ({label}: the run's)
    spread: bool = False  # its distances carry a bootstrap spread
    exact: bool = False  # its converged solve is the exact flow map, and its ordering is the summary's alone
    option: str | None = None  # its name for --model
    setup: Callable[..., Setup] | None = None


def _standin(samples, batch, seed, device) -> Setup:
    setup = standin_setup(samples, batch, seed)
    setup.model.to(device)
    return setup


SPREAD = " ± its bootstrap spread (the standard deviation over resamples of the samples)"
MODES = {
    "stand-in": Mode("STAND-IN run (not CIFAR-10 FID)", "table1", "Frechet distance (stand-in features)",
                     "Exact-epsilon mixture of 3x32x32 images in place of DDPM++, random conv features in place of "
                     "Inception.", exact=True, option="standin", setup=_standin),
    "checkpoint": Mode("FID on score_sde's VP CIFAR-10", "table1", "FID",
                       "Model {label}; TF Inception-v3 pool_3 via torch-fidelity."),
    "digits": Mode("FID on the DDPM++ trained here on handwritten digits (not CIFAR-10)", "table1_digits", "FID",
                   "Model {label}: score_sde's DDPM++ architecture trained here on scikit-learn's real handwritten "
                   "digits (16x16, gray), not CIFAR-10. FID in the 84-d features of the judge network "
                   "(handwritten.judges: a LeNet-5 trained on other digits, never with this model) against the "
                   "held-out real digits.", spread=True, option="digits",
                   setup=lambda samples, batch, seed, device: digits_setup(device=device)),
}


EQ4, EQ10 = "eq. 4 + AB4", "eq. 10 + AB4"


def _cells(rows, grid) -> dict:
    """``{nfe: {sampler: row}}`` of one grid, NFEs in the rows' order."""
    cells = {}
    for r in rows:
        if r.get("grid", "logSNR") == grid:
            cells.setdefault(r["nfe"], {})[r["sampler"]] = r
    return cells


def verdict(eq4: dict, eq10: dict) -> dict:
    """The paper's ordering between two rows of one cell: ``"eq. 10 ahead"``, ``"eq. 4 ahead"`` or
    ``"a tie"`` in FID (a difference within twice the larger bootstrap spread, where measured, is a
    tie) and in the sampler's own error (RMSE against the converged solve; equal only if identical)."""
    def ahead(a10, a4, tie):
        return "a tie" if abs(a10 - a4) <= tie else ("eq. 10 ahead" if a10 < a4 else "eq. 4 ahead")
    spread = 2 * max(eq4.get("fid_spread", 0.0), eq10.get("fid_spread", 0.0))
    return {"fid": ahead(eq10["distance"], eq4["distance"], spread),
            "rmse": ahead(eq10["rmse_vs_fine"], eq4["rmse_vs_fine"], 0.0)}


def ordering(rows, grid: str = "logSNR") -> str:
    """Whether the paper's ordering (eq. 10 + AB4 below eq. 4 + AB4) holds on ``grid``, NFE by NFE, in
    FID and in the sampler's own error, in words generated from the numbers."""
    parts = []
    for nfe, cell in _cells(rows, grid).items():
        v, eq4, eq10 = verdict(cell[EQ4], cell[EQ10]), cell[EQ4], cell[EQ10]
        tie = " (within twice their spread)" if v["fid"] == "a tie" and "fid_spread" in eq4 else ""
        parts.append(f"NFE {nfe}: {v['rmse']} in the sampler's error (RMSE eq. 10 {eq10['rmse_vs_fine']:.2g}, "
                     f"eq. 4 {eq4['rmse_vs_fine']:.2g}), {v['fid']} in FID (eq. 10 {eq10['distance']:.3g}, eq. 4 "
                     f"{eq4['distance']:.3g}{tie})")
    return f"The paper's ordering on the {grid} grid: " + "; ".join(parts) + "."


def winners(rows, grid: str, failed_above: float | None = None) -> str:
    """Which sampler has the lowest error at each NFE on ``grid``, and which cells failed (median RMSE
    above ``failed_above``: farther from their converged images than unrelated images are)."""
    parts = []
    for nfe, cell in _cells(rows, grid).items():
        best = min(cell.values(), key=lambda r: r["rmse_vs_fine"])
        failed = [n for n, r in cell.items() if failed_above is not None and r["rmse_vs_fine"] > failed_above]
        parts.append(f"at NFE {nfe} {best['sampler']} (RMSE {best['rmse_vs_fine']:.2g})"
                     + (f", and {' and '.join(failed)} failed" if failed else ""))
    return "Lowest error: " + "; ".join(parts) + "."


def summary(rows, grids) -> str:
    """Across grids: where the paper's ordering holds in the sampler's error, and each sampler's best
    grid at each NFE, in words generated from the numbers."""
    held = []
    for grid in grids:
        nfes = [str(n) for n, c in _cells(rows, grid).items() if verdict(c[EQ4], c[EQ10])["rmse"] == "eq. 10 ahead"]
        held.append(f"on the {grid} grid at " + (f"NFE {', '.join(nfes)}" if nfes else "no NFE"))
    best = []
    for name in SAMPLERS:
        mine = [r for r in rows if r["sampler"] == name]
        per_nfe = [min((r for r in mine if r["nfe"] == nfe), key=lambda r: r["rmse_vs_fine"])
                   for nfe in dict.fromkeys(r["nfe"] for r in mine)]
        best.append(f"{name}: " + ", ".join(f"{r.get('grid', 'logSNR')} at NFE {r['nfe']}" for r in per_nfe))
    return ("Eq. 10 + AB4 ahead of eq. 4 + AB4 in the sampler's error (the paper's ordering): "
            + "; ".join(held) + ".\n\nEach sampler's best grid (lowest RMSE) at each NFE: " + "; ".join(best) + ".")


def below_floor(rows, floors: dict) -> str:
    """How many cells lie below the converged solve's FID, and whether any by more than twice its
    bootstrap spread, in words generated from the numbers."""
    below = [r for r in rows if r["distance"] < floors["converged"]]
    beyond = [f"{r['sampler']} at NFE {r['nfe']}" for r in below
              if floors["converged"] - r["distance"] > 2 * r.get("fid_spread", 0.0)]
    return (f"{len(below)} of the {len(rows)} cells lie below the converged solve's FID, "
            + (f"{len(beyond)} by more than twice the cell's bootstrap spread ({', '.join(beyond)})." if beyond else
               "none by more than twice the cell's bootstrap spread."))


def trajectory_markdown(trajectory: dict) -> str:
    """The trajectory errors as one table per grid: each sampler's error after each of its steps."""
    text = (f"\n## Where the error is made at NFE {trajectory['nfe']}\n\nEach sampler's state after each of its steps "
            f"against the converged solve to the same time (median RMSE over {trajectory['images']} images), with "
            "the step's length in lambda = log(alpha/sigma); rho = sigma/alpha shrinks by the factor exp(d lambda) "
            "over the step; the converged solve is the floor's solver (DPM-Solver-3) followed from each time to the next, "
            "each piece in as many steps as the floor's 40-step solve from t = 1 to the piece's end spends on it. "
            "AB4's first two steps are RK4 (its start-up).\n")
    for grid, per_sampler in trajectory["errors"].items():
        table = [[name] + [f"t {s['t']:.3g} (d lambda {s['d_lambda']:.2f}): {s['rmse']:.2g}" for s in steps]
                 for name, steps in per_sampler.items()]
        width = max(len(r) for r in table)
        table = [r + [""] * (width - len(r)) for r in table]
        text += f"\n{grid} grid:\n\n" + markdown_table(["sampler", *[f"step {i}" for i in range(1, width)]], table) + "\n"
    return text


def markdown(result: dict) -> str:
    """The Markdown of a run, from its result (what ``table1.json`` holds) alone."""
    rows, names, mode = result["rows"], list(SAMPLERS), MODES[result["mode"]]
    grids = result.get("grids", ["logSNR"])
    failed = result.get("unrelated_rmse")
    fine = f"{FINE['steps']} DPM-Solver-{make_method(FINE['solver']).order} steps"
    text = (f"# Table 1: {mode.title}\n\n{mode.what.format(label=result['label'])} {result['samples']} samples per "
            f"cell on {result['device']}, "
            f"t from 1 to {result.get('t_end', T_END)} on each of the time grids {', '.join(grids)} (uniform in t, in "
            "lambda, in sqrt(t); the paper names none). "
            f"Each cell: {mode.metric}{SPREAD if mode.spread else ''} / median per-image RMSE against a converged "
            "solve from the same noise "
            f"({fine}{'; the exact flow map' if mode.exact else ''}); the paper's FID "
            "(CIFAR-10) beside, and for eq. 10 + AB4 (DEIS's rho-AB) DEIS's published CIFAR-10 FID." + (f" A cell *failed* when its median RMSE exceeds {failed:.2g}, the median RMSE "
                                    "between two unrelated images of the converged solve." if failed else "") + "\n")
    text += "\n" + summary(rows, grids) + "\n"
    for grid in grids:
        table = [[nfe] + [
            f"{cell[n]['distance']:.3g}" + (f" ± {cell[n]['fid_spread']:.2g}" if "fid_spread" in cell[n] else "")
            + f" / {cell[n]['rmse_vs_fine']:.2e} (paper FID {cell[n]['paper_fid'] or '-'}"
            + (f"; DEIS {DEIS[n][nfe]}" if nfe in DEIS.get(n, {}) else "") + ")" for n in names]
            for nfe, cell in _cells(rows, grid).items()]
        text += f"\n## {grid} grid\n\n" + markdown_table(["NFE", *names], table) + "\n"
        text += "\n" + winners(rows, grid, failed) + ("" if mode.exact else " " + ordering(rows, grid)) + "\n"
    if "trajectory" in result:
        text += trajectory_markdown(result["trajectory"])
    if "floors" in result:
        f = result["floors"]
        text += (f"\n## Floors\n\nIn the same features against the same reference: the FID of a converged solve, "
                 f"{f['converged_solver']} (median RMSE {f['converged_rmse_vs_fine']:.1e} against the 200-step solve: "
                 f"the model's own FID, without the sampler's error), {f['converged']:.3g}; "
                 f"the {f['real_train_images']} real training digits, {f['real_train']:.3g}. "
                 + below_floor(rows, f) + "\n")
    if "quality" in result:
        q = result["quality"]
        text += (f"\n## The model's samples\n\nOf the {q['samples']} converged samples, {q['recognised']:.0%} are digits "
                 "the independent judges recognise (handwritten.judges.recognised: the judge network reads them at "
                 "p > 0.9, the SVC agrees, and each lies as near a real training digit as 95 % of held-out real "
                 f"digits do; held-out real digits score {q['heldout_recognised']:.0%}); recognised per digit 0-9: "
                 f"{', '.join(map(str, q['per_digit']))}. Channel spread (the three channels' standard deviation, "
                 f"0 for gray) {q['channel_spread']:.4f}. The first 64: `{mode.filename}_samples.png`.\n")
    return text


def write(result: dict, out: Path) -> str:
    """``table1.md/json`` (``table1_digits.*`` for the digits model, with a plot); returns the Markdown."""
    return write_result(out, MODES[result["mode"]].filename, result, markdown(result),
                        (lambda path: plot(result, path)) if "floors" in result else None)


def plot(result: dict, path: Path) -> None:
    """One column per grid: FID against NFE per sampler with the floors (top), and the sampler's own
    error, RMSE against the converged solve (bottom, shared axis so the grids compare)."""
    from matplotlib.figure import Figure
    rows, floors, grids = result["rows"], result["floors"], result.get("grids", ["logSNR"])
    fig = Figure(figsize=(4 * len(grids), 6.5), layout="constrained")
    axes = fig.subplots(2, len(grids), sharey="row", squeeze=False)
    nfes = sorted({r["nfe"] for r in rows})
    for col, grid in enumerate(grids):
        top, bottom = axes[0, col], axes[1, col]
        for name in SAMPLERS:
            mine = sorted((r for r in rows if r["sampler"] == name and r.get("grid", "logSNR") == grid),
                          key=lambda r: r["nfe"])
            nfe = [r["nfe"] for r in mine]
            top.errorbar(nfe, [r["distance"] for r in mine], yerr=[r.get("fid_spread", 0) for r in mine],
                         marker="o", capsize=3, label=name)
            bottom.loglog(nfe, [r["rmse_vs_fine"] for r in mine], "o-", label=name)
        top.axhline(floors["converged"], color="k", ls="--", lw=1, label="converged solve (the model's own FID)")
        top.axhline(floors["real_train"], color="0.5", ls=":", lw=1, label="real training digits")
        if "unrelated_rmse" in result:
            bottom.axhline(result["unrelated_rmse"], color="r", ls=":", lw=1, label="unrelated images (failed above)")
        top.set(xlabel="NFE", title=f"{grid} grid: FID", yscale="log")  # log: a failed cell is 20x the rest
        top.set_xticks(nfes, [str(n) for n in nfes])
        top.yaxis.set_major_formatter("{x:g}")
        top.yaxis.set_minor_formatter("{x:g}")
        bottom.set(xlabel="NFE", title=f"{grid} grid: the sampler's error alone")
        bottom.set_xticks(nfes, [str(n) for n in nfes])
        bottom.xaxis.set_minor_formatter("")
    axes[0, 0].set_ylabel("FID against the held-out digits\n(judge features)")
    axes[1, 0].set_ylabel("median per-image RMSE vs a converged solve")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    files.save_figure(fig, path, dpi=100)


# How each argument reaches the stored work (the sample shards, keyed by cifar.generate), or why it cannot
# change it; tests/test_keys.py fails for an argument in neither table.
KEYED = {"model": "the shards' key: the model's weights fingerprint", "checkpoint": "the same, from the checkpoint",
         "config": "the same (the architecture that loads the checkpoint)",
         "grids": "a folder per grid; its sampler settings in the key", "nfe": "a folder per NFE; the steps in the key",
         "batch": "the shards' key (shard size)", "seed": "the shards' key"}
UNKEYED = {"inception": "FID features are computed afresh on every run; no stored work depends on them",
           "fid_stats": "the same: the reference statistics are read on every run",
           "samples": "a shard's samples depend only on seed, batch and its index; more samples add shards",
           "out": "where the work goes: the key lives in it", "device": "round-off only: work resumed on another device continues to round-off"}


def main(argv=None):
    parser = cli.Parser(prog="python -m cifar.table1", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=[m.option for m in MODES.values() if m.option], help="without --checkpoint: 'standin' (the "
                        "default: an exact-epsilon image mixture, about 4 minutes for the three grids) or 'digits' "
                        "(the DDPM++ trained here on handwritten digits, FID in a judge network's features, with "
                        "floors; 41 minutes on 2 idle cores for the three grids)")
    real = parser.add_argument_group("full run (give all three, or none for the CPU stand-in)")
    real.add_argument("--checkpoint", type=cli.existing_file, help="score_sde checkpoint, e.g. checkpoint_8.pth")
    real.add_argument("--inception", type=cli.existing_file,
                      help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    real.add_argument("--fid-stats", type=cli.existing_file, help="training-set statistics: score_sde's "
                      "cifar10_stats.npz (pool_3) or an npz with mu and sigma")
    real.add_argument("--config", default="cifar10_ddpmpp_deep_continuous",
                      choices=["cifar10_ddpmpp_continuous", "cifar10_ddpmpp_deep_continuous"])
    parser.add_argument("--grids", nargs="+", choices=GRIDS, default=list(GRIDS), metavar="GRID",
                        help=f"time grids, each a dimension of the table: {', '.join(GRIDS)} (default all three; "
                        "uniform in t, in lambda = log(alpha/sigma), in sqrt(t); the paper names none)")
    parser.add_argument("--nfe", type=cli.count("nfe"), nargs="+", default=[10, 20, 50],
                        help="NFE budgets, each one that all three samplers can spend exactly (even, >= 8; "
                        + cli.bound_help("nfe") + ")")
    parser.add_argument("--samples", type=cli.count("samples"),
                        help="samples per cell, >= 2 (default 50000 full, 2000 stand-in; " + cli.bound_help("samples") + ")")
    parser.add_argument("--batch", type=cli.count("batch"), default=500,
                        help="samples per shard (default 500; one larger than --samples is cut to it; "
                        + cli.bound_help("batch") + ")")
    parser.add_argument("--out", type=cli.report_folder, default=Path("results/cifar"),
                        help="output folder (a finished one may be read-only: the table is then printed)")
    parser.add_argument("--device", type=cli.device,
                        help="default: cuda if available (cuda:LOCAL_RANK under torchrun), else cpu")
    parser.add_argument("--seed", type=cli.nonnegative_int, default=0)
    args = parser.parse_args(argv)
    given = [f for f in ("checkpoint", "inception", "fid_stats") if getattr(args, f) is not None]
    if given and len(given) < 3:
        parser.error("a full run needs --checkpoint, --inception and --fid-stats together; missing: "
                     + ", ".join("--" + f.replace("_", "-") for f in ("checkpoint", "inception", "fid_stats")
                                 if f not in given))
    if given and args.model:
        parser.error("argument --model: the full run's model is --checkpoint; give one or the other")
    samples = (50000 if given else 2000) if args.samples is None else args.samples
    if samples < 2:
        parser.error(f"argument --samples: a Frechet distance needs at least 2 samples, got {samples}")
    if len(set(args.grids)) != len(args.grids):
        parser.error(f"argument --grids: give each grid once, got {' '.join(args.grids)}")
    if len(set(args.nfe)) != len(args.nfe):
        parser.error(f"argument --nfe: give each budget once, got {' '.join(map(str, args.nfe))}")
    for nfe in args.nfe:
        for cfg in SAMPLERS.values():
            try:
                steps_for_nfe(cfg["solver"], nfe)
            except ValueError as err:
                parser.error(f"argument --nfe: {nfe}: {err}")
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    cuda = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
    device = args.device or torch.device(cuda)
    with cli.one_line_errors(parser, resumes=True):
        if given:
            setup = checkpoint_setup(args.checkpoint, args.inception, args.fid_stats, args.config, device)
        else:  # the stand-in by default
            setup = next(m for m in MODES.values() if m.option == (args.model or "standin")).setup(
                samples, args.batch, args.seed, device)
        result = run(setup, args.nfe, samples, min(args.batch, samples), args.out, args.seed, device=device,
                     grids=args.grids)
        if result is not None and not os.access(args.out, os.W_OK):  # finished samples read from a read-only folder
            print(markdown(result))
            print(f"{args.out} is read-only: the table above is not written there", file=sys.stderr)
        elif result is not None:
            print(write(result, args.out))
            name = MODES[result["mode"]].filename
            print(f"wrote {name}.md and {name}.json to {args.out}/")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
