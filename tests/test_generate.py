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
    full = gen.read_shards(reference, 10, 4)[0]
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
    assert sorted(p.name for p in run.iterdir() if p.name != ".rank0.lock") == ["settings.json", "shard_00000.pt"]
    from adjointdpm.tools import files
    with files.exclusive(run, ".rank0.lock"):  # no partial file, and the lock was released with the interruption
        pass
    with pytest.raises(ValueError, match="2 shards missing"):
        gen.read_shards(run, 10, 4)[0]
    first = (run / "shard_00000.pt").stat().st_mtime_ns

    # resumed as two ranks: only the two missing shards are computed
    counter = Shrink()
    for rank in (0, 1):
        gen.generate(counter, sched, run, n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4), rank=rank, world=2,
                     progress=False)
    assert counter.calls == 2 * calls_per_shard
    assert (run / "shard_00000.pt").stat().st_mtime_ns == first
    assert torch.equal(gen.read_shards(run, 10, 4)[0], full)


def _make(path, **kw):
    args = dict(n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4), progress=False) | kw
    model = Shrink()
    gen.generate(model, VPSchedule.linear(), path, **args)
    return model.calls


def test_other_settings_in_the_same_folder_are_refused(tmp_path):
    _make(tmp_path, seed=3)
    with pytest.raises(ValueError, match=r"other settings: seed=3 \(now 4\)"):
        _make(tmp_path, seed=4)
    with pytest.raises(ValueError, match=r"batch=4 \(now 5\)"):
        _make(tmp_path, seed=3, batch=5)
    other = Shrink()
    with torch.no_grad():
        other.scale.fill_(0.7)
    with pytest.raises(ValueError, match="model="):
        gen.generate(other, VPSchedule.linear(), tmp_path, n=10, batch=4, sampler=SAMPLER, shape=(3, 4, 4),
                     seed=3, progress=False)


def test_more_samples_remake_the_partial_shard_and_sample_j_keeps_its_noise(tmp_path):
    _make(tmp_path, n=6)  # shard 1 holds 2 of its 4 samples
    six = gen.read_shards(tmp_path, 6, 4)[0]
    assert _make(tmp_path, n=10) == 2 * 2 * SAMPLER["steps"]  # shard 1 made again, shard 2 new
    ten = gen.read_shards(tmp_path, 10, 4)[0]
    assert ten.shape[0] == 10 and torch.equal(ten[:6], six)
    _make(tmp_path / "fresh", n=10)
    assert torch.equal(ten, gen.read_shards(tmp_path / "fresh", 10, 4)[0])


def test_a_truncated_shard_is_named_and_made_again(tmp_path, capsys):
    _make(tmp_path)
    good = gen.read_shards(tmp_path, 10, 4)[0]
    shard = tmp_path / "shard_00001.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(ValueError, match=f"sample shard {shard} cannot be read"):
        gen.read_shards(tmp_path, 10, 4)[0]
    assert _make(tmp_path) == 2 * SAMPLER["steps"]  # that shard only
    assert "shard_00001.pt cannot be read" in capsys.readouterr().err
    assert torch.equal(gen.read_shards(tmp_path, 10, 4)[0], good)


def test_a_second_run_of_the_same_rank_is_refused(tmp_path):
    from adjointdpm.tools import files
    with files.exclusive(tmp_path, ".rank0.lock"):  # as a live run holds it
        with pytest.raises(ValueError, match="another run .* is writing to"):
            _make(tmp_path)
    _make(tmp_path, rank=1, world=2)  # other ranks cooperate


def test_samples_are_keyed_by_the_schedule(tmp_path):
    """A cosine-schedule call into a linear-schedule folder is refused, not answered with the linear samples;
    the same schedule built by another call resumes."""
    model, kw = Shrink(), dict(n=4, batch=4, sampler=SAMPLER, shape=(3, 4, 4), progress=False)
    gen.generate(model, VPSchedule.linear(), tmp_path / "linear", **kw)
    gen.generate(model, VPSchedule.cosine(), tmp_path / "cosine", **kw)
    linear, cosine = (gen.read_shards(tmp_path / name, 4, 4)[0] for name in ("linear", "cosine"))
    assert not torch.equal(linear, cosine)  # the schedule changes the samples: it must be in the key
    with pytest.raises(ValueError, match="holds work made with other settings: schedule="):
        gen.generate(model, VPSchedule.cosine(), tmp_path / "linear", **kw)
    calls = model.calls
    gen.generate(model, VPSchedule.linear(beta_min=0.1, beta_max=20.0), tmp_path / "linear", **kw)
    assert model.calls == calls


def test_a_finished_folder_is_read_without_its_lock(tmp_path):
    """Nothing to make: no lock is taken, so a finished folder can be read-only (or in use by a reader)."""
    model, kw = Shrink(), dict(n=4, batch=4, sampler=SAMPLER, shape=(3, 4, 4), progress=False)
    gen.generate(model, VPSchedule.linear(), tmp_path, **kw)
    from adjointdpm.tools import files
    with files.exclusive(tmp_path, ".rank0.lock"):  # another process holding the lock would refuse a writer
        gen.generate(model, VPSchedule.linear(), tmp_path, **kw)
