"""``python -m module *args`` as a process of its own, without importing its libraries every time.

A benchmark measures each case in a process of its own, so that a memory high-water mark is that case's
alone (:func:`adjointdpm.tools.memory.run_in_fresh_process`). A new interpreter pays for its imports on
every case: 2 s for PyTorch, 5 s for PyTorch with diffusers and transformers, where a case on a small model
measures for well under a second. A *fork server* pays once: a new interpreter (started like any child
process, not forked from the caller) imports the module and the libraries it names, then forks one child
per case; the child runs the module as ``python -m`` would, with the caller's working folder and
arguments, its output in files, and exits. Each case still starts from the same state, the server's, in
which nothing has run but imports, and ends with its process.

A server is kept per module, preload list, interpreter and environment (an environment variable read at
import, such as ``OMP_NUM_THREADS``, takes effect in the server), and ends when the caller closes it or
exits. Ctrl-C reaches the child as it would reach ``python -m`` started from the same terminal (the
server itself ignores it); if the caller stops waiting, the child is killed and its server stopped.
POSIX only (``os.fork``): elsewhere, and for CUDA (a child cannot use CUDA once its parent has
initialised it, and an import may have), callers start a new interpreter instead.
"""
from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

_SERVERS: dict[tuple, subprocess.Popen] = {}


def available() -> bool:
    return hasattr(os, "fork")


def run(module: str, args: list[str], stdout: Path, stderr: Path, preload: tuple[str, ...] = ()) -> int:
    """Run ``python -m module *args`` in a child of ``module``'s server, its output to the files ``stdout``
    and ``stderr``, in this process's working folder; returns its exit status (as ``subprocess`` gives it)."""
    server = _server(module, tuple(preload))
    request = {"args": [str(a) for a in args], "cwd": os.getcwd(), "stdout": str(stdout), "stderr": str(stderr)}
    child = None
    try:
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        child = _reply(server)["pid"]
        return _reply(server)["status"]
    except BaseException:  # Ctrl-C, or a server that died: no child left running, no reply left unread
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _stop(server)
        raise


def _reply(server: subprocess.Popen) -> dict:
    line = server.stdout.readline()
    if not line:
        raise RuntimeError(f"the fork server for {server.args[-1]} ended (exit status {server.wait()})")
    return json.loads(line)


def _server(module: str, preload: tuple[str, ...]) -> subprocess.Popen:
    key = (module, preload, sys.executable, tuple(sorted(os.environ.items())))
    server = _SERVERS.get(key)
    if server is None or server.poll() is not None:
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
    server.kill()
    server.wait()
    server.stdin.close()
    server.stdout.close()


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
    for name in [*preload, module]:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (a module that moved or fails: each child imports it and reports the failure)
            pass
    # as a child started from here would have it: ignored if this server was started ignoring it (in a
    # background job), else Python's KeyboardInterrupt
    interrupt = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for the child and the caller
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(module, request, interrupt)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


def _child(module: str, request: dict, interrupt) -> None:
    """In the forked child: ``python -m module *args`` with its output in the request's files. Never returns."""
    import runpy
    import traceback
    code = 1
    try:
        signal.signal(signal.SIGINT, interrupt)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
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
    except BaseException:  # noqa: BLE001 (the interpreter's own report of an uncaught exception)
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 (a full disk: the status still goes back)
                pass
        os._exit(code)
