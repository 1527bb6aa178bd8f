"""Files a user names, read safely; files we write, written atomically.

* :func:`load` reads a torch file with ``weights_only=True``, so no code in the file runs, and
  turns every failure into one ``ValueError`` that names the file: not a file, unreadable
  (truncated, corrupt, not a torch file), or refused (it holds Python objects other than
  tensors and plain containers). The refusal does not repeat torch's advice to lift the guard.
* :func:`cached` reads a saved result, or makes (and saves) it if absent or unreadable.
* :func:`save_atomic`, :func:`save_tensors`, :func:`write_text`, :func:`write_json` and :func:`save_figure` write through a
  temporary file unique to the process and rename it over the target (:func:`replacing`): a reader
  never sees half a file, two writers never share a temporary, and a symlink planted at the target is
  replaced, not followed.
* :func:`claim` keys a folder of resumable work by the settings that made it, and
  :func:`exclusive` keeps a second process out of a folder while one works there (a kernel lock).
* :func:`fingerprint` hashes tensors and modules for such settings, :func:`fingerprint_files` the
  files of a folder (a model's weights by content, not by name); :func:`write_json` writes results
  as strict JSON.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
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
    """``torch.save(obj, path)``, atomically (:func:`replacing`). The object is serialised in memory first,
    so that a failure to write (a full disk, a file-size limit) is the file system's ``OSError``, named in
    one line, and not an error deep in torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with replacing(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())
    return Path(path)


def save_tensors(tensors: dict, path) -> Path:
    """A dict of tensors as a ``.safetensors`` file (a format that holds nothing but tensors), atomically
    (:func:`replacing`); tensors are made contiguous, as the format needs."""
    from safetensors.torch import save_file
    with replacing(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    return Path(path)


@contextlib.contextmanager
def replacing(path):
    """Write ``path`` whole or not at all: yields a temporary path in the same folder (unique to the
    process, with ``path``'s suffix so writers that infer the format from it still do), renamed over
    ``path`` when the block ends. The rename replaces a symlink at ``path`` rather than following it, a
    reader never sees half a file, and an error (a full disk, a size limit) leaves the old file whole and
    becomes one ``OSError`` naming the file and the cause."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + path.suffix)
        os.close(fd)
        yield Path(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the target is an ordinary file
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(err, OSError):
            raise
        message = f"cannot write {path}: {err.strerror or err}"
        raise (OSError(err.errno, message) if err.errno else OSError(message)) from None


def write_text(path, text: str) -> Path:
    """``text`` to ``path``, atomically (:func:`replacing`)."""
    with replacing(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig(path, **kwargs)``, atomically (:func:`replacing`)."""
    with replacing(path) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip(".") or None, **kwargs)
    return Path(path)


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
    return write_text(path, json.dumps(_finite(obj, significant), indent=1, allow_nan=False) + "\n")


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
    write_text(record, json.dumps(settings, indent=1, sort_keys=True) + "\n")
    return folder


@contextlib.contextmanager
def exclusive(folder, name: str = ".lock"):
    """Hold a kernel lock (``flock``) on ``folder/name`` while working there; a second process that
    tries is refused with one line. The kernel releases the lock when its holder ends, however it ends
    (kill -9 included), so there is nothing to take over and no window between testing and taking.
    The file stays after release: removing it would let a third process lock a new file while a second
    still holds the old one. It holds the holder's pid, for the refusal's message only."""
    import fcntl
    path = Path(folder) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        who = f"another run (process {holder})" if holder.isdigit() else "another run"
        raise ValueError(f"{who} is writing to {folder} (it holds {path}): wait for it, or give another "
                         "output folder") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the lock


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


def fingerprint_files(folder) -> str:
    """A short sha256 of every file under ``folder``: their paths relative to it and their bytes, read in
    1 MiB pieces, so a model of gigabytes is never held in memory. Symlinks are followed, as a Hugging
    Face cache's snapshot holds links to its blobs."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as file:
            while piece := file.read(2 ** 20):
                digest.update(piece)
    return digest.hexdigest()[:16]


def read_cases(log, key) -> dict:
    """The rows of a case log (one JSON object per line, appended as each case finishes), by ``key(row)``.
    A line cut short by a kill is skipped, so its case runs again, and the log is ended with a newline so
    that the next case starts a line of its own."""
    log, done = Path(log), {}
    if not log.exists():
        return done
    text = log.read_text()
    if text and not text.endswith("\n"):
        with log.open("a") as f:
            f.write("\n")
    for line in text.splitlines():
        try:
            row = json.loads(line)
            done[key(row)] = row
        except (ValueError, KeyError):
            continue
    return done


def append_cases(log, rows: list[dict]) -> None:
    """Append one case's ``rows`` to its log in one write, so that a write cut short loses that case at most."""
    with Path(log).open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
