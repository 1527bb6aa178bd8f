"""Memory and time of one initial-noise gradient on Stable Diffusion, per gradient strategy.

    python -m stable_diffusion.bench --model DIR_OR_CACHED_ID [--steps 10 20 50] [--device cuda]
    python -m stable_diffusion.bench --model tiny            # CPU, tiny random components

Each case (strategy x steps) runs in a fresh process: one gradient of a loss on the
decoded image w.r.t. ``x_T`` (batch 1, guidance 7.5, DPM-Solver-2M on eq. 10), peak
memory above the level after loading (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
resident high-water mark), then the median time of ``--repeats`` more gradients. The
paper's anchor (App. B): 19.63 GB for one such gradient on SD 1.5 at fp32 on a V100
(DOODL: 23.24 GB). Writes ``bench.json`` and ``bench.md`` to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from adjointdpm import cli, files
from adjointdpm.memory import peak, reset_peak, run_in_fresh_process

from .apps import GRADIENTS, Sampler, noise
from .components import model_argument, open_model
from .model import decode, encode_prompt, eps_model

PROMPT = "a photo of a dog"


def worker(model: str, gradient: str, steps: int, repeats: int, device: str, dtype: str) -> dict:
    comps = open_model(model, device, getattr(torch, dtype))
    sampler = Sampler(steps=steps, gradient=gradient)
    eps = eps_model(comps, sampler.guidance_scale)
    with torch.no_grad():
        cond = encode_prompt(comps, [PROMPT])

    def one_gradient():
        x_T = noise(comps, [0]).requires_grad_()
        decode(comps, sampler.run(comps, eps, x_T, cond)).square().mean().backward()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    base = reset_peak(device)
    one_gradient()
    peak_bytes = peak(device) - base
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        one_gradient()
        times.append(time.perf_counter() - start)
    return {"gradient": gradient, "steps": steps, "peak_bytes": peak_bytes,
            "seconds": statistics.median(times) if times else None, "device": device, "dtype": dtype}


def write(rows, out: Path, meta: dict) -> str:
    unit = "CUDA max allocated" if meta["device"].startswith("cuda") else "CPU resident high-water mark"
    lines = [f"# One dL/dx_T on {meta['model']} ({meta['device']}, {meta['dtype']})", "",
             f"Peak memory above the loaded model ({unit}) and median seconds per gradient. "
             "Paper (App. B, SD 1.5 fp32, V100): 19.63 GB AdjointDPM, 23.24 GB DOODL.", "",
             "| strategy | steps | peak MiB | seconds |", "|---|---|---|---|"]
    for r in rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:.2f}"
        lines.append(f"| {r['gradient']} | {r['steps']} | {r['peak_bytes'] / 2**20:.1f} | {seconds} |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.md").write_text(text)
    files.write_json(out / "bench.json", {"meta": meta, "rows": rows})
    return text


def main(argv=None):
    parser = cli.Parser(prog="python -m stable_diffusion.bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=model_argument, help="local diffusers directory, cached model id, or 'tiny'")
    parser.add_argument("--steps", type=cli.positive_int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--gradients", nargs="+", default=list(GRADIENTS), choices=list(GRADIENTS))
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="UNet/VAE dtype (the paper's anchor is float32)")
    parser.add_argument("--repeats", type=cli.nonnegative_int, default=2,
                        help="timed gradients per case after the measured one")
    parser.add_argument("--out", type=cli.folder, default=Path("results/stable_diffusion"))
    parser.add_argument("--worker", nargs=2, metavar=("GRADIENT", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = str(args.device)
    if len(set(args.steps)) != len(args.steps) or len(set(args.gradients)) != len(args.gradients):
        parser.error("give each --steps and --gradients value once")
    if args.worker:
        print(json.dumps(worker(args.model, args.worker[0], int(args.worker[1]), args.repeats, args.device,
                                args.dtype)))
        return
    rows = []
    for gradient, steps in tqdm([(g, s) for g in args.gradients for s in args.steps], desc="bench"):
        rows.append(run_in_fresh_process("stable_diffusion.bench", "--model", args.model, "--worker", gradient, steps,
                                         "--device", args.device, "--dtype", args.dtype, "--repeats", args.repeats))
    meta = {"model": args.model, "device": args.device, "dtype": args.dtype, "repeats": args.repeats,
            "threads": torch.get_num_threads()}
    print(write(rows, args.out, meta))
    print(f"wrote bench.md and bench.json to {args.out}/")


if __name__ == "__main__":
    main()
