"""Command-line arguments checked at the door, the same way in every command.

* :class:`Parser` is ``argparse.ArgumentParser`` whose errors are one line, ``prog: error:
  argument --batch: must be an integer >= 1, got '0'``, exit status 2: no usage block, no
  traceback.
* The ``type=`` functions below refuse a bad value while the arguments are parsed, before any
  compute: ranges, finite numbers, devices that exist here, paths of the right kind.
* :func:`one_line_errors` turns a ``ValueError`` raised by the work itself (a file of the wrong
  shape, a checkpoint made with other settings), a file that cannot be written, and Ctrl-C or SIGTERM
  into one line each. Bugs raise other exceptions and keep their tracebacks.
"""
from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

import torch


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (and whose subparsers are the same kind)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


@contextlib.contextmanager
def one_line_errors(parser: argparse.ArgumentParser, resumes: bool = False):
    """Inside, a ``ValueError`` ends the command with ``prog: error: <message>`` and status 2; a failure to
    write a file (a full disk, a read-only folder, a size limit: :func:`adjointdpm.files.replacing` names
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


def positive_int(text) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def nonnegative_int(text) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def finite_float(text) -> float:
    return _number(text)


def positive_float(text) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def nonnegative_float(text) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


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


def folder(text) -> Path:
    """An output folder: made if missing; an existing file is refused."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    return path


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
