"""Generate samples in shards that survive interruption.

Shard ``i`` holds samples ``[i * batch, (i + 1) * batch)`` drawn from noise seeded by
``(seed, i)`` only, so a shard's content does not depend on which process made it, how
many there were, or whether the run was resumed. Under ``torchrun`` each rank takes the
shards ``i = rank, rank + world, ...`` (from ``RANK`` / ``WORLD_SIZE``); a finished shard
(its file exists) is never recomputed. Files are written atomically; each holds the
uint8 images and the seconds its sampling took, so wall time survives a resume.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from tqdm import tqdm

from adjointdpm import VPSchedule, sample


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255] (score_sde's convention)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def shard_noise(seed: int, shard: int, count: int, shape) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + shard)
    return torch.randn(count, *shape, generator=gen)


def generate(model, schedule: VPSchedule, out_dir, *, n: int, batch: int, sampler: dict, seed: int = 0,
             shape=(3, 32, 32), device=None, rank: int | None = None, world: int | None = None,
             progress: bool = True) -> list[Path]:
    """Write ``n`` samples as ``shard_XXXXX.pt`` (``{"images": uint8 (count, *shape), "seconds"}``) under ``out_dir``;
    ``sampler`` holds the keyword arguments of :func:`adjointdpm.sample` (steps, solver, ...)."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    device = device or next(model.parameters()).device
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = range(rank, -(-n // batch), world)
    todo = [i for i in shards if not (out_dir / f"shard_{i:05d}.pt").exists()]
    for i in tqdm(todo, desc=f"sampling (rank {rank}/{world})", disable=not progress):
        count = min(batch, n - i * batch)
        x_T = shard_noise(seed, i, count, shape).to(device)
        start = time.perf_counter()
        images = to_uint8(sample(model, x_T, schedule, **sampler)).cpu()
        tmp = out_dir / f".shard_{i:05d}.pt.tmp"
        torch.save({"images": images, "seconds": time.perf_counter() - start}, tmp)
        os.replace(tmp, out_dir / f"shard_{i:05d}.pt")
    return [out_dir / f"shard_{i:05d}.pt" for i in shards]


def read_shards(out_dir, n: int, batch: int) -> tuple[torch.Tensor, float]:
    """All ``n`` samples in order, and the sampling seconds summed over their shards
    (GPU-seconds when several ranks made them); an error names the shards still missing."""
    out_dir = Path(out_dir)
    paths = [out_dir / f"shard_{i:05d}.pt" for i in range(-(-n // batch))]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"{out_dir}: {len(missing)} shards missing ({', '.join(missing[:5])} ...): run generation "
                         "again to finish them")
    shards = [torch.load(p, weights_only=True) for p in paths]
    return torch.cat([s["images"] for s in shards])[:n], sum(s["seconds"] for s in shards)


def load_samples(out_dir, n: int, batch: int) -> torch.Tensor:
    """All ``n`` samples, in order (see :func:`read_shards`)."""
    return read_shards(out_dir, n, batch)[0]
