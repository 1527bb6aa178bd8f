"""One command for a machine with CUDA: the library's gradients on the device, one dL/dx_T at full
size on SD 1.5's architecture, and the two benches, written under --out.

    make gpu-check                                    # = python -m stable_diffusion.gpu_check --out results/gpu
    python -m stable_diffusion.gpu_check --device cpu --quick --out /tmp/check   # the same route on a CPU

Parts, each run as its own process and recorded as it finishes (a rerun skips the finished ones):

* ``gradients``: ``pytest tests/test_cuda.py`` on the device: every gradient strategy against the
  closed forms and Checkpoint against Backprop, in float32 (the CPU's copies of those tests run in
  ``make test``).
* ``sd15``: one ``dL/dx_T`` at 512x512 on SD 1.5's architecture with random weights
  (``--model sd15-random``; ``tiny`` with ``--quick``), 10 steps, Checkpoint and AdjointDEIS-1, with
  every memory saving that keeps the gradient exact, per ``--dtypes``: the peak allocated above the
  loaded model, the peak reserved in all, and seconds (``stable_diffusion.bench``).
* ``toy-bench``: ``python -m toy.bench --quick`` on the device.
* ``tiny-bench``: ``python -m stable_diffusion.bench --model tiny`` on the device.

Writes ``gpu_check.json`` (every part's record, the device's name, torch's version) and
``gpu_check.md``; the parts' own files go to subfolders. Meant to finish within 10 minutes on a
current data-centre GPU (not yet measured on one: no GPU has been lent to this project so far).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from adjointdpm.tools import cli, files
from adjointdpm.tools.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]
DTYPES = ("float32", "float16", "bfloat16")
SD15 = dict(resolution=512, steps=10, gradients=("checkpoint", "adjointdeis"), save_memory="all")


def device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return platform.processor() or platform.machine() or "cpu"


def commands(device: str, out: Path, quick: bool, dtypes) -> dict[str, list[list[str]]]:
    """Each part's commands (argv lists, run from the repository's root)."""
    py = [sys.executable, "-m"]
    sd = ["--model", "tiny"] if quick else ["--model", "sd15-random", "--resolution", str(SD15["resolution"])]
    sd15 = [py + ["stable_diffusion.bench", *sd, "--steps", str(SD15["steps"]), "--gradients", *SD15["gradients"],
                  "--save-memory", SD15["save_memory"], "--dtype", dtype, "--device", device, "--repeats", "1",
                  "--out", str(out / f"sd15_{dtype}")] for dtype in dtypes]
    return {
        "gradients": [py + ["pytest", "-p", "no:cacheprovider", "-q", str(ROOT / "tests" / "test_cuda.py"),
                            "-k", torch.device(device).type, "--junitxml", str(out / "gradients.xml")]],
        "sd15": sd15,
        "toy-bench": [py + ["toy.bench", "--quick", "--device", device, "--out", str(out / "toy")]],
        "tiny-bench": [py + ["stable_diffusion.bench", "--model", "tiny", "--steps", "10", "20", "--device", device,
                             "--repeats", "1", "--out", str(out / "tiny")]],
    }


def _junit(path: Path) -> dict:
    """Passed, failed and skipped counts from pytest's junit XML."""
    import xml.etree.ElementTree as ET
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    total, failed = int(suite.get("tests")), int(suite.get("failures")) + int(suite.get("errors"))
    skipped = int(suite.get("skipped"))
    return {"passed": total - failed - skipped, "failed": failed, "skipped": skipped}


def run_part(name: str, argvs: list[list[str]], out: Path) -> dict:
    """Run one part's commands; its record: exit statuses, seconds, and what it measured."""
    start, statuses, tails = time.perf_counter(), [], []
    for argv in argvs:
        proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        statuses.append(proc.returncode)
        if proc.returncode:
            tails.append((proc.stderr or proc.stdout).strip().splitlines()[-1:])
    record = {"commands": [" ".join(a[1:]) for a in argvs], "status": statuses,
              "ok": not any(statuses), "seconds": time.perf_counter() - start, "errors": tails}
    if name == "gradients" and (out / "gradients.xml").exists():
        record.update(_junit(out / "gradients.xml"))
        record["ok"] = record["ok"] and record["passed"] > 0 and record["skipped"] == 0
    if name == "sd15":
        record["rows"] = [r for path in sorted(out.glob("sd15_*/bench*.json")) for r in json.loads(path.read_text())]
    return record


def markdown(report: dict) -> str:
    lines = [f"# GPU check on {report['device_name']} ({report['device']})", "",
             f"torch {report['torch']} (built for CUDA {report['cuda'] or '-'}), Python {report['python']}; "
             f"{'quick sizes (the tiny model)' if report['quick'] else 'full sizes'}.", ""]
    parts = report["parts"]
    def detail(p):
        counts = [f"{p['passed']} passed, {p['failed']} failed, {p['skipped']} skipped"] if "passed" in p else []
        return "; ".join(counts + [" ".join(e) for e in p["errors"] if e])
    table = [[name, "ok" if p["ok"] else "FAILED", f"{p['seconds']:.0f}", detail(p)] for name, p in parts.items()]
    lines.append(markdown_table(["part", "result", "seconds", "detail"], table))
    rows = parts.get("sd15", {}).get("rows", [])
    if rows:
        lines += ["", "One dL/dx_T (batch 1, guidance 7.5, loss on the decoded image) with every exact memory saving:",
                  ""]
        lines.append(markdown_table(
            ["model", "resolution", "dtype", "strategy", "steps",
             f"peak above set-up GiB ({'CUDA allocated' if report['device'].startswith('cuda') else 'CPU resident'})",
             "set-up GiB",
             "peak reserved in all GiB", "seconds"],
            [[r["model"], r["resolution"], r["dtype"], r["strategy"], r["steps"], f"{r['peak_gib']:.3g}",
              f"{r['setup_gib']:.3g}", f"{r['reserved_gib']:.3g}" if "reserved_gib" in r else "-",
              f"{r['seconds']:.3g}" if r.get("seconds") is not None else "-"] for r in rows]))
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = cli.Parser(prog="python -m stable_diffusion.gpu_check", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=cli.device, default="cuda", help="the device to check (default cuda; it "
                        "must exist here)")
    parser.add_argument("--out", type=cli.folder, default=Path("results/gpu"), help="results folder (default results/gpu)")
    parser.add_argument("--quick", action="store_true", help="the tiny model in place of SD 1.5 (minutes on a CPU)")
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES),
                        help="dtypes of the SD 1.5 gradient (default all three)")
    parser.add_argument("--parts", nargs="+", choices=["gradients", "sd15", "toy-bench", "tiny-bench"],
                        help="only these parts (default all)")
    args = parser.parse_args(argv)
    device = str(args.device)
    with cli.one_line_errors(parser, resumes=True), files.exclusive(args.out, ".gpu_check.lock"):
        path = args.out / "gpu_check.json"
        settings = {"device": device, "quick": args.quick, "dtypes": args.dtypes}
        report = json.loads(path.read_text()) if path.exists() else {}
        if {k: report.get(k) for k in settings} != settings:  # another check's record: started over
            report = dict(settings, parts={})
        report.update(device_name=device_name(device), torch=torch.__version__, cuda=torch.version.cuda,
                      python=platform.python_version())
        todo = commands(device, args.out, args.quick, args.dtypes)
        for name in args.parts or list(todo):
            if report["parts"].get(name, {}).get("ok"):
                continue  # finished by an earlier run
            print(f"{name}: {' ; '.join(' '.join(a[2:]) for a in todo[name])}", flush=True)
            report["parts"][name] = run_part(name, todo[name], args.out)
            files.write_json(path, report, significant=6)
            files.write_text(args.out / "gpu_check.md", markdown(report))
    print(markdown(report))
    print(f"wrote gpu_check.md and gpu_check.json to {args.out}/")
    if not all(p["ok"] for p in report["parts"].values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
