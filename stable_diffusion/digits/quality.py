"""Does the digits model draw the digit it is asked for? Sampled with diffusers' own
``StableDiffusionPipeline`` and ``DPMSolverMultistepScheduler`` (20 steps, guidance scale 4,
32x32), read by the guide (the digit classifier) and by both independent judges
(:mod:`handwritten.judges`), and compared with held-out real digits by judge-FID and KID.

The output says whether the bar is met (every reader recognises the prompted digit in at least
:data:`BAR` of the samples of each digit zero to eight) and how often "a handwritten digit nine" (a
word the model never saw with an image) and the generic caption "a handwritten digit" are drawn as
nines. Measuring (:func:`evaluate`) returns data; :func:`stable_diffusion.digits.report.quality`
turns it into Markdown.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm import files

from . import data, report

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
def draw(pipe, text: str, n: int, seed: int, steps: int = 20, guidance_scale: float = 4.0) -> torch.Tensor:
    """``n`` images in ``[0, 1]`` of the prompt ``text`` from diffusers' pipeline."""
    gen = torch.Generator().manual_seed(seed)
    out = pipe([text] * n, num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
               output_type="pt")
    return out.images.float().cpu()


def evaluate(pipe, classifier, n: int = 64, seed: int = 0, steps: int = 20, guidance_scale: float = 4.0) -> dict:
    """Per prompt (the ten named digits, then the generic caption): the share each reader (the guide,
    then each judge) reads as the prompted digit, what the net judge reads, and for a named digit the
    judge-FID and KID to its held-out real images (and, as a floor, those of its real training images)."""
    from handwritten.judges import judges
    readers = judges()
    rows, grids = [], {}
    for label in list(range(10)) + [None]:
        text = data.GENERIC if label is None else data.prompt(label)
        images = draw(pipe, text, n, seed * 1_000 + (10 if label is None else label), steps, guidance_scale)
        with torch.no_grad():
            read = {"guide": classifier(images).argmax(1), **readers.read(images)}
        row = {"prompt": text, "digit": label, "samples": n,
               "read_as": {who: torch.bincount(r, minlength=10).tolist() for who, r in read.items()}}
        if label is not None:
            real, _ = data.load("heldout", [label])
            train, _ = data.load("train", [label])
            distance = readers.distances(images, data.to_unit(real))
            floor = readers.distances(data.to_unit(train), data.to_unit(real))
            row.update({"recognised": {who: float((r == label).float().mean()) for who, r in read.items()},
                        "judge_fid": distance["fid"], "judge_kid": distance["kid"],
                        "judge_fid_real_train_vs_heldout": floor["fid"], "judge_kid_real_train_vs_heldout": floor["kid"],
                        "heldout_real": len(real), "named_in_training": label != data.UNSEEN})
        rows.append(row)
        grids[text] = images[:8]
    named = [r for r in rows if r["digit"] is not None and r["named_in_training"]]
    lowest = {who: min(r["recognised"][who] for r in named) for who in named[0]["recognised"]}
    generic = rows[-1]["read_as"]
    return {"sampler": f"diffusers StableDiffusionPipeline + DPMSolverMultistepScheduler, {steps} steps, "
                       f"guidance scale {guidance_scale}", "seed": seed, "rows": rows, "bar": BAR,
            "lowest_recognised_named": lowest, "meets_bar": all(v >= BAR for v in lowest.values()),
            "nine_prompt_drawn_as_nine": rows[data.UNSEEN]["recognised"],
            "generic_drawn_as_nine": {who: counts[data.UNSEEN] / n for who, counts in generic.items()}}, grids


def write(result: dict, grids: dict, out: Path) -> str:
    from ..apps.common import save_images
    out.mkdir(parents=True, exist_ok=True)
    text = report.quality(result)
    (out / "quality.md").write_text(text)
    files.write_json(out / "quality.json", result, significant=6)
    save_images(out / "quality.png", grids)
    return text
