"""Files a user names, read safely; files we write, written atomically.

* :func:`load` reads a torch file with ``weights_only=True``, so no code in the file runs, and
  turns every failure into one ``ValueError`` that names the file: not a file, unreadable
  (truncated, corrupt, not a torch file), or refused (it holds Python objects other than
  tensors and plain containers). The refusal does not repeat torch's advice to lift the guard.
* :func:`save_atomic` writes through a temporary file unique to the process and renames it
  over the target: a reader never sees half a file, and two writers never share a temporary.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch


def load(path, what: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)``; ``what`` names the file in errors ("checkpoint")."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # zip reader errors, EOFError, a garbled pickle's KeyError, weights_only refusals, ...
        found = re.search(r"GLOBAL ([\w.]+)", str(err))  # a reference to Python code: refused before it ran
        if found:
            raise ValueError(f"{what} {path} holds Python objects, not only tensors (it names {found.group(1)}): "
                             "refused, nothing in it ran") from None
        raise ValueError(f"{what} {path} cannot be read: truncated, corrupt or not a torch file "
                         f"({type(err).__name__})") from None


def load_state_dict(path, what: str) -> dict:
    """A file holding a ``state_dict`` of tensors (or ``{"state_dict": ...}`` around one)."""
    state = load(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{what} {path} is not a state_dict of tensors")
    return state


def save_atomic(obj, path) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, then a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
