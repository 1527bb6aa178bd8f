"""Command-line arguments checked at the door, the same way in every command.

* :class:`Parser` is ``argparse.ArgumentParser`` whose errors are one line, ``prog: error:
  argument --batch: must be an integer >= 1, got '0'``, exit status 2: no usage block, no
  traceback.
* The ``type=`` functions below refuse a bad value while the arguments are parsed, before any
  compute: ranges, finite numbers, devices that exist here, paths of the right kind.
* :data:`BOUNDS` caps every count a user gives (steps, NFE, iterations, batch, ...): each bound and
  why it is where it is, in one table; :func:`count` makes the ``type=`` that enforces one and
  :func:`bound_help` the words ``--help`` shows for it.
* :func:`folder` refuses an output folder that cannot be written, with a probe file, before any compute.
* :func:`one_line_errors` turns a ``ValueError`` raised by the work itself (a file of the wrong
  shape, a checkpoint made with other settings), a file that cannot be written, and Ctrl-C or SIGTERM
  into one line each. Bugs raise other exceptions and keep their tracebacks.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import tempfile
from pathlib import Path

import torch


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (and whose subparsers are the same kind)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


@contextlib.contextmanager
def one_line_errors(parser: argparse.ArgumentParser, resumes: bool = False):
    """Inside, a ``ValueError`` ends the command with ``prog: error: <message>`` and status 2; a failure to
    write a file (a full disk, a read-only folder, a size limit: :func:`adjointdpm.tools.files.replacing` names
    the file) with ``prog: error: <message>`` and status 1; Ctrl-C or SIGTERM with one line, status 130,
    saying that the same command resumes when it does (``resumes``)."""
    import signal
    import threading

    def terminate(signum, frame):
        raise KeyboardInterrupt
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except OSError as err:
        parser.exit(1, f"{parser.prog}: error: {err.strerror or err}\n")
    except KeyboardInterrupt:
        kept = ("the finished work is kept: run the same command to resume" if resumes else
                "this command does not resume: run it again to start over")
        parser.exit(130, f"{parser.prog}: interrupted; {kept}\n")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _integer(text) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None


def _number(text) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _at_least(parse, lower, strict: bool, what: str, name: str):
    """An argparse type: ``parse(text)``, refused unless ``>= lower`` (``> lower`` if ``strict``), saying ``what``."""
    def check(text):
        value = parse(text)
        if value < lower or (strict and value == lower):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    check.__name__ = name  # what argparse names in its own messages
    return check


positive_int = _at_least(_integer, 1, False, "an integer >= 1", "positive_int")
nonnegative_int = _at_least(_integer, 0, False, "an integer >= 0", "nonnegative_int")
positive_float = _at_least(_number, 0, True, "a number > 0", "positive_float")
nonnegative_float = _at_least(_number, 0, False, "a number >= 0", "nonnegative_float")


def finite_float(text) -> float:
    return _number(text)


def device(text) -> torch.device:
    """A device that exists on this machine: ``cpu``, ``cuda``, ``cuda:N``, ``mps``."""
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device (use cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no MPS device (use cpu)")
    elif dev.type != "cpu":
        raise argparse.ArgumentTypeError(f"{text!r} is not a device this project runs on (cpu, cuda, cuda:N, mps)")
    return dev


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def report_folder(text) -> Path:
    """An output folder that may be read-only: a command that can report finished work from it without
    writing checks writability itself, when it has work to write (``cifar.table1``)."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


def folder(text) -> Path:
    """An output folder that can be written: a probe file is created and removed in it, or in its nearest
    existing parent when it is still to be made (a refused command leaves no folder behind), so that a
    read-only file system or a path through a file is refused here and not after the compute."""
    path = report_folder(text)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{text} cannot be written: {err.strerror or err}") from None
    return path


# The largest value of each count a user gives, and why. A count that grows memory is bounded where its
# memory or time stops being a plausible request on any machine this project targets; every bound is at
# least ten times what the paper or this project uses.
BOUNDS = {
    "steps": (10_000, "DDPM's chain has 1000 steps; Backprop keeps one state per step"),
    "nfe": (10_000, "the paper's Table 1 stops at 50 and the fine reference spends 600"),
    "iters": (100_000, "optimiser steps, each a full sampling solve and its gradient"),
    "epochs": (10_000, "passes over the noise-prompt pairs, each a solve and its gradient per pair"),
    "shifts": (64, "each shift is one more classifier pass kept for backward"),
    "samples": (1_000_000, "twenty times the 50,000 of the FID protocol"),
    "batch": (10_000, "every sample of a batch is in memory at once with the network's activations"),
    "pairs": (10_000, "each pair is a morph optimisation of its own"),
    "resolution": (2048, "Stable Diffusion's latents at 2048x2048 already hold 256x256 positions per channel"),
    "repeats": (1000, "timed repeats of one measured case"),
    "training steps": (1_000_000, "optimiser steps of a training run"),
}


def bound_help(kind: str) -> str:
    """``--help``'s words for a bound of :data:`BOUNDS`: 'at most N: why'."""
    upper, why = BOUNDS[kind]
    return f"at most {upper:,}: {why}"


def count(kind: str, lower: int = 1):
    """The ``type=`` of a count of ``kind`` (a key of :data:`BOUNDS`): an integer from ``lower`` to the bound."""
    upper, _ = BOUNDS[kind]

    def parse(text) -> int:
        value = _integer(text)
        if not lower <= value <= upper:
            raise argparse.ArgumentTypeError(f"must be an integer from {lower} to {upper:,} ({bound_help(kind)}), "
                                             f"got {text!r}")
        return value
    parse.__name__ = kind  # argparse names the type in its own messages
    return parse


def existing_folder(text) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if path.exists() else f"{text} does not exist")
    return path


def existing_file(text) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text} is not a file" if path.exists() else f"{text} does not exist")
    return path
