"""The DDPM++ trained on the digits (cifar.train_digits): it trains and resumes exactly, it is written
in score_sde's checkpoint format and read by load_score_sde alone, the committed one draws digits that
the judges read, and Table 1 runs on a learned model end to end."""
import json
from dataclasses import replace

import pytest
import torch

from adjointdpm import sample
from cifar import DDPMpp, load_score_sde, table1
from cifar import train_digits
from handwritten.judges import judges

QUICK = train_digits.Recipe(steps=40, batch=16, warmup=1, lr=2e-3)


def test_training_loss_falls_and_a_resumed_run_ends_with_the_same_weights(tmp_path, monkeypatch):
    full = train_digits.train(tmp_path / "full", QUICK, progress=False, save_every=5)
    losses = torch.load(tmp_path / "full" / "training.pt", weights_only=True)["losses"]
    assert sum(losses[-10:]) < sum(losses[:10])
    assert full["recipe"]["steps"] == 40 and full["image_size"] == 16

    calls = {"n": 0}
    original = train_digits.loss_fn

    def dies_at_step_23(*args):
        calls["n"] += 1
        if calls["n"] == 23:
            raise KeyboardInterrupt
        return original(*args)
    monkeypatch.setattr(train_digits, "loss_fn", dies_at_step_23)
    with pytest.raises(KeyboardInterrupt):
        train_digits.train(tmp_path / "cut", QUICK, progress=False, save_every=5)
    monkeypatch.setattr(train_digits, "loss_fn", original)
    train_digits.train(tmp_path / "cut", QUICK, progress=False, save_every=5)
    a, b = (torch.load(tmp_path / run / "export" / "checkpoint.pth", weights_only=True) for run in ("full", "cut"))
    assert a["step"] == b["step"] == 40
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert all(torch.equal(x, y) for x, y in zip(a["ema"]["shadow_params"], b["ema"]["shadow_params"]))
    with pytest.raises(ValueError, match="holds work made with other settings: seed=0 \\(now 1\\)"):
        train_digits.train(tmp_path / "full", replace(QUICK, seed=1), progress=False)


def test_the_export_is_score_sdes_format_and_only_load_score_sde_reads_it(tmp_path):
    train_digits.train(tmp_path, replace(QUICK, steps=3), progress=False)
    path = tmp_path / "export" / "checkpoint.pth"
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"model", "ema", "optimizer", "step"} and all(k.startswith("module.") for k in ckpt["model"])
    net = DDPMpp("digits_ddpmpp")
    assert [tuple(s.shape) for s in ckpt["ema"]["shadow_params"]] == [tuple(p.shape) for p in net.parameters()]
    model = load_score_sde(path, "digits_ddpmpp")
    for s, p in zip(ckpt["ema"]["shadow_params"], model.net.parameters()):  # the EMA weights are the ones used
        assert torch.equal(s, p)
    with pytest.raises(ValueError, match="does not match DDPMpp \\(another --config\\?\\)"):
        load_score_sde(path, "cifar10_ddpmpp_continuous")


def test_the_committed_checkpoint_draws_digits_that_the_judges_read():
    path = train_digits.EXPORT / "checkpoint.pth"
    assert path.stat().st_size < 25 * 2**20
    model = load_score_sde(path, "digits_ddpmpp")
    recipe = json.loads((train_digits.EXPORT / "recipe.json").read_text())
    assert recipe["image_size"] == model.net.image_size == 16 and "seconds" not in recipe  # no times: reruns agree
    x_T = torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        images = (sample(model, x_T, table1.VPSchedule.linear(), steps=10, solver="dpm3") / 2 + 0.5).clamp(0, 1)
    recognised = judges().recognised(images)  # both judges agree, confidently, on a digit near a real one
    assert float(recognised.float().mean()) >= 0.7
    assert len(set(judges().read(images)["net"][recognised].tolist())) >= 8  # not one digit drawn over and over
    # no coloured speckle: the three channels of a gray digit stay together
    assert float(images.std(1).mean()) < 0.02


def test_table1_on_a_learned_model_end_to_end(tmp_path):
    train_digits.train(tmp_path / "model", replace(QUICK, steps=3), progress=False)
    setup = table1.digits_setup(tmp_path / "model" / "export" / "checkpoint.pth")
    result = table1.run(setup, [10], samples=8, batch=4, out=tmp_path / "t1", progress=False, grids=["quadratic"])
    text = table1.write(result, tmp_path / "t1")
    assert [r["sampler"] for r in result["rows"]] == list(table1.SAMPLERS)
    assert all(torch.isfinite(torch.tensor(r["distance"])) for r in result["rows"])
    assert result["floors"]["real_train"] >= 0 and result["floors"]["converged"] > 0
    assert result["quality"]["samples"] == 8 and 0 <= result["quality"]["recognised"] <= 1
    assert result["quality"]["heldout_recognised"] > 0.9  # the judges recognise real digits
    assert (tmp_path / "t1" / "table1_digits_samples.png").exists() and "## The model's samples" in text
    assert [r["grid"] for r in result["rows"]] == ["quadratic"] * 3
    assert "not CIFAR-10" in text and "The paper's ordering on the quadratic grid" in text and (tmp_path / "t1" / "table1_digits.json").exists()
