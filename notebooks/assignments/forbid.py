"""For the hidden tests: while a question's test runs, the library pieces that question may
not use raise instead of answering, so a submission that calls them loses the question.

    with forbidden(globals(), SAMPLE, *GRADIENTS):
        answer = student_function(...)

A piece is ``"module:name"`` or ``"module:Class.method"``; a method is refused on that class
and on every subclass that defines its own. Every binding of a refused function is replaced
(its module, the notebook's namespace, any ``adjointdpm``/``toy`` module that re-exports it),
so importing it under another name does not get around it. Everything is restored afterwards.
"""
from __future__ import annotations

import contextlib
import importlib
import sys

SAMPLE = "adjointdpm.sample:sample"
GRADIENTS = ("adjointdpm.grad:Backprop.solve", "adjointdpm.grad:Checkpoint.solve", "adjointdpm.grad:Adjoint.solve")
STEPPERS = ("adjointdpm.solvers:Method.step", "adjointdpm.solvers:integrate")
FIELDS = ("adjointdpm.ode:Space.field",)
CLOSED_FORMS = ("toy.gaussian:flow_map_vjp",)


class ForbiddenCall(AssertionError):
    """A question's test called a library piece the question forbids."""


def _refusal(piece: str):
    def refuse(*args, **kwargs):
        raise ForbiddenCall(f"this question may not use the library's {piece}")
    return refuse


def _bindings(piece: str):
    """``(owner, name, original)`` for every place ``piece`` must be replaced."""
    module_name, qualname = piece.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    if isinstance(owner, type):  # a method: the class and the subclasses that override it
        classes, found = [owner], []
        while classes:
            cls = classes.pop()
            if name in vars(cls):
                found.append((cls, name, vars(cls)[name]))
            classes += cls.__subclasses__()
        return found
    original = getattr(owner, name)
    return [(module, attr, original) for module in list(sys.modules.values())
            if getattr(module, "__name__", "").split(".")[0] in ("adjointdpm", "toy")
            for attr, value in list(vars(module).items()) if value is original]


@contextlib.contextmanager
def forbidden(namespace: dict, *pieces: str):
    """Refuse ``pieces`` (and their bindings in ``namespace``) inside the block."""
    # A doctest runs in a copy of the notebook's namespace, while the student's functions read the
    # kernel's own (``__main__``'s): refuse the pieces in both.
    main = vars(sys.modules["__main__"])
    spaces = [namespace] if main is namespace else [namespace, main]
    saved = []
    try:
        for piece in pieces:
            refuse = _refusal(piece)
            for owner, name, original in _bindings(piece):
                saved.append((owner, name, original))
                setattr(owner, name, refuse)
                for names in spaces:
                    for key, value in list(names.items()):
                        if value is original:
                            saved.append((names, key, original))
                            names[key] = refuse
        yield
    finally:
        for owner, name, original in reversed(saved):
            if isinstance(owner, dict):
                owner[name] = original
            else:
                setattr(owner, name, original)
