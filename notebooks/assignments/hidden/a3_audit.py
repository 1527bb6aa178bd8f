"""Assignment 3's hidden tests (see ``hidden/__init__.py``): the projection, the search's success on unseen
seeds and its use of the projection it is given, and the strategy's memory, measured here."""
import torch

from forbid import AUDIT
from hidden import Hidden, gradient_strategy, tensor

BOX = torch.randn(1000, 2, generator=torch.Generator().manual_seed(3)) * 3
TAUS = (0.05, 0.8)


def projections(ns):
    return {f"p{i}": ns["project"](BOX, tau) for i, tau in enumerate(TAUS)}


def projections_check(got, want, setup):
    """Every component in the box (exactly, in delta's dtype) and every component inside it unchanged."""
    for i, tau in enumerate(TAUS):
        p = got.get(f"p{i}")
        if not isinstance(p, torch.Tensor) or p.shape != BOX.shape or p.dtype != BOX.dtype:
            return False
        inside = BOX.abs() <= tau
        if not (bool((p.abs() <= torch.tensor(tau, dtype=p.dtype)).all()) and torch.equal(p[inside], BOX[inside])):
            return False
    return True


UNSEEN = lambda: torch.randn(96, 2, generator=torch.Generator().manual_seed(2024))
TAU, PASS_MARK = 0.5, 0.40  # the mark: well below the solution's rate on these seeds (`course.py calibrate`)


def search(ns):
    x = UNSEEN()
    with torch.no_grad():
        labels = ns["classifier"](ns["generate"](x)).argmax(1)
    return {"delta": ns["audit"](x, labels, TAU, project=lambda d, tau: d.clamp(-tau, tau))}


def success(got, setup):
    """The share of the unseen points whose decision ``got``'s delta changes, read by the set-up's own
    classifier and generator (the notebook's could be anything)."""
    delta, x = tensor(got, "delta", (96, 2)), UNSEEN()
    if delta is None or not bool((delta.abs() <= TAU + 1e-6).all()):
        return 0.0, PASS_MARK, "the share of decisions changed at tau = 0.5 on the unseen seeds"
    classifier, generate = setup()["classifier"], setup()["generate"]
    with torch.no_grad():
        labels = classifier(generate(x)).argmax(1)
        changed = classifier(generate(x + delta.to(x.dtype))).argmax(1) != labels
    return float(changed.float().mean()), PASS_MARK, "the share of decisions changed at tau = 0.5 on the unseen seeds"


def search_check(got, want, setup):
    rate, mark, _ = success(got, setup)
    return rate >= mark


def given_projection(ns):
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        labels = ns["classifier"](ns["generate"](x)).argmax(1)
    first_only = lambda d, tau: torch.stack([d[:, 0].clamp(-tau, tau), torch.zeros_like(d[:, 1])], 1)
    return {"delta": ns["audit"](x, labels, 0.2, iters=3, gradient=ns["Checkpoint"](), project=first_only)}


def given_projection_check(got, want, setup):
    """It moved, inside the box, and its second coordinate is exactly what the given projection returns."""
    delta = tensor(got, "delta", (32, 2))
    return delta is not None and 0 < float(delta[:, 0].abs().max()) and bool((delta[:, 0].abs() <= 0.2 + 1e-6).all()) \
        and not delta[:, 1].any()


def chosen_strategy(ns):
    return {"strategy": repr(ns["strategy"])[:200]}


def saved_bytes(strategy, steps, setup):
    from adjointdpm import sample
    from adjointdpm.tools.memory import saved_bytes_during
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)).requires_grad_()
    out, total = saved_bytes_during(lambda: sample(setup()["model"], x, setup()["schedule"], steps=steps, solver="dpm2",
                                                   gradient=strategy))
    out.sum().backward()
    return total


def strategy_check(got, want, setup):
    """The strategy the notebook named, built here from its class and arguments, keeps at most 20 % more for
    backward at 40 steps than at 10."""
    text = got.get("strategy")
    strategy = gradient_strategy(text) if isinstance(text, str) else None
    return strategy is not None and saved_bytes(strategy, 40, setup) <= 1.2 * saved_bytes(strategy, 10, setup)


TESTS = (
    Hidden("q1", "projections",
           "project leaves a component outside the box (exactly, in delta's dtype), or changes a component that was inside it",
           projections, projections_check),
    Hidden("q2", "search",
           "at tau = 0.5 on unseen seeds, fewer than 40 % of decisions change, or delta leaves the box by more than "
           "1e-6, or audit uses toy.apps.audit", search, search_check, forbid=AUDIT, measure=success),
    Hidden("q2", "given_projection",
           "audit does not return what the projection it is given returns (checked with one that zeroes the second "
           "coordinate), or it does not move delta",
           given_projection, given_projection_check, forbid=AUDIT),
    Hidden("q3", "chosen_strategy", "the memory this strategy keeps for backward grows with the number of steps",
           chosen_strategy, strategy_check),
)
