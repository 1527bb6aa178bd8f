"""``python -m module *args`` as a process of its own, without importing its libraries every time.

A benchmark measures each case in a process of its own, so that a memory high-water mark is that case's
alone (:func:`adjointdpm.tools.memory.run_in_fresh_process`). A new interpreter pays for its imports on
every case: 2 s for PyTorch, 5 s for PyTorch with diffusers and transformers, where a case on a small model
measures for well under a second. A *fork server* pays once: a new interpreter (started like any child
process, not forked from the caller) imports the module and the libraries it names, then forks one child
per case; the child runs the module as ``python -m`` would (``__main__``, the caller's arguments, working
folder and import path), its output in files, and exits. Each case starts from the same state, the
server's, in which nothing has run but imports (the module's top level included, once), and ends with its
process. As PyTorch's own data-loader workers are, it is forked from a process that imported PyTorch.

One server is kept per module and preload, for the caller's interpreter, environment and import path (a
variable read at import, such as ``OMP_NUM_THREADS``, takes effect in the server): when these change, a new
server replaces the old. Servers end when the caller closes them or exits. Ctrl-C reaches the child as it
would reach ``python -m`` started from the same terminal (the server itself ignores it); if the caller
stops waiting, its server is stopped, and the child, which dies with its server, with it.

Where it differs from ``python -m``: the child ends with ``os._exit`` once its output is flushed, so exit
handlers and non-daemon threads a case leaves behind do not run (a benchmark case leaves none). Linux only
(elsewhere, and for CUDA, callers start a new interpreter).
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

_SERVERS: dict[tuple, subprocess.Popen] = {}
_LOCK = threading.Lock()  # one request at a time per caller: a reply belongs to the request before it
PR_SET_PDEATHSIG = 1  # prctl(2): the signal a process gets when its parent dies


def available() -> bool:
    """Whether cases can be forked here: Linux (``os.fork`` and ``prctl``; forking without exec after these
    imports is not safe on macOS)."""
    return sys.platform.startswith("linux")


def run(module: str, args: list[str], stdout: Path, stderr: Path, preload: tuple[str, ...] = ()) -> int:
    """Run ``python -m module *args`` in a child of ``module``'s server, its output to the files ``stdout``
    and ``stderr``, in this process's working folder; returns its exit status (as ``subprocess`` gives it)."""
    request = {"args": [str(a) for a in args], "cwd": os.getcwd(), "stdout": str(stdout), "stderr": str(stderr)}
    with _LOCK:
        server = _server(module, tuple(preload))
        try:
            server.stdin.write(json.dumps(request) + "\n")
            server.stdin.flush()
            _reply(server)  # {"pid"}: the child runs
            return _reply(server)["status"]
        except BaseException:  # Ctrl-C, or a server that died: no child left running, no reply left unread
            _stop(server)
            raise


def _reply(server: subprocess.Popen) -> dict:
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the fork server for {server.args[-1]} ended (exit status {server.wait()})")
    return json.loads(line)


def _server(module: str, preload: tuple[str, ...]) -> subprocess.Popen:
    key = (module, preload, sys.executable, tuple(sorted(os.environ.items())), tuple(sys.path))
    server = _SERVERS.get(key)
    if server is not None and server.poll() is None:
        return server
    for old in [s for k, s in _SERVERS.items() if k[:3] == key[:3]]:
        _stop(old)  # the same module under another environment, or one that died: replaced
    # the caller's import path, as multiprocessing passes it to its own server: the module is found where
    # the caller found it; then serve() reads the requests from stdin and writes one reply per line
    code = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
            "from adjointdpm.tools.forkserver import serve; serve(sys.argv[2:])")
    server = subprocess.Popen([sys.executable, "-c", code, json.dumps(sys.path), *preload, module],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _SERVERS[key] = server
    return server


def _stop(server: subprocess.Popen) -> None:
    for key in [k for k, s in _SERVERS.items() if s is server]:
        del _SERVERS[key]
    server.kill()  # its child, if any, gets SIGKILL too (PR_SET_PDEATHSIG)
    server.wait()
    for pipe in (server.stdin, server.stdout):
        try:
            pipe.close()
        except OSError:  # a request it never read
            pass


@atexit.register
def close() -> None:
    """End every server (each also ends by itself when this process does: its requests stop)."""
    for server in list(_SERVERS.values()):
        _stop(server)


def serve(names: list[str]) -> None:
    """The server's loop: import ``names`` (the preload, then the module, last), then fork one child per
    request line on stdin, replying ``{"pid"}`` when it starts and ``{"status"}`` when it ends."""
    import importlib
    *preload, module = names
    # replies on a descriptor of their own: whatever an import prints goes to the server's stderr instead
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    for name in [*preload, module]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (a module that moved or fails: each child imports it and reports the failure)
            pass
    sys.stdout.flush()
    # as a child started from here would have it: ignored if this server was started ignoring it (in a
    # background job), else Python's KeyboardInterrupt
    interrupt = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for the child and the caller
    server = os.getpid()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            replies.close()
            _child(module, request, interrupt, server)
        print(json.dumps({"pid": pid}), file=replies)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), file=replies)


def _child(module: str, request: dict, interrupt, server: int) -> None:
    """In the forked child: ``python -m module *args`` with its output in the request's files. Never returns."""
    import ctypes
    import runpy
    import traceback
    code = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != server:  # the server died before prctl took effect
            os._exit(1)
        signal.signal(signal.SIGINT, interrupt)
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY),
                                (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            opened = os.open(path, flags, 0o600)
            os.dup2(opened, fd)
            os.close(opened)
        os.chdir(request["cwd"])
        sys.path.insert(0, request["cwd"])  # as ``python -m`` puts the working folder first
        sys.argv = [module, *request["args"]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exit_:
        if exit_.code is None or isinstance(exit_.code, int):
            code = exit_.code or 0
        else:  # sys.exit("message"), as the interpreter reports it
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:  # as the interpreter ends on one: the traceback, then killed by SIGINT
        traceback.print_exc()
        code = -signal.SIGINT
    except BaseException:  # noqa: BLE001 (the interpreter's own report of an uncaught exception)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 (a full disk: the status still goes back)
                pass
        if code == -signal.SIGINT:
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)
