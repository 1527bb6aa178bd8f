"""Generate samples in shards that survive interruption and can never be mixed up.

Shard ``i`` holds samples ``[i * batch, (i + 1) * batch)``; their noise is row ``j - i * batch``
of the ``batch`` rows drawn from the generator seeded by ``(seed, i)``, so sample ``j``
depends only on ``(seed, batch, j)``: not on ``n``, on which process made it, how many
there were, or whether the run was resumed. Under ``torchrun`` each rank takes the shards
``i = rank, rank + world, ...`` (from ``RANK`` / ``WORLD_SIZE``).

What makes the work is its key (:func:`adjointdpm.tools.files.claim`: seed, shard size, sampler,
shape, the schedule's and the model's fingerprints, in ``settings.json``): a folder made with other settings
is refused with one line naming the difference. A shard is finished only when it loads and
holds exactly the samples this run needs; a partial, truncated or corrupt one is named and
made again. Files are written atomically through temporaries unique to the process; each
rank holds a lock on its share, so a second run of the same rank on the folder is refused
instead of doing the work twice. Each shard holds the uint8 images and the seconds its
sampling took, so wall time survives a resume.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from adjointdpm import VPSchedule, sample
from adjointdpm.tools import files
from adjointdpm.seeds import mix_seed


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] to uint8 in [0, 255] (score_sde's convention)."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def shard_noise(seed: int, shard: int, batch: int, shape) -> torch.Tensor:
    """The initial noise of shard ``shard``: ``batch`` rows (a last, shorter shard takes the first rows)."""
    gen = torch.Generator().manual_seed(mix_seed(seed, shard))
    return torch.randn(batch, *shape, generator=gen)


def _shard(out_dir: Path, i: int) -> Path:
    return out_dir / f"shard_{i:05d}.pt"


def _count(n: int, batch: int, i: int) -> int:
    return min(batch, n - i * batch)


def _read(path: Path, count: int, shape=None) -> dict:
    """A finished shard's content; a ``ValueError`` naming it if it is unreadable or holds other samples
    than the ``count`` of ``shape`` (any shape if ``None``) this run needs."""
    shard = files.load(path, "sample shard")
    images = shard.get("images") if isinstance(shard, dict) else None
    if (not torch.is_tensor(images) or images.dtype != torch.uint8 or images.dim() < 1 or len(images) != count
            or (shape is not None and tuple(images.shape[1:]) != tuple(shape))):
        found = f"{tuple(images.shape)} {images.dtype}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"sample shard {path} holds {found}, not the {count} uint8 samples"
                         + (f" of shape {tuple(shape)}" if shape is not None else "") + " this run needs")
    return shard


def schedule_key(schedule: VPSchedule) -> str:
    """A fingerprint of the schedule's content, ``log alpha_t`` on 1000 times in (t_min, T]: two schedules
    key alike only if they are the same function there, whatever class or constructor made them."""
    ts = torch.linspace(schedule.T, schedule.t_min, 1001, dtype=torch.float64)[:-1]
    return files.fingerprint(schedule.log_alpha(ts))


def _finished(out_dir: Path, i: int, count: int, shape, quiet: bool = False) -> bool:
    """Whether shard ``i`` exists and holds the ``count`` samples this run needs; an unfit one is named
    (unless ``quiet``)."""
    if not _shard(out_dir, i).exists():
        return False
    try:
        _read(_shard(out_dir, i), count, shape)
    except ValueError as err:
        if not quiet:
            tqdm.write(f"{err}: making it again", file=sys.stderr)
        return False
    return True


def generate(model, schedule: VPSchedule, out_dir, *, n: int, batch: int, sampler: dict, seed: int = 0,
             shape=(3, 32, 32), device=None, rank: int | None = None, world: int | None = None,
             model_key: str | None = None, progress: bool = True) -> list[Path]:
    """Write ``n`` samples as ``shard_XXXXX.pt`` (``{"images": uint8 (count, *shape), "seconds"}``) under ``out_dir``;
    ``sampler`` holds the keyword arguments of :func:`adjointdpm.sample` (steps, solver, ...); ``model_key``
    identifies the model in the folder's key (default: :func:`adjointdpm.tools.files.fingerprint` of its weights)."""
    if n < 1 or batch < 1:
        raise ValueError(f"n and batch must be >= 1, got n={n}, batch={batch}")
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    world = int(os.environ.get("WORLD_SIZE", 1)) if world is None else world
    device = device or next(model.parameters()).device
    out_dir = Path(out_dir)
    files.claim(out_dir, {"seed": seed, "batch": batch, "shape": list(shape), "sampler": sampler,
                          "schedule": schedule_key(schedule), "model": model_key or files.fingerprint(model)},
                "samples folder")
    shards = range(rank, -(-n // batch), world)
    todo = [i for i in shards if not _finished(out_dir, i, _count(n, batch, i), shape)]
    if not todo:  # a finished folder is read without its lock, so it can be read-only
        return [_shard(out_dir, i) for i in shards]
    with files.exclusive(out_dir, f".rank{rank}.lock"):
        for i in tqdm(todo, desc=f"sampling (rank {rank}/{world})", disable=not progress):
            if _finished(out_dir, i, _count(n, batch, i), shape, quiet=True):  # by a run that held the lock first
                continue
            x_T = shard_noise(seed, i, batch, shape)[:_count(n, batch, i)].to(device)
            start = time.perf_counter()
            images = to_uint8(sample(model, x_T, schedule, **sampler)).cpu()
            files.save_atomic({"images": images, "seconds": time.perf_counter() - start}, _shard(out_dir, i))
    return [_shard(out_dir, i) for i in shards]


def read_shards(out_dir, n: int, batch: int, shape=None) -> tuple[torch.Tensor, float]:
    """All ``n`` samples in order, and the sampling seconds summed over their shards
    (GPU-seconds when several ranks made them); an error names the shards missing or unfit."""
    out_dir = Path(out_dir)
    paths = [_shard(out_dir, i) for i in range(-(-n // batch))]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise ValueError(f"{out_dir}: {len(missing)} shards missing ({', '.join(missing[:5])} ...): run generation "
                         "again to finish them")
    shards = [_read(p, _count(n, batch, i), shape) for i, p in enumerate(paths)]
    return torch.cat([s["images"] for s in shards]), sum(float(s["seconds"]) for s in shards)
