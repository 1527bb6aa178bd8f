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
