"""Memory and time of one initial-noise gradient on Stable Diffusion, per gradient strategy.

    python -m stable_diffusion.bench --model sd15-random --resolution 256 512 --steps 2 4 \\
        --backprop-steps 1 2 3 --breakdown --repeats 0        # SD 1.5's architecture on a CPU
    python -m stable_diffusion.bench --model DIR_OR_CACHED_ID --device cuda
    python -m stable_diffusion.bench --model tiny              # tiny random components

Each case runs in a fresh process, so that a high-water mark is that case's own: one
gradient of a loss on the decoded image w.r.t. ``x_T`` (batch 1, guidance 7.5, so the UNet
sees batch 2; DPM-Solver-2M on eq. 10), its peak memory above the level after set-up
(CUDA: ``torch.cuda.max_memory_allocated``; CPU: the resident high-water mark) and its
seconds (the median of ``--repeats`` more gradients, or of the measured one with
``--repeats 0``). ``--breakdown`` adds the parts: the weights, one guided UNet evaluation
kept for its VJP and the VAE decode's backward, each with and without the memory savings
of :func:`stable_diffusion.components.save_memory`; for these the bytes autograd keeps are
also counted exactly (saved-tensor hooks, weights excluded).

The paper's anchor (App. B): 19.63 GB for one such gradient on SD 1.5 at fp32 on a V100
(DOODL: 23.24 GB). Writes ``BENCH.json`` (a list of records) and ``BENCH.md`` to
``--out`` after every case, where BENCH is ``bench_sd15`` for ``--model sd15-random`` and
``bench`` otherwise; a rerun with the same settings keeps the cases already measured.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from adjointdpm import cli, files
from adjointdpm.memory import peak, reset_peak, run_in_fresh_process, saved_bytes_during

from .apps import GRADIENTS, Sampler, noise
from .components import ATTENTION, CHECKPOINTING, model_argument, open_model, save_memory
from .model import decode, encode_prompt, eps_model

PROMPT = "a photo of a dog"
GUIDANCE = 7.5
GIB = 2 ** 30
PARTS = ("weights", "unet-vjp", "vae-backward")  # the breakdown's cases
MACHINE_GIB = 24  # this machine's memory, for Backprop's extrapolation
PAPER = {"AdjointDPM": 19.63, "DOODL": 23.24}  # GB, App. B: SD 1.5, fp32, V100


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _seconds(device, fn) -> float:
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _measure(device, fn, repeats: int) -> tuple[int, float]:
    """Peak bytes of ``fn()`` above the level before it, and its median seconds (of ``repeats``
    more runs, or of the measured one when ``repeats`` is 0)."""
    base = reset_peak(device)
    first = _seconds(device, fn)
    peak_bytes = peak(device) - base
    return peak_bytes, statistics.median([_seconds(device, fn) for _ in range(repeats)] or [first])


def worker(case: dict, model: str, device: str, dtype: str, repeats: int) -> dict:
    """One case, in this process: a gradient strategy at some steps, or one part (:data:`PARTS`)."""
    comps = open_model(model, device, getattr(torch, dtype))
    if case["resolution"]:
        comps.at_resolution(case["resolution"])
    save_memory(comps, case["attention"], case["checkpointing"])
    record = dict(case, case=case, resolution=comps.image_size, model=model, device=device, dtype=dtype, repeats=repeats,
                  setup_gib=reset_peak(device) / GIB, threads=torch.get_num_threads())
    weights = {name: sum(p.numel() * p.element_size() for p in getattr(comps, name).parameters())
               for name in ("unet", "vae", "text_encoder")}
    if case["strategy"] == "weights":
        return dict(record, peak_gib=sum(weights.values()) / GIB, seconds=None,
                    parts_gib={k: v / GIB for k, v in weights.items()})
    eps = eps_model(comps, GUIDANCE)
    with torch.no_grad():
        cond = encode_prompt(comps, [PROMPT])
    x_T = noise(comps, [0])
    t = torch.full((1,), 0.5, device=comps.device)

    def output(x):
        """What the case differentiates: one guided UNet evaluation, one decode, or sample-then-decode."""
        if case["strategy"] == "unet-vjp":
            return eps(x, t, cond)
        if case["strategy"] == "vae-backward":
            return decode(comps, x)
        sampler = Sampler(steps=case["steps"], guidance_scale=GUIDANCE, gradient=case["strategy"])
        return decode(comps, sampler.run(comps, eps, x, cond))

    def run():
        output(x_T.clone().requires_grad_()).square().mean().backward()

    cpu = time.process_time()
    peak_bytes, seconds = _measure(device, run, repeats)
    # The machine's load during the case: wall seconds stretch when other work shares the cores, CPU seconds do not.
    record.update(peak_gib=peak_bytes / GIB, seconds=seconds, cpu_seconds=time.process_time() - cpu,
                  load_average=os.getloadavg()[0])
    if case["strategy"] in ("unet-vjp", "vae-backward"):  # what autograd keeps, exactly
        weights = {p.data_ptr() for net in (comps.unet, comps.vae) for p in net.parameters()}
        _, kept = saved_bytes_during(lambda: output(x_T.clone().requires_grad_()), exclude=weights)
        record["saved_gib"] = kept / GIB
    return record


def cases(args) -> list[dict]:
    """The gradients at every resolution (Backprop at ``--backprop-steps``), then the parts."""
    base = {"attention": args.attention, "checkpointing": list(args.checkpointing)}
    out = []
    for resolution in args.resolution or [None]:
        for gradient in args.gradients:
            steps = args.backprop_steps if gradient == "backprop" and args.backprop_steps else args.steps
            out += [dict(base, strategy=gradient, steps=s, resolution=resolution) for s in steps]
        if args.breakdown:
            part = dict(steps=None, resolution=resolution)
            out.append(dict(part, strategy="weights", **base))
            for attention, checkpointing in (("sdpa", []), ("classic", []), ("sdpa", ["unet"])):
                out.append(dict(part, strategy="unet-vjp", attention=attention, checkpointing=checkpointing))
            for checkpointing in ([], ["vae"]):
                out.append(dict(part, strategy="vae-backward", attention="sdpa", checkpointing=checkpointing))
    return out


def _savings(r: dict) -> str:
    return r["attention"] + "".join(f" + {c} checkpointing" for c in r["checkpointing"])


def in_order(records: list[dict]) -> list[dict]:
    """By resolution, strategy (gradients, then parts), steps and savings: files that do not
    change when a rerun measures nothing new."""
    order = {name: i for i, name in enumerate([*GRADIENTS, *PARTS])}
    return sorted(records, key=lambda r: (r["resolution"], order[r["strategy"]], r["steps"] or 0,
                                          r["attention"] != "sdpa", _savings(r)))


def backprop_growth(records: list[dict]) -> dict:
    """Per resolution, Backprop's least-squares growth per step and the step count at which
    set-up plus peak would pass this machine's memory."""
    out = {}
    for resolution in sorted({r["resolution"] for r in records}):
        rows = sorted((r["steps"], r["peak_gib"], r["setup_gib"]) for r in records
                      if r["strategy"] == "backprop" and r["resolution"] == resolution)
        if len(rows) < 2:
            continue
        slope, intercept = map(float, np.polyfit([s for s, _, _ in rows], [p for _, p, _ in rows], 1))
        setup = max(s for _, _, s in rows)
        exceeds = int((MACHINE_GIB - setup - intercept) // slope) + 1 if slope > 0 else None
        out[resolution] = {"gib_per_step": slope, "intercept_gib": intercept, "setup_gib": setup,
                           f"steps_past_{MACHINE_GIB}_gib": exceeds}
    return out


def markdown(records: list[dict]) -> str:
    meta = records[0]
    unit = "CUDA max allocated" if meta["device"].startswith("cuda") else "CPU resident high-water mark"
    lines = [f"# One dL/dx_T on {meta['model']} ({meta['device']}, {meta['dtype']}, {meta['threads']} threads)", "",
             f"Peak memory above set-up ({unit}; set-up = the loaded model) and seconds per gradient, batch 1 with "
             f"classifier-free guidance {GUIDANCE:g} (the UNet sees batch 2), DPM-Solver-2M, loss on the decoded "
             "image. `adjoint` solves eq. 11 backwards with RK4 at the sampler's steps, `adjointdeis` is "
             "AdjointDEIS-1; both must be flat in steps. Paper (App. B, SD 1.5 fp32, V100 32 GB): "
             f"{PAPER['AdjointDPM']} GB AdjointDPM, {PAPER['DOODL']} GB DOODL.", "",
             "| resolution | strategy | steps | memory savings | set-up GiB | peak above set-up GiB | "
             "set-up + peak GiB | seconds |", "|---|---|---|---|---|---|---|---|"]
    gradients = [r for r in records if r["strategy"] not in PARTS]
    for r in gradients:
        lines.append(f"| {r['resolution']} | {r['strategy']} | {r['steps']} | {_savings(r)} | {r['setup_gib']:.3g} | "
                     f"{r['peak_gib']:.3g} | {r['setup_gib'] + r['peak_gib']:.3g} | {r['seconds']:.3g} |")
    growth = backprop_growth(gradients)
    if growth:
        lines += ["", f"Backprop's growth (least squares over its steps) and the first step count at which set-up "
                  f"plus peak passes this machine's {MACHINE_GIB} GiB:", "",
                  f"| resolution | GiB per step | intercept GiB | passes {MACHINE_GIB} GiB at |", "|---|---|---|---|"]
        lines += [f"| {res} | {g['gib_per_step']:.3g} | {g['intercept_gib']:.3g} | "
                  f"{g[f'steps_past_{MACHINE_GIB}_gib']} steps |" for res, g in growth.items()]
    parts = [r for r in records if r["strategy"] in PARTS]
    if parts:
        lines += ["", "The parts, each in its own process. `weights`: parameter bytes (UNet, VAE, text encoder). "
                  "`unet-vjp`: one guided UNet evaluation (batch 2) and its backward. `vae-backward`: decoding one "
                  "latent and its backward. `kept for backward`: the bytes autograd saves, counted exactly with "
                  "saved-tensor hooks, weights excluded.", "",
                  "| resolution | part | memory savings | kept for backward GiB | peak above set-up GiB | seconds |",
                  "|---|---|---|---|---|---|"]
        for r in parts:
            if r["strategy"] == "weights":
                detail = ", ".join(f"{k} {v:.3g}" for k, v in r["parts_gib"].items())
                lines.append(f"| {r['resolution']} | weights ({detail}) | | | {r['peak_gib']:.3g} (their bytes) | |")
            else:
                lines.append(f"| {r['resolution']} | {r['strategy']} | {_savings(r)} | {r['saved_gib']:.3g} | "
                             f"{r['peak_gib']:.3g} | {r['seconds']:.3g} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = cli.Parser(prog="python -m stable_diffusion.bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=model_argument,
                        help="tiny, digits, sd15-random (SD 1.5's architecture, random weights), a local diffusers "
                             "directory or a cached model id")
    parser.add_argument("--resolution", type=cli.positive_int, nargs="+",
                        help="image sides to measure (default: the model's own)")
    parser.add_argument("--steps", type=cli.positive_int, nargs="+", default=[10, 20, 50],
                        help="sampler steps for every strategy (default 10 20 50)")
    parser.add_argument("--backprop-steps", type=cli.positive_int, nargs="+",
                        help="Backprop's steps instead of --steps (its memory grows with them)")
    parser.add_argument("--gradients", nargs="+", default=list(GRADIENTS), choices=list(GRADIENTS))
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION,
                        help="attention for the gradients (default sdpa, diffusers' default)")
    parser.add_argument("--checkpointing", nargs="*", default=[], choices=CHECKPOINTING,
                        help="networks whose blocks are gradient-checkpointed for the gradients (default none)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure weights, one UNet VJP and the VAE decode's backward, with and without savings")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="UNet/VAE dtype (the paper's anchor is float32)")
    parser.add_argument("--repeats", type=cli.nonnegative_int, default=2,
                        help="timed gradients per case after the measured one (0: time the measured one)")
    parser.add_argument("--out", type=cli.folder, default=Path("results/stable_diffusion"))
    parser.add_argument("--fresh", action="store_true", help="measure every case again instead of keeping those "
                        "already in the output")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = str(args.device)
    for name in ("steps", "backprop_steps", "gradients", "resolution"):
        values = getattr(args, name) or []
        if len(set(values)) != len(values):
            parser.error(f"argument --{name.replace('_', '-')}: give each value once")
    if any(r % 64 for r in args.resolution or []):
        parser.error("argument --resolution: must be a multiple of 64 (SD's VAE downsamples by 8, its UNet by 8 more)")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.model, args.device, args.dtype, args.repeats)))
        return
    stem = "bench_sd15" if args.model == "sd15-random" else "bench"
    path = args.out / f"{stem}.json"
    same = dict(model=args.model, device=args.device, dtype=args.dtype, repeats=args.repeats)  # what a record depends on
    earlier = [] if args.fresh or not path.exists() else json.loads(path.read_text())
    kept = [r for r in earlier if isinstance(earlier, list) and isinstance(r, dict) and "case" in r
            and all(r.get(k) == v for k, v in same.items())]  # another layout (an older bench) is measured anew
    records = []
    start = time.perf_counter()
    for case in tqdm(cases(args), desc="bench"):
        known = [r for r in kept if r["case"] == case]
        record = known[0] if known else run_in_fresh_process(
            "stable_diffusion.bench", "--model", args.model, "--worker", json.dumps(case), "--device", args.device,
            "--dtype", args.dtype, "--repeats", args.repeats)
        records.append(record)
        everything = in_order(records + [r for r in kept if r not in records])
        files.write_json(path, everything)
        (args.out / f"{stem}.md").write_text(markdown(everything))
    print(markdown(everything))
    print(f"wrote {stem}.md and {stem}.json to {args.out}/ ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
