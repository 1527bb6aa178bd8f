"""The paper's Table 1 (FID versus NFE on score_sde's VP CIFAR-10) as one command.

Full run (GPU; the three files are local paths, nothing is downloaded):

    python -m cifar.table1 --checkpoint checkpoint_8.pth --inception weights-inception-2015-12-05-6726825d.pth \\
        --fid-stats cifar10_stats.npz [--config cifar10_ddpmpp_deep_continuous] [--nfe 10 20 50] [--samples 50000]

    several GPUs: torchrun --nproc_per_node 4 -m cifar.table1 <same arguments>

The learned model on a CPU (``--model digits``, about 15 minutes): the DDPM++ trained here on
the real handwritten digits (``cifar.train_digits``, 16x16, score_sde's checkpoint format, read by
``load_score_sde``). FID against the 539 held-out real digits, in the features of the judge network
of :mod:`handwritten.judges` (trained on other digits, never with the generative model), with two
floors beside the table: the FID of a converged solve (the model's own, so the sampler's share is
visible) and that of the real training digits. Writes ``table1_digits.md/json``.

CPU stand-in (the default when neither a checkpoint nor a model is given): an exact-epsilon
mixture of 3x32x32 images in place of DDPM++ and a small random feature network in place of
Inception (``cifar.standin``). Its sampler comparison is real, but its numbers are Frechet
distances in that feature space, not FIDs, and the output says so.

Three samplers at an exact NFE budget, on a logSNR grid from t = 1 to 1e-3 (DPM-Solver's
setting for score_sde's CIFAR-10): eq. 4 with 4th-order Adams-Bashforth (``steps = NFE - 6``:
torchdiffeq's start-up of two RK4 steps), DPM-Solver-2 (``steps = NFE / 2``; singlestep order 3
cannot meet NFE 10 or 20 exactly) and eq. 10 with Adams-Bashforth. Each cell also reports
the median over 64 images of each image's RMSE against a converged solve from the same noise
(200 DPM-Solver-3 steps; for the stand-in the exact flow map to ~1e-5): the sampler's error alone,
free of the model's. The median, because a
mixture's flow map is steep between modes: float32 round-off can send one image of 64 to
another mode, which would dominate a mean. Samples are written in shards under
``--out/samples/<mode>``; a rerun resumes them and never recomputes a finished shard.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from adjointdpm import VPSchedule, cli, files, sample, steps_for_nfe
from adjointdpm.frechet import feature_statistics, frechet_distance
from adjointdpm.report import markdown_table
from cifar.fid import load_statistics
from cifar.generate import generate, read_shards, shard_noise, to_uint8

PAPER = {  # AdjointDPM Table 1, FID over 50k samples
    "eq. 4 + AB4": {10: 9.50, 20: 8.27, 50: 5.64},
    "DPM-Solver": {10: 4.70, 20: 2.87, 50: 2.62},
    "eq. 10 + AB4": {10: 4.36, 20: 2.90, 50: 2.58},
}
SAMPLERS = {  # each run at an exact NFE budget: steps_for_nfe(solver, nfe)
    "eq. 4 + AB4": dict(space="original", solver="adams4"),
    "DPM-Solver": dict(space="reparam", solver="dpm2"),
    "eq. 10 + AB4": dict(space="reparam", solver="adams4"),
}
GRID = dict(spacing="logSNR", t_end=1e-3)
ROOT = Path(__file__).resolve().parents[1]


def shown(path) -> str:
    """A path as the results name it: relative to the repository when inside it (the same on every machine)."""
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def sampler(name: str, nfe: int) -> dict:
    """The keyword arguments of :func:`adjointdpm.sample` for sampler ``name`` at exactly ``nfe`` evaluations."""
    return dict(SAMPLERS[name], steps=steps_for_nfe(SAMPLERS[name]["solver"], nfe), **GRID)
FINE = dict(steps=200, solver="dpm3", **GRID)  # the reference of each cell's RMSE: the flow map to ~1e-6 on the stand-in
# The floor's samples: converged (its RMSE against FINE is reported beside it) at a fifth of FINE's cost.
FLOOR = dict(steps=40, solver="dpm3", **GRID)
FLOOR_NFE, CONVERGED = 120, "converged (DPM-Solver-3, 40 steps)"


@dataclass
class Setup:
    """What a Table 1 run measures with: the eps-model, the feature map, the reference statistics."""
    model: torch.nn.Module
    schedule: VPSchedule
    features: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> (n, d) features
    reference: tuple  # (mu, sigma) of the reference features
    shape: tuple
    label: str  # how the output names the run
    mode: str  # "stand-in", "checkpoint" or "digits"
    real: torch.Tensor | None = None  # uint8 training images: the real-vs-reference floor (None: no floors)


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
    from handwritten.judges import load_net
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
    return Setup(model, VPSchedule.linear(), features, reference, (3, size, size),
                 f"digits_ddpmpp ({shown(checkpoint)})", "digits", real=real["train"])


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


def run(setup: Setup, nfes, samples: int, batch: int, out: Path, seed: int = 0, progress: bool = True,
        device=None) -> dict | None:
    """Generate every cell's samples (this rank's shards), then on rank 0 measure them.
    Returns the result dict on rank 0 and ``None`` on the other ranks."""
    if samples < 2:
        raise ValueError(f"a Frechet distance needs at least 2 samples per cell, got {samples}")
    if len(set(nfes)) != len(nfes):
        raise ValueError(f"each NFE budget once, got {' '.join(map(str, nfes))}")
    device = device or next(setup.model.parameters(), torch.empty(0)).device
    check_reference(setup.reference, setup.features, setup.shape, device)
    cells = [(nfe, name, sampler(name, nfe)) for nfe in nfes for name in SAMPLERS]
    floors = setup.real is not None
    model_key = files.fingerprint(setup.model)  # the samples folders are keyed by the weights that made them
    samples_dir = out / "samples" / setup.mode  # one tree per mode, so the stand-in and a model never collide
    for nfe, name, cfg in cells + ([(FLOOR_NFE, CONVERGED, FLOOR)] if floors else []):
        generate(setup.model, setup.schedule, samples_dir / _folder(name, nfe), n=samples, batch=batch,
                 sampler=cfg, seed=seed, shape=setup.shape, device=device, model_key=model_key, progress=progress)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0:
            return None
    x_T = shard_noise(seed, 0, batch, setup.shape)[:min(batch, samples, 64)].to(device)
    fine = sample(setup.model, x_T, setup.schedule, **FINE)
    rows = []
    for nfe, name, cfg in cells:
        folder = samples_dir / _folder(name, nfe)
        images, _ = read_shards(folder, samples, batch, setup.shape)
        feats = _features(setup.features, images, batch)
        x = sample(setup.model, x_T, setup.schedule, **cfg)
        per_image = (x - fine).flatten(1).square().mean(1).sqrt()
        rows.append({"nfe": nfe, "sampler": name, "distance": frechet_distance(*feature_statistics(feats), *setup.reference),
                     "rmse_vs_fine": float(per_image.median()), "paper_fid": PAPER[name].get(nfe),
                     **{k: cfg[k] for k in ("space", "solver", "steps")}})
        if floors:  # small features: the FID's sampling spread is cheap to measure, and decides what is a tie
            rows[-1]["fid_spread"] = fid_spread(feats, setup.reference)
    result = {"mode": setup.mode, "label": setup.label, "samples": samples, "device": str(device), "rows": rows}
    if floors:
        images, _ = read_shards(samples_dir / _folder(CONVERGED, FLOOR_NFE), samples, batch, setup.shape)
        floor_rmse = (sample(setup.model, x_T, setup.schedule, **FLOOR) - fine).flatten(1).square().mean(1).sqrt()
        result["floors"] = {
            "converged": frechet_distance(*_statistics(setup.features, images, batch), *setup.reference),
            "converged_solver": CONVERGED, "converged_rmse_vs_fine": float(floor_rmse.median()),
            "real_train": frechet_distance(*_statistics(setup.features, setup.real, batch), *setup.reference),
            "real_train_images": len(setup.real)}
    return result


TITLES = {"stand-in": "STAND-IN run (not CIFAR-10 FID)", "checkpoint": "FID on score_sde's VP CIFAR-10",
          "digits": "FID on the DDPM++ trained here on handwritten digits (not CIFAR-10)"}
SPREAD = " ± its bootstrap spread (the standard deviation over resamples of the samples)"
FILENAMES = {"stand-in": "table1", "checkpoint": "table1", "digits": "table1_digits"}


def ordering(rows) -> str:
    """Whether the paper's ordering (eq. 10 + AB4 below eq. 4 + AB4) holds, NFE by NFE, in FID (a
    difference within twice the FIDs' bootstrap spread, where measured, is a tie) and in the sampler's
    own error (RMSE against the converged solve), in words generated from the numbers."""
    parts = []
    for nfe in dict.fromkeys(r["nfe"] for r in rows):
        cell = {r["sampler"]: r for r in rows if r["nfe"] == nfe}
        eq4, eq10 = cell["eq. 4 + AB4"], cell["eq. 10 + AB4"]
        spread = 2 * max(eq4.get("fid_spread", 0.0), eq10.get("fid_spread", 0.0))
        if abs(eq10["distance"] - eq4["distance"]) <= spread:
            fid = f"a tie in FID (eq. 10 {eq10['distance']:.3g}, eq. 4 {eq4['distance']:.3g}, within twice their spread)"
        else:
            fid = (f"{'holds' if eq10['distance'] < eq4['distance'] else 'is reversed'} in FID (eq. 10 "
                   f"{eq10['distance']:.3g}, eq. 4 {eq4['distance']:.3g})")
        rmse = (f"{'holds' if eq10['rmse_vs_fine'] < eq4['rmse_vs_fine'] else 'is reversed'} in the sampler's error "
                f"(RMSE {eq10['rmse_vs_fine']:.2g} against {eq4['rmse_vs_fine']:.2g})")
        parts.append(f"at NFE {nfe} it is {fid} and {rmse}" if fid.startswith("a tie") else f"at NFE {nfe} it {fid} "
                     f"and {rmse}")
    return "The paper's ordering, eq. 10 + AB4 below eq. 4 + AB4: " + "; ".join(parts) + "."


def below_floor(rows, floors: dict) -> str:
    """How many cells lie below the converged solve's FID, and whether any by more than twice its
    bootstrap spread, in words generated from the numbers."""
    below = [r for r in rows if r["distance"] < floors["converged"]]
    beyond = [f"{r['sampler']} at NFE {r['nfe']}" for r in below
              if floors["converged"] - r["distance"] > 2 * r.get("fid_spread", 0.0)]
    return (f"{len(below)} of the {len(rows)} cells lie below the converged solve's FID, "
            + (f"{len(beyond)} by more than twice the cell's bootstrap spread ({', '.join(beyond)})." if beyond else
               "none by more than twice the cell's bootstrap spread."))


def markdown(result: dict) -> str:
    """The Markdown of a run, from its result (what ``table1.json`` holds) alone."""
    rows, names, mode = result["rows"], list(SAMPLERS), result["mode"]
    metric = "Frechet distance (stand-in features)" if mode == "stand-in" else "FID"
    table = []
    for nfe in dict.fromkeys(r["nfe"] for r in rows):
        cell = {r["sampler"]: r for r in rows if r["nfe"] == nfe}
        table.append([nfe] + [
            f"{cell[n]['distance']:.3g}" + (f" ± {cell[n]['fid_spread']:.2g}" if "fid_spread" in cell[n] else "")
            + f" / {cell[n]['rmse_vs_fine']:.2e} (paper FID {cell[n]['paper_fid'] or '-'})" for n in names])
    what = {"stand-in": "Exact-epsilon mixture of 3x32x32 images in place of DDPM++, random conv features in place "
                        "of Inception.",
            "checkpoint": f"Model {result['label']}; TF Inception-v3 pool_3 via torch-fidelity.",
            "digits": f"Model {result['label']}: score_sde's DDPM++ architecture trained here on scikit-learn's real "
                      "handwritten digits (16x16, gray), not CIFAR-10. FID in the 84-d features of the judge network "
                      "(handwritten.judges: a LeNet-5 trained on other digits, never with this model) against the "
                      "held-out real digits."}[mode]
    text = (f"# Table 1: {TITLES[mode]}\n\n{what} {result['samples']} samples per cell on {result['device']}. "
            f"Each cell: {metric}{SPREAD if mode == 'digits' else ''} / median per-image RMSE against a converged "
            "solve from the same noise "
            f"(200 DPM-Solver-3 steps{'; the exact flow map' if mode == 'stand-in' else ''}); the paper's FID "
            "(CIFAR-10) beside.\n\n" + markdown_table(["NFE", *names], table) + "\n")
    if "floors" in result:
        f = result["floors"]
        text += (f"\nFloors, in the same features against the same reference: the FID of a converged solve, "
                 f"{f['converged_solver']} (median RMSE {f['converged_rmse_vs_fine']:.1e} against the 200-step solve: "
                 f"the model's own FID, without the sampler's error), {f['converged']:.3g}; "
                 f"the {f['real_train_images']} real training digits, {f['real_train']:.3g}. "
                 + below_floor(rows, f) + "\n")
    if mode != "stand-in":
        text += "\n" + ordering(rows) + "\n"
    return text


def write(result: dict, out: Path) -> str:
    """``table1.md/json`` (``table1_digits.*`` for the digits model, with a plot); returns the Markdown."""
    text = markdown(result)
    mode = result["mode"]
    out.mkdir(parents=True, exist_ok=True)
    name = FILENAMES[mode]
    (out / f"{name}.md").write_text(text)
    files.write_json(out / f"{name}.json", result)
    if "floors" in result:
        plot(result, out / f"{name}.png")
    return text


def plot(result: dict, path: Path) -> None:
    """FID against NFE per sampler with the floors, and the sampler's own error (RMSE)."""
    from matplotlib.figure import Figure
    rows, floors = result["rows"], result["floors"]
    fig = Figure(figsize=(10, 3.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    for name in SAMPLERS:
        mine = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["nfe"])
        nfe = [r["nfe"] for r in mine]
        left.errorbar(nfe, [r["distance"] for r in mine], yerr=[r.get("fid_spread", 0) for r in mine], marker="o",
                      capsize=3, label=name)
        right.loglog(nfe, [r["rmse_vs_fine"] for r in mine], "o-", label=name)
    left.axhline(floors["converged"], color="k", ls="--", lw=1, label="converged solve (the model's own FID)")
    left.axhline(floors["real_train"], color="0.5", ls=":", lw=1, label="real training digits")
    nfes = sorted({r["nfe"] for r in rows})
    left.set(xlabel="NFE", ylabel="FID (judge features)", title="FID against the held-out digits", xticks=nfes)
    right.set(xlabel="NFE", ylabel="median per-image RMSE", title="the sampler's error alone (vs a converged solve)")
    right.set_xticks(nfes, [str(n) for n in nfes])
    right.xaxis.set_minor_formatter("")
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    fig.savefig(path, dpi=100)


def main(argv=None):
    parser = cli.Parser(prog="python -m cifar.table1", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["standin", "digits"], help="without --checkpoint: 'standin' (the "
                        "default: an exact-epsilon image mixture, about 80 s) or 'digits' (the DDPM++ trained here on "
                        "handwritten digits, FID in a judge network's features, with floors; about 15 minutes)")
    real = parser.add_argument_group("full run (give all three, or none for the CPU stand-in)")
    real.add_argument("--checkpoint", type=cli.existing_file, help="score_sde checkpoint, e.g. checkpoint_8.pth")
    real.add_argument("--inception", type=cli.existing_file,
                      help="torch-fidelity's weights-inception-2015-12-05-6726825d.pth")
    real.add_argument("--fid-stats", type=cli.existing_file, help="training-set statistics: score_sde's "
                      "cifar10_stats.npz (pool_3) or an npz with mu and sigma")
    real.add_argument("--config", default="cifar10_ddpmpp_deep_continuous",
                      choices=["cifar10_ddpmpp_continuous", "cifar10_ddpmpp_deep_continuous"])
    parser.add_argument("--nfe", type=cli.positive_int, nargs="+", default=[10, 20, 50],
                        help="NFE budgets, each one that all three samplers can spend exactly (even, >= 8)")
    parser.add_argument("--samples", type=cli.positive_int,
                        help="samples per cell, >= 2 (default 50000 full, 2000 stand-in)")
    parser.add_argument("--batch", type=cli.positive_int, default=500, help="samples per shard (default 500)")
    parser.add_argument("--out", type=cli.folder, default=Path("results/cifar"), help="output folder")
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
    with cli.one_line_errors(parser):
        if given:
            setup = checkpoint_setup(args.checkpoint, args.inception, args.fid_stats, args.config, device)
        elif args.model == "digits":
            setup = digits_setup(device=device)
        else:
            setup = standin_setup(samples, args.batch, args.seed)
            setup.model.to(device)
        result = run(setup, args.nfe, samples, args.batch, args.out, args.seed, device=device)
    if result is not None:
        print(write(result, args.out))
        name = FILENAMES[result["mode"]]
        print(f"wrote {name}.md and {name}.json to {args.out}/")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
