"""Sharded generation: an interrupted run resumes without recomputing finished shards,
and the result equals an uninterrupted run's, whatever the number of ranks."""
import pytest
import torch
from torch import nn

from adjointdpm import VPSchedule
from cifar import generate as gen

SAMPLER = dict(steps=3, solver="dpm2")


class Shrink(nn.Module):
    """A smooth stand-in eps-model that counts its calls."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.5))
        self.calls = 0

    def forward(self, x, t, cond=None):
        self.calls += 1
        return self.scale * torch.tanh(x)


def test_resume_after_interruption_and_ranks(tmp_path):
    sched = VPSchedule.linear()
    model = Shrink()
    reference = tmp_path / "full"
    gen.generate(model, sched, reference, n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4), progress=False)
    full = gen.load_samples(reference, 10, 4)
    assert full.shape == (10, 3, 4, 4) and full.dtype == torch.uint8

    # interrupted: the second shard's model call fails
    broken, run = Shrink(), tmp_path / "resumed"
    calls_per_shard = 2 * SAMPLER["steps"]

    def failing(x, t, cond=None):
        if broken.calls >= calls_per_shard:
            raise KeyboardInterrupt
        broken.calls += 1
        return broken.scale * torch.tanh(x)
    broken.forward = failing
    with pytest.raises(KeyboardInterrupt):
        gen.generate(broken, sched, run, n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4), progress=False)
    assert sorted(p.name for p in run.iterdir()) == ["shard_00000.pt"]  # no partial file left
    with pytest.raises(ValueError, match="2 shards missing"):
        gen.load_samples(run, 10, 4)
    first = (run / "shard_00000.pt").stat().st_mtime_ns

    # resumed as two ranks: only the two missing shards are computed
    counter = Shrink()
    for rank in (0, 1):
        gen.generate(counter, sched, run, n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4), rank=rank, world=2,
                     progress=False)
    assert counter.calls == 2 * calls_per_shard
    assert (run / "shard_00000.pt").stat().st_mtime_ns == first
    assert torch.equal(gen.load_samples(run, 10, 4), full)
