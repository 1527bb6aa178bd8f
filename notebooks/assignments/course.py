"""Build and grade the course assignments with otter-grader (no Docker, no Jupyter server).

    python notebooks/assignments/course.py build [--out dist/assignments]
    python notebooks/assignments/course.py grade SUBMISSIONS [--built dist/assignments] [--out grades]

``build`` turns each source ``a*_*.py`` here (jupytext percent; the paired ``.ipynb`` is
for editing in Jupyter) into ``<out>/<name>/student/<name>.ipynb`` (to hand out),
``<out>/<name>/autograder/<name>.ipynb`` (the solutions: keep it) and the autograder zip,
with ``otter assign``. It converts from the ``.py``, so no executed output of the
solutions can reach the student version.

``grade`` takes a folder ``SUBMISSIONS/<student>/<name>.ipynb`` and grades every notebook
with otter's containerless runner (``otter run``'s API), then writes ``grades.csv`` (one
row per student, assignment and question: points and possible) and ``grades.md``.
"""
from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sources() -> list[Path]:
    return sorted(HERE.glob("a[0-9]_*.py"))


def build(out: Path) -> dict[str, Path]:
    """Run ``otter assign`` on each source; returns ``{name: <out>/<name>}``."""
    import jupytext
    built = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources():
            master = Path(tmp) / f"{src.stem}.ipynb"
            jupytext.write(jupytext.read(src), master)  # no outputs: nothing executed leaks
            dest = out / src.stem
            proc = subprocess.run([sys.executable, "-m", "otter", "assign", "--no-pdfs", str(master), str(dest)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"otter assign failed for {src.name}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            built[src.stem] = dest
    return built


def autograder_zip(built: Path, name: str) -> Path:
    zips = sorted((built / name / "autograder").glob("*-autograder_*.zip"))
    if not zips:
        raise ValueError(f"no autograder zip for {name} under {built}: run `course.py build` first")
    return zips[-1]


def grade_notebook(notebook: Path, built: Path) -> dict[str, tuple[float, float]]:
    """``{question: (points, possible)}`` for one submission, graded by otter."""
    import otter.api
    results = otter.api.grade_submission(str(notebook), str(autograder_zip(built, notebook.stem)), quiet=True)
    return {q: (float(r.score), float(r.possible)) for q, r in sorted(results.results.items())}


def grade(submissions: Path, built: Path, out: Path) -> list[dict]:
    if not submissions.is_dir():
        raise ValueError(f"submissions folder {submissions} does not exist")
    names = {src.stem for src in sources()}
    rows = []
    for student in sorted(p for p in submissions.iterdir() if p.is_dir()):
        for notebook in sorted(student.glob("*.ipynb")):
            if notebook.stem not in names:
                print(f"skipping {notebook}: not one of {sorted(names)}", file=sys.stderr)
                continue
            for question, (points, possible) in grade_notebook(notebook, built).items():
                rows.append({"student": student.name, "assignment": notebook.stem, "question": question,
                             "points": points, "possible": possible})
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "grades.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["student", "assignment", "question", "points", "possible"])
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| student | assignment | question | points | possible |", "|---|---|---|---|---|"]
    lines += [f"| {r['student']} | {r['assignment']} | {r['question']} | {r['points']:g} | {r['possible']:g} |"
              for r in rows]
    (out / "grades.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student and autograder versions of every assignment")
    b.add_argument("--out", type=Path, default=Path("dist/assignments"))
    g = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/<assignment>.ipynb into one table")
    g.add_argument("submissions", type=Path)
    g.add_argument("--built", type=Path, default=Path("dist/assignments"), help="the folder `build` wrote")
    g.add_argument("--out", type=Path, default=Path("grades"), help="where grades.csv and grades.md go")
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            for name, path in build(args.out).items():
                print(f"{name}: hand out {path / 'student' / (name + '.ipynb')}; keep {path / 'autograder'}")
        else:
            rows = grade(args.submissions, args.built, args.out)
            print((args.out / "grades.md").read_text())
            print(f"{len(rows)} rows written to {args.out / 'grades.csv'}")
    except ValueError as err:
        raise SystemExit(str(err)) from None


if __name__ == "__main__":
    main()
