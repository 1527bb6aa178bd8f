"""Runs in the grading sandbox: a notebook from top to bottom, then its assignment's hidden probes.

    python runner.py NOTEBOOK ASSIGNMENT OUT [--expect]

It decides nothing. It writes what the probes returned, as data only, for the grading process to judge:
  OUT/outputs.safetensors  every tensor a probe returned, as ``<test>/<name>``
  OUT/outputs.json         ``{"tests": {test: {"status", "error", "values"}}, "cells": [[index, error], ...]}``:
                           a test's status is ``ok``, ``refused`` (it called a piece its question forbids;
                           ``error`` names the piece) or ``raised`` (``error``: the exception's type, if it is
                           one of Python's own, else ``"its own type"``); ``values`` holds its numbers and
                           short strings
``--expect`` (the build's run of the solution) adds each test's ``expect`` values, under ``expect``.

The hidden tests and the refusals are imported, and the pieces to refuse are resolved, before the
notebook runs a line: a notebook that replaces ``importlib``, ``forbid`` or ``sys.modules`` entries
changes nothing here. A notebook can change what its own functions return, which is what the grader
judges, and the messages of its exceptions, which nobody reads (they are its own text).
"""
from __future__ import annotations

import builtins
import importlib
import json
import os
import sys
from pathlib import Path

VALUE_TYPES = (bool, int, float, str)
MAX_STRING = 200


def error_name(err: BaseException) -> str:
    """An exception's type as a student may read it: Python's own types by name, any other as "its own type"
    (a class a notebook defines can be named anything, and its name would be text that leaves the sandbox)."""
    name = type(err).__name__
    return name if getattr(builtins, name, None) is type(err) else "its own type"


def run_notebook(path: Path) -> tuple[dict, list]:
    """Every code cell of the notebook at ``path`` in one IPython shell, as a kernel would run them (magics
    included); a cell that raises is recorded and the next one runs. Returns the namespace and the errors."""
    import nbformat
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance(colors="nocolor")
    errors = []
    for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
        if cell.cell_type == "code":
            result = shell.run_cell(cell.source, store_history=False)
            err = result.error_before_exec or result.error_in_exec
            if err is not None:
                errors.append([index, error_name(err)])
    return shell.user_ns, errors


def _split(test: str, values: dict, tensors: dict, kept: dict) -> None:
    """``values`` into ``tensors`` (``<test>/<name>``) and ``kept`` (numbers and short strings); anything
    else is left out, and the check that reads it fails."""
    import torch
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and not value.is_complex() and value.layout == torch.strided:
            tensors[f"{test}/{name}"] = value.detach().to("cpu", copy=True).contiguous()
        elif type(value) in VALUE_TYPES:
            kept[str(name)[:MAX_STRING]] = value[:MAX_STRING] if isinstance(value, str) else value


def _trusted_state(modules) -> tuple[list, list]:
    """The code of every function, and a copy of the namespace, of ``modules`` (the grader's own): what a
    notebook could re-code or rebind, to be put back before each probe."""
    import types
    functions = [f for m in modules for f in vars(m).values() if isinstance(f, types.FunctionType)]
    return tuple((f, f.__code__) for f in functions), tuple((vars(m), dict(vars(m))) for m in modules)


def main(argv=None) -> None:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebook", type=Path)
    parser.add_argument("assignment")
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect", action="store_true", help="also each test's expect values (the solution's build run)")
    args = parser.parse_args(argv)
    from adjointdpm.tools.cli import one_line_errors
    with one_line_errors(parser):  # the grader reads its last line when it wrote no outputs
        run(args)


def run(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import safetensors.torch
    import forbid
    import hidden
    module = importlib.import_module(f"hidden.{args.assignment}")
    tests = tuple((t.name, t.probe, t.expect, tuple(forbid.plan(*t.forbid))) for t in module.TESTS)
    codes, spaces = _trusted_state([forbid, hidden, module])
    absent, save, dumps, replace = forbid.absent, safetensors.torch.save_file, json.dumps, os.replace

    namespace, cells = run_notebook(args.notebook)
    tensors, report = {}, {"tests": {}, "cells": cells}
    for name, probe, expect, planned in tests:
        # Put back, in this frame (whose own code nothing can change), whatever the notebook re-coded or
        # rebound in the grader's modules; then the refusals, which hold while the probe runs.
        for function, code in codes:
            function.__code__ = code
        for space, saved in spaces:
            space.clear()
            space.update(saved)
        entry = {"status": "ok", "error": "", "values": {}}
        try:
            with absent(planned):
                got = probe(namespace)
                reinstalled = [piece for function, refusal, piece in planned if function.__code__ is not refusal]
            if reinstalled:  # the notebook put a refused piece's own code back while its test ran
                entry.update(status="refused", error=reinstalled[0])
            else:
                _split(name, got, tensors, entry["values"])
        except PermissionError as err:
            refused = str(err).startswith(forbid.REFUSAL)
            entry.update(status="refused" if refused else "raised",
                         error=str(err)[len(forbid.REFUSAL):][:MAX_STRING] if refused else "PermissionError")
        except BaseException as err:  # the student's code may raise anything, SystemExit included
            entry.update(status="raised", error=error_name(err))
        if args.expect and expect is not None:
            entry["expect"] = {}
            _split(f"expect/{name}", expect(namespace), tensors, entry["expect"])
        report["tests"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    save(tensors, str(args.out / "outputs.safetensors.part"))
    (args.out / "outputs.json.part").write_text(dumps(report))
    replace(args.out / "outputs.safetensors.part", args.out / "outputs.safetensors")
    replace(args.out / "outputs.json.part", args.out / "outputs.json")
    sys.stdout.flush()
    os._exit(0)  # now: no exit handler the notebook registered, and no thread it left, runs after the outputs


if __name__ == "__main__":
    main()
