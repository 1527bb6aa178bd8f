"""Stable Diffusion scale on tiny components of the real architectures (built in code):
the time map, v-prediction, gradients of every kind against Checkpoint, offline loading,
the four applications (two optimisation steps each, loss falls), and the errors."""
import dataclasses
import json
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision

from adjointdpm import AdjointDEIS, Backprop, Checkpoint, make_gradient, sample
from stable_diffusion import (LatentEps, add_token, decode, encode_prompt, eps_model, load_components,
                              tiny_components)
from stable_diffusion import apps
from stable_diffusion.__main__ import main
from stable_diffusion.latent import check_latents
from helpers import one_line_error
from stable_diffusion.nets import check_target, load_torchvision_classifier, load_vgg19

FAST = apps.Sampler(steps=3, solver="dpm2m", guidance_scale=3.0)


@pytest.fixture
def comps():
    return tiny_components(sample_size=8)


@pytest.fixture(scope="module")
def classifier_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("clf") / "resnet18_10.pth"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)
    return path


def _classifier(path):
    return load_torchvision_classifier("resnet18", path, num_classes=10, size=32)


def test_unet_sees_interpolated_timesteps_and_v_prediction_converts(comps):
    seen = []
    x = torch.randn(2, *comps.latent_shape, dtype=torch.float64)
    eps_true = torch.randn_like(x)
    schedule = comps.schedule
    t = torch.tensor([0.5005, 0.25], dtype=torch.float64)

    def fake_unet(sample, timestep, encoder_hidden_states):  # v = alpha eps - sigma x_0 for a known eps
        seen.append(timestep.clone())
        alpha, sigma = schedule.alpha(t).view(-1, 1, 1, 1), schedule.sigma(t).view(-1, 1, 1, 1)
        x_0 = (sample - sigma * eps_true) / alpha
        return mock.Mock(sample=alpha * eps_true - sigma * x_0)
    unet = mock.Mock(side_effect=fake_unet, dtype=torch.float64, parameters=lambda: iter([torch.zeros(1, dtype=torch.float64)]))
    model = LatentEps(unet, comps.schedule, "v_prediction")
    out = model(x, t, torch.zeros(2, 77, 16, dtype=torch.float64))
    assert torch.allclose(seen[0], torch.tensor([499.5, 249.0], dtype=torch.float64))  # N t - 1, not rounded
    assert torch.allclose(out, eps_true, atol=1e-12)  # eps = sigma x_t + alpha v


def test_gradients_agree_with_checkpoint_as_adjoint_steps_grow(comps):
    for net in (comps.unet, comps.vae, comps.text_encoder):
        net.double()
    model = eps_model(comps, 3.0)
    token = add_token(comps, "<new>", "dog")
    attn = apps.cross_attention_parameters(comps.unet)
    x0 = torch.randn(1, *comps.latent_shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def grads(gradient, steps):
        for p in attn.values():
            p.requires_grad_(True).grad = None
        x_T = x0.clone().requires_grad_()
        row = comps.text_encoder.get_input_embeddings().weight[token].detach().clone().requires_grad_()
        cond = encode_prompt(comps, ["a photo of <new>"], row, token)
        x = sample(model, x_T, comps.schedule, cond, steps=steps, solver="rk4", t_end=1e-3, gradient=gradient)
        decode(comps, x).square().mean().backward()
        return [x_T.grad, row.grad, torch.cat([p.grad.flatten() for p in attn.values()])]

    errors = []
    for steps in (4, 16):  # forward and backward steps together: a 4th-order method, so ~1/256
        reference = grads(Checkpoint(), steps)
        assert all(g is not None and g.abs().sum() > 0 for g in reference)
        got = grads(make_gradient("adjoint", steps), steps)
        errors.append([float((a - b).norm() / b.norm()) for a, b in zip(got, reference)])
    for coarse, fine in zip(*errors):  # every gradient (x_T, embedding row, attention weights) converges
        assert fine < coarse / 8 and fine < 1e-3
    for strategy in (Backprop(), AdjointDEIS(1, steps=4)):
        assert all(torch.isfinite(g).all() for g in grads(strategy, 4))


def test_save_pretrained_and_load_offline(comps, tmp_path):
    comps.save_pretrained(tmp_path / "sd")
    loaded = load_components(tmp_path / "sd", device="cpu")
    assert torch.equal(loaded.betas, comps.betas)  # float64 through the scheduler config
    x = torch.randn(1, *comps.latent_shape)
    cond = encode_prompt(comps, ["a dog"])
    assert torch.equal(encode_prompt(loaded, ["a dog"]), cond)
    t = torch.tensor([0.3])
    assert torch.allclose(eps_model(loaded, 1.0)(x, t, cond), eps_model(comps, 1.0)(x, t, cond))


def test_errors(comps, tmp_path, classifier_file):
    with pytest.raises(ValueError, match="cannot load Stable Diffusion from .* offline"):
        load_components("nobody/no-such-model")
    (tmp_path / "partial" / "unet").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"lacks the subfolders \['vae', 'text_encoder'"):
        load_components(tmp_path / "partial")
    with pytest.raises(ValueError, match=r"latents must have shape \(batch, 4, 8, 8\)"):
        check_latents(comps, torch.randn(1, 4, 16, 16))
    with pytest.raises(ValueError, match=r"latents must have shape"):  # every application samples through here
        apps.Pipeline(comps, FAST).images(torch.randn(1, 4, 16, 16), encode_prompt(comps, ["a dog"]))
    with pytest.raises(dataclasses.FrozenInstanceError):  # settings, safe as a default argument
        FAST.steps = 4
    with pytest.raises(ValueError, match="another number of classes"):
        load_torchvision_classifier("resnet18", classifier_file, num_classes=1000)
    with pytest.raises(ValueError, match="target class 12 is not a class of this classifier, which has 10"):
        check_target(_classifier(classifier_file), 12)
    add_token(comps, "<new>")
    with pytest.raises(ValueError, match="already in the tokenizer"):
        add_token(comps, "<new>")


@pytest.mark.parametrize("sampler", [FAST, apps.Sampler(steps=3, solver="reversible-dpm1", guidance_scale=3.0,
                                                        gradient="reversible")], ids=["adjoint", "reversible"])
def test_guided_sampling_raises_target_probability(comps, classifier_file, tmp_path, sampler):
    result = apps.guided_sampling(comps, _classifier(classifier_file), "a photo of a dog", 3, [0, 1], iters=3,
                                  lr=0.1, sampler=sampler, out=tmp_path, progress=False)
    assert result["losses"][-1] < result["losses"][0]
    assert (tmp_path / "guided.png").exists() and json.loads((tmp_path / "guided.json").read_text())["target"] == 3


def test_audit_keeps_the_bound(comps, classifier_file, tmp_path):
    clf = _classifier(classifier_file)
    label = int(clf(apps.Pipeline(comps, FAST).generate(["a photo of a cat"], [0])).argmax())  # labelled "correctly"
    result = apps.audit_classifier(comps, clf, {label: "a photo of a cat"}, [0, 1], tau=0.5, iters=2, sampler=FAST,
                                   out=tmp_path, progress=False)
    row = result["rows"][0]
    assert row["audited"] >= 1 and result["max_abs_delta"] <= 0.5 + 1e-7
    ce = [h["ce"] for h in result["history"]]
    assert ce[-1] > ce[0] or result["rate"] > 0  # untargeted: the true class's cross-entropy rises, or it flipped
    assert "| class |" in (tmp_path / "audit.md").read_text()


def _vgg_file(path):
    torch.manual_seed(0)
    torch.save({f"features.{k}": v for k, v in torchvision.models.vgg19().features.state_dict().items()}, path)
    return path


def test_stylize_resumes_and_saves_a_loadable_unet(tmp_path):
    from diffusers import UNet2DConditionModel
    vgg = load_vgg19(_vgg_file(tmp_path / "vgg.pth"))
    style = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(prompts=["a house"], seeds=[0], lr=1e-3, sampler=FAST, progress=False)
    full = apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=2, out=tmp_path / "full", **kw)
    assert full["losses"][1] < full["losses"][0]
    apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=1, out=tmp_path / "part", **kw)  # interrupted
    resumed = tiny_components(sample_size=8)
    again = apps.fine_tune_style(resumed, vgg, style, epochs=2, out=tmp_path / "part", **kw)
    assert again["losses"] == pytest.approx(full["losses"], rel=1e-5)
    unet = UNet2DConditionModel.from_pretrained(tmp_path / "part" / "unet", local_files_only=True)
    trained = apps.cross_attention_parameters(resumed.unet)
    assert all(torch.equal(p, trained[n]) for n, p in apps.cross_attention_parameters(unet).items())


def test_stylize_upcasts_only_the_trained_weights_of_a_half_precision_unet(tmp_path):
    """As diffusers' cast_training_params: the trained cross-attention weights train in float32, the rest of
    the UNet stays in half precision (bfloat16: what CPU autocast runs), and the loss still falls."""
    vgg = load_vgg19(_vgg_file(tmp_path / "vgg.pth"))
    style = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    comps = tiny_components(sample_size=8)
    comps.unet.to(torch.bfloat16)
    before = {n: p.float().clone() for n, p in apps.cross_attention_parameters(comps.unet).items()}
    r = apps.fine_tune_style(comps, vgg, style, prompts=["a house"], seeds=[0], lr=1e-3, sampler=FAST, progress=False,
                             epochs=3, out=tmp_path / "half")
    trained = apps.cross_attention_parameters(comps.unet)
    assert {p.dtype for p in trained.values()} == {torch.float32}
    assert {p.dtype for n, p in comps.unet.named_parameters() if n not in trained} == {torch.bfloat16}
    assert all((p - before[n]).abs().max() > 0 for n, p in trained.items())
    assert r["losses"][-1] < r["losses"][0]


def test_stylize_lora_resumes_and_loads_through_diffusers(tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    vgg = load_vgg19(_vgg_file(tmp_path / "vgg.pth"))
    style = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(prompts=["a house"], seeds=[0], lr=3e-2, sampler=FAST, progress=False, lora_rank=2)
    full = apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=3, out=tmp_path / "full", **kw)
    assert full["losses"][-1] < full["losses"][0]
    apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=1, out=tmp_path / "part", **kw)  # interrupted
    trained = tiny_components(sample_size=8)
    again = apps.fine_tune_style(trained, vgg, style, epochs=3, out=tmp_path / "part", **kw)
    assert again["losses"] == pytest.approx(full["losses"], rel=1e-5)
    assert not (tmp_path / "part" / "unet").exists()  # adapters only, not a 3.4 GB UNet per style

    base = tiny_components(sample_size=8)
    pipe = StableDiffusionPipeline(vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer,
                                   unet=base.unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    cond = encode_prompt(trained, ["a house"])
    with torch.no_grad():
        before = pipe.unet(x, 500, cond).sample
        pipe.load_lora_weights(tmp_path / "part" / "lora")  # diffusers' own loader, from the written file
        loaded, target = pipe.unet(x, 500, cond).sample, trained.unet(x, 500, cond).sample
    assert (target - before).abs().max() > 1e-3  # the adapters changed eps ...
    torch.testing.assert_close(loaded, target, rtol=1e-5, atol=1e-6)  # ... and diffusers reproduces the change


def test_lora_needs_linear_cross_attention_projections():
    from diffusers import UNet2DConditionModel
    no_cross = UNet2DConditionModel(block_out_channels=(8, 16), layers_per_block=1, sample_size=8,
                                    down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2,
                                    mid_block_type="UNetMidBlock2D", cross_attention_dim=16, norm_num_groups=4)
    with pytest.raises(ValueError, match="needs cross-attention blocks .* it has no attn2 block"):
        apps.add_lora(no_cross, 2)
    unet = tiny_components(sample_size=8).unet
    name = next(n for n, _ in unet.named_modules() if n.endswith(".attn2"))
    unet.get_submodule(name).to_v = torch.nn.Identity()  # not the layer LoRA wraps
    with pytest.raises(ValueError, match=f"missing: {name}.to_v"):
        apps.add_lora(unet, 2)


def test_invert_embedding_saves_a_textual_inversion_file(comps, tmp_path):
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    targets = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))  # far from any output
    result = apps.invert_embedding(comps, targets, [0, 1], token="<fx>", init_token="dog", iters=3, lr=0.05,
                                   sampler=FAST, reuse_prompts=["a painting of {}"], out=tmp_path, progress=False)
    assert result["losses"][-1] < result["losses"][0]
    fresh = tiny_components(sample_size=8)
    pipe = StableDiffusionPipeline(vae=fresh.vae, text_encoder=fresh.text_encoder, tokenizer=fresh.tokenizer,
                                   unet=fresh.unet, scheduler=DDIMScheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"))
    new_id = pipe.tokenizer.convert_tokens_to_ids("<fx>")
    learned = comps.text_encoder.get_input_embeddings().weight[comps.tokenizer.convert_tokens_to_ids("<fx>")]
    assert torch.equal(pipe.text_encoder.get_input_embeddings().weight[new_id], learned)


def _fails(capsys, argv, message):
    return one_line_error(main, argv, capsys, message)


def test_command_line(tmp_path, classifier_file, capsys):
    with pytest.raises(SystemExit) as help_exit:
        main(["guided", "--help"])
    assert help_exit.value.code == 0
    main(["invert", "--model", "tiny", "--target-prompt", "a photo of a tree", "--seeds", "0", "--iters", "2",
          "--steps", "3", "--reuse-prompts", "a painting of {}", "--out", str(tmp_path), "--no-progress"])
    assert (tmp_path / "learned_embeds.safetensors").exists() and (tmp_path / "invert.png").exists()
    _fails(capsys, ["guided", "--model", "tiny", "--prompt", "a dog", "--target", "99", "--classifier-arch",
                    "resnet18", "--classifier-weights", str(classifier_file), "--num-classes", "10", "--out",
                    str(tmp_path)], "target class 99")
    _fails(capsys, ["invert", "--model", str(tmp_path / "missing"), "--target-prompt", "x", "--out", str(tmp_path)],
           "cannot load Stable Diffusion")


@pytest.mark.parametrize("argv,message", [
    (["audit", "--classes", "1=a cat", "--iters", "0"], "argument --iters: must be an integer from 1 to 100,000"),
    (["audit", "--classes", "1=a cat", "--iters", "-3"], "argument --iters: must be an integer from 1 to 100,000"),
    (["audit", "--classes", "1=a cat", "--tau", "nan"], "argument --tau: must be a finite number, got 'nan'"),
    (["guided", "--prompt", "a", "--target", "1", "--guidance-scale", "nan"],
     "argument --guidance-scale: must be a finite number, got 'nan'"),
    (["guided", "--prompt", "a", "--target", "1", "--device", "bogus"], "argument --device: 'bogus' is not a device"),
    (["stylize", "--style-image", "sklearn:china.jpg", "--prompts", "a", "--epochs", "0"],
     "argument --epochs: must be an integer from 1 to 10,000"),
    (["stylize", "--style-image", "sklearn:china.jpg", "--prompts", "a", "--save-every", "0"],
     "argument --save-every: must be an integer >= 1, got '0'"),
    (["stylize", "--style-image", __file__, "--prompts", "a"],
     f"argument --style-image: image {__file__} cannot be decoded (png or jpeg expected)"),
    (["invert", "--target-prompt", "a", "--reuse-prompts", "a {x}"], "argument --reuse-prompts:"),
    (["morph"], "argument --image-a/--image-b: give the same number of reference images for a and b"),
    (["morph", "--image-a", __file__, "--image-b", __file__, "--classifier-arch", "resnet18"],
     "argument --classifier-weights: required for the resnet18 identity model"),
    (["morph", "--pairs", "0"], "argument --pairs: must be an integer from 1 to 10,000"),
    (["morph", "--image-a", __file__, "--image-b", __file__, "--solver", "dpm2m"],  # its samplers are the poster's
     "unrecognized arguments: --solver dpm2m"),
    (["guided", "--prompt", "a", "--target", "1", "--save-memory", "all", "vae"],
     "argument --save-memory: 'vae' and 'vae-resnets' are two grains of one saving; choose one"),
    (["invert", "--target-prompt", "a", "--gradient", "reversible"],
     "argument --gradient: ReversibleAdjoint differentiates a reversible solver (reversible-dpm1), got 'dpm2m'"),
    (["invert", "--target-prompt", "a", "--gradient", "torchdiffeq"],
     "argument --gradient: TorchdiffeqAdjoint supports solvers ('euler', 'heun', 'rk4', 'adams4', 'dopri5'), got 'dpm2m'"),
    (["invert", "--target-prompt", "a", "--solver", "reversible-dpm1"],
     "argument --gradient: solver 'reversible-dpm1' is differentiated exactly by gradient 'reversible'"),
])
def test_command_mistakes_stop_at_the_door(argv, message, capsys, tmp_path):
    _fails(capsys, argv + ["--model", "tiny", "--out", str(tmp_path / "out")], message)
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", [["guided", "--prompt", "a", "--target", "1"], ["invert", "--target-prompt", "a"],
                                     ["stylize", "--style-image", "sklearn:china.jpg", "--prompts", "a"]])
def test_cuda_without_a_gpu_is_refused_by_every_application(command, capsys):
    _fails(capsys, command + ["--model", "tiny", "--device", "cuda"], "this machine has no CUDA device")


def test_stylize_remakes_an_unreadable_content_target_and_checkpoint(tmp_path, capsys):
    vgg = load_vgg19(_vgg_file(tmp_path / "vgg.pth"))
    style = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    kw = dict(prompts=["a house"], seeds=[0], lr=1e-3, sampler=FAST, progress=False, save_every=1)
    first = apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=1, out=tmp_path, **kw)
    target = tmp_path / "content" / "pair_00000.pt"
    content = target.read_bytes()
    target.write_bytes(content[:50])
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    again = apps.fine_tune_style(tiny_components(sample_size=8), vgg, style, epochs=1, out=tmp_path, **kw)
    err = capsys.readouterr().err
    assert f"content target {target} cannot be read" in err and "starting the training over" in err
    assert again["losses"] == pytest.approx(first["losses"], rel=1e-5)
    assert torch.equal(torch.load(target, weights_only=True), _load_bytes(content))


def _load_bytes(data: bytes):
    import io
    return torch.load(io.BytesIO(data), weights_only=True)


def test_morph_command_on_your_own_images_and_identity_model(tmp_path, classifier_file, capsys):
    from PIL import Image
    paths = []
    for i in range(4):
        path = tmp_path / f"ref{i}.png"
        Image.fromarray((torch.rand(16, 16, 3, generator=torch.Generator().manual_seed(i)) * 255).byte().numpy()).save(path)
        paths.append(str(path))
    main(["morph", "--model", "tiny", "--image-a", *paths[:2], "--image-b", *paths[2:], "--prompt-a", "a cat",
          "--prompt-b", "a dog", "--classifier-arch", "resnet18", "--classifier-weights", str(classifier_file),
          "--num-classes", "10", "--classifier-size", "32", "--iters", "2", "--steps", "3", "--threshold", "0.5",
          "--out", str(tmp_path / "out"), "--no-progress"])
    result = json.loads((tmp_path / "out" / "morph.json").read_text())
    assert [r["attack"] for r in result["rows"]] == ["pixel average (no model)", "DiM (no optimisation)",
                                                      "DiM + AdjointDEIS-1 (ODE)", "DiM + AdjointDEIS-1 (SDE)"]
    assert all(0 <= r["mmpmr"]["F"] <= 1 and all(-1 <= v <= 1 for v in r["mean_similarity"]["F"])
               for r in result["rows"])
    arrays = np.load(tmp_path / "out" / "morph_images.npz")
    assert sorted(arrays) == ["a", "average", "b", "dim", "ode", "sde"] and arrays["ode"].shape == (2, 32, 32, 3)
    assert (tmp_path / "out" / "morph.png").exists()


def test_the_sampler_takes_a_noise_seed_exactly_for_an_sde_solver():
    assert apps.Sampler(3, "sde-dpm1", 1.0, "adjointdeis-stored", noise_seed=0).noise_seed == 0
    with pytest.raises(ValueError, match="solver 'sde-dpm1' needs noise_seed"):
        apps.Sampler(3, "sde-dpm1", 1.0, "adjointdeis-stored")
    with pytest.raises(ValueError, match="solver 'dpm1' takes no noise_seed"):
        apps.Sampler(3, "dpm1", 1.0, "adjointdeis", noise_seed=0)


def test_embedding_drops_the_last_linear_layer(classifier_file):
    from stable_diffusion.apps.morph import embedding
    clf = _classifier(classifier_file)
    F = embedding(clf)
    images = torch.rand(2, 3, 32, 32)
    assert F(images).shape == (2, 512) and clf(images).shape == (2, 10)  # the classifier itself is untouched


def test_sd15_random_has_the_published_sizes():
    from stable_diffusion.components import sd15_random_components
    with torch.device("meta"):  # shapes only: no 4 GB of random weights
        comps = sd15_random_components()
    sizes = {name: sum(p.numel() for p in getattr(comps, name).parameters()) for name in ("unet", "vae", "text_encoder")}
    # stable-diffusion-v1-5's checkpoint: UNet 859,520,964, VAE 83,653,863, CLIP ViT-L/14 text 123,060,480
    assert sizes == {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
    assert comps.image_size == 512 and comps.at_resolution(256).latent_shape == (4, 32, 32)
    assert comps.tokenizer.model_max_length == 77
    with pytest.raises(ValueError, match="multiple of 64"):
        comps.at_resolution(200)


def test_memory_savings_keep_the_gradient_and_save_memory():
    from adjointdpm.tools.memory import saved_bytes_during
    from stable_diffusion.components import save_memory
    comps = tiny_components(sample_size=8)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = encode_prompt(comps, ["a dog"])
    weights = {p.data_ptr() for net in (comps.unet, comps.vae) for p in net.parameters()}

    def grad_and_kept(attention, checkpointing):
        save_memory(comps, attention, checkpointing)
        z = x.clone().requires_grad_()
        out, kept = saved_bytes_during(lambda: decode(comps, LatentEps(comps.unet, comps.schedule)(
            z, torch.tensor([0.5]), cond)).square().mean(), exclude=weights)
        out.backward()
        return z.grad, kept

    plain, kept_plain = grad_and_kept("sdpa", [])
    for attention, checkpointing in (("classic", []), ("sdpa", ["unet", "vae"]), ("sdpa", ["unet", "vae-resnets"])):
        grad, kept = grad_and_kept(attention, checkpointing)
        assert float((grad - plain).norm() / plain.norm()) < (1e-4 if attention == "classic" else 1e-5)
        if checkpointing:
            assert kept < kept_plain / 2
    save_memory(comps, "sdpa", [])  # undone: the plain gradient again, to the bit
    assert torch.equal(grad_and_kept("sdpa", [])[0], plain)
    with pytest.raises(ValueError, match="checkpointing names networks among"):
        save_memory(comps, "sdpa", ["text_encoder"])
    with pytest.raises(ValueError, match="two grains of the same saving"):
        save_memory(comps, "sdpa", ["vae", "vae-resnets"])


def test_released_parts_hold_no_memory_and_leave_the_gradient_unchanged():
    from stable_diffusion.components import release
    comps = tiny_components(sample_size=8)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    cond = encode_prompt(comps, ["a dog"])

    def grad():
        z = x.clone().requires_grad_()
        decode(comps, LatentEps(comps.unet, comps.schedule)(z, torch.tensor([0.5]), cond)).square().mean().backward()
        return z.grad
    before = grad()
    release(comps, ["text-encoder", "vae-encoder"])
    assert all(p.device.type == "meta" for p in comps.text_encoder.parameters())
    assert all(p.device.type == "meta" for p in comps.vae.encoder.parameters())
    assert torch.equal(grad(), before)
    with pytest.raises(ValueError, match="release names parts among"):
        release(comps, ["unet"])


def test_checkpoint_keeps_one_state_per_step_on_sd_components():
    """What Checkpoint keeps for backward, counted exactly: the same bytes per extra step, and that
    increment is one latent (the state entering each step), not a step's activations."""
    from adjointdpm.tools.memory import saved_bytes_during
    comps = tiny_components(sample_size=8)
    model = eps_model(comps, 7.5)
    cond = encode_prompt(comps, ["a dog"])
    weights = {p.data_ptr() for p in comps.unet.parameters()}

    def kept(steps, gradient):
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).requires_grad_()
        out, total = saved_bytes_during(lambda: sample(model, x, comps.schedule, cond, steps=steps, solver="dpm2m",
                                                       gradient=gradient), exclude=weights)
        out.sum().backward()
        return total
    latent = 4 * 8 * 8 * 4  # bytes of one state (float32)
    k2, k4, k8 = (kept(n, Checkpoint()) for n in (2, 4, 8))
    assert k4 - k2 == 2 * latent and k8 - k4 == 4 * latent
    assert kept(4, Backprop()) - kept(2, Backprop()) > 50 * latent  # a step's activations, for comparison


def test_bench_records_the_parts_and_resumes(tmp_path, monkeypatch):
    from stable_diffusion import bench
    bench.main(["--model", "tiny", "--steps", "1", "--gradients", "adjoint", "--breakdown", "--repeats", "0",
                "--out", str(tmp_path), "--device", "cpu"])
    records = json.loads((tmp_path / "bench.json").read_text())
    assert {"strategy", "steps", "resolution", "peak_gib", "seconds"} <= set(records[0])
    parts = {(r["strategy"], r["attention"], tuple(r["checkpointing"])): r for r in records if r["steps"] is None}
    assert parts[("vae-backward", "sdpa", ("vae",))]["saved_gib"] < parts[("vae-backward", "sdpa", ())]["saved_gib"]
    weights = parts[("weights", "sdpa", ())]
    assert weights["peak_gib"] == pytest.approx(sum(weights["parts_gib"].values()))
    assert "| 32 | adjoint | 1 |" in (tmp_path / "bench.md").read_text()
    monkeypatch.setattr(bench, "run_in_fresh_process", lambda *a, **k: pytest.fail(f"measured again: {a}"))
    bench.main(["--model", "tiny", "--steps", "1", "--gradients", "adjoint", "--repeats", "0", "--out", str(tmp_path),
                "--device", "cpu"])  # measured already: kept, nothing run
    again = json.loads((tmp_path / "bench.json").read_text())
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, records))
    measured = []  # other settings are measured anew
    monkeypatch.setattr(bench, "run_in_fresh_process", lambda *a, **k: measured.append(a) or dict(records[0], repeats=1))
    bench.main(["--model", "tiny", "--steps", "1", "--gradients", "adjoint", "--repeats", "1", "--out", str(tmp_path),
                "--device", "cpu"])
    assert len(measured) == 1


def test_bench_save_memory_all_records_live_bytes_growth_and_floor(tmp_path):
    from stable_diffusion import bench
    bench.main(["--model", "tiny", "--steps", "1", "2", "--gradients", "checkpoint", "--save-memory", "all",
                "--repeats", "0", "--out", str(tmp_path), "--device", "cpu"])
    records = json.loads((tmp_path / "bench.json").read_text())
    assert [r["steps"] for r in records] == [1, 2]
    from stable_diffusion.registry import open_model
    comps = open_model("tiny", "cpu")
    nbytes = lambda net: sum(p.numel() * p.element_size() for p in net.parameters())
    held = nbytes(comps.unet) + nbytes(comps.vae) - nbytes(comps.vae.encoder) - nbytes(comps.vae.quant_conv)
    for r in records:
        assert r["checkpointing"] == ["unet", "vae-resnets"] and r["release"] == ["text-encoder", "vae-encoder"]
        assert r["allocator"] and r["live_peak_gib"] >= 0
        assert r["weights_held_gib"] * 2 ** 30 == pytest.approx(held, rel=1e-6)  # exactly the released parts' weights are gone
    text = (tmp_path / "bench.md").read_text()
    assert "+ text-encoder released + vae-encoder released + allocator" in text
    assert "Growth per step" in text and "**Floor at 32x32**" in text


def test_a_prompt_longer_than_the_text_encoder_is_cut_with_a_warning(comps):
    from stable_diffusion.latent import token_ids
    limit = comps.tokenizer.model_max_length
    with pytest.warns(UserWarning, match=f"a prompt of {limit + 8} tokens is cut to the text encoder's {limit}"):
        ids = token_ids(comps, ["a photo of a dog"] + [" ".join(["dog"] * (limit + 6))])
    assert ids.shape == (2, limit)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token_ids(comps, ["a photo of a dog"])  # a short prompt: no word

    from stable_diffusion.latent import as_read
    long = " ".join(["dog"] * (limit + 6))
    assert as_read(comps, "a photo of a dog") == "a photo of a dog"
    assert as_read(comps, long) == " ".join(["dog"] * (limit - 2))  # what the JSON records: the words kept


def test_an_image_bomb_is_refused_from_its_header(tmp_path):
    """A small file that decodes to more pixels than the limit is refused before it is decoded."""
    from PIL import Image
    from stable_diffusion.apps import common
    path = tmp_path / "bomb.png"
    Image.new("L", (9000, 8000)).save(path)  # 72 megapixels in a few tens of kilobytes
    assert path.stat().st_size < 200_000
    with pytest.raises(ValueError, match="more than the 67,108,864 pixels"):
        common.read_image(str(path), 8)


@pytest.mark.parametrize("part", ["unet", "text_encoder"])
def test_a_pickle_in_a_model_folder_is_one_line_and_runs_nothing(part, tmp_path, capsys):
    """Weights saved as a pickle that names Python code: refused in one line naming the folder, nothing ran,
    no advice to lift the guard, no library log."""
    import os
    from stable_diffusion import __main__ as sd_main
    from stable_diffusion.components import tiny_components
    model = tmp_path / "model"
    tiny_components().save_pretrained(model)
    for f in (model / part).glob("*.safetensors"):
        f.unlink()
    name = "diffusion_pytorch_model.bin" if part == "unet" else "pytorch_model.bin"
    torch.save({"x": _Planted(str(tmp_path / "ran"))}, model / part / name)
    capsys.readouterr()  # save_pretrained's progress bar
    line = one_line_error(sd_main.main, ["guided", "--model", str(model), "--prompt", "a", "--target", "1",
                                         "--classifier-arch", "resnet18", "--classifier-weights", __file__,
                                         "--out", str(tmp_path / "out")], capsys, f"{model / part}")
    assert "holds Python objects" in line and "weights_only=False" not in line
    assert not os.path.exists(tmp_path / "ran")


class _Planted:
    """Unpickling this runs ``touch path``: what a hostile weight file does."""
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.path}",))
