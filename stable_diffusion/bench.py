"""Memory and time of one initial-noise gradient on Stable Diffusion, per gradient strategy.

    python -m stable_diffusion.bench --model sd15-random --resolution 256 512 --steps 2 4 \\
        --backprop-steps 1 2 3 --breakdown --repeats 0        # SD 1.5's architecture on a CPU
    python -m stable_diffusion.bench --model DIR_OR_CACHED_ID --device cuda
    python -m stable_diffusion.bench --model tiny              # tiny random components

Each case runs in a fresh process, so that a high-water mark is that case's own: one
gradient of a loss on the decoded image w.r.t. ``x_T`` (batch 1, guidance 7.5, so the UNet
sees batch 2; DPM-Solver-2M on eq. 10, or ``reversible-dpm1`` for ``reversible``), its peak
memory above the level after set-up (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the
resident high-water mark) and its
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

from adjointdpm import GRADIENTS
from adjointdpm.tools import cli, files
from adjointdpm.tools.memory import (LivePeak, case_process, live_bytes, load_note, machine_load, peak, reset_peak,
                                     return_freed_memory, run_in_fresh_process, saved_bytes_during, synchronize, trim)
from adjointdpm.tools.report import markdown_table

from .apps import Pipeline, Sampler, latent_noise
from .components import (ALL_SAVINGS, ATTENTION, CHECKPOINTING, RELEASABLE, SAVINGS, asked_savings, release,
                         save_memory)
from .registry import MODELS, fingerprint, model_argument, open_model
from .latent import decode, encode_prompt, eps_model

PROMPT = "a photo of a dog"
GUIDANCE = 7.5
GIB = 2 ** 30
PARTS = ("weights", "unet-vjp", "vae-backward")  # the breakdown's cases
BENCHED = ("adjoint", "adjointdeis", "adjointdeis-stored", "checkpoint", "backprop", "reversible")  # by default
SOLVER = {"reversible": "reversible-dpm1"}  # a strategy that needs its own sampler; the others differentiate dpm2m
PAPER = {"AdjointDPM": 19.63, "DOODL": 23.24}  # GB, App. B: SD 1.5, fp32, V100


def machine_gib(device: str) -> float:
    """The memory a case on ``device`` can fill, in GiB, on the machine running now: the GPU's for CUDA
    (where peaks are CUDA allocations), else the machine's physical memory. For Backprop's extrapolation."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_properties(torch.device(device)).total_memory / GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def _seconds(device, fn) -> float:
    start = time.perf_counter()
    fn()
    synchronize(device)
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
    if case.get("allocator"):
        return_freed_memory()
    comps = open_model(model, device, getattr(torch, dtype))
    if case["resolution"]:
        comps.at_resolution(case["resolution"])
    save_memory(comps, case["attention"], case["checkpointing"])
    weights = {name: sum(p.numel() * p.element_size() for p in getattr(comps, name).parameters())
               for name in ("unet", "vae", "text_encoder")}
    # bound before release: the guidance's null condition is encoded now, as is the prompt below
    pipe = Pipeline(comps, Sampler(case["steps"], SOLVER.get(case["strategy"], Sampler.solver), GUIDANCE,
                                   case["strategy"])) if case["strategy"] not in PARTS else None
    eps = pipe.model if pipe else eps_model(comps, GUIDANCE)
    with torch.no_grad():
        cond = encode_prompt(comps, [PROMPT])
    release(comps, case.get("release", []))
    trim()  # what was freed since start-up goes back to the system before set-up is measured
    held = sum(p.numel() * p.element_size() for name in ("unet", "vae", "text_encoder")
               for p in getattr(comps, name).parameters() if p.device.type != "meta")
    record = dict(case, case=case, resolution=comps.image_size, model=model, device=device, dtype=dtype, repeats=repeats,
                  setup_gib=reset_peak(device) / GIB, live_setup_gib=(live_bytes() or 0) / GIB,
                  weights_held_gib=held / GIB, threads=torch.get_num_threads(), machine_gib=machine_gib(device))
    if case["strategy"] == "weights":
        return dict(record, peak_gib=sum(weights.values()) / GIB, seconds=None,
                    parts_gib={k: v / GIB for k, v in weights.items()})
    x_T = latent_noise(comps, [0])
    t = torch.full((1,), 0.5, device=comps.device)

    def output(x):
        """What the case differentiates: one guided UNet evaluation, one decode, or sample-then-decode."""
        if case["strategy"] == "unet-vjp":
            return eps(x, t, cond)
        if case["strategy"] == "vae-backward":
            return decode(comps, x)
        return pipe.images(x, cond)

    def run():
        output(x_T.clone().requires_grad_()).square().mean().backward()

    cpu = time.process_time()
    with LivePeak() as live:
        peak_bytes, seconds = _measure(device, run, repeats)
    # The machine's load during the case: wall seconds stretch when other work shares the cores, CPU seconds do not.
    record.update(peak_gib=peak_bytes / GIB, seconds=seconds, cpu_seconds=time.process_time() - cpu,
                  load_average=os.getloadavg()[0])
    if torch.device(device).type == "cuda":  # what the caching allocator held from the driver at its peak, set-up included
        record["reserved_gib"] = torch.cuda.max_memory_reserved(device) / GIB
    if live.peak is not None and torch.device(device).type == "cpu":  # the tensors', beside the resident size
        record["live_peak_gib"] = (live.peak - live.start) / GIB
    if case["strategy"] in ("unet-vjp", "vae-backward"):  # what autograd keeps, exactly
        weights = {p.data_ptr() for net in (comps.unet, comps.vae) for p in net.parameters()}
        _, kept = saved_bytes_during(lambda: output(x_T.clone().requires_grad_()), exclude=weights)
        record["saved_gib"] = kept / GIB
    return record


def cases(args) -> list[dict]:
    """The gradients at every resolution (Backprop at ``--backprop-steps``), then the parts."""
    base = {"attention": args.attention, "checkpointing": list(args.checkpointing)}
    saving = set(args.save_memory)
    base["checkpointing"] += [c for c in CHECKPOINTING if c in saving and c not in base["checkpointing"]]
    if saving & set(RELEASABLE):  # keys only where used: records measured before them still match
        base["release"] = [r for r in RELEASABLE if r in saving]
    if "allocator" in saving:
        base["allocator"] = True
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
    return (r["attention"] + "".join(f" + {c} checkpointing" for c in r["checkpointing"])
            + "".join(f" + {p} released" for p in r.get("release", [])) + (" + allocator" if r.get("allocator") else ""))


def in_order(records: list[dict]) -> list[dict]:
    """By resolution, strategy (gradients, then parts), steps and savings: files that do not
    change when a rerun measures nothing new."""
    order = {name: i for i, name in enumerate(dict.fromkeys([*BENCHED, *GRADIENTS, *PARTS]))}
    return sorted(records, key=lambda r: (r["resolution"], order[r["strategy"]], r["steps"] or 0,
                                          r["attention"] != "sdpa", _savings(r)))


def growth(records: list[dict]) -> list[dict]:
    """Per resolution, strategy and savings measured at two or more step counts: the least-squares growth
    of the peak per step (resident and, where measured, live), and for a growing one the step count at
    which set-up plus peak would pass the memory of the machine that measured it (``machine_gib``, in the
    records since they carry it: older records get no such count, as the machine running now may not be theirs)."""
    out = []
    groups = {}
    for r in records:
        groups.setdefault((r["resolution"], r["strategy"], _savings(r)), []).append(r)
    for (resolution, strategy, savings), rows in groups.items():
        rows = sorted(rows, key=lambda r: r["steps"])
        if len(rows) < 2:
            continue
        steps = [r["steps"] for r in rows]
        slope, intercept = map(float, np.polyfit(steps, [r["peak_gib"] for r in rows], 1))
        live = [r.get("live_peak_gib") for r in rows]
        setup = max(r["setup_gib"] for r in rows)
        known = [r["machine_gib"] for r in rows if r.get("machine_gib")]
        memory = min(known) if len(known) == len(rows) else None
        passes = int((memory - setup - intercept) // slope) + 1 if slope > 0.05 and memory else None
        out.append({"resolution": resolution, "strategy": strategy, "savings": savings, "steps": steps,
                    "gib_per_step": slope, "intercept_gib": intercept,
                    "live_gib_per_step": float(np.polyfit(steps, live, 1)[0]) if None not in live else None,
                    "machine_gib": memory, "steps_past_machine_gib": passes})
    return out


def floor(gradients: list[dict]) -> list[str]:
    """The lowest total (set-up + peak) per resolution and what it is made of, from the records."""
    lines = []
    for resolution in sorted({r["resolution"] for r in gradients}):
        mine = [r for r in gradients if r["resolution"] == resolution and "weights_held_gib" in r]
        if not mine:
            continue
        best = min(mine, key=lambda r: r["setup_gib"] + r["peak_gib"])
        runtime = best["setup_gib"] - best["weights_held_gib"]
        live = f" (live tensors: {best['live_peak_gib']:.2f})" if "live_peak_gib" in best else ""
        lines += ["", f"**Floor at {resolution}x{resolution}**: {best['setup_gib'] + best['peak_gib']:.2f} GiB in all, "
                  f"`{best['strategy']}` at {best['steps']} steps with {_savings(best)}. Of it: the weights still held, "
                  f"{best['weights_held_gib']:.2f} GiB; the interpreter, libraries and allocator around them, "
                  f"{runtime:.2f} GiB; and the gradient's own peak, {best['peak_gib']:.2f} GiB{live}."]
    return lines


def markdown(records: list[dict]) -> str:
    meta = records[0]
    unit = "CUDA max allocated" if meta["device"].startswith("cuda") else "CPU resident high-water mark"
    lines = [f"# One dL/dx_T on {meta['model']} ({meta['device']}, {meta['dtype']}, {meta['threads']} threads)", "",
             f"Peak memory above set-up ({unit}; set-up = the loaded model) and seconds per gradient, batch 1 with "
             f"classifier-free guidance {GUIDANCE:g} (the UNet sees batch 2), DPM-Solver-2M, loss on the decoded "
             "image. `adjoint` solves eq. 11 backwards with RK4 at the sampler's steps, `adjointdeis` is "
             "AdjointDEIS-1 (data-prediction form); both must be flat in steps. `reversible` is ReversibleAdjoint "
             "behind its own sampler, `reversible-dpm1` (two UNet evaluations per step): exact and flat. Paper "
             "(App. B, SD 1.5 fp32, V100 32 GB): "
             f"{PAPER['AdjointDPM']} GB AdjointDPM, {PAPER['DOODL']} GB DOODL.", ""]
    busy = load_note([r["machine_load"] for r in records if "machine_load" in r])
    if busy:
        lines += [busy, ""]
    gradients = [r for r in records if r["strategy"] not in PARTS]
    lines.append(markdown_table(
        ["resolution", "strategy", "steps", "memory savings", "set-up GiB", "peak above set-up GiB",
         "live tensors' peak above set-up GiB", "set-up + peak GiB", "seconds"],
        [[r["resolution"], r["strategy"], r["steps"], _savings(r), f"{r['setup_gib']:.3g}", f"{r['peak_gib']:.3g}",
          f"{r['live_peak_gib']:.3g}" if "live_peak_gib" in r else "-", f"{r['setup_gib'] + r['peak_gib']:.3g}",
          f"{r['seconds']:.3g}"] for r in gradients]))
    rows = growth(gradients)
    if rows:
        memory = " or ".join(sorted({f"{g['machine_gib']:.3g}" for g in rows if g["machine_gib"]}, key=float))
        memory = f"{memory} GiB" if memory else "memory (where the records carry it)"
        lines += ["", f"Growth per step (least squares over the steps measured), of the resident peak and of the live "
                  f"tensors' peak, and for a growing strategy the step count at which set-up plus peak would pass "
                  f"the measuring machine's {memory}:", ""]
        table = []
        for g in rows:
            live = "-" if g["live_gib_per_step"] is None else f"{g['live_gib_per_step']:.3g}"
            passes = g["steps_past_machine_gib"]
            at = "-" if passes is None else f"{passes} steps ({g['machine_gib']:.3g} GiB)"
            table.append([g["resolution"], g["strategy"], g["savings"], ", ".join(map(str, g["steps"])),
                          f"{g['gib_per_step']:.3g}", live, at])
        lines.append(markdown_table(["resolution", "strategy", "memory savings", "steps", "GiB per step (resident)",
                                     "GiB per step (live)", "passes the machine's memory at"], table))
    lines += floor(gradients)
    parts = [r for r in records if r["strategy"] in PARTS]
    if parts:
        lines += ["", "The parts, each in its own process. `weights`: parameter bytes (UNet, VAE, text encoder). "
                  "`unet-vjp`: one guided UNet evaluation (batch 2) and its backward. `vae-backward`: decoding one "
                  "latent and its backward. `kept for backward`: the bytes autograd saves, counted exactly with "
                  "saved-tensor hooks, weights excluded.", ""]
        table = []
        for r in parts:
            if r["strategy"] == "weights":
                detail = ", ".join(f"{k} {v:.3g}" for k, v in r["parts_gib"].items())
                table.append([r["resolution"], f"weights ({detail})", "", "", f"{r['peak_gib']:.3g} (their bytes)", ""])
            else:
                table.append([r["resolution"], r["strategy"], _savings(r), f"{r['saved_gib']:.3g}",
                              f"{r['peak_gib']:.3g}", f"{r['seconds']:.3g}"])
        lines.append(markdown_table(["resolution", "part", "memory savings", "kept for backward GiB",
                                     "peak above set-up GiB", "seconds"], table))
    return "\n".join(lines) + "\n"


# How each argument reaches a record's key (its case, or the settings every kept record must share), or
# why it cannot change a measurement; tests/test_keys.py fails for an argument in neither table.
KEYED = {"model": "the records' model name and content fingerprint (every file of the folder)",
         "resolution": "the case", "steps": "the case", "backprop_steps": "the case (Backprop's steps)",
         "gradients": "the case (its strategy)", "attention": "the case", "checkpointing": "the case",
         "save_memory": "the case", "breakdown": "the parts' cases", "device": "the records' device",
         "dtype": "the records' dtype", "repeats": "the records' repeats"}
UNKEYED = {"out": "where the records go", "fresh": "measures the listed cases again instead of keeping them",
           "worker": "internal: one case in a fresh process"}


def main(argv=None):
    parser = cli.Parser(prog="python -m stable_diffusion.bench", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=model_argument,
                        help=f"{', '.join(MODELS)} (sd15-random: SD 1.5's architecture, random weights), a local "
                             "diffusers directory or a cached model id")
    parser.add_argument("--resolution", type=cli.count("resolution"), nargs="+",
                        help="image sides to measure (default: the model's own; " + cli.bound_help("resolution") + ")")
    parser.add_argument("--steps", type=cli.count("steps"), nargs="+", default=[10, 20, 50],
                        help="sampler steps for every strategy (default 10 20 50; " + cli.bound_help("steps") + ")")
    parser.add_argument("--backprop-steps", type=cli.count("steps"), nargs="+",
                        help="Backprop's steps instead of --steps (its memory grows with them)")
    parser.add_argument("--gradients", nargs="+", default=list(BENCHED), choices=list(GRADIENTS), metavar="GRADIENT",
                        help=f"strategies by name (adjointdpm.GRADIENTS: {', '.join(GRADIENTS)}; default "
                        f"{' '.join(BENCHED)})")
    parser.add_argument("--attention", default="sdpa", choices=ATTENTION,
                        help="attention for the gradients (default sdpa, diffusers' default)")
    parser.add_argument("--checkpointing", nargs="*", default=[], choices=CHECKPOINTING,
                        help="networks whose blocks are gradient-checkpointed for the gradients (default none)")
    parser.add_argument("--save-memory", nargs="+", default=[], choices=[*SAVINGS, "all"], metavar="SAVING",
                        help="savings that keep the gradient exact, each with its cost: " + "; ".join(
                            f"{k}: {v.cost}" for k, v in SAVINGS.items()) + f"; all: {', '.join(ALL_SAVINGS)}")
    parser.add_argument("--breakdown", action="store_true",
                        help="also measure weights, one UNet VJP and the VAE decode's backward, with and without savings")
    parser.add_argument("--device", type=cli.device, default=cli.default_device(), help="default: cuda if available")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                        help="UNet/VAE dtype (the paper's anchor is float32)")
    parser.add_argument("--repeats", type=cli.count("repeats", lower=0), default=2,
                        help="timed gradients per case after the measured one (0: time the measured one; "
                        + cli.bound_help("repeats") + ")")
    parser.add_argument("--out", type=cli.folder, default=Path("results/stable_diffusion"))
    parser.add_argument("--fresh", action="store_true", help="measure the listed cases again, replacing their "
                        "records (the other records in the output are kept)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.device = str(args.device)
    for name in ("steps", "backprop_steps", "gradients", "resolution"):
        values = getattr(args, name) or []
        if len(set(values)) != len(values):
            parser.error(f"argument --{name.replace('_', '-')}: give each value once")
    try:
        args.save_memory = asked_savings(args.save_memory)
        asked_savings([*args.save_memory, *args.checkpointing])  # --checkpointing's grains count with the savings'
    except ValueError as err:
        parser.error(str(err))
    for name in args.gradients:  # which sampler each differentiates, before anything is measured
        try:
            Sampler(args.steps[0], SOLVER.get(name, Sampler.solver), GUIDANCE, name)
        except ValueError as err:
            parser.error(f"argument --gradients: {err}")
    if any(r % 64 for r in args.resolution or []):
        parser.error("argument --resolution: must be a multiple of 64 (SD's VAE downsamples by 8, its UNet by 8 more)")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker), args.model, args.device, args.dtype, args.repeats)))
        return
    with cli.one_line_errors(parser, resumes=True):
        run(args)


def _earlier(path: Path) -> list:
    """The records of an earlier run at ``path``; a file that is not a list of records is named with the way out."""
    if not path.exists():
        return []
    try:
        earlier = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        earlier = None
    if not isinstance(earlier, list):
        raise ValueError(f"{path} is not a bench's list of records: move or delete it to measure anew")
    return earlier


# What opening a model imports (diffusers and transformers import their models on first use): a case's
# process starts with them imported (run_in_fresh_process's fork server): opening the tiny model then takes
# 0.03 s instead of 3.2 s
PRELOAD = ("diffusers.models.autoencoders.autoencoder_kl", "diffusers.models.unets.unet_2d_condition",
           "diffusers.schedulers.scheduling_ddpm", "transformers.models.clip.modeling_clip",
           "transformers.models.clip.tokenization_clip")


def run(args) -> list[dict]:
    """Measure every case of ``args`` not yet in ``--out`` with the same settings; returns the records."""
    stem = "bench_sd15" if args.model == "sd15-random" else "bench"
    path = args.out / f"{stem}.json"
    with files.exclusive(args.out, f".{stem}.lock"):
        load = machine_load()  # before this run's own work, which would count itself
        # what a record depends on besides its case: the model by content, not by name
        same = dict(model=args.model, model_content=fingerprint(args.model), device=args.device, dtype=args.dtype,
                    repeats=args.repeats, process=case_process(args.device))
        kept = [r for r in _earlier(path) if isinstance(r, dict) and "case" in r
                and all(r.get(k) == v for k, v in same.items())]  # other settings, or an older layout: measured anew
        records = []
        start = time.perf_counter()
        for case in tqdm(cases(args), desc="bench"):
            known = [] if args.fresh else [r for r in kept if r["case"] == case]
            kept = [r for r in kept if r["case"] != case]  # measured anew (or reused): one record per case
            record = known[0] if known else dict(run_in_fresh_process(
                "stable_diffusion.bench", "--model", args.model, "--worker", json.dumps(case), "--device",
                args.device, "--dtype", args.dtype, "--repeats", args.repeats, device=args.device, preload=PRELOAD),
                model_content=same["model_content"], process=same["process"], machine_load=load)
            records.append(record)
            everything = in_order(records + [r for r in kept if r not in records])
            files.write_json(path, everything)
            files.write_text(args.out / f"{stem}.md", markdown(everything))
    print(markdown(everything))
    print(f"wrote {stem}.md and {stem}.json to {args.out}/ ({time.perf_counter() - start:.0f} s)")
    return everything


if __name__ == "__main__":
    main()
