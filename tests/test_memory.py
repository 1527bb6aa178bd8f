"""Bytes autograd keeps for backward (saved-tensor hooks): flat in steps for the adjoint,
linear for backprop."""
import pytest
import torch

from adjointdpm import Adjoint, AdjointDEIS, Backprop, Checkpoint, TorchdiffeqAdjoint, VPSchedule, sample
from adjointdpm.tools.memory import saved_bytes_during
from toy import EpsMLP


def saved_bytes(gradient, steps, solver="dpm2"):
    torch.manual_seed(0)
    model = EpsMLP(dim=2, hidden=64, depth=3)
    x_T = torch.randn(256, 2, requires_grad=True)
    x, total = saved_bytes_during(
        lambda: sample(model, x_T, VPSchedule.linear(), steps=steps, solver=solver, gradient=gradient))
    x.sum().backward()  # the graph is usable
    assert x_T.grad is not None and model.net[0].weight.grad is not None
    return total


@pytest.mark.parametrize("make,solver", [(Adjoint, "dpm2"), (lambda: AdjointDEIS(2, form="noise"), "dpm2"),
                                         (lambda: AdjointDEIS(1, form="data"), "dpm2"),
                                         (lambda: AdjointDEIS(2, form="data"), "dpm2"), (TorchdiffeqAdjoint, "rk4")],
                         ids=["Adjoint", "AdjointDEIS-noise", "AdjointDEIS-1-data", "AdjointDEIS-2-data",
                              "Adjoint-torchdiffeq"])
def test_adjoint_memory_is_flat_in_steps(make, solver):
    assert saved_bytes(make(), 40, solver) == saved_bytes(make(), 10, solver)


def test_backprop_memory_grows_linearly_in_steps():
    b10, b20, b40 = (saved_bytes(Backprop(), n) for n in (10, 20, 40))
    assert (b40 - b20) == 2 * (b20 - b10)  # every step stores the same activations
    assert b40 > 3 * saved_bytes(Adjoint(), 40)


def test_checkpoint_stores_states_not_activations():
    ckpt = saved_bytes(Checkpoint(), 40)
    assert ckpt < saved_bytes(Backprop(), 40) / 5


def _in_fresh_process(code: str, **env) -> dict:
    """Run ``code`` (which prints one JSON line) in a new interpreter: the allocator's settings are per process."""
    import json
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ, **env))
    return json.loads(out.stdout.strip().splitlines()[-1])


LIVE_AND_RESIDENT = """
import json, torch, psutil
from adjointdpm.tools.memory import LivePeak, live_bytes, return_freed_memory, trim
MiB = 2 ** 20
fixed = {fixed}
if fixed:
    assert return_freed_memory()
rss = lambda: psutil.Process().memory_info().rss
torch.ones(1)  # the library's own first allocations, before anything is counted
trim()
live0, rss0 = live_bytes(), rss()
with LivePeak() as peak:
    big = torch.ones(64 * MiB // 4)
    live_big = live_bytes()
    del big
# glibc raises its mmap threshold to a freed mapped block's size: from here on, tensors below 16 MiB come
# from the heap, and a free between live blocks stays resident (what Checkpoint's backward does at scale)
torch.ones(16 * MiB // 4)  # made and freed at once
tensors = [torch.ones(int((1 + i % 7) * MiB) // 4) for i in range(96)]
kept = tensors[::2]
kept_bytes = sum(t.numel() * 4 for t in kept)
del tensors
print(json.dumps({{"big": live_big - live0, "peak": peak.peak - peak.start, "live_after": live_bytes() - live0,
                  "rss_after": rss() - rss0, "kept": kept_bytes}}))
"""


def test_live_bytes_count_a_tensor_and_its_high_water_mark():
    from adjointdpm.tools.memory import live_bytes
    if live_bytes() is None:
        pytest.skip("not glibc: live bytes are unknown")
    r = _in_fresh_process(LIVE_AND_RESIDENT.format(fixed=False))
    MiB = 2 ** 20
    assert 64 * MiB <= r["big"] <= 64 * MiB + MiB  # one 64 MiB tensor: its bytes and a page of bookkeeping
    assert r["peak"] >= 64 * MiB  # seen by the sampling thread (a lower bound of the peak), then freed
    assert r["kept"] <= r["live_after"] <= r["kept"] + 4 * MiB


def test_returning_freed_memory_makes_the_resident_size_follow_the_live_bytes():
    from adjointdpm.tools.memory import live_bytes
    if live_bytes() is None:
        pytest.skip("not glibc: the allocator's settings do not apply")
    MiB = 2 ** 20
    default = _in_fresh_process(LIVE_AND_RESIDENT.format(fixed=False))
    assert default["rss_after"] > default["kept"] + 64 * MiB  # freed blocks kept resident
    fixed = _in_fresh_process(LIVE_AND_RESIDENT.format(fixed=True))
    # every block is mapped on its own and unmapped when freed: what is resident is what is live
    assert fixed["rss_after"] <= fixed["kept"] + 8 * MiB
    # the same without code, as the README says: glibc's environment variable
    by_env = _in_fresh_process(LIVE_AND_RESIDENT.format(fixed=False), MALLOC_MMAP_THRESHOLD_="131072")
    assert by_env["rss_after"] <= by_env["kept"] + 8 * MiB


# ---------------------------------------------------------------------------------------------
# run_in_fresh_process: on the CPU, each case a child of a fork server that imported the module once

CASE = """import json, os, sys
if __name__ == "__main__":
    import heavy_import  # imported by the case, as a model's classes are (only the preload brings it in earlier)
    if sys.argv[1] == "refuse":
        raise ValueError("no such model")
    if sys.argv[1] == "crash":
        raise KeyError("a bug")
    if sys.argv[1] == "sleep":
        open(sys.argv[2], "w").write(str(os.getpid()))
        import time
        time.sleep(60)
    print("noise first")
    print(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:], "cwd": os.getcwd(), "imports": heavy_import.COUNT}))
"""


@pytest.fixture
def case_module(tmp_path, monkeypatch):
    """``fresh_case``, a module that reports what it sees, and ``heavy_import``, which counts its imports in a file."""
    (tmp_path / "fresh_case.py").write_text(CASE)
    (tmp_path / "heavy_import.py").write_text(
        f"import pathlib\np = pathlib.Path({str(tmp_path / 'imports')!r})\n"
        "COUNT = len(p.read_text()) + 1 if p.exists() else 1\np.write_text('x' * COUNT)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "fresh_case"
    from adjointdpm.tools import forkserver
    forkserver.close()


def test_each_case_is_a_process_of_its_own_that_runs_the_module_as_python_m_would(case_module, tmp_path, monkeypatch):
    import os
    from adjointdpm.tools import forkserver
    from adjointdpm.tools.memory import run_in_fresh_process
    for name in ("here", "there"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "here")
    first = run_in_fresh_process(case_module, "a", 1, preload=("heavy_import",))
    monkeypatch.chdir(tmp_path / "there")  # the caller's working folder at each case, not the server's
    second = run_in_fresh_process(case_module, "b", 2, preload=("heavy_import",))
    assert first["argv"] == ["a", "1"] and second["argv"] == ["b", "2"]
    assert first["cwd"] == str(tmp_path / "here") and second["cwd"] == str(tmp_path / "there")
    assert len({first["pid"], second["pid"], os.getpid()}) == 3
    assert first["imports"] == second["imports"] == 1  # imported once, by the server (preload), before either case
    with pytest.raises(ValueError, match="^no such model$"):
        run_in_fresh_process(case_module, "refuse", preload=("heavy_import",))
    with pytest.raises(RuntimeError, match="KeyError: 'a bug'"):
        run_in_fresh_process(case_module, "crash", preload=("heavy_import",))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # where a new interpreter finds the module
    servers = dict(forkserver._SERVERS)
    on_cuda = run_in_fresh_process(case_module, "c", device="cuda")  # a new interpreter, which imports anew
    assert on_cuda["argv"] == ["c"] and on_cuda["imports"] == 2 and on_cuda["cwd"] == str(tmp_path / "there")
    assert forkserver._SERVERS == servers  # and no server was started for it


def test_a_caller_that_stops_waiting_leaves_no_case_running(case_module, tmp_path):
    import signal
    import time
    import psutil
    from adjointdpm.tools import forkserver
    from adjointdpm.tools.memory import run_in_fresh_process
    pid_file = tmp_path / "pid"

    def stop(signum, frame):  # once the case runs (the server's start-up imports PyTorch first)
        if pid_file.exists() and pid_file.read_text():
            raise TimeoutError
    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    try:
        with pytest.raises(TimeoutError):
            run_in_fresh_process(case_module, "sleep", pid_file)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    child = psutil.Process(int(pid_file.read_text())) if psutil.pid_exists(int(pid_file.read_text())) else None
    deadline = time.monotonic() + 10
    while child is not None:
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        assert time.monotonic() < deadline, "the case still runs"
        time.sleep(0.05)
    assert not [key for key in forkserver._SERVERS if key[0] == case_module]  # its server is stopped: no reply left
    assert run_in_fresh_process(case_module, "d")["argv"] == ["d"]  # a new server serves the next case
