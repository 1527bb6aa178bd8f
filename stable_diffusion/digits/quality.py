"""Does the digits model draw the digit it is asked for? Sampled with diffusers' own
``StableDiffusionPipeline`` and ``DPMSolverMultistepScheduler`` (20 steps, guidance scale 4,
32x32), read by the guide (the digit classifier) and by both independent judges
(:mod:`handwritten.judges`), and compared with held-out real digits by judge-FID and KID.

The output says whether the bar is met (every reader recognises the prompted digit in at least
:data:`BAR` of the samples of each digit zero to eight) and how often "a handwritten digit nine" (a
word the model never saw with an image) and the generic caption "a handwritten digit" are drawn as
nines; and how slanted the plain and the slanted prompts draw (:mod:`handwritten.slant`), beside
real digits and real digits sheared as in training. Measuring (:func:`evaluate`) returns data;
:func:`stable_diffusion.digits.report.quality` turns it into Markdown.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm.tools.report import write_result

from . import data, report

BAR = 0.98


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
    """Per prompt (the ten named digits, the generic caption, then zero to eight slanted): the share each
    reader (the guide, then each judge) reads as the prompted digit (a slanted prompt's images read de-skewed,
    :func:`handwritten.slant.deskew`: the SVC judge on 8x8 pixels misses slanted real digits), what the net
    judge reads, the ink's slant (:func:`handwritten.slant.slant`), and for a named digit the judge-FID and KID
    to its held-out real images (and, as a floor, those of its real training images)."""
    from handwritten.judges import judges
    from handwritten.slant import deskew, slant
    readers = judges()
    rows, grids = [], {}
    prompts = [(k, False) for k in range(10)] + [(None, False)] + [(k, True) for k in range(10) if k != data.UNSEEN]
    for i, (label, slanted) in enumerate(prompts):
        text = data.GENERIC if label is None else data.prompt(label, slanted)
        images = draw(pipe, text, n, seed * 1_000 + i, steps, guidance_scale)
        seen = deskew(images) if slanted else images
        with torch.no_grad():
            read = {"guide": classifier(seen).argmax(1), **readers.read(seen)}
        angle = slant(images)
        row = {"prompt": text, "digit": label, "slanted": slanted, "samples": n,
               "slant_mean": float(angle.mean()), "slant_std": float(angle.std()),
               "read_as": {who: torch.bincount(r, minlength=10).tolist() for who, r in read.items()}}
        if label is not None:
            row["recognised"] = {who: float((r == label).float().mean()) for who, r in read.items()}
            row["named_in_training"] = label != data.UNSEEN
        if label is not None and not slanted:
            real, _ = data.load("heldout", [label])
            train, _ = data.load("train", [label])
            distance = readers.distances(images, data.to_unit(real))
            floor = readers.distances(data.to_unit(train), data.to_unit(real))
            row.update({"judge_fid": distance["fid"], "judge_kid": distance["kid"],
                        "judge_fid_real_train_vs_heldout": floor["fid"], "judge_kid_real_train_vs_heldout": floor["kid"],
                        "heldout_real": len(real)})
        rows.append(row)
        grids[text] = images[:8]
    named = [r for r in rows if r["digit"] is not None and r["named_in_training"]]
    plain = [r for r in named if not r["slanted"]]
    slanted_rows = [r for r in named if r["slanted"]]
    lowest, lowest_slanted = ({who: min(r["recognised"][who] for r in group) for who in group[0]["recognised"]}
                              for group in (plain, slanted_rows))
    real_slant = data.reference_slants(range(9))  # the digits named in training, as the prompts' rows
    generic = rows[len(data.NAMES)]["read_as"]
    return {"sampler": f"diffusers StableDiffusionPipeline + DPMSolverMultistepScheduler, {steps} steps, "
                       f"guidance scale {guidance_scale}", "seed": seed, "rows": rows, "bar": BAR,
            "lowest_recognised_named": lowest, "lowest_recognised_slanted": lowest_slanted,
            "meets_bar": all(v >= BAR for v in lowest.values()),
            "nine_prompt_drawn_as_nine": rows[data.UNSEEN]["recognised"],
            "generic_drawn_as_nine": {who: counts[data.UNSEEN] / n for who, counts in generic.items()},
            "slant": {"plain prompts, zero to eight": sum(r["slant_mean"] for r in plain) / len(plain),
                      "slanted prompts, zero to eight": sum(r["slant_mean"] for r in slanted_rows) / len(slanted_rows),
                      **{k: float(v.mean()) for k, v in real_slant.items()}}}, grids


def write(result: dict, grids: dict, out: Path) -> str:
    from ..apps.common import save_images
    return write_result(out, "quality", result, report.quality(result), lambda path: save_images(path, grids),
                        significant=6)
