"""The library pieces a question may not use, made absent while its hidden tests call the student's code.

    with absent(plan(SAMPLE, *GRADIENTS)):
        answer = student_function(...)

Inside the block every forbidden function's code is swapped for one that raises ``PermissionError``, in
the function object itself: every name bound to it, an alias a notebook made, a reference kept in a list
or a default argument, all reach the refusal. Nothing is patched that the notebook could restore: the
original code is held here, in a module the notebook never sees before its tests run (grading runs it in
a sandbox, and this module is loaded after the notebook). What it cannot see is a copy of the library's
source pasted into the notebook (the hand-out's wheel holds that source); a check of the answers'
values cannot tell that route from the student's own work, and the README says so.

A piece is ``"module:name"`` or ``"module:Class.method"``; a method is refused on that class and on every
subclass that defines its own.
"""
from __future__ import annotations

import contextlib
import importlib
import types

SAMPLE = "adjointdpm.sampling:sample"
GRADIENTS = ("adjointdpm.grad:Backprop.solve", "adjointdpm.grad:Checkpoint.solve", "adjointdpm.grad:ODEAdjoint.solve",
             "adjointdpm.reference:TorchdiffeqAdjoint.solve", "adjointdpm.reference:TorchsdeAdjoint.solve")
STEPPERS = ("adjointdpm.solvers:Method.step", "adjointdpm.solvers:integrate")
FIELDS = ("adjointdpm.ode:Space.field",)
CLOSED_FORMS = ("toy.gaussian:flow_map_vjp",)
FITTED_ORDER = ("toy.reproduce:fitted_order",)  # the library's answer to assignment 1's question 4
AUDIT = ("toy.apps:audit",)  # the library's answer to assignment 3's question 2

REFUSAL = "this question may not use the library's "  # how a refusal's message starts (the runner reads it)


def functions(piece: str) -> list[types.FunctionType]:
    """The function objects ``piece`` names: one, or a method's definition on its class and every subclass."""
    module_name, qualname = piece.split(":")
    owner = importlib.import_module(module_name)
    *path, name = qualname.split(".")
    for part in path:
        owner = getattr(owner, part)
    if not isinstance(owner, type):
        return [getattr(owner, name)]
    found, classes = [], [owner]
    while classes:
        cls = classes.pop()
        if isinstance(vars(cls).get(name), types.FunctionType):
            found.append(vars(cls)[name])
        classes += cls.__subclasses__()
    if not found:  # a piece that names nothing would refuse nothing: the list must follow the library
        raise LookupError(f"{piece} names no function of the library")
    return found


def refusal_code(piece: str, freevars: tuple[str, ...]) -> types.CodeType:
    """The code of ``def refuse(*args, **kwargs): raise PermissionError(...)``, with ``freevars`` as its free
    variables: a function's code can only be swapped for one with as many (a method that calls
    ``super()`` has ``__class__``)."""
    body = "".join(f"        {v}\n" for v in freevars)  # a read makes each one free in `refuse`
    source = ("def outer():\n" + "".join(f"    {v} = None\n" for v in freevars)
              + f"    def refuse(*args, **kwargs):\n{body}        raise PermissionError({REFUSAL + piece!r})\n"
              + "    return refuse\n")
    scope = {}
    exec(compile(source, f"<refusal of {piece}>", "exec"), scope)
    code = scope["outer"]().__code__
    assert len(code.co_freevars) == len(freevars)
    return code


def plan(*pieces: str) -> list[tuple[types.FunctionType, types.CodeType, str]]:
    """``(function, refusal code, piece)`` for every function ``pieces`` name: resolved (and the refusals
    compiled) before a notebook runs, so that nothing the notebook replaces reaches them."""
    return [(function, refusal_code(piece, function.__code__.co_freevars), piece)
            for piece in pieces for function in functions(piece)]


@contextlib.contextmanager
def absent(planned: list):
    """Inside the block, calling any function of ``planned`` (:func:`plan`) raises ``PermissionError("this
    question may not use the library's <piece>")``; afterwards each has its own code again."""
    originals = [(function, function.__code__) for function, _, _ in planned]
    try:
        for function, refusal, _ in planned:
            function.__code__ = refusal
        yield
    finally:
        for function, code in originals:
            function.__code__ = code
