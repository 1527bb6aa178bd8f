"""The paper's Table 1 (FID versus NFE on score_sde's VP CIFAR-10) as one command.

    python -m cifar.table1 [--nfe 10 20 50] [--samples N] [--out results/cifar]

Three samplers at an exact NFE budget, all on a logSNR grid from t = 1 to 1e-3:
eq. 4 with 4th-order Adams-Bashforth (``steps = NFE - 6``), DPM-Solver-2 (``steps = NFE / 2``;
singlestep order 3 cannot meet NFE 10 or 20 exactly) and eq. 10 with Adams-Bashforth.

This version runs the CPU STAND-IN: an exact-epsilon mixture of 3x32x32 images and a small
random feature network in place of DDPM++ and Inception (see ``cifar.standin``); its
numbers are Frechet distances in that feature space, not FIDs. Samples are written in
shards under ``--out/samples`` and a rerun resumes them.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from adjointdpm import VPSchedule, sample
from cifar.fid import feature_statistics, frechet_distance
from cifar.generate import generate, load_samples, shard_noise, to_uint8
from cifar.standin import ImageMixture, RandomFeatures

PAPER = {  # AdjointDPM Table 1, FID over 50k samples
    "eq. 4 + AB4": {10: 9.50, 20: 8.27, 50: 5.64},
    "DPM-Solver": {10: 4.70, 20: 2.87, 50: 2.62},
    "eq. 10 + AB4": {10: 4.36, 20: 2.90, 50: 2.58},
}
SAMPLERS = {
    "eq. 4 + AB4": lambda nfe: dict(space="original", solver="adams4", steps=nfe - 6),
    "DPM-Solver": lambda nfe: dict(space="reparam", solver="dpm2", steps=nfe // 2),
    "eq. 10 + AB4": lambda nfe: dict(space="reparam", solver="adams4", steps=nfe - 6),
}
GRID = dict(spacing="logSNR", t_end=1e-3)


def run(nfes, samples: int, batch: int, out: Path, seed: int = 0, progress: bool = True) -> dict:
    schedule = VPSchedule.linear()
    model, features = ImageMixture(schedule), RandomFeatures()
    data = model.sample_data(samples, generator=torch.Generator().manual_seed(seed + 1))
    ref_stats = feature_statistics(torch.cat([features(to_uint8(d)) for d in data.split(batch)]).numpy())
    x_T = shard_noise(seed, 0, min(batch, samples), model.shape)
    exact = sample(model, x_T, schedule, steps=200, solver="dpm3", **GRID)  # the flow map, to ~1e-6
    rows = []
    for nfe in nfes:
        for name, make in SAMPLERS.items():
            cfg = dict(make(nfe), **GRID)
            folder = out / "samples" / f"{name.replace(' ', '').replace('.', '').replace('+', '_')}_nfe{nfe}"
            start = time.perf_counter()
            generate(model, schedule, folder, n=samples, batch=batch, sampler=cfg, seed=seed, shape=model.shape,
                     progress=progress)
            seconds = time.perf_counter() - start
            images = load_samples(folder, samples, batch)
            stats = feature_statistics(torch.cat([features(b) for b in images.split(batch)]).numpy())
            x, info = sample(model, x_T, schedule, return_info=True, **cfg)
            assert info.nfe_forward == nfe, (name, nfe, info.nfe_forward)
            rows.append({"nfe": nfe, "sampler": name, "frechet_distance": frechet_distance(*stats, *ref_stats),
                         "flow_map_rmse": float(((x - exact) ** 2).mean().sqrt()), "paper_fid": PAPER[name][nfe],
                         "seconds": seconds, **{k: v for k, v in cfg.items() if k in ("space", "solver", "steps")}})
    return {"mode": "stand-in", "samples": samples, "rows": rows}


def write(result: dict, out: Path) -> str:
    rows = result["rows"]
    names = list(SAMPLERS)
    lines = ["| NFE | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for nfe in dict.fromkeys(r["nfe"] for r in rows):
        cell = {r["sampler"]: r for r in rows if r["nfe"] == nfe}
        lines.append(f"| {nfe} | " + " | ".join(
            f"{cell[n]['frechet_distance']:.3f} / {cell[n]['flow_map_rmse']:.4f} (paper FID {cell[n]['paper_fid']})"
            for n in names) + " |")
    times = {n: sum(r["seconds"] for r in rows if r["sampler"] == n) for n in names}
    text = ("# Table 1: STAND-IN run (not CIFAR-10 FID)\n\n"
            "Exact-epsilon mixture of 3x32x32 images in place of DDPM++, random conv features in place of "
            f"Inception; {result['samples']} samples per cell. Each cell: Frechet distance in the stand-in "
            "feature space / RMSE against the exact flow map (paper FID beside).\n\n" + "\n".join(lines)
            + "\n\nWall time per sampler (all NFE): " + ", ".join(f"{n} {s:.1f} s" for n, s in times.items()) + "\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "table1.md").write_text(text)
    (out / "table1.json").write_text(json.dumps(result, indent=1))
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50], help="NFE budgets (each >= 8, even)")
    parser.add_argument("--samples", type=int, default=2000, help="samples per cell (default 2000)")
    parser.add_argument("--batch", type=int, default=500, help="samples per shard")
    parser.add_argument("--out", type=Path, default=Path("results/cifar"), help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    bad = [n for n in args.nfe if n < 8 or n % 2]
    if bad:
        raise SystemExit(f"--nfe: each budget must be even and >= 8 (Adams-Bashforth start-up uses 6 "
                         f"evaluations; DPM-Solver-2 uses 2 per step), got {bad}")
    print(write(run(args.nfe, args.samples, args.batch, args.out, args.seed), args.out))
    print(f"wrote table1.md and table1.json to {args.out}/")


if __name__ == "__main__":
    main()
