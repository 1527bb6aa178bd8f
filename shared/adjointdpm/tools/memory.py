"""Memory measurement.

* Bytes autograd keeps for backward (:func:`saved_bytes_during`, saved-tensor hooks): exact
  and deterministic, for tests and tables.
* Peak memory for benchmarks: ``torch.cuda.max_memory_allocated`` on CUDA, the resident
  high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) on Linux CPU. Measure
  one case per process (:func:`run_in_fresh_process`) so a high-water mark is that case's own.
* Whether the machine was idle when a bench started (:func:`machine_load`): times measured beside
  other work are longer, and the benches' tables say so.
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


IDLE_LOAD = 0.5  # a 1-minute load average below this: no other process kept a core busy for long


def machine_load() -> dict:
    """The 1-minute load average (processes running or waiting for a core) and the cores, when a bench
    starts; ``idle`` when the load is under :data:`IDLE_LOAD`."""
    import os
    load = os.getloadavg()[0]
    return {"load_1min": round(load, 2), "cores": os.cpu_count(), "idle": load < IDLE_LOAD}


def load_note(loads: list[dict]) -> str:
    """A sentence for a bench's table when any of its runs started on a machine that was not idle."""
    busy = [f"{m['load_1min']:g} on {m['cores']} cores" for m in loads if not m.get("idle", True)]
    if not busy:
        return ""
    return (f"**The machine was not idle when this bench started** (1-minute load {', '.join(sorted(set(busy)))}): "
            "its times are longer than on an idle machine; rerun it alone to compare times.")


def case_process(device) -> str:
    """How :func:`run_in_fresh_process` starts a case on ``device``: ``"forked"`` (from a server that imported
    its libraries) on a Linux CPU, else ``"new interpreter"``. Benchmarks record it and key their records by it:
    the two measure a CPU high-water mark differently (below)."""
    from . import forkserver
    return "forked" if torch.device(device).type == "cpu" and forkserver.available() else "new interpreter"


def run_in_fresh_process(module: str, *args, device="cpu", preload: tuple[str, ...] = ()) -> dict:
    """Run ``python -m module *args`` as a process of its own and return the JSON object it prints on its
    last line (one benchmark case, measured alone); a refusal in the case (a ``ValueError``: a model that
    does not load, say) is raised again as one, in its own words; another error carries the case's stderr.

    On a Linux CPU the process is forked from a server that has imported ``module`` and ``preload`` once
    (:mod:`adjointdpm.tools.forkserver`: the same starting state, without paying for the imports on every
    case); for CUDA it is a new interpreter, a precaution: a forked child cannot use CUDA once its parent has
    initialised it, and an import can. A forked child's CPU high-water mark also counts library code its case
    runs (pages of the shared libraries its server had mapped, which it maps again): on four of the toy
    bench's cases, 1 to 6 MiB more than from a new interpreter, and the same in both of two runs (a new
    interpreter's differed by up to 2.4 MiB between its two)."""
    import tempfile
    from . import forkserver
    if case_process(device) == "forked":
        with tempfile.TemporaryDirectory() as tmp:
            out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
            returncode = forkserver.run(module, list(args), out, err, preload)
            stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
    else:
        proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                              check=False)
        returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if returncode != 0 and last.startswith("ValueError: "):
        raise ValueError(last.removeprefix("ValueError: "))
    if returncode != 0:
        raise RuntimeError(f"benchmark case `python -m {module} {' '.join(map(str, args))}` failed:\n"
                           f"{stderr[-2000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


# -- the C allocator on Linux (glibc): what the process holds, against what it has handed out ----------------

def _libc():
    import ctypes
    import ctypes.util
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def live_bytes() -> int | None:
    """Bytes the C allocator has handed out and not taken back (glibc's ``mallinfo2``: heap chunks in use
    plus mmapped blocks), ``None`` where that is unknown. On a CPU this is the tensors' memory (and the
    rest of the process's small allocations); the resident size also counts what was freed but kept."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]
    try:
        fn = _libc().mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = MallInfo2
    info = fn()
    return info.uordblks + info.hblkhd


class LivePeak:
    """The high-water mark of :func:`live_bytes` inside a ``with`` block, sampled every ``interval``
    seconds by a thread (PyTorch's kernels release the interpreter lock, so it runs during them): a
    lower bound of the true peak, which a sample can miss by at most what one kernel allocates and frees."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.start = interval, None, None

    def __enter__(self):
        import threading
        self.start = self.peak = live_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        if self.start is not None:
            self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, live_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
            self.peak = max(self.peak, live_bytes())
        return False


def trim() -> None:
    """Give the heap's free pages back to the system now (glibc's ``malloc_trim``; nothing elsewhere)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):
        pass


def return_freed_memory() -> bool:
    """Make the C allocator give freed memory back to the system at once: every block above 128 KiB
    is mapped on its own and unmapped when freed (glibc's ``M_MMAP_THRESHOLD``, fixed, so it no longer
    rises to 32 MiB after the first large free), and the heap is trimmed now. Afterwards the resident
    size follows the live bytes instead of their high-water mark, at the cost of fresh pages for
    each large tensor. Returns whether the allocator took the settings (glibc only)."""
    try:
        libc = _libc()
        ok = libc.mallopt(-3, 128 * 1024) == 1  # M_MMAP_THRESHOLD
        ok &= libc.mallopt(-1, 128 * 1024) == 1  # M_TRIM_THRESHOLD: trim the heap's top above 128 KiB
        libc.malloc_trim(0)
        return bool(ok)
    except (OSError, AttributeError):
        return False


def synchronize(device) -> None:
    """Wait for ``device``'s queued work (CUDA runs asynchronously), so that a timer read next counts it."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
