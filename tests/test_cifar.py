"""DDPM++ against score_sde's layouts and reference outputs; the safe loader; gradients."""
from pathlib import Path

import pytest
import torch

from adjointdpm import Adjoint, Checkpoint, VPSchedule, sample
from cifar import DDPMpp, ScoreSDEEps, load_score_sde

# Made by instantiating score_sde_pytorch's NCSNpp with the two VP CIFAR-10 configs (see README there):
# its state_dict layouts (key, shape, in order; header: the parameter count) and its outputs for rule-made
# weights (the rule is _rule_weights below).
REFERENCE = Path(__file__).resolve().parent / "data" / "score_sde"
TINY = dict(nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), image_size=8)


@pytest.mark.parametrize("config", ["cifar10_ddpmpp_continuous", "cifar10_ddpmpp_deep_continuous"])
def test_state_dict_layout_matches_score_sde(config):
    lines = (REFERENCE / f"score_sde_{config}_state_dict.tsv").read_text().splitlines()
    expected = [(k, tuple(int(s) for s in shape.split("x"))) for k, shape in
                (line.split("\t") for line in lines if not line.startswith("#"))]
    net = DDPMpp(config)
    assert [(k, tuple(v.shape)) for k, v in net.state_dict().items()] == expected
    assert str(sum(p.numel() for p in net.parameters())) in lines[0]  # the header states the count


def _rule_weights(net):
    """The fixture's rule: entry i -> base + scale * randn(seed 1000 + i); base 1 for keys naming
    a GroupNorm weight (the final norm, all_modules.N, is not so named and gets base 0)."""
    out = {}
    for i, (key, value) in enumerate(net.state_dict().items()):
        if key == "sigmas":
            out[key] = value
            continue
        base = 1.0 if "GroupNorm" in key and key.endswith("weight") else 0.0
        scale = 0.05 if value.dim() >= 2 else 0.1
        out[key] = base + scale * torch.randn(value.shape, generator=torch.Generator().manual_seed(1000 + i))
    return out


def _write_score_sde_checkpoint(path, state, shadow):
    torch.save({"model": {f"module.{k}": v for k, v in state.items()},
                "ema": {"decay": 0.9999, "num_updates": 10, "shadow_params": shadow},
                "optimizer": {}, "step": 10}, path)


def test_reference_outputs_through_the_loader(tmp_path):
    config = "cifar10_ddpmpp_continuous"
    ref = torch.load(REFERENCE / f"score_sde_{config}_outputs.pt", weights_only=True)[config]
    net = DDPMpp(config)
    state = _rule_weights(net)
    net.load_state_dict(state)
    shadow = [p.detach() for p in net.parameters()]  # the same tensors: torch.save stores them once
    _write_score_sde_checkpoint(tmp_path / "checkpoint.pth", net.state_dict(), shadow)
    model = load_score_sde(tmp_path / "checkpoint.pth", config)
    assert torch.allclose(ref["t"] * 999, ref["labels"])
    with torch.no_grad():
        out = model(ref["x"], ref["t"])
    assert (out - ref["out"]).abs().max() < 1e-4


def test_loader_uses_the_ema_weights(tmp_path):
    torch.manual_seed(0)
    raw, ema = DDPMpp(**TINY), DDPMpp(**TINY)
    _write_score_sde_checkpoint(tmp_path / "c.pth", raw.state_dict(), [p.detach() for p in ema.parameters()])
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([0.3, 0.7])
    with torch.no_grad():
        assert torch.allclose(load_score_sde(tmp_path / "c.pth", **TINY)(x, t), ema.eval()(x, t * 999), atol=1e-6)
        assert torch.allclose(load_score_sde(tmp_path / "c.pth", ema=False, **TINY)(x, t), raw.eval()(x, t * 999),
                              atol=1e-6)


class Payload:
    """An arbitrary object: unpickling it would need code, which weights_only refuses."""


def test_bad_checkpoints_get_clear_errors(tmp_path):
    torch.manual_seed(0)
    good = DDPMpp(**TINY).state_dict()
    with pytest.raises(ValueError, match="is not a file"):
        load_score_sde(tmp_path / "absent.pth", **TINY)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="expected a dict with a 'model'"):
        load_score_sde(tmp_path / "tensor.pth", **TINY)
    torch.save({"model": Payload()}, tmp_path / "code.pth")
    with pytest.raises(ValueError, match="holds Python objects, not only tensors .*refused, nothing in it ran"):
        load_score_sde(tmp_path / "code.pth", **TINY)
    missing = {k: v for k, v in good.items() if not k.startswith("all_modules.3.")}
    missing["extra.weight"] = torch.zeros(1)
    _write_score_sde_checkpoint(tmp_path / "missing.pth", missing, [])
    with pytest.raises(ValueError, match=r"(?s)missing keys \(\d+\): all_modules\.3\..*unexpected keys \(1\): extra"):
        load_score_sde(tmp_path / "missing.pth", **TINY)
    wrong = dict(good, **{"all_modules.0.weight": torch.zeros(5, 5)})
    _write_score_sde_checkpoint(tmp_path / "shape.pth", wrong, [])
    with pytest.raises(ValueError, match=r"shape differences \(1\): all_modules\.0\.weight: checkpoint \(5, 5\)"):
        load_score_sde(tmp_path / "shape.pth", **TINY)
    _write_score_sde_checkpoint(tmp_path / "noema.pth", good, [])
    with pytest.raises(ValueError, match="shadow_params has 0 tensors"):
        load_score_sde(tmp_path / "noema.pth", **TINY)
    with pytest.raises(ValueError, match="config must be one of"):
        DDPMpp("cifar10_ncsnpp")


def test_adjoint_through_tiny_ddpmpp_approaches_checkpoint():
    """Gradients w.r.t. x_T and weights: on the same RK4 grid, the adjoint (re-integrating y
    backwards) approaches the exact discrete gradient (Checkpoint) as the steps grow. The
    random network's eps varies fast in t (labels t * 999), so the approach is slow."""
    torch.manual_seed(0)
    net = DDPMpp(**TINY).double().eval()
    model = ScoreSDEEps(net)
    x_T = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    sched = VPSchedule.linear()

    def grads(gradient, steps):
        model.zero_grad()
        x = x_T.clone().requires_grad_()
        (sample(model, x, sched, steps=steps, solver="rk4", gradient=gradient) ** 2).sum().backward()
        return torch.cat([x.grad.flatten(), net.all_modules[0].weight.grad.flatten(),
                          net.all_modules[-1].weight.grad.flatten()])

    errors = []
    for steps in (8, 32, 64):  # measured: 8.5e-4, 6.0e-5, 1.1e-5; past 64 it falls no further (1.6e-5 at 128)
        exact = grads(Checkpoint(), steps)
        errors.append(float((grads(Adjoint(), steps) - exact).norm() / exact.norm()))
    assert all(a > 2 * b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-4, errors
