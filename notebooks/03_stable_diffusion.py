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
# AdjointDPM's applications (Sec. 4, App. A-D) optimise something upstream of a text-to-image
# latent diffusion model with a loss on the decoded image:
#
# | application | optimised | loss |
# |---|---|---|
# | guided sampling (Sec. 4.1.1) | initial latent `x_T` | a classifier's `-log p(target)` |
# | auditing (Sec. 4.1.2) | `x_T + delta`, `‖delta‖∞ ≤ tau` | the classifier's cross-entropy, raised |
# | stylization (Sec. 4.2, eq. 13) | UNet cross-attention weights | Gram-matrix style + content |
# | inversion (App. A) | one new token's embedding | MSE to target images |
#
# All four go through one call, `adjointdpm.sample(model, x_T, schedule, cond, gradient=...)`:
# diffusers' pipelines cannot be used because their `__call__` runs under `no_grad`.
#
# **By default this notebook runs on the digits model** (about 2 minutes on a CPU): a small
# text-to-image model made of the real diffusers classes (`AutoencoderKL`,
# `UNet2DConditionModel`, `CLIPTextModel`), trained here on scikit-learn's real handwritten
# digits with the prompts "a handwritten digit zero" ... "nine", **except that it never saw a
# nine**. Its digit classifier (99.6 % on held-out digits) is the classifier to guide and
# audit, and its convolutions are the style features. Set `REAL = True` to run the same
# applications on a real Stable Diffusion v1.x on a GPU.

# %%
REAL = False  # True: a local Stable Diffusion on CUDA (see the next cell for what to download)

# %% [markdown]
# For `REAL = True`, place on the machine (nothing is downloaded by the code): a Stable
# Diffusion v1.x in diffusers' layout (e.g. `huggingface-cli download
# stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir sd15` on a machine with internet),
# torchvision's ImageNet weights `resnet50-11ad3fa6.pth` (the classifier) and
# `vgg19-dcbb9e9d.pth` (style features), and set the paths in the next cell.

# %%
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the committed outputs
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from stable_diffusion import apps, open_model
from stable_diffusion.digits import ConvFeatures, data, load_classifier

torch.manual_seed(0)
if REAL:
    from stable_diffusion.nets import load_classifier as load_torchvision, load_vgg19
    MODEL, DEVICE = "sd15", "cuda"
    classifier = load_torchvision("resnet50", "resnet50-11ad3fa6.pth").to(DEVICE)
    features = load_vgg19("vgg19-dcbb9e9d.pth").to(DEVICE)
    sampler = apps.Sampler(steps=20, guidance_scale=7.5)
    TARGET, PROMPT = 207, "a photo of a dog"  # ImageNet 207: golden retriever
    AUDIT = {207: "a photo of a golden retriever"}
else:
    MODEL, DEVICE = "digits", "cpu"
    classifier = load_classifier()
    features = ConvFeatures(classifier)
    sampler = apps.Sampler(steps=8, guidance_scale=4.0)  # DPM-Solver-2M, an RK4 adjoint of as many steps
    TARGET, PROMPT = 9, data.prompt(9)
    AUDIT = {3: data.prompt(3), 5: data.prompt(5), 8: data.prompt(8)}
comps = open_model(MODEL, DEVICE)
out = Path(tempfile.mkdtemp())
print("latents", comps.latent_shape, "| images", comps.image_size, "px | UNet parameters",
      sum(p.numel() for p in comps.unet.parameters()))


def show(rows: dict, title: str):
    n = max(len(v) for v in rows.values())
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)), squeeze=False)
    for r, (name, images) in enumerate(rows.items()):
        for c, ax in enumerate(axes[r]):
            ax.axis("off")
            if c < len(images):
                ax.imshow(images[c].detach().float().permute(1, 2, 0).cpu().clamp(0, 1).numpy())
        axes[r][0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(title, fontsize=10)
    plt.tight_layout()
    plt.show()

# %% [markdown]
# ## The model: a UNet as an eps-model over latents
#
# `eps_model(comps, s)` wraps the UNet as `model(x, t, cond)` with classifier-free guidance
# in the paper's form `s eps(x, t, c) + (1 - s) eps(x, t, null)`. The training betas give
# `VPSchedule.discrete`, and a continuous `t` reaches the UNet as the real timestep
# `1000 t - 1` (no rounding to the training grid). Here is what it draws for each prompt:
# every digit it was trained on, and, for "nine", something else.

# %%
prompts = [data.prompt(k) for k in range(10)] if not REAL else [PROMPT]
grid = {p: apps.generate(comps, [p] * 6, range(6), sampler) for p in prompts}
with torch.no_grad():
    read = {p: [data.NAMES[int(k)] for k in classifier(images).argmax(1)] for p, images in grid.items()}
show(grid, "what the model draws (8 DPM-Solver-2M steps, guidance 4)")
if not REAL:
    print("'nine' is read as:", read[data.prompt(9)])
    assert all(r == [data.NAMES[k]] * 6 for k, r in enumerate(read.values()) if k != 9)

# %% [markdown]
# ## 1. Guided sampling: teaching the model a digit it never saw
#
# AdamW on `x_T` to raise the classifier's `log p(nine)` on the decoded image, the prompt
# staying "a handwritten digit nine". The gradient `dL/dx_T` comes from the adjoint: memory
# does not grow with the sampler's steps. (Table 2's analogue, with 64 seeds and digit-FID, is
# `results/stable_diffusion/digits/table2.md`.)

# %%
seeds = list(range(8))
result = apps.guided_sampling(comps, classifier, PROMPT, TARGET, seeds, iters=8, lr=0.15, sampler=sampler,
                              progress=False)
p_before, p_after = (sum(result[k]) / len(seeds) for k in ("p_target_before", "p_target_after"))
print(f"mean p(target): {p_before:.3f} -> {p_after:.3f}")
show(result["images"], "guided sampling toward the classifier's nine")
assert p_after > p_before

# %% [markdown]
# ## 2. Auditing the classifier with bounded initial noise
#
# For images the classifier reads correctly, projected signed-gradient steps on `delta` with
# `‖delta‖∞ ≤ tau = 0.8` (the paper's bound) try to change its decision. The attacked images
# stay close to the clean ones, yet are read as another digit. (Table 3's analogue:
# `results/stable_diffusion/digits/table3.md`.)

# %%
result = apps.audit(comps, classifier, AUDIT, list(range(6)), tau=0.8, iters=4, per_class=3, sampler=sampler,
                    progress=False)
for row in result["rows"]:
    print(f"{row['prompt']}: {row['changed']} of {row['audited']} decisions changed")
images = result["images"]
read_as = ", ".join(data.NAMES[int(k)] for k in images["read_as"]) if not REAL else ""
show({"clean": images["clean"], "attacked": images["attacked"]}, f"audit, tau = 0.8 (attacked read as: {read_as})")
assert result["max_abs_delta"] <= 0.8 + 1e-6  # in float32, tau = 0.8 is 0.800000012

# %% [markdown]
# ## 3. Stylization: fine-tuning the cross-attention weights (eq. 13)
#
# The style is the Gram matrices of convolutional features of one reference photograph (here
# scikit-learn's bundled `china.jpg`; VGG-19 features on a real SD); the content term keeps
# each noise-prompt pair's original features. Only the cross-attention projections train.
# We measure the style loss on noise-prompt pairs the training never saw.

# %%
from stable_diffusion.apps import read_image
from stable_diffusion.nets import gram

style = read_image("sklearn:china.jpg", comps.image_size)
train_prompts = [data.prompt(k) for k in range(9)] if not REAL else [PROMPT]
unseen = [(p, 100 + i) for i, p in enumerate(train_prompts)]
with torch.no_grad():
    target_grams = [gram(f) for f in features(style.to(DEVICE))[0]]


def style_loss(images):
    with torch.no_grad():
        return float(sum(((gram(f) - g) ** 2).mean() for f, g in zip(features(images)[0], target_grams)))


before = apps.generate(comps, [p for p, _ in unseen], [s for _, s in unseen], sampler)
result = apps.stylize(comps, features, style, train_prompts, [0], epochs=2, lr=3e-3, w_style=3e3, sampler=sampler,
                      out=out / "stylize", progress=False)
after = apps.generate(comps, [p for p, _ in unseen], [s for _, s in unseen], sampler)
print(f"{result['trained_parameters']} cross-attention weights trained on {result['pairs']} pairs; "
      f"style loss on unseen pairs {style_loss(before):.4g} -> {style_loss(after):.4g}")
show({"style": style, "unseen, original": before, "unseen, stylized": after}, "stylization")
assert style_loss(after) < style_loss(before)

# %% [markdown]
# ## 4. Text-embedding inversion: a word for nine
#
# A new token `<nine>` whose embedding row is optimised so that "a handwritten digit <nine>"
# from fixed noises reproduces eight real nines (MSE on the images). It is saved as a
# textual-inversion file that diffusers' `pipe.load_textual_inversion(path)` loads; below it
# is used from noises it never trained on.

# %%
comps = open_model(MODEL, DEVICE)  # the original weights again
real, _ = data.load("train", [9])
targets = data.to_unit(real[:8])
result = apps.invert_embedding(comps, targets, list(range(8)), token="<nine>", init_token="nine",
                               template=data.TEMPLATE, iters=12, lr=0.05, sampler=sampler, progress=False)
fresh = list(range(50, 58))
drawn = apps.generate(comps, [data.TEMPLATE.format("<nine>")] * 8, fresh, sampler)
with torch.no_grad():
    rate = float((classifier(drawn).argmax(1) == 9).float().mean())
print(f"MSE {result['losses'][0]:.4f} -> {result['losses'][-1]:.4f}; "
      f"'a handwritten digit <nine>' from unseen noises read as nine: {100 * rate:.0f}%")
show({"targets (real nines)": targets, "<nine>, unseen noises": drawn}, "inversion")

# %% [markdown]
# ## Memory
# `python -m stable_diffusion.bench` measures peak memory and time of one `dL/dx_T` per
# gradient strategy, each case in a fresh process. The digits model's results at full size,
# and the two tables beside the paper's, are in `results/stable_diffusion/digits/`
# (`python -m stable_diffusion.digits results`).
