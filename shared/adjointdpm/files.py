"""Files a user names, read safely; files we write, written atomically.

* :func:`load` reads a torch file with ``weights_only=True``, so no code in the file runs, and
  turns every failure into one ``ValueError`` that names the file: not a file, unreadable
  (truncated, corrupt, not a torch file), or refused (it holds Python objects other than
  tensors and plain containers). The refusal does not repeat torch's advice to lift the guard.
* :func:`cached` reads a saved result, or makes (and saves) it if absent or unreadable.
* :func:`save_atomic` writes through a temporary file unique to the process and renames it
  over the target: a reader never sees half a file, and two writers never share a temporary.
* :func:`claim` keys a folder of resumable work by the settings that made it, and
  :func:`exclusive` keeps a second process out of a folder while one works there.
* :func:`fingerprint` hashes tensors and modules for such settings; :func:`write_json` writes
  results as strict JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import sys
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
    """A file holding a ``state_dict`` of tensors (or ``{"state_dict": ...}`` around one): a torch
    file, or a ``.safetensors`` file (a format that holds nothing but tensors)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return _load_safetensors(path, what)
    state = load(path, what)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{what} {path} is not a state_dict of tensors")
    return state


def load_weights(module: torch.nn.Module, path, what: str) -> torch.nn.Module:
    """``module`` with the state_dict at ``path`` loaded into it; weights of another architecture are
    refused in one line naming the file and the module's class."""
    try:
        module.load_state_dict(load_state_dict(path, what))
    except RuntimeError as err:
        raise ValueError(f"{what} {path} do not fit {type(module).__name__}: {str(err).splitlines()[0]}") from None
    return module


def _load_safetensors(path: Path, what: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    if not path.is_file():
        raise ValueError(f"{what} {path} is not a file")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{what} {path} cannot be read: truncated, corrupt or not a safetensors file "
                         f"({str(err).splitlines()[0]})") from None


def save_atomic(obj, path) -> Path:
    """``torch.save(obj, path)`` through a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the target is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def cached(path, what: str, make):
    """The tensor at ``path``, made by ``make()`` and saved atomically if absent; one that does not load
    (truncated, corrupt) is named on stderr and made again."""
    path = Path(path)
    if path.exists():
        try:
            return load(path, what)
        except ValueError as err:
            print(f"{err}: making it again", file=sys.stderr)
    value = make()
    save_atomic(value, path)
    return value


def _finite(obj, significant: int | None = None):
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return float(f"{obj:.{significant}g}") if significant else obj
    if isinstance(obj, dict):
        return {str(k): _finite(v, significant) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, significant) for v in obj]
    return obj


def write_json(path, obj, significant: int | None = None) -> Path:
    """Results as strict JSON: a non-finite number becomes ``null`` (JSON has no NaN), keys become
    strings; ``significant`` rounds floats (committed results then stay byte-identical across
    machines whose last bits differ)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_finite(obj, significant), indent=1, allow_nan=False) + "\n")
    return path


def claim(folder, settings: dict, what: str = "this folder") -> Path:
    """Key the work in ``folder`` by the ``settings`` that determine it (``settings.json``).

    A new folder records them; a folder made with the same settings is resumed; one made with
    other settings is refused with one line that names each difference and the way out, so a
    rerun never mixes old work into new results.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file, not a folder")
    record = folder / "settings.json"
    settings = json.loads(json.dumps(_finite(settings)))  # as it reads back: tuples are lists, keys strings
    if record.is_file():
        try:
            old = json.loads(record.read_text())
        except ValueError:
            old = None
        if not isinstance(old, dict):
            raise ValueError(f"{record} is not a settings record: delete {folder} to start over")
        if old != settings:
            diffs = [f"{k}={old.get(k, '(unset)')!r} (now {settings.get(k, '(unset)')!r})"
                     for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            raise ValueError(f"{what} {folder} holds work made with other settings: {', '.join(diffs)}; give "
                             f"another output folder, or delete {folder} to start over")
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".settings.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, record)
    return folder


@contextlib.contextmanager
def exclusive(folder, name: str = ".lock"):
    """Hold ``folder/name`` while working there; a second process that tries is refused with one
    line (a lock left by a process that died is taken over)."""
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise ValueError(f"another run (process {pid}) is writing to {folder}: wait for it, or give "
                                 "another output folder") from None
            path.unlink(missing_ok=True)  # its process is gone
    else:
        raise ValueError(f"cannot lock {path}")
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(*objects) -> str:
    """A short sha256 of tensors, modules (their state_dict, in order) and JSON-able values: what a
    settings record keys by when the settings include weights or images."""
    digest = hashlib.sha256()

    def add(obj):
        if isinstance(obj, torch.nn.Module):
            for name, tensor in obj.state_dict().items():
                digest.update(name.encode())
                add(tensor)
        elif torch.is_tensor(obj):
            tensor = obj.detach().cpu().contiguous().reshape(-1)  # a 0-d tensor cannot be viewed as bytes
            digest.update(f"{obj.dtype}{tuple(obj.shape)}".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        else:
            digest.update(json.dumps(obj, sort_keys=True, default=str).encode())
    for obj in objects:
        add(obj)
    return digest.hexdigest()[:16]
