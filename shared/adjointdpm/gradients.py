"""Every gradient strategy by name: the one table that the commands, the benches and the applications
share (their own tables only label these names for their results).

Each entry builds its strategy; :func:`make_gradient` passes it the adjoint's ``steps`` where it takes
them (``None``: the forward's). The names:

* ``backprop``, ``checkpoint``: the sampler's exact gradient, memory growing with steps;
* ``adjoint``: eq. 11 solved backwards by RK4 (the paper's), re-solving the path: memory flat in steps;
* ``adjointdeis``, ``adjointdeis-2``: AdjointDEIS of order 1 or 2 in the data-prediction form;
  ``-noise``: in the poster's noise-prediction form;
* ``-stored``: the same rule restarted from the forward's stored states (``states="reuse"``, one
  state per forward step);
* ``reversible``: the reversible sampler's exact gradient at flat memory (behind ``reversible-dpm1``);
* ``torchdiffeq``, ``torchsde``: the adjoint through those libraries' solvers, as references.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Callable

from .grad import Adjoint, AdjointDEIS, Backprop, Checkpoint, Gradient, ReversibleAdjoint
from .reference import TorchdiffeqAdjoint, TorchsdeAdjoint


def deis_name(order: int, form: str = "data", states: str = "reintegrate") -> str:
    """The name of ``AdjointDEIS(order, form=form, states=states)`` in :data:`GRADIENTS`."""
    return f"adjointdeis{'-2' * (order == 2)}{'-noise' * (form == 'noise')}{'-stored' * (states == 'reuse')}"


GRADIENTS: dict[str, Callable[..., Gradient]] = {
    "backprop": Backprop,
    "checkpoint": Checkpoint,
    "adjoint": functools.partial(Adjoint, solver="rk4"),
    "adjoint-stored": functools.partial(Adjoint, solver="rk4", states="reuse"),
    **{deis_name(order, form, states): functools.partial(AdjointDEIS, order, form=form, states=states)
       for order in (1, 2) for form in ("data", "noise") for states in ("reintegrate", "reuse")},
    "reversible": ReversibleAdjoint,
    "torchdiffeq": TorchdiffeqAdjoint,
    "torchsde": TorchsdeAdjoint,
}


def make_gradient(name: str, steps: int | None = None) -> Gradient:
    """The strategy named ``name`` in :data:`GRADIENTS`, with ``steps`` adjoint steps where it takes them."""
    if name not in GRADIENTS:
        raise ValueError(f"gradient must be one of {tuple(GRADIENTS)}, got {name!r}")
    build = GRADIENTS[name]
    takes_steps = any(f.name == "steps" for f in dataclasses.fields(getattr(build, "func", build)))
    return build(steps=steps) if takes_steps else build()
