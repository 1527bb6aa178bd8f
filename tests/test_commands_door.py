"""Every command refuses a user's mistake at the door: one line naming the argument, exit
status 2, no traceback, nothing computed (the cases of issue 15's probe list)."""
import pytest
import torch

from helpers import one_line_error
from stable_diffusion import bench as sd_bench
from toy import apps as toy_apps, bench as toy_bench, reproduce

A_FILE = __file__
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


@pytest.mark.parametrize("main,argv,message", [
    (toy_bench.main, ["--repeats", "0"], "argument --repeats: must be an integer from 1 to 1,000"),
    (toy_bench.main, ["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (toy_bench.main, ["--out", A_FILE], "is a file, not a folder"),
    (toy_apps.main, ["guided", "--out", A_FILE], "argument --out: " + A_FILE + " is a file, not a folder"),
    (toy_apps.main, ["audit", "--iters", "0"], "argument --iters: must be an integer from 1 to 100,000"),
    (toy_apps.main, ["audit", "--seed", "-2"], "argument --seed: must be an integer >= 0, got '-2'"),
    (reproduce.main, ["--out", A_FILE], "argument --out: " + A_FILE + " is a file, not a folder"),
    (sd_bench.main, ["--model", "tiny", "--steps", "0"], "argument --steps: must be an integer from 1 to 10,000"),
    (sd_bench.main, ["--model", "tiny", "--steps", "8", "8"], "argument --steps: give each value once"),
    (sd_bench.main, ["--model", "tiny", "--resolution", "100"], "argument --resolution: must be a multiple of 64"),
    (sd_bench.main, ["--model", "tiny", "--repeats", "-1"], "argument --repeats: must be an integer from 0 to 1,000"),
    (sd_bench.main, ["--model", str(__import__("pathlib").Path(A_FILE).parent)], "lacks the subfolders"),
])
def test_mistakes_stop_at_the_door(main, argv, message, capsys):
    one_line_error(main, argv, capsys, message)


@NO_GPU
@pytest.mark.parametrize("main,argv", [
    (toy_bench.main, ["--device", "cuda"]),
    (sd_bench.main, ["--model", "tiny", "--device", "cuda"]),
])
def test_cuda_without_a_gpu(main, argv, capsys):
    one_line_error(main, argv, capsys, "argument --device: 'cuda': this machine has no CUDA device (use cpu)")


@pytest.mark.parametrize("module,argv,message", [
    ("stable_diffusion", ["guided", "--model", "tiny", "--prompt", "a", "--target", "1", "--steps", "1000000000"],
     "argument --steps: must be an integer from 1 to 10,000"),
    ("stable_diffusion", ["guided", "--model", "tiny", "--prompt", "a", "--target", "1", "--shifts", "1000000000"],
     "argument --shifts: must be an integer from 0 to 64"),
    ("cifar.table1", ["--nfe", "1000000000"], "argument --nfe: must be an integer from 1 to 10,000"),
    ("cifar.table1", ["--batch", "1000000000"], "argument --batch: must be an integer from 1 to 10,000"),
    ("stable_diffusion", ["guided", "--model", "tiny", "--prompt", "a", "--target", "1", "--out", A_FILE + "/sub"],
     "argument --out: " + A_FILE + "/sub cannot be written: Not a directory"),
])
def test_absurd_sizes_and_unwritable_folders_are_refused_at_once(module, argv, message):
    """In a fresh process, as a user types it: refused within seconds, before anything is computed."""
    import subprocess
    import sys
    import time
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert time.perf_counter() - start < 30  # the import of torch and diffusers is most of it


def test_bounds_are_stated_in_help():
    from adjointdpm.tools import cli
    for kind, (upper, why) in cli.BOUNDS.items():
        assert f"{upper:,}" in cli.bound_help(kind) and why in cli.bound_help(kind)
    from stable_diffusion.__main__ import parser
    sub = next(a for a in parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict))
    text = " ".join(sub.choices["guided"].format_help().split())
    assert "sampler steps (default 20; at most 10,000: DDPM's chain has 1000 steps" in text
    assert "(default 0; at most 64: each shift is one more classifier pass" in text
