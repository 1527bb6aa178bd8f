"""The accuracy measurement (adjointdpm.tools.accuracy) on a problem small enough to run in seconds: its
references, its identities, its resume and its sentences."""
import json

import pytest
import torch

from adjointdpm import VPSchedule, sample
from adjointdpm.tools import accuracy
from helpers import gaussian, noise


def setup(scale=1.0):
    model = gaussian()
    direction = noise(6, seed=3)
    return accuracy.Setup(
        title="a Gaussian", model=model, x_T=noise(6), schedule=VPSchedule.linear(),
        losses={"square": lambda x: (scale * x ** 2).sum(), "projection": lambda x: (x * direction).sum()},
        loss_about={"square": f"{scale} |x|^2", "projection": "a random direction"}, key={"model": "gaussian"})


TODO = accuracy.cases(solvers=("dpm1", "dpm2m"), steps=(3, 6), multiples=(1, 2))
FINE = dict(solver="dpm3", steps=40)


def test_rows_hold_the_identities_the_library_proves(tmp_path):
    rows = accuracy.measure(setup(), tmp_path / "work", TODO, FINE, progress=False)
    assert len(rows) == 2 * len(TODO)
    by = {(r["solver"], r["steps"], r["strategy"], r["adjoint_steps"], r["loss"]): r for r in rows}
    for solver in ("dpm1", "dpm2m"):
        for n in (3, 6):
            for loss in ("square", "projection"):
                ck = by[solver, n, "Checkpoint", n, loss]
                assert ck["rel_exact"] == 0 and ck["cos_exact"] == pytest.approx(1)
                # data form, order 1, stored states: DDIM's transposed step, so DDIM's exact gradient
                d1 = by[solver, n, "AdjointDEIS-1 data, stored", n, loss]
                assert (d1["rel_exact"] < 1e-12) == (solver == "dpm1")
    # every strategy: Checkpoint's backward makes one VJP per model evaluation (DDIM: one per step)
    assert by["dpm1", 6, "Checkpoint", 6, "square"]["nfe_backward"] == 6
    assert by["dpm1", 6, "Adjoint RK4", 12, "square"]["nfe_backward"] == 4 * 12


def test_a_rerun_resumes_and_other_settings_are_refused(tmp_path, monkeypatch):
    first = accuracy.measure(setup(), tmp_path / "work", TODO[:5], FINE, progress=False)
    calls = []
    original = accuracy.Setup.gradients
    monkeypatch.setattr(accuracy.Setup, "gradients", lambda self, *a: calls.append(a) or original(self, *a))
    again = accuracy.measure(setup(), tmp_path / "work", TODO[:6], FINE, progress=False)
    assert again[:len(first)] == first and len(calls) == 1  # only the sixth case ran
    log = tmp_path / "work" / "cases.jsonl"
    log.write_text(log.read_text()[:-20])  # a write cut short: that case runs again, the others are kept
    calls.clear()
    accuracy.measure(setup(), tmp_path / "work", TODO[:6], FINE, progress=False)
    assert len(calls) == 1 and all(json.loads(line) for line in log.read_text().splitlines()[-2:])
    with pytest.raises(ValueError, match="holds work made with other settings: losses="):
        accuracy.measure(setup(scale=2.0), tmp_path / "work", TODO[:6], FINE, progress=False)


def test_the_sentences_follow_the_numbers():
    """On constructed rows: the strategy named nearest is the one with the best worst-loss cosine, and a
    strategy is called more than 100 % off exactly when a loss says so."""
    def row(name, cos, rel, loss="a", m=10):
        return dict(solver="dpm1", steps=10, strategy=name, adjoint_steps=m, loss=loss, rel_exact=rel, cos_exact=cos,
                    rel_converged=rel, cos_converged=cos, seconds=1.0, nfe_backward=10)
    rows = [row("Checkpoint", 1, 0), row("AdjointDEIS-2 data", 0.99, 0.3), row("AdjointDEIS-2 data", 0.5, 0.9, "b"),
            row("AdjointDEIS-1 data", 0.95, 0.2), row("AdjointDEIS-1 data", 0.94, 0.3, "b"),
            row("AdjointDEIS-1 noise", 0.2, 5.0), row("AdjointDEIS-1 noise", 0.3, 0.5, "b")]
    text, converged = accuracy.findings(rows)
    assert "the nearest memory-flat strategy is `AdjointDEIS-1 data` (cosine at least 0.940" in text
    assert text.endswith("More than 100 % off on some loss: `AdjointDEIS-1 noise`.")
    assert "stored" not in text
    assert converged == ("Against the converged gradient, behind 10 `dpm1` steps: the sampler's own exact gradient "
                         "has cosine 1.000 (worst loss); the nearest adjoint at the sampler's steps, "
                         "`AdjointDEIS-1 data`, 0.940.")


def test_the_commands_build_their_problems():
    """Both scales' set-ups: the committed model, finite losses, a key that names the model's weights."""
    from cifar import adjoint_accuracy as cifar_accuracy
    from stable_diffusion.digits import accuracy as sd_accuracy
    for module in (cifar_accuracy, sd_accuracy):
        s = module.build("cpu", 1, quick=True)
        with torch.no_grad():
            x0 = sample(s.model, s.x_T, s.schedule, s.cond, steps=2, solver="dpm1", t_end=s.t_end)
        assert all(torch.isfinite(loss(x0)) for loss in s.losses.values())
        assert len(s.key["model"]) == 16 and set(s.loss_about) == set(s.losses)
