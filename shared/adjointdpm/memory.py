"""Memory measurement.

* Bytes autograd keeps for backward (:func:`saved_bytes_during`, saved-tensor hooks): exact
  and deterministic, for tests and tables.
* Peak memory for benchmarks: ``torch.cuda.max_memory_allocated`` on CUDA, the resident
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) on Linux CPU. Measure
  one case per process (:func:`run_in_fresh_process`) so a high-water mark is that case's own.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch


def saved_bytes_during(fn, exclude=frozenset()):
    """Run ``fn`` and count the bytes autograd packs for backward; returns ``(fn(), bytes)``.
    Tensors whose ``data_ptr()`` is in ``exclude`` (e.g. the weights, which autograd saves
    for the input's gradient but which exist anyway) are not counted."""
    total = 0

    def pack(tensor):
        nonlocal total
        if tensor.data_ptr() not in exclude:
            total += tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = fn()
    return out, total


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak(device) -> int:
    """Start a measurement; returns the level (bytes) it is measured from."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS") * 1024


def peak(device) -> int:
    """The high-water mark (bytes) since :func:`reset_peak`."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return _status_kib("VmHWM") * 1024


def run_in_fresh_process(module: str, *args) -> dict:
    """Run ``python -m module *args`` in a new process and return the JSON object it prints on
    its last line (one benchmark case, measured alone); an error carries the case's stderr."""
    argv = [sys.executable, "-m", module, *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark case `python -m {module} {' '.join(map(str, args))}` failed:\n"
                           f"{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
