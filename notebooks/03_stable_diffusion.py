# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Stable Diffusion scale: the paper's four applications
#
# AdjointDPM's applications (Sec. 4, App. A-D) optimise something upstream of Stable
# Diffusion's sampler with a loss on the decoded image:
#
# | application | optimised | loss |
# |---|---|---|
# | guided sampling (Sec. 4.1.1) | initial latent `x_T` | a classifier's `-log p(target)` |
# | auditing (Sec. 4.1.2) | `x_T + delta`, `‖delta‖∞ ≤ tau` | the classifier's cross-entropy, raised |
# | stylization (Sec. 4.2, eq. 13) | UNet cross-attention weights | Gram-matrix style + VGG content |
# | inversion (App. A) | one new token's embedding | MSE to target images |
#
# All four go through one call, `adjointdpm.sample(model, x_T, schedule, cond, gradient=...)`:
# the diffusers pipelines cannot be used because their `__call__` runs under `no_grad`.
#
# **By default this notebook runs on tiny, randomly initialised components of the real
# architectures, on a CPU, in under a minute.** Their images are noise-like: the point is
# that every gradient flows and every loss falls. Set `REAL = True` below to run the same
# cells on a real Stable Diffusion v1.x on a GPU.

# %%
REAL = False  # True: a local Stable Diffusion on CUDA (see the next cell for what to download)

# %% [markdown]
# For `REAL = True`, place on the machine (nothing is downloaded by the code):
# - a Stable Diffusion v1.x in diffusers' layout, e.g. `huggingface-cli download
#   stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir sd15` on a machine with internet;
# - torchvision's ImageNet weights `resnet50-11ad3fa6.pth` (the classifier to guide and audit);
# - torchvision's `vgg19-dcbb9e9d.pth` (style features);
#
# and set the three paths in the next cell.

# %%
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the committed outputs
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torchvision

from stable_diffusion import apps, load_components, tiny_components
from stable_diffusion.nets import Classifier, VGGFeatures, load_classifier, load_vgg19

torch.manual_seed(0)
if REAL:
    MODEL, RESNET50, VGG19 = "sd15", "resnet50-11ad3fa6.pth", "vgg19-dcbb9e9d.pth"
    comps = load_components(MODEL, "cuda")
    classifier = load_classifier("resnet50", RESNET50).cuda()
    vgg = load_vgg19(VGG19).cuda()
    sampler = apps.Sampler(steps=20, guidance_scale=7.5)
    TARGET, CLASSES, ITERS = 207, {207: "a photo of a golden retriever"}, 10  # ImageNet class 207
else:
    comps = tiny_components()  # UNet, VAE, CLIP text encoder and tokenizer, each a few thousand weights
    classifier = Classifier(torchvision.models.resnet18(num_classes=10).eval(), size=32)
    vgg = VGGFeatures(torchvision.models.vgg19().features.eval())
    sampler = apps.Sampler(steps=6, guidance_scale=3.0)
    TARGET, CLASSES, ITERS = 3, None, 4
out = Path(tempfile.mkdtemp())
print("latents", comps.latent_shape, "| UNet parameters", sum(p.numel() for p in comps.unet.parameters()))


def show(rows: dict, title: str):
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.8 * n, 1.9 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].detach().float().permute(1, 2, 0).cpu().numpy())
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    plt.show()


def plot_losses(losses, title):
    fig, ax = plt.subplots(figsize=(4, 2.5))
    ax.plot(losses, "o-")
    ax.set(xlabel="optimisation step", ylabel="loss", title=title)
    plt.show()

# %% [markdown]
# ## The model: SD's UNet as an eps-model over latents
#
# `eps_model(comps, s)` wraps the UNet as `model(x, t, cond)` with classifier-free guidance
# in the paper's form `s eps(x, t, c) + (1 - s) eps(x, t, null)`. SD's discrete betas give
# `VPSchedule.discrete`, and a continuous `t` reaches the UNet as the real timestep
# `1000 t - 1` (no rounding to the training grid). The gradient strategy is the
# `Sampler`'s: `Adjoint` with RK4 backward steps by default.
#
# ## 1. Guided sampling
# AdamW on `x_T` to raise a classifier's probability of class `TARGET` on the decoded image.

# %%
result = apps.guided_sampling(comps, classifier, "a photo of a dog", TARGET, [0, 1], iters=ITERS, lr=0.1,
                              sampler=sampler, out=out / "guided", progress=False)
print("p(target) before", [round(p, 4) for p in result["p_target_before"]],
      "after", [round(p, 4) for p in result["p_target_after"]])
assert result["losses"][-1] < result["losses"][0]
plot_losses(result["losses"], "guided sampling: -log p(target)")

# %% [markdown]
# ## 2. Auditing with bounded initial noise
# For images the classifier labels correctly, projected signed-gradient steps on `delta`
# with `‖delta‖∞ ≤ tau` try to change its decision. On the tiny random classifier we audit
# the label it gives the clean image.

# %%
if CLASSES is None:
    label = int(classifier(apps.generate(comps, ["a photo of a cat"], [0], sampler)).argmax())
    CLASSES = {label: "a photo of a cat"}
result = apps.audit(comps, classifier, CLASSES, [0, 1, 2], tau=0.8, iters=ITERS, sampler=sampler,
                    out=out / "audit", progress=False)
print((out / "audit" / "audit.md").read_text())
assert all(r["max_abs_delta"] <= 0.8 + 1e-6 for r in result["rows"])

# %% [markdown]
# ## 3. Stylization: fine-tuning the cross-attention weights (eq. 13)
# The style is the Gram matrices of VGG-19 features of one reference image; the content
# term keeps each noise-prompt pair's original VGG features. Training checkpoints to
# `out/stylize/checkpoint.pt` and resumes from it; the result is a `save_pretrained` UNet.

# %%
size = comps.image_size
stripes = (torch.arange(size).view(1, 1, -1, 1) // 4 % 2).float().expand(1, 3, size, size).clone()
stripes[:, 1] *= 0.3  # a striped magenta reference "style"
result = apps.stylize(comps, vgg, stripes, ["a photo of a house", "a photo of a tree"], [0], epochs=2,
                      lr=1e-3 if not REAL else 1e-4, sampler=sampler, out=out / "stylize", progress=False)
print(f"{result['trained_parameters']} cross-attention weights trained")
print("loss per step (the two pairs alternate):", [f"{x:.6g}" for x in result["losses"]])
print("saved:", sorted(p.name for p in (out / "stylize" / "unet").iterdir()))

# %% [markdown]
# ## 4. Text-embedding inversion
# A new token `<effect>` whose embedding row is optimised so that "a photo of <effect>"
# from fixed noises reproduces target images; saved as a textual-inversion file that
# diffusers' `pipe.load_textual_inversion(path)` loads, and reused in another prompt.

# %%
comps = load_components(MODEL, "cuda") if REAL else tiny_components()
targets = apps.generate(comps, ["a photo of a flower in the style of a painting"] * 2, [0, 1], sampler)
result = apps.invert_embedding(comps, targets, [0, 1], token="<effect>", init_token="flower", iters=ITERS,
                               lr=0.05, sampler=sampler, reuse_prompts=["a painting of a dog, {}"],
                               out=out / "invert", progress=False)
plot_losses(result["losses"], "inversion: MSE to the targets")
show({"targets": targets, "learned": apps.generate(comps, ["a photo of <effect>"] * 2, [0, 1], sampler)},
     "inversion")

# %% [markdown]
# ## Memory
# `python -m stable_diffusion.bench --model <dir>` measures peak memory and time of one
# `dL/dx_T` per gradient strategy at 10, 20 and 50 steps, each in a fresh process
# (`results/stable_diffusion/bench.md` holds the tiny CPU run: the adjoint strategies stay
# flat in steps, Backprop grows linearly). The paper reports 19.63 GB for one such gradient
# on SD 1.5 at fp32 on a V100.
