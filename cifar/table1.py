"""The paper's Table 1 (FID versus NFE on score_sde's VP CIFAR-10) as one command.

Full run (GPU; the three files are local paths, nothing is downloaded):

    python -m cifar.table1 --checkpoint checkpoint_8.pth --inception weights-inception-2015-12-05-6726825d.pth \\
        --fid-stats cifar10_stats.npz [--config cifar10_ddpmpp_deep_continuous] [--nfe 10 20 50] [--samples 50000]

    several GPUs: torchrun --nproc_per_node 4 -m cifar.table1 <same arguments>

CPU stand-in (the default when no checkpoint is given): an exact-epsilon mixture of
3x32x32 images in place of DDPM++ and a small random feature network in place of
Inception (``cifar.standin``). Its sampler comparison is real, but its numbers are Frechet
distances in that feature space, not FIDs, and the output says so.

Three samplers at an exact NFE budget, on a logSNR grid from t = 1 to 1e-3 (DPM-Solver's
setting for score_sde's CIFAR-10): eq. 4 with 4th-order Adams-Bashforth (``steps = NFE - 6``:
torchdiffeq's start-up of two RK4 steps), DPM-Solver-2 (``steps = NFE / 2``; singlestep order 3
cannot meet NFE 10 or 20 exactly) and eq. 10 with Adams-Bashforth. Each cell also reports
the median over 64 images of each image's RMSE against a 200-step DPM-Solver-3 solve from
the same noise (for the stand-in, the exact flow map to ~1e-5). The median, because a
mixture's flow map is steep between modes: float32 round-off can send one image of 64 to
another mode, which would dominate a mean. Samples are written in shards under
``--out/samples``; a rerun resumes them and never recomputes a finished shard.
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


def sampler(name: str, nfe: int) -> dict:
    """The keyword arguments of :func:`adjointdpm.sample` for sampler ``name`` at exactly ``nfe`` evaluations."""
    return dict(SAMPLERS[name], steps=steps_for_nfe(SAMPLERS[name]["solver"], nfe), **GRID)
FINE = dict(steps=200, solver="dpm3", **GRID)


@dataclass
class Setup:
    """What a Table 1 run measures with: the eps-model, the feature map, the reference statistics."""
    model: torch.nn.Module
    schedule: VPSchedule
    features: Callable[[torch.Tensor], torch.Tensor]  # uint8 images -> (n, d) features
    reference: tuple  # (mu, sigma) of the reference features
    shape: tuple
    label: str  # how the output names the run
    standin: bool


def standin_setup(samples: int, batch: int, seed: int = 0) -> Setup:
    from cifar.standin import ImageMixture, RandomFeatures
    schedule = VPSchedule.linear()
    model, features = ImageMixture(schedule), RandomFeatures()
    data = model.sample_data(samples, generator=torch.Generator().manual_seed(seed + 1))
    reference = feature_statistics(torch.cat([features(to_uint8(d)) for d in data.split(batch)]).numpy())
    return Setup(model, schedule, features, reference, model.shape, "STAND-IN", standin=True)


def checkpoint_setup(checkpoint, inception, fid_stats, config: str, device, **net_kwargs) -> Setup:
    """``net_kwargs`` go to :func:`cifar.load_score_sde` (tests use a tiny architecture)."""
    from cifar.checkpoint import load_score_sde
    from cifar.inception import load_inception
    reference = load_statistics(fid_stats)  # validate the cheap files before the big one
    features = load_inception(inception, device)
    check_reference(reference, features, (3, 32, 32), device)
    model = load_score_sde(checkpoint, config, **net_kwargs).to(device)
    return Setup(model, VPSchedule.linear(), features, reference, (3, 32, 32), f"{config} ({checkpoint})",
                 standin=False)


def _folder(name: str, nfe: int) -> str:
    return f"{name.replace(' ', '').replace('.', '').replace('+', '_')}_nfe{nfe}"


def _statistics(features, images: torch.Tensor, batch: int):
    return feature_statistics(torch.cat([features(b) for b in images.split(batch)]).numpy())


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
    model_key = files.fingerprint(setup.model)  # the samples folders are keyed by the weights that made them
    for nfe, name, cfg in cells:
        generate(setup.model, setup.schedule, out / "samples" / _folder(name, nfe), n=samples, batch=batch,
                 sampler=cfg, seed=seed, shape=setup.shape, device=device, model_key=model_key, progress=progress)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        if torch.distributed.get_rank() != 0:
            return None
    x_T = shard_noise(seed, 0, batch, setup.shape)[:min(batch, samples, 64)].to(device)
    fine = sample(setup.model, x_T, setup.schedule, **FINE)
    rows = []
    for nfe, name, cfg in cells:
        folder = out / "samples" / _folder(name, nfe)
        images, seconds = read_shards(folder, samples, batch, setup.shape)
        stats = _statistics(setup.features, images, batch)
        x = sample(setup.model, x_T, setup.schedule, **cfg)
        per_image = (x - fine).flatten(1).square().mean(1).sqrt()
        rows.append({"nfe": nfe, "sampler": name, "distance": frechet_distance(*stats, *setup.reference),
                     "rmse_vs_fine": float(per_image.median()), "paper_fid": PAPER[name].get(nfe),
                     "seconds": seconds,
                     **{k: cfg[k] for k in ("space", "solver", "steps")}})
    return {"mode": "stand-in" if setup.standin else "checkpoint", "label": setup.label, "samples": samples,
            "device": str(device), "rows": rows}


def write(result: dict, out: Path) -> str:
    rows, names = result["rows"], list(SAMPLERS)
    standin = result["mode"] == "stand-in"
    metric = "Frechet distance (stand-in features)" if standin else "FID"
    lines = ["| NFE | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for nfe in dict.fromkeys(r["nfe"] for r in rows):
        cell = {r["sampler"]: r for r in rows if r["nfe"] == nfe}
        lines.append(f"| {nfe} | " + " | ".join(
            f"{cell[n]['distance']:.3g} / {cell[n]['rmse_vs_fine']:.2e} (paper FID {cell[n]['paper_fid'] or '-'})"
            for n in names) + " |")
    times = {n: sum(r["seconds"] for r in rows if r["sampler"] == n) for n in names}
    title = "STAND-IN run (not CIFAR-10 FID)" if standin else "FID on score_sde's VP CIFAR-10"
    what = ("Exact-epsilon mixture of 3x32x32 images in place of DDPM++, random conv features in place of "
            "Inception." if standin else f"Model {result['label']}; TF Inception-v3 pool_3 via torch-fidelity.")
    text = (f"# Table 1: {title}\n\n{what} {result['samples']} samples per cell on {result['device']}. "
            f"Each cell: {metric} / median per-image RMSE against a 200-step DPM-Solver-3 solve "
            f"({'the exact flow map' if standin else 'a reference solve'}); the paper's FID beside.\n\n"
            + "\n".join(lines) + "\n\nSampling wall time per sampler (all NFE, summed over shards): "
            + ", ".join(f"{n} {s:.1f} s" for n, s in times.items()) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text(text)
    files.write_json(out / "table1.json", result)
    return text


def main(argv=None):
    parser = cli.Parser(prog="python -m cifar.table1", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
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
        else:
            setup = standin_setup(samples, args.batch, args.seed)
            setup.model.to(device)
        result = run(setup, args.nfe, samples, args.batch, args.out, args.seed, device=device)
    if result is not None:
        print(write(result, args.out))
        print(f"wrote table1.md and table1.json to {args.out}/")
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
