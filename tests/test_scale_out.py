"""The scale-out paths, with two real processes on CPU (gloo): the commands the README gives a user.

* ``torchrun --nproc_per_node 2 -m cifar.table1``: the ranks' shards together are the shards one
  process writes, byte for byte, and rank 0's table is the one process's table; a run killed
  mid-way resumes without making a finished shard again.
* ``accelerate launch --multi_gpu --num_processes 2 -m stable_diffusion stylize`` (accelerate's
  launcher is torchrun's; on a CPU machine the processes train on the CPU with gloo): the trained
  weights are those of one process with the same batch, to round-off; only the main process writes
  results; a resumed run continues from the saved step.

Run them alone with ``pytest -m scale_out``.
"""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.scale_out
BIN = Path(sys.executable).parent
TABLE1 = ["-m", "cifar.table1", "--nfe", "8", "--grids", "logSNR", "--batch", "2"]


def _run(argv, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, **kw)


def _torchrun(*argv):
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000), *argv]


def _shards(out: Path) -> dict:
    """Each shard's images (a shard also holds its wall time, which differs from run to run)."""
    return {str(p.relative_to(out)): torch.load(p, weights_only=True)["images"] for p in sorted(out.rglob("shard_*.pt"))}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_table1_under_torchrun_equals_one_process_and_a_killed_run_resumes(tmp_path):
    one, two, killed = tmp_path / "one", tmp_path / "two", tmp_path / "killed"
    samples = ["--samples", "300"]
    assert _run([sys.executable, *TABLE1, *samples, "--out", str(one)]).returncode == 0
    done = _run(_torchrun(*TABLE1, *samples, "--out", str(two)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert _same(_shards(two), _shards(one)) and len(_shards(one)) == 3 * 150  # both ranks' shards: one process's
    table = lambda out: json.loads((out / "table1.json").read_text())  # noqa: E731
    assert table(two) == table(one)

    # killed (SIGKILL to every process) once rank 1 has finished a shard, then the same command again
    proc = subprocess.Popen(_torchrun(*TABLE1, *samples, "--out", str(killed)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    first = killed / "samples" / "stand-in" / "logSNR"
    while proc.poll() is None and not list(first.glob("*/shard_00001.pt")):
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in killed.rglob("shard_*.pt")}
    assert 0 < len(finished) < 3 * 150, "the run was not killed mid-way"
    assert _run(_torchrun(*TABLE1, *samples, "--out", str(killed))).returncode == 0
    assert all((p.stat().st_ino, p.stat().st_mtime_ns) == was for p, was in finished.items())  # none made again
    assert _same(_shards(killed), _shards(one)) and table(killed) == table(one)


STYLIZE = ["-m", "stable_diffusion", "stylize", "--model", "tiny", "--features", "digits", "--style-image",
           "sklearn:china.jpg", "--prompts", "a digit", "a two", "--seeds", "0", "1", "--steps", "2", "--batch", "2",
           "--save-every", "1", "--no-progress"]


def _accelerate(*argv):
    return [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
            str(29600 + os.getpid() % 1000), *argv]


def _weights(out: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(out / "unet" / "diffusion_pytorch_model.safetensors")


def test_stylize_under_accelerate_trains_what_one_process_trains_and_resumes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    done = _run([sys.executable, *STYLIZE, "--epochs", "2", "--out", str(one)])
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run(_accelerate(*STYLIZE, "--epochs", "1", "--out", str(two)))  # half, then resumed to the same end
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((two / "stylize.json").read_text())["processes"] == 2
    assert torch.load(two / "checkpoint.pt", weights_only=True)["step"] == 2  # 4 pairs, 2 a step: 2 steps an epoch
    done = _run(_accelerate(*STYLIZE, "--epochs", "2", "--out", str(two)))
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = _weights(one), _weights(two)
    from stable_diffusion.components import tiny_components
    start = tiny_components().unet.state_dict()
    moved = max(float((a[k] - start[k]).abs().max()) for k in a)
    apart = max(float((a[k] - b[k]).abs().max()) for k in a)
    # float32 round-off of a mean taken in two halves, far below what the four AdamW steps moved the weights
    assert moved > 1e-4 and apart < 1e-3 * moved
    r1, r2 = (json.loads((out / "stylize.json").read_text()) for out in (one, two))
    assert len(r2["losses"]) == 4 and r2["losses"] == pytest.approx(r1["losses"], rel=1e-5)  # the step's whole loss
    # only the main process writes: one process's files (less rank 1's content targets, kept in its memory), and
    # rank 1's lock, which keeps a second run's rank 1 out
    names = lambda out: {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}  # noqa: E731
    assert names(two) == names(one) - {"content/pair_00001.pt", "content/pair_00003.pt"} | {".lock.1"}
