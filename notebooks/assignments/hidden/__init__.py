"""The assignments' hidden tests, each split where it can be trusted.

A :class:`Hidden` test has two halves. Its ``probe`` runs in the sandbox, in the student's namespace after
their notebook ran: it builds the test's inputs, calls the student's functions and returns what they gave
(tensors, numbers, short strings), nothing else. Its ``check`` runs in the grading process, outside, and
compares those outputs with the solution's (``want``: the same probe run on the solution notebook when the
assignments are built), in ordinary Python that no notebook has touched. A notebook can therefore change
what its own functions return, and nothing more: not the comparison, not the reference, not the verdict.

Conventions: a probe returns a flat ``{name: value}``; a check returns ``True`` to pass and gets ``got``
with every name it reads or fails (a missing name, a wrong shape or dtype, a non-finite value: the check
fails; it never raises). ``expect`` (optional) adds values to ``want`` only, computed from the solution's
namespace at build time with the whole library at hand (a closed form, the library's own gradient), so
that a check can also hold the solution to them. ``measure`` (optional) names the number a threshold is
set on, for ``course.py calibrate``.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Hidden:
    question: str
    name: str
    failure_message: str  # what the student reads when it fails: says what was checked, never a value
    probe: Callable[[dict], dict]
    check: Callable[..., bool]  # check(got, want, setup): setup() is the assignment's set-up namespace, trusted
    forbid: tuple[str, ...] = ()  # library pieces absent while the probe runs (forbid.py)
    expect: Callable[[dict], dict] | None = None
    measure: Callable[..., tuple[float, float, str]] | None = None  # (got, setup) -> (value, mark, what)


def tensor(got: dict, key: str, shape=None):
    """``got[key]`` as a finite float64 tensor (of ``shape`` if given), or ``None``."""
    import torch
    value = got.get(key)
    if not isinstance(value, torch.Tensor) or value.is_complex():
        return None
    value = value.double()
    if (shape is not None and tuple(value.shape) != tuple(shape)) or not bool(torch.isfinite(value).all()):
        return None
    return value


def close(got: dict, want: dict, key: str, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Whether ``got[key]`` has ``want[key]``'s shape and is within ``atol + rtol |want|`` of it everywhere."""
    import torch
    reference = want[key].double()
    value = tensor(got, key, reference.shape)
    return value is not None and bool(torch.allclose(value, reference, rtol=rtol, atol=atol))


def number(got: dict, key: str) -> float | None:
    """``got[key]`` as a finite float (a number or a one-element tensor), or ``None``."""
    import torch
    value = got.get(key)
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.is_complex():
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


MAX_ARGUMENT = 1000  # the largest number a rebuilt strategy may carry (its steps, for one)


def gradient_strategy(text: str):
    """The library strategy that ``repr`` text such as ``Adjoint(steps=None, solver='rk4')`` describes, built
    here from its class name and literal arguments (nothing in the text is run); ``None`` if it is not one."""
    import adjointdpm
    try:
        call = ast.parse(text, mode="eval").body
        if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Name)):
            return None
        cls = getattr(adjointdpm, call.func.id, None)
        if not (isinstance(cls, type) and issubclass(cls, adjointdpm.Gradient)) or cls is adjointdpm.Gradient:
            return None
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords}
        if any(isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) > MAX_ARGUMENT
               for v in [*args, *kwargs.values()]):
            return None  # the grader measures it: a notebook must not set it a billion steps
        return cls(*args, **kwargs)
    except (SyntaxError, ValueError, TypeError, RecursionError):
        return None
