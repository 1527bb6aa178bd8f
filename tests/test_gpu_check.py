"""The GPU check's CPU side: it refuses a device this machine lacks, runs its parts as processes and
records each as it finishes (a rerun skips it), and writes its report from the recorded JSON alone."""
import json

import pytest
import torch

from helpers import one_line_error
from stable_diffusion import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_cuda_the_default_device_is_refused_at_the_door(capsys, tmp_path):
    one_line_error(gpu_check.main, ["--out", str(tmp_path)], capsys,
                   "argument --device: 'cuda': this machine has no CUDA device (use cpu)")


def test_the_gradients_part_runs_on_the_device_it_names_and_a_rerun_keeps_it(tmp_path, capsys):
    gpu_check.main(["--device", "cpu", "--quick", "--parts", "gradients", "--out", str(tmp_path)])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    part = report["parts"]["gradients"]
    assert part["ok"] and part["failed"] == part["skipped"] == 0 and part["passed"] >= 14
    assert "-k cpu" in part["commands"][0]  # the CPU's copies of the device tests, not the skipped CUDA ones
    gpu_check.main(["--device", "cpu", "--quick", "--parts", "gradients", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "gpu_check.json").read_text())["parts"]["gradients"] == part  # not run again


def test_the_report_is_written_from_the_recorded_json_alone():
    row = {"model": "sd15-random", "resolution": 512, "dtype": "float16", "strategy": "adjointdeis", "steps": 10,
           "peak_gib": 2.5, "setup_gib": 1.75, "reserved_gib": 4.5, "seconds": 3.25}
    report = {"device": "cuda", "device_name": "NVIDIA H200", "torch": "2.11.0", "cuda": "12.8", "python": "3.12.3",
              "quick": False, "dtypes": ["float16"],
              "parts": {"gradients": {"ok": True, "seconds": 20.0, "errors": [], "passed": 14, "failed": 0, "skipped": 0},
                        "sd15": {"ok": False, "seconds": 300.0, "errors": [["RuntimeError: CUDA out of memory"]],
                                 "rows": [row]}}}
    text = gpu_check.markdown(json.loads(json.dumps(report)))
    assert text.startswith("# GPU check on NVIDIA H200 (cuda)")
    assert "| gradients | ok | 20 | 14 passed, 0 failed, 0 skipped |" in text
    assert "| sd15 | FAILED | 300 | RuntimeError: CUDA out of memory |" in text
    assert "| sd15-random | 512 | float16 | adjointdeis | 10 | 2.5 | 1.75 | 4.5 | 3.25 |" in text
    assert "peak above set-up GiB (CUDA allocated)" in text
