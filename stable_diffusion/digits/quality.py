"""Does the digits model draw the digit it is asked for? Sampled with diffusers' own
``StableDiffusionPipeline`` and ``DPMSolverMultistepScheduler`` (20 steps, guidance scale 4,
32x32), read by the guide (the digit classifier) and by both independent judges
(:mod:`handwritten.judges`), and compared with held-out real digits by judge-FID and KID.

The bar: every reader recognises the prompted digit in at least 90 % of the samples of each digit
zero to eight; "a handwritten digit nine" draws no nines (the model never saw the word with an
image); the generic caption "a handwritten digit" draws every digit, nines among them.
"""
from __future__ import annotations

from pathlib import Path

import torch

from adjointdpm import files

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
    readers = list(result["rows"][0]["read_as"])
    lines = ["| prompt | " + " | ".join(f"{who} reads it" for who in readers) + " | the net judge reads | "
             "judge-FID / KID to held-out real | real train vs held-out |", "|---|" + "---|" * (len(readers) + 3)]
    for r in result["rows"]:
        counts = r["read_as"]["net"]
        read = ", ".join(f"{data.NAMES[k]} {c}" for k, c in sorted(enumerate(counts), key=lambda kc: -kc[1]) if c)
        if r["digit"] is None:
            shares = " | ".join("-" for _ in readers)
            fid = floor = "-"
        else:
            shares = " | ".join(f"{100 * r['recognised'][who]:.0f}%" for who in readers)
            fid = f"{r['judge_fid']:.2f} / {r['judge_kid']:.3f}"
            floor = f"{r['judge_fid_real_train_vs_heldout']:.2f} / {r['judge_kid_real_train_vs_heldout']:.3f}"
        note = " (never named in training)" if r["digit"] == data.UNSEEN else " (generic caption)" if r["digit"] is None else ""
        lines.append(f"| {r['prompt']}{note} | {shares} | {read} | {fid} | {floor} |")
    n = result["rows"][0]["samples"]
    text = (f"# Does the digits model draw the prompted digit?\n\n{result['sampler']}; {n} samples per prompt, read "
            "by the guide (the digit classifier that guided sampling and the audit differentiate through) and by the "
            "two judges that never guide (handwritten.judges: an SVC on the 8x8 pixels, a LeNet-5 trained on other "
            "digits). Judge-FID and KID in the LeNet's 84-d features against the held-out real digits of the class "
            f"(about {sum(r.get('heldout_real', 0) for r in result['rows']) // 10} per digit, so the floor is not 0)."
            "\n\n" + "\n".join(lines) +
            f"\n\nBar: every reader recognises at least {100 * BAR:.0f}% of each digit zero to eight: "
            f"{'met' if result['meets_bar'] else 'NOT met'} (lowest: "
            + ", ".join(f"{who} {100 * v:.0f}%" for who, v in result["lowest_recognised_named"].items()) + "). "
            "\"a handwritten digit nine\" is drawn as a nine by "
            + ", ".join(f"{who} {100 * v:.0f}%" for who, v in result["nine_prompt_drawn_as_nine"].items())
            + f" of the time; the generic caption \"{data.GENERIC}\" draws nines in "
            + ", ".join(f"{who} {100 * v:.0f}%" for who, v in result["generic_drawn_as_nine"].items()) + ".\n")
    (out / "quality.md").write_text(text)
    files.write_json(out / "quality.json", result, significant=6)
    save_images(out / "quality.png", grids)
    return text
