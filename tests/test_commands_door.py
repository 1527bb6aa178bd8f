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
    (toy_bench.main, ["--repeats", "0"], "argument --repeats: must be an integer >= 1, got '0'"),
    (toy_bench.main, ["--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (toy_bench.main, ["--out", A_FILE], "is a file, not a folder"),
    (toy_apps.main, ["guided", "--out", A_FILE], "argument --out: " + A_FILE + " is a file, not a folder"),
    (toy_apps.main, ["audit", "--iters", "0"], "argument --iters: must be an integer >= 1, got '0'"),
    (toy_apps.main, ["audit", "--seed", "-2"], "argument --seed: must be an integer >= 0, got '-2'"),
    (reproduce.main, ["--out", A_FILE], "argument --out: " + A_FILE + " is a file, not a folder"),
    (sd_bench.main, ["--model", "tiny", "--steps", "0"], "argument --steps: must be an integer >= 1, got '0'"),
    (sd_bench.main, ["--model", "tiny", "--steps", "8", "8"], "argument --steps: give each value once"),
    (sd_bench.main, ["--model", "tiny", "--resolution", "100"], "argument --resolution: must be a multiple of 64"),
    (sd_bench.main, ["--model", "tiny", "--repeats", "-1"], "argument --repeats: must be an integer >= 0"),
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
