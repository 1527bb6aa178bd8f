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
# # 03 · Stable Diffusion scale: the paper's applications, and who judges them
#
# **Learning goals.** After this notebook you can
# - optimise the initial noise `x_T`, a text embedding and the UNet's weights of a text-to-image
#   latent diffusion model through `adjointdpm.sample(..., gradient=...)`;
# - tell a result that *satisfies a network* from one that *is what the network stands for*, by
#   reading it with judges that took no part in producing it;
# - read the paper's Tables 2 and 3 on a model you can run on a laptop.
#
# **Prerequisites.** Notebook 01 (the adjoint and the gradient strategies, sections 3, 5 and 8);
# the paper's Sec. 4 and App. A-D (Pan et al., "AdjointDPM", ICLR 2024,
# [arXiv:2307.10711](https://arxiv.org/abs/2307.10711)). About 3 minutes on a CPU.
#
# AdjointDPM's applications optimise something upstream of a text-to-image model with a loss on
# the decoded image:
#
# | application | optimised | loss |
# |---|---|---|
# | guided sampling (Sec. 4.1.1) | initial latent `x_T` | a classifier's `-log p(target)` |
# | auditing (Sec. 4.1.2) | `x_T + delta`, `‖delta‖∞ ≤ tau` | the classifier's cross-entropy, raised |
# | stylization (Sec. 4.2, eq. 13) | UNet cross-attention weights | Gram-matrix style + content |
# | a visual effect into a token (App. A) | one new token's embedding | MSE to the effect's images |
# | morphing (AdjointDEIS poster) | initial latent `x_T` and conditioning `c` | `1 - cos` to two identities in an identity model |
#
# All five go through one call, `adjointdpm.sample(model, x_T, schedule, cond, gradient=...)`:
# diffusers' pipelines cannot be used, because their `__call__` runs under `no_grad`.
#
# **By default this notebook runs on the digits model**: a small text-to-image model made of the
# real diffusers classes (`AutoencoderKL`, `UNet2DConditionModel`, `CLIPTextModel`), trained here
# on scikit-learn's real handwritten digits with the captions "a handwritten digit zero" ...
# "eight". It has **seen nines, but never with their name**: every nine was captioned with the
# generic "a handwritten digit" (which every digit shares a tenth of), so "a handwritten digit
# nine" names a word it never saw with an image, as Stable Diffusion has seen dogs of every breed
# without every breed's name. A quarter of its examples are **slanted writing**, the image sheared
# by 20 degrees and the caption given the keyword ("a slanted handwritten digit four"): the visual
# effect that section 4 turns into a token. Set `REAL = True` to run the applications on a real Stable
# Diffusion v1.x on a GPU.

# %%
REAL = False  # True: a local Stable Diffusion on CUDA (see the next cell for what to download)

# %% [markdown]
# For `REAL = True`, place on the machine (nothing is downloaded by the code): a Stable
# Diffusion v1.x in diffusers' layout (e.g. `huggingface-cli download
# stable-diffusion-v1-5/stable-diffusion-v1-5 --local-dir sd15` on a machine with internet),
# torchvision's ImageNet weights `resnet50-11ad3fa6.pth` (the guide) and `vgg19-dcbb9e9d.pth`
# (style features), and set the paths in the next cell.

# %%
import json
import os

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bars in the committed outputs
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
from transformers.utils import logging as transformers_logging

transformers_logging.disable_progress_bar()  # its "Loading weights" bar would be a stale widget in the committed output

import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from stable_diffusion import apps
from stable_diffusion.digits import ConvFeatures, data, experiments, load_digit_classifier
from stable_diffusion.registry import open_model

torch.manual_seed(0)
if REAL:
    from stable_diffusion.nets import load_torchvision_classifier as load_torchvision, load_vgg19
    MODEL, DEVICE = "sd15", "cuda"
    guide = load_torchvision("resnet50", "resnet50-11ad3fa6.pth").to(DEVICE)
    features = load_vgg19("vgg19-dcbb9e9d.pth").to(DEVICE)
    sampler = apps.Sampler(steps=20, guidance_scale=7.5)
    TARGET, PROMPT = 207, "a photo of a dog"  # ImageNet 207: golden retriever
    AUDIT = {207: "a photo of a golden retriever"}
else:
    MODEL, DEVICE = "digits", "cpu"
    guide = load_digit_classifier()
    features = ConvFeatures(guide)
    sampler = apps.Sampler(steps=8, guidance_scale=4.0)  # DPM-Solver-2M, an RK4 adjoint of as many steps
    TARGET, PROMPT = 9, data.GENERIC
    AUDIT = {3: data.prompt(3), 5: data.prompt(5), 8: data.prompt(8)}
comps = open_model(MODEL, DEVICE)
out = Path(tempfile.mkdtemp())
RESULTS = Path(experiments.__file__).resolve().parents[2] / "results" / "stable_diffusion" / "digits"  # committed results
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
# ## The model, the guide and the judges
#
# `eps_model(comps, s)` wraps the UNet as `model(x, t, cond)` with classifier-free guidance in
# the paper's form `s eps(x, t, c) + (1 - s) eps(x, t, null)`. The training betas give
# `VPSchedule.discrete`, and a continuous `t` reaches the UNet as the real timestep `1000 t - 1`.
#
# Three readers look at every image below. The **guide** is the digit classifier that guided
# sampling and the audit differentiate through. The two **judges** never guide anything
# (`handwritten.judges`): an SVC on the 8x8 pixels (the image averaged back down to the scan's
# size; it has no gradient to attack) and a LeNet-5, an architecture unlike the guide's. Guide and
# judges were trained on disjoint thirds of the real digits, and a third third, never trained on,
# is the reference of every Frechet distance and KID.

# %%
from handwritten.judges import judges

judge = judges()
prompts = [data.prompt(k) for k in range(10)] + [data.GENERIC, data.prompt(4, slanted=True)] if not REAL else [PROMPT]
grid = {p: apps.Pipeline(comps, sampler).generate([p] * 8, range(8)) for p in prompts}
show(grid, "what the model draws (8 DPM-Solver-2M steps, guidance 4)")
if not REAL:
    readers = {p: experiments.readings(images, guide) for p, images in grid.items()}
    for p, read in readers.items():
        print(f"{p:34s}", "  ".join(f"{who}: {' '.join(str(int(k)) for k in r)}" for who, r in read.items()))
    # every reader reads every named digit as itself; the word "nine" draws like the generic caption: several digits
    assert all((r == k).all() for k, p in enumerate(prompts[:9]) for r in readers[p].values())
    assert len(set(readers[data.prompt(9)]["net"].tolist())) >= 3 and len(set(readers[data.GENERIC]["net"].tolist())) >= 3

# %% [markdown]
# ## 1. Guided sampling, and a loss that can be satisfied without its meaning
#
# Vocabulary expansion (Table 2): descend on `x_T` of the generic caption so that the guide reads
# a nine in the decoded image. The gradient `dL/dx_T` comes from the adjoint: memory does not
# grow with the sampler's steps.
#
# First the naive descent, AdamW on `x_T` (renormalised to its initial norm after each step).
# The guide's `log p(nine)` rises. Does the image become a nine? Ask the judges.

# %%
seeds = list(range(1000, 1008))


def readout(images, title):
    read = experiments.readings(images, guide)
    rates = {who: float((r == TARGET).float().mean()) for who, r in read.items()}
    adversarial = float(((read["guide"] == TARGET) & (read["svc"] != TARGET) & (read["net"] != TARGET)).float().mean())
    print(f"{title}: read as nine by " + ", ".join(f"{who} {100 * v:.0f}%" for who, v in rates.items())
          + f"; the guide alone: {100 * adversarial:.0f}%")
    return rates, adversarial


naive = apps.guided_sampling(comps, guide, PROMPT, TARGET, seeds, iters=10, lr=0.1, sampler=sampler, progress=False)
if not REAL:
    before, _ = readout(naive["images"]["before"], "before")
    naive_rates, naive_gap = readout(naive["images"]["after"], "AdamW")
show(naive["images"], "naive guidance toward the guide's nine")

# %% [markdown]
# Compare the guide's reading with the judges'. On eight seeds they may agree; over the 32 seeds of
# the ablation below, the naive descent leaves about a tenth of its images read as nines by the
# guide while both judges (and your eyes) read something else. That share is the **adversarial
# rate**. A loss
# that a network defines can be satisfied without the thing it stands for, and a network's
# gradient is exactly the tool that finds how. This is why no table here is read by the guide.
#
# DOODL's restraints hold the descent back: SGD with momentum on elementwise-clipped gradients,
# a small random kick each step, `x_T` kept on its sphere; and the guide's loss averaged over
# random shifts of the image (Shen et al., NeurIPS 2024): a nine is a nine wherever it sits, an
# adversarial pattern usually is not.

# %%
restrained = apps.guided_sampling(comps, guide, PROMPT, TARGET, seeds, iters=10, lr=experiments.TABLE2_LR,
                                  restraints=experiments.TABLE2_RESTRAINTS, sampler=sampler, progress=False)
if not REAL:
    restrained_rates, restrained_gap = readout(restrained["images"]["after"], "restrained")
    # the judges read more nines after the restrained guidance than before it
    assert min(restrained_rates["svc"], restrained_rates["net"]) > max(before["svc"], before["net"])
show({"before": restrained["images"]["before"], "AdamW": naive["images"]["after"],
      "restrained": restrained["images"]["after"]}, "guidance toward nine, read by the judges above")

# %% [markdown]
# Table 2 at full size (64 seeds, 18 steps, 10 sampler steps; `python -m stable_diffusion.digits
# results`), and every route side by side (`... ablation`), read from the committed files:

# %%
if not REAL:
    t2 = json.loads((RESULTS / "table2.json").read_text())
    for when in ("before", "after"):
        print(f"{when:6s}: read as nine by the guide {100 * t2[f'guide_reads_nine_{when}']:.0f}%, the SVC judge "
              f"{100 * t2[f'judge_svc_reads_nine_{when}']:.0f}%, the LeNet judge {100 * t2[f'judge_net_reads_nine_{when}']:.0f}%;"
              f" adversarial {100 * t2[f'adversarial_rate_{when}']:.0f}%; judge-FID to real nines {t2[f'judge_fid_{when}']:.2f}")
    print(f"judge-FID change {t2['judge_fid_change_percent']:+.1f}% (paper, Stanford Dogs: AdjointDPM "
          f"{t2['paper_fid_change_percent']['AdjointDPM']:+.1f}%, DOODL {t2['paper_fid_change_percent']['DOODL']:+.1f}%)")
    ablation = json.loads((RESULTS / "table2_ablation.json").read_text())
    for row in ablation["rows"]:
        k = data.NAMES[row["target"]]
        print(f"{row['route']:70s} guide {100 * row[f'guide_reads_{k}']:3.0f}%  SVC {100 * row[f'judge_svc_reads_{k}']:3.0f}%"
              f"  LeNet {100 * row[f'judge_net_reads_{k}']:3.0f}%  adversarial {100 * row['adversarial_rate']:3.0f}%")
    assert min(t2["judge_svc_reads_nine_after"], t2["judge_net_reads_nine_after"]) >= 0.6
    routes = {row["route"]: row for row in ablation["rows"]}
    naive_route, table2_route = (routes[r] for r in ("generic caption guided, AdamW",
                                                     "generic caption guided, DOODL + 4 shifts (Table 2)"))
    judges_sum = lambda row: row["judge_svc_reads_nine"] + row["judge_net_reads_nine"]  # noqa: E731
    # over 32 seeds the restraints turn more of the guide's nines into the judges' nines, with fewer adversarial
    assert judges_sum(table2_route) > judges_sum(naive_route)
    assert table2_route["adversarial_rate"] < naive_route["adversarial_rate"]

# %% [markdown]
# The judge-FID falls much more than the paper's per-class FID: a tenth of the generic caption's
# samples are nines to begin with, so the class starts far from its real images; Stanford Dogs
# breeds start close to the dogs Stable Diffusion already draws.
#
# ## 2. Auditing the guide with bounded initial noise
#
# For images the guide reads correctly, projected signed-gradient steps on `delta` with
# `‖delta‖∞ ≤ tau` try to change its decision. The paper's point is an image that *still shows its
# class* but flips the classifier, so the judges decide whether a flip is an audit finding (the
# digit is still there) or just a changed image.

# %%
result = apps.audit_classifier(comps, guide, AUDIT, list(range(6)), tau=0.4, iters=4, per_class=3, sampler=sampler,
                               progress=False)
images = result["images"]
flipped = images["read_as"] != images["labels"]
if not REAL:
    judged = judge.read(images["attacked"])
    still = flipped.cpu() & (judged["svc"] == images["labels"].cpu()) & (judged["net"] == images["labels"].cpu())
    print(f"tau 0.4: {int(flipped.sum())} of {len(flipped)} decisions flipped; {int(still.sum())} of them still read "
          "as the digit drawn by both judges")
    print("guide after the attack:", [data.NAMES[int(k)] for k in images["read_as"]])
    print("LeNet judge:           ", [data.NAMES[int(k)] for k in judged["net"]])
show({"clean": images["clean"], "attacked (tau 0.4)": images["attacked"]}, "audit")
assert result["max_abs_delta"] <= 0.4 + 1e-6  # in float32 the bound is 0.4000000059604645

# %% [markdown]
# At full size (Table 3, read from the committed file), over tau: the guide flips more decisions
# as tau grows, and the images change more (pixel change, and KID to real digits):

# %%
if not REAL:
    t3 = json.loads((RESULTS / "table3.json").read_text())
    for tau, v in t3["by_tau"].items():
        print(f"tau {tau}: flipped {100 * v['rate']:.0f}%, flipped and still the digit to every judge "
              f"{100 * v['success_flipped_and_original_to_every_judge']:.0f}%, pixel change {v['image_change']:.3f}, "
              f"KID to real digits {v['judge_kid_to_real_clean']:.3f} -> {v['judge_kid_to_real_attacked']:.3f}")
    rates = [v["rate"] for v in t3["by_tau"].values()]
    changes = [v["image_change"] for v in t3["by_tau"].values()]
    assert rates == sorted(rates) and changes == sorted(changes)  # more flips, larger changes, as tau grows

# %% [markdown]
# ## 3. Stylization: fine-tuning the cross-attention weights (eq. 13)
#
# The style is the Gram matrices of the guide's convolutional features of one reference image;
# the content term keeps each noise-prompt pair's own features; only the cross-attention
# projections train. A model of gray digits cannot show a photograph's colours (its VAE never
# saw colour), so the style here is one it can draw: **bold ink**, a real digit whose strokes
# are dilated as by a broad marker. What a reader sees is measured without the training loss:
# the share of inked pixels of each unseen sample (one sample that changes a lot, say a digit that
# collapses into a gray square, must not stand for all of them), and whether the judges, who took
# no part in the training, still read each digit as prompted.

# %%
real, _ = data.load("guide", range(9))
style = experiments.bold_ink(data.to_unit(real[::40]), 5)[:1]
train_prompts = [data.prompt(k) for k in range(9)] if not REAL else [PROMPT]
unseen = [(p, 100 + i) for i, p in enumerate(train_prompts)]
before = apps.Pipeline(comps, sampler).generate([p for p, _ in unseen], [s for _, s in unseen])
result = apps.fine_tune_style(comps, features, style, train_prompts, [0], epochs=2, lr=3e-3, w_style=100,
                              sampler=sampler, out=out / "stylize", progress=False)
after = apps.Pipeline(comps, sampler).generate([p for p, _ in unseen], [s for _, s in unseen])
# per image, so that one image that changed a lot cannot stand for all of them
ink = {when: torch.tensor([experiments.ink_statistics(x[i:i + 1])["inked_share"] for i in range(len(x))])
       for when, x in (("before", before), ("after", after))}
print(f"{result['trained_parameters']} cross-attention weights trained on {result['pairs']} pairs; the "
      f"reference's inked share: {100 * experiments.ink_statistics(style)['inked_share']:.0f}%")
print("inked share per unseen sample, before -> after:",
      "  ".join(f"{a:.0%}->{b:.0%}" for a, b in zip(ink["before"].tolist(), ink["after"].tolist())))
print(f"median {ink['before'].median():.1%} -> {ink['after'].median():.1%}; "
      f"{int((ink['after'] > ink['before']).sum())} of {len(before)} samples gained ink")
show({"style": style, "unseen, original": before, "unseen, stylized": after}, "stylization toward bold ink")
if not REAL:  # the judges, who took no part in it, read the stylized digits
    prompted = torch.arange(len(unseen))
    read = {when: experiments.readings(x, guide) for when, x in (("before", before), ("after", after))}
    for when, by in read.items():
        print(f"{when:6s} read as prompted: " + ", ".join(f"{who} {int((r == prompted).sum())}/{len(prompted)}"
                                                       for who, r in by.items()))
    # bolder, and still the same digits: most samples gain ink, and each judge reads most of them as prompted
    assert (ink["after"] > ink["before"]).sum() >= 7 and ink["after"].median() > ink["before"].median()
    assert all(int((r == prompted).sum()) >= 7 for who, r in read["after"].items() if who != "guide")

# %% [markdown]
# ## 4. A visual effect into a token (App. A)
#
# The paper's App. A turns a *visual effect* into a text embedding. Images are drawn from the same
# noises with a base prompt and with the prompt plus an effect's keyword; a new token `#` is
# optimised, through the sampler, so that the base prompt plus `#` draws the effect images (the MSE
# between them); then `#` goes with other prompts and other noises, and the effect should follow it.
# The digits model knows one effect by a keyword: a quarter of its training examples were sheared
# by 20 degrees and captioned "a slanted handwritten digit ...". The slant is measured by an
# instrument that takes no part in the optimisation (`handwritten.slant.slant`): the angle of the
# ink's least-squares axis from its second moments, in degrees, positive when the top leans right.
#
# A small run: the token learned from three pairs of threes, then used with other digits and noises.

# %%
from handwritten.slant import deskew, slant

if REAL:  # an effect SD knows by a word; the instrument below is the digits' and is skipped
    TEMPLATE, EFFECT, OTHERS, KEYWORD = "a {} photo of a dog", "a bokeh photo of a dog", ["a {} photo of a cat"], "bokeh"
else:
    TEMPLATE, EFFECT = data.effect_prompt(3, "{}"), data.prompt(3, slanted=True)
    OTHERS, KEYWORD = [data.effect_prompt(k, "{}") for k in (0, 2, 5, 7)], data.KEYWORD
pipe = apps.Pipeline(comps, sampler)
effect_seeds = [0, 1, 2]
effect_targets = pipe.generate([EFFECT] * len(effect_seeds), effect_seeds)
learner = open_model(MODEL, DEVICE)  # the token goes into a fresh tokenizer
r = apps.invert_embedding(learner, effect_targets, effect_seeds, token="<slant>", init_token="a", template=TEMPLATE,
                          iters=8, lr=0.02, sampler=sampler, progress=False)
print("MSE to the effect images:", " ".join(f"{v:.4f}" for v in r["losses"]))
fresh = list(range(100, 100 + len(OTHERS)))  # noises the token never saw
ways = {"base prompt": pipe.generate([t.replace("{} ", "") for t in OTHERS], fresh),
        "with <slant>": apps.Pipeline(learner, sampler).generate([t.format("<slant>") for t in OTHERS], fresh),
        "with the keyword": pipe.generate([t.format(KEYWORD) for t in OTHERS], fresh)}
show(ways, "the token with other prompts and fresh noises")
if not REAL:
    for way, images in ways.items():
        print(f"{way:18s} slant " + " ".join(f"{float(a):+5.1f}" for a in slant(images)))
    assert slant(ways["with <slant>"]).mean() > slant(ways["base prompt"]).mean()

# %% [markdown]
# The committed run (`python -m stable_diffusion.digits results`; `effect.md`, raw images in
# `effect_images.npz`) learns the token on more pairs and steps and reads it on every other digit
# zero to eight with fresh noises; here it is re-measured from its raw images. "Half way" asks, for
# each unseen (digit, noise), whether the token moves the slant at least half as far as the keyword
# does from the same noise. The judges read the digits with the slant sheared away
# (`handwritten.slant.deskew`), because the SVC judge reads pixels of an 8x8 scan and misses even real
# digits once they are slanted.

# %%
if not REAL:
    import numpy as np

    ef = json.loads((RESULTS / "effect.json").read_text())
    arrays = np.load(RESULTS / "effect_images.npz")
    images_of = lambda key: torch.from_numpy(arrays[key]).permute(0, 3, 1, 2)  # noqa: E731
    labels = torch.from_numpy(arrays["labels"])
    angle = {way: slant(images_of(way)) for way in ("base", "token", "keyword")}
    half_way = (angle["token"] - angle["base"]) >= 0.5 * (angle["keyword"] - angle["base"])
    read = {who: (r == labels).float().mean().item() for who, r in judge.read(deskew(images_of("token"))).items()}
    for way, a in angle.items():
        print(f"{way:8s} slant {a.mean():+5.1f} ± {a.std():4.1f} degrees")
    print(f"half way or more on {100 * half_way.double().mean():.0f}% of {len(labels)} unseen pairs; the judges read "
          "the prompted digit in the token's images (de-skewed): "
          + ", ".join(f"{who} {100 * v:.0f}%" for who, v in read.items()))
    assert abs(half_way.double().mean().item() - ef["half_way_share"]) < 1e-6  # the table, from the raw images
    show({way: images_of(way)[::ef["unseen_per_digit"]] for way in ("base", "token", "keyword")},
         "unseen digits and noises: base prompt, with <slant>, with \"slanted\"")

# %% [markdown]
# The token carries the effect to digits and noises it never saw: on all 32 unseen pairs it moves the
# slant at least half way to the keyword's (the median pair goes the whole way), and the judges still
# read the prompted digit in 97 % of its images. The learned row ends close to the keyword's own
# embedding (cosine 0.78, printed in `effect.md`): from six pairs of threes, the MSE through the sampler
# found the word the model was taught. That is App. A's claim, shown on an effect the model has a word
# for. A digit it was never taught by name, the nine, is no effect of this kind: section 1 reaches it
# by guiding `x_T`.

# %% [markdown]
# ## 5. Morphing between two identities (the AdjointDEIS poster)
#
# The poster morphs two *faces*: an image that a face-recognition network F matches to **both**
# people, at the threshold where F falsely matches 0.1 % of impostor pairs (the share of morphs
# that do is the MMPMR). Here a person is one handwritten digit, and two digits of the same class
# are two people. A digit classifier cannot play F, since it maps every three to nearly the same
# features. `handwritten.identity` trains two identity models without labels, each image being
# its own identity: `F`, a CNN trained by instance discrimination, which the morph attacks, and
# `F'`, an exemplar MLP trained on another split, which only judges. Each pair is a random held-out
# digit and its look-alike, the nearest digit of its class in pixels, as a morph's accomplice is
# chosen. The rows are DiM (both digits inverted to noise, the noises slerped, the prompts
# averaged), then `(x_T, c)` optimised through the ODE sampler and the SDE sampler with
# AdjointDEIS-1, and, as a reference, the pixel average, a morph that uses no model. The committed run
# (`python -m stable_diffusion.digits results`; `morph.md` and `morph_images.npz`) is re-measured
# here from its raw images (with `REAL = True` this section is skipped: it reads the digits run):

# %%
if not REAL:
    import numpy as np

    from handwritten import identity
    from stable_diffusion.apps.morph import ARRAYS

    mo = json.loads((RESULTS / "morph.json").read_text())
    arrays = np.load(RESULTS / "morph_images.npz")
    images_of = lambda key: torch.from_numpy(arrays[key]).permute(0, 3, 1, 2)  # noqa: E731
    a, b = images_of("a"), images_of("b")
    mmpmr = {}
    for row in mo["rows"]:
        morphs = images_of(ARRAYS[row["attack"]])
        for name in identity.MODELS:
            F, threshold = identity.load(name), mo["thresholds"][name]
            with torch.no_grad():
                both = torch.minimum(identity.cosine(F, morphs, a), identity.cosine(F, morphs, b))
            mmpmr[row["attack"], name] = float((both >= threshold).float().mean())
            assert abs(mmpmr[row["attack"], name] - row["mmpmr"][name]) < 1e-5  # the table (6 digits), from the raw images
        print(f"{row['attack']:28s} MMPMR " + ", ".join(f"under {name} {100 * mmpmr[row['attack'], name]:5.1f}%"
                                                       for name in identity.MODELS)
              + "; the judges read the class in " + ", ".join(f"{100 * v:.0f}%" for v in row["judged"].values()))
    show({"reference a": a[:9], "reference b": b[:9], **{k: images_of(v)[:9] for k, v in ARRAYS.items()}},
         "morphs of look-alike digits (one pair per class, zero to eight)")
    rows = {row["attack"]: row for row in mo["rows"]}
    dim, ode, sde = (mmpmr[k, "F"] for k in ("DiM (no optimisation)", "DiM + AdjointDEIS-1 (ODE)",
                                             "DiM + AdjointDEIS-1 (SDE)"))
    assert dim < ode and sde <= ode  # the ODE morph ahead, as in the poster, under the attacked model
    assert mmpmr["DiM + AdjointDEIS-1 (ODE)", "F'"] <= mmpmr["DiM (no optimisation)", "F'"]  # F' is fooled less
    print("pairs a morph can match at all (their own cosine >= 2 t^2 - 1): "
          + ", ".join(f"under {w} {100 * v:.0f}%" for w, v in mo["feasible"].items()))

# %% [markdown]
# Under F, which it attacks, the optimisation through the ODE sampler raises the MMPMR from DiM's
# 17 % to 50 % (from 3 to 9 of 18 pairs). Through the SDE sampler it stays at DiM's 17 %, so of the
# poster's ordering (DiM 92 %, SDE 98.6 %, ODE 99.8 % on faces) only DiM below the ODE holds here. With
# 18 pairs, one pair is 5.6 points. Geometry sets the ceiling. If a morph matches both references at
# threshold `t`, the two references are within twice the angle `arccos t` of each other, so their own
# cosine is at least `2 t^2 - 1`. Under F only 56 % of these pairs meet that, and the ODE morphs succeed
# on 9 of those 10 pairs. Under F', which never served as a loss, the optimised morphs do *worse* than
# DiM's (2 pairs against 3), unlike the poster's three face systems. They fit F rather than the digits:
# section 1's adversarial rate again, now between two identity models, and the reason a judge must be
# another model. The pixel average, a morph made without any model, is matched more often than DiM, as
# Webmorph, a landmark morph, is in the poster.

# %% [markdown]
# ## Summary
#
# - One call, `sample(..., gradient=...)`, differentiates a text-to-image model with respect to
#   its initial noise, its conditioning and its weights; the adjoint keeps memory flat in steps.
# - A guide's reading of its own result is not evidence: judges that never guided, trained on
#   other images, read the results here, and the gap (the adversarial rate) is reported beside.
# - Restraints on the optimiser (DOODL's) and on the guide (shifts) turn guide-pleasing images
#   into images the judges read as the target.
# - An effect the model knows by a word (slant) goes into a token learned from a few pairs of one
#   digit, and the token carries it to other digits and noises: App. A, read by an instrument
#   that never served as a loss.
# - A morph optimised against one identity model fools it more and a second one less: the
#   adversarial gap, measured with a judge that never served as a loss.
#
# **Try it.**
# 1. Guide toward a digit the model draws well (`TARGET = 3`) with the naive AdamW. Is the
#    adversarial rate lower than toward nine, which the model was never told how to draw?
# 2. Raise `lr` of the naive descent to 0.3. Who gains more: the guide or the judges?
# 3. Audit with `tau=0.8` (the paper's). How many decisions flip, and how many flipped images still
#    show the digit?
#
# **Answers** (measured on the 32 seeds 1000-1031, 10 steps from the generic caption, as above):
# 1. No. Toward three the guide reads 72 % after the descent and each judge 50 %: 19 % of the images
#    are threes to the guide alone, against 3 % toward nine. A shape the model draws well does not
#    protect the guide; its gradient finds the same shortcuts.
# 2. The guide: 88 % -> 97 % read as nine, the judges 78 -> 84 % (SVC) and 81 -> 88 % (LeNet), and
#    the share that only the guide reads as nine triples, 3 % -> 9 %.
# 3. From `results/stable_diffusion/digits/table3.md`: 95 % of the audited decisions flip at 0.8
#    (43 % at 0.4), but only 32 % of the flipped images are still the digit to every judge (87 % at
#    0.4); the images change by 0.227 on average (0.122 at 0.4). At 0.8 the bound lets the noise
#    change the digit itself, which an audit must not count.
#
# **Next.** Assignment 3 (`notebooks/assignments/a3_audit.py`) builds the audit's search itself on
# the toy. The memory of a full-size gradient (SD 1.5's architecture on a CPU) is measured by
# `python -m stable_diffusion.bench` (README, "One gradient at full size").
