"""Does the digits model draw the digit it is asked for? Sampled with diffusers' own
``StableDiffusionPipeline`` and ``DPMSolverMultistepScheduler`` (20 steps, guidance scale 4,
32x32), read by the digit classifier, and compared with held-out real digits by digit-FID.

The bar (issue 12): the classifier recognises the prompted digit in at least 90 % of the
samples of each digit zero to eight; "a handwritten digit nine" does not draw nines.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm import files
from adjointdpm.frechet import distance_between

from . import data

BAR = 0.9


def pipeline(folder, device="cpu"):
    """diffusers' ``StableDiffusionPipeline.from_pretrained`` on a digits folder, offline."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False,
                                                   local_files_only=True)
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def draw(pipe, label: int, n: int, seed: int, steps: int = 20, guidance_scale: float = 4.0) -> torch.Tensor:
    """``n`` images in ``[0, 1]`` of "a handwritten digit {label}" from diffusers' pipeline."""
    gen = torch.Generator().manual_seed(seed * 1_000 + label)
    out = pipe([data.prompt(label)] * n, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
               output_type="pt")
    return out.images.float().cpu()


def evaluate(pipe, classifier, n: int = 64, seed: int = 0, steps: int = 20, guidance_scale: float = 4.0) -> dict:
    """Per digit: the share the classifier recognises, what it reads instead, and the digit-FID
    to the held-out real images of that digit (and, as a floor, of real train vs held-out)."""
    rows, grids = [], {}
    for label in range(10):
        images = draw(pipe, label, n, seed, steps, guidance_scale)
        with torch.no_grad():
            pred = classifier(images).argmax(1)
            real, _ = data.load("heldout", [label])
            train, _ = data.load("train", [label])
            fake_features, real_features = classifier.embed(images), classifier.embed(data.to_unit(real))
            floor = distance_between(classifier.embed(data.to_unit(train)).numpy(), real_features.numpy())
        rows.append({"digit": label, "prompt": data.prompt(label), "samples": n,
                     "recognised": float((pred == label).float().mean()),
                     "read_as": torch.bincount(pred, minlength=10).tolist(),
                     "digit_fid": distance_between(fake_features.numpy(), real_features.numpy()),
                     "digit_fid_real_train_vs_heldout": floor, "heldout_real": len(real),
                     "seen_in_training": label != data.UNSEEN})
        grids[label] = images[:8]
    seen = [r for r in rows if r["seen_in_training"]]
    return {"sampler": f"diffusers StableDiffusionPipeline + DPMSolverMultistepScheduler, {steps} steps, "
                       f"guidance scale {guidance_scale}", "seed": seed, "rows": rows,
            "min_recognised_seen": min(r["recognised"] for r in seen), "bar": BAR,
            "meets_bar": all(r["recognised"] >= BAR for r in seen),
            "nine_drawn_as_nine": rows[data.UNSEEN]["recognised"]}, grids


def write(result: dict, grids: dict, out: Path) -> str:
    from ..apps.common import save_images
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| prompt | recognised | the classifier reads | digit-FID to held-out real | real train vs held-out |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        read = ", ".join(f"{data.NAMES[k]} {c}" for k, c in sorted(enumerate(r["read_as"]), key=lambda kc: -kc[1]) if c)
        lines.append(f"| {r['prompt']}{'' if r['seen_in_training'] else ' (never trained on)'} | "
                     f"{100 * r['recognised']:.0f}% | {read} | {r['digit_fid']:.2f} | "
                     f"{r['digit_fid_real_train_vs_heldout']:.2f} |")
    text = (f"# Does the digits model draw the prompted digit?\n\n{result['sampler']}; {result['rows'][0]['samples']} "
            f"samples per prompt, read by the digit classifier; digit-FID on its {32}-d penultimate features against "
            f"the held-out real digits (about 54 per digit, so the floor is not 0).\n\n" + "\n".join(lines) +
            f"\n\nBar: at least {100 * BAR:.0f}% for every digit zero to eight: "
            f"{'met' if result['meets_bar'] else 'NOT met'} (lowest {100 * result['min_recognised_seen']:.0f}%). "
            f"Nines never seen in training are drawn as nines {100 * result['nine_drawn_as_nine']:.0f}% of the time.\n")
    (out / "quality.md").write_text(text)
    files.write_json(out / "quality.json", result, significant=6)
    save_images(out / "quality.png", {data.prompt(k): v for k, v in grids.items()})
    return text
