"""For the hidden tests: while a question's test runs, the library pieces that question may
not use raise instead of answering, so a submission that calls them loses the question.

    with forbidden(globals(), SAMPLE, *GRADIENTS):
        answer = student_function(...)

And every hidden test starts with ``untampered(globals())``: a notebook that replaced what the tests
compare with (``torch.allclose = lambda *a, **k: True``, a rebound ``abs``) fails every hidden test,
with a reason that names what it replaced.

A piece is ``"module:name"`` or ``"module:Class.method"``; a method is refused on that class
and on every subclass that defines its own. Every binding of a refused function is replaced
(its module, the notebook's namespace, any ``adjointdpm``/``toy`` module that re-exports it),
so importing it under another name does not get around it. Everything is restored afterwards.
"""
from __future__ import annotations

import builtins
import contextlib
import importlib
import sys
import types

SAMPLE = "adjointdpm.sample:sample"
GRADIENTS = ("adjointdpm.grad:Backprop.solve", "adjointdpm.grad:Checkpoint.solve", "adjointdpm.grad:Adjoint.solve",
             "adjointdpm.reference:TorchdiffeqAdjoint.solve", "adjointdpm.reference:TorchsdeAdjoint.solve")
STEPPERS = ("adjointdpm.solvers:Method.step", "adjointdpm.solvers:integrate")
FIELDS = ("adjointdpm.ode:Space.field",)
CLOSED_FORMS = ("toy.gaussian:flow_map_vjp",)
FITTED_ORDER = ("toy.reproduce:fitted_order",)  # the library's answer to assignment 1's question 4


class ForbiddenCall(AssertionError):
    """A question's test called a library piece the question forbids."""


class Tampered(AssertionError):
    """The notebook replaced something the hidden tests compare with."""


# What the hidden tests compare with: each must still be the library's own when a test runs
# ("module:qualname", with "=name" where the object's own name differs, as for an alias).
COMPARED = ("torch:allclose", "torch:isclose", "torch:equal", "torch:isfinite", "torch.testing:assert_close",
            "torch:Tensor.abs", "torch:Tensor.max", "torch:Tensor.min", "torch:Tensor.norm", "torch:Tensor.item",
            "torch:Tensor.all", "torch:Tensor.any", "torch:Tensor.sum", "torch:Tensor.mean", "torch:Tensor.__sub__",
            "torch:Tensor.__lt__", "torch:Tensor.__le__", "torch:Tensor.__gt__", "torch:Tensor.__ge__",
            "torch:Tensor.__eq__", "torch:Tensor.__abs__=abs", "torch:Tensor.__float__", "torch:Tensor.__bool__",
            "numpy:allclose", "numpy:isclose", "numpy.testing:assert_allclose", "math:isclose")
BUILTINS = ("abs", "all", "any", "bool", "float", "int", "isinstance", "len", "max", "min", "round", "sum", "zip",
            "range", "sorted", "set", "list", "tuple", "dict")
_C_KINDS = (types.BuiltinFunctionType, types.MethodDescriptorType, types.WrapperDescriptorType,
            types.ClassMethodDescriptorType, types.GetSetDescriptorType, type)


def _genuine(obj, package: str, name: str) -> bool:
    """Whether ``obj`` is the package's own ``name``: a C function or descriptor of that name, a
    Python function of that name defined in the package's files, or one of the package's callables."""
    if isinstance(obj, _C_KINDS):
        return getattr(obj, "__name__", None) == name
    if isinstance(obj, types.FunctionType):
        folder = importlib.import_module(package).__file__.rsplit("/", 1)[0]
        return obj.__name__ == name and obj.__code__.co_filename.startswith(folder)
    return getattr(obj, "__name__", None) == name and type(obj).__module__.split(".")[0] == package


def untampered(namespace: dict) -> None:
    """Raise :class:`Tampered` if anything in :data:`COMPARED` or :data:`BUILTINS` was replaced, in its
    module or in the notebook's namespace (``namespace``, and ``__main__``'s)."""
    replaced = []
    for piece in COMPARED:
        module_name, qualname = piece.split(":")
        qualname, _, name = qualname.partition("=")
        obj = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if not _genuine(obj, module_name.split(".")[0], name or qualname.split(".")[-1]):
            replaced.append(f"{module_name}.{qualname}")
    spaces = (namespace, vars(sys.modules["__main__"]))
    for name in BUILTINS:
        original = getattr(builtins, name)
        if not _genuine(original, "builtins", name) or any(space.get(name, original) is not original for space in spaces):
            replaced.append(f"the builtin {name}")
    if replaced:
        raise Tampered(f"the notebook replaced {', '.join(sorted(set(replaced)))}, which the tests compare with, "
                       "so this test scores nothing")


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
