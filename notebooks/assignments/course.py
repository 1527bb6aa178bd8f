"""Build, hand out and grade the course assignments: otter-grader builds, a sandbox runs, this process judges.

    python notebooks/assignments/course.py build [--out dist/assignments]
    python notebooks/assignments/course.py grade SUBMISSIONS [--built dist/assignments] [--out grades]
                                                 [--timeout 300] [--jobs 2] [--memory 4] [--output-limit 10]
                                                 [--max-notebook 20] [--no-sandbox]
    python notebooks/assignments/course.py calibrate [--built dist/assignments]

``build`` turns each source ``a*_*.py`` here (jupytext percent) into, under ``--out``:
  <name>/student/      the notebook to hand out (no solutions, no hidden tests)
  <name>/autograder/   the solution and its outputs on the hidden tests (the references): keep them
  <name>/questions.json  every question's points, hand-graded ones marked
  grader/              what the sandbox runs: runner.py, forbid.py, hidden/ and the hand-out's library
  handout/             what a student receives: the notebooks, a wheel of the library and the
                       toy scale only (no solutions, no assignment tests), INSTRUCTIONS.md
  solutions/           the solution notebooks (public tests only), executed, for after the deadline
It converts from the ``.py``, so no executed output of the solutions reaches a student. It replaces
the files an earlier build wrote (``.course-build.json``) and refuses a folder holding any other.

``grade`` takes ``SUBMISSIONS/<student>/<name>.ipynb`` and runs every (student, assignment) pair in the
sandbox (``sandbox.py``), ``--jobs`` at a time, under the limits; the hidden tests' probes
(``hidden/<name>.py``) call the notebook's functions there and hand back their outputs as data,
which this process compares with the references. A file named close to the assignment
(``a3_audit (1).ipynb``, ``A3-audit.ipynb``) is graded with a note; a missing one gets a row of
zeros. Each result is appended to ``OUT/results.jsonl`` as it finishes, so an interrupted run
resumes where it stopped (a changed notebook or grader is graded again, so is any result but ``ok``,
``not a notebook`` and a timeout under a limit at least as long; ``--regrade`` grades every notebook
again). Paths may be relative to where the command runs. It writes, under ``--out``, holding its lock:
  grades.csv     one row per student and assignment: status (ok, timeout, output limit, too large,
                 not a notebook, crashed, missing) and reason, auto points, hand-graded points (blank,
                 with their maximum: fill them in and run ``grade`` again to update the totals)
  questions.csv  one row per student, assignment and question
  canvas.csv     Canvas's gradebook import format (one column per assignment)
  feedback/<student>.md  which tests failed and why, in words, without reference values
  grades.md      the table, readable
  answers.md     the hand-graded questions' written answers, one question across the class at a time

``calibrate`` prints, for each hidden test with a pass mark, the solution's value on the hidden inputs.
"""
from __future__ import annotations

import argparse
import builtins
import concurrent.futures
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from adjointdpm.tools import files
from adjointdpm.tools.cli import one_line_errors

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sandbox  # noqa: E402  (beside this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def sources() -> list[Path]:
    return sorted(HERE.glob("a[0-9]_*.py"))


# ---------------------------------------------------------------------------------------------
# build

def questions_of(notebook) -> dict[str, dict]:
    """``{question: {"points", "manual"}}`` from the ``BEGIN QUESTION`` cells of an otter master."""
    import yaml
    out = {}
    for cell in notebook.cells:
        if cell.cell_type == "raw" and cell.source.lstrip().startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source.split("\n", 1)[1])
            out[config["name"]] = {"points": float(config["points"]), "manual": bool(config.get("manual", False))}
    return out


GRADER = ("runner.py", "forbid.py", "hidden/__init__.py")  # with hidden/<name>.py: what the sandbox runs
MANIFEST = ".course-build.json"  # every file `build` wrote, so that a rebuild removes those and nothing else


def _owned(out: Path) -> list[Path]:
    """The files under ``out`` that an earlier build wrote (its manifest), after checking that nothing else is
    there: a ValueError naming what the instructor keeps in ``out``, which `build` never deletes."""
    if not out.exists():
        return []
    if not out.is_dir():
        raise ValueError(f"{out} is a file, not a folder to build the assignments in")
    manifest = out / MANIFEST
    try:
        owned = {out / p for p in json.loads(manifest.read_text())} if manifest.exists() else set()
    except (OSError, ValueError, TypeError):
        raise ValueError(f"{manifest} is not the list of files a build wrote: move it away, or build into another folder") from None
    foreign = sorted(p for p in out.rglob("*") if not p.is_dir() and p not in owned and p != manifest)
    if foreign:
        listed = ", ".join(str(p.relative_to(out)) for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ValueError(f"{out} holds files that no build wrote ({listed}): build into an empty or new folder, or "
                         "move them away (a build replaces only its own files)")
    return sorted(owned)


def build(out: Path) -> dict[str, Path]:
    """Run ``otter assign`` on each source, write the hand-outs, the grader's copy of the hidden tests and the
    solution's outputs on them (the references); returns ``{name: <out>/<name>}``. Replaces what an earlier
    build wrote there and refuses a folder holding anything else."""
    out = Path(out).resolve()  # the runner starts in a scratch folder, where a relative path names nothing
    for path in _owned(out):
        path.unlink(missing_ok=True)
    for folder in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True) if out.exists() else []:
        if not any(folder.iterdir()):
            folder.rmdir()
    built = {}
    try:
        _build_into(out, built)
    finally:  # a failed build's files are its own too: the next build replaces them
        files.write_text(out / MANIFEST, json.dumps(sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                                           if p.is_file() and p.name != MANIFEST), indent=0))
    return built


def _build_into(out: Path, built: dict) -> None:
    import jupytext
    with tempfile.TemporaryDirectory() as tmp:
        for src in sources():
            master = Path(tmp) / f"{src.stem}.ipynb"
            notebook = jupytext.read(src)
            jupytext.write(notebook, master)  # no outputs: nothing executed leaks
            dest = out / src.stem
            proc = subprocess.run([sys.executable, "-m", "otter", "assign", "--no-pdfs", str(master), str(dest)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"otter assign failed for {src.name}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
            for stale in (dest / "autograder").glob("*-autograder_*.zip"):
                stale.unlink()  # otter's own grading bundle: the hidden tests are not in it, and nothing reads it
            (dest / "questions.json").write_text(json.dumps(questions_of(notebook), indent=1))
            built[src.stem] = dest
    write_handout(out, built)
    write_grader(out, built)
    write_references(out, built)
    write_solutions(out, built)
    write_key(out, built)


def write_grader(out: Path, built: dict[str, Path]) -> Path:
    """``out/grader``: what the sandbox runs and sees of the grader (the runner, the refusals, the hidden probes)
    and ``library``, the hand-out wheel's packages unpacked, which the sandbox imports in place of the repository's."""
    import zipfile
    grader = out / "grader"
    for rel in (*GRADER, *(f"hidden/{name}.py" for name in built)):
        (grader / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(HERE / rel, grader / rel)
    with zipfile.ZipFile(next((out / "handout").glob("adjointdpm_course-*.whl"))) as wheel:
        wheel.extractall(grader / "library")
    return grader


def write_references(out: Path, built: dict[str, Path]) -> None:
    """``<name>/autograder/outputs.*``: the solution notebook run through the same runner as a student's (with the
    ``expect`` values), in a plain process (it is the instructor's), then held to its own checks: a solution that
    fails one stops the build, naming it."""
    for name, dest in built.items():
        folder = dest / "autograder"
        ran = run_notebook(folder / f"{name}.ipynb", name, out, folder, sandbox.Limits(timeout=600), None, expect=True)
        reference = read_outputs(folder)
        if reference is None:
            raise RuntimeError(f"the solution of {name} did not run to its hidden tests:\n"
                               f"{ran.output.decode(errors='replace')[-2000:]}")
        setup = setup_of(name)
        for test in hidden_tests(name):
            entry = reference.get(test.name)
            if entry is None or entry["status"] != "ok":
                why = "it wrote no outputs" if entry is None else f"it {entry['status']} ({entry['error']})"
                raise RuntimeError(f"the solution of {name} does not pass its own hidden test {test.name}: {why}")
            if not _passes(test, entry["values"], {**entry["values"], **entry["expect"]}, setup):
                mark = ""
                if test.measure is not None:
                    value, threshold, what = test.measure(entry["values"], setup)
                    mark = f": {what} is {value:.3f}, under the pass mark {threshold:.3f}; lower the mark in hidden/{name}.py"
                raise RuntimeError(f"the solution of {name} fails its own hidden test {test.name}{mark}")


def hand_graded(notebook) -> dict[str, dict]:
    """``{question: {"points", "prompt", "answer"}}`` for the hand-graded questions of an otter master
    (``answer``: its solution cells, the model answer and rubric) or of a student's notebook
    (``answer``: the markdown cells written under the prompt)."""
    out, current, state = {}, None, None
    for cell in notebook.cells:
        text = cell.source.strip()
        if cell.cell_type == "raw" and text.startswith("# BEGIN QUESTION"):
            import yaml
            config = yaml.safe_load(text.split("\n", 1)[1])
            current = config["name"] if config.get("manual") else None
            if current:
                out[current] = {"points": float(config["points"]), "prompt": "", "answer": []}
            state = "prompt"
        elif current is None:
            continue
        elif cell.cell_type == "raw" and text.startswith("# END QUESTION"):
            current = None
        elif cell.cell_type == "raw":
            state = "answer"  # BEGIN/END SOLUTION delimit the model answer in the master
        elif cell.cell_type == "markdown" and state == "prompt" and not out[current]["prompt"]:
            out[current]["prompt"], state = text, "answer"
        elif cell.cell_type == "markdown" and state == "answer":
            out[current]["answer"].append(text)
    return {q: {**v, "answer": "\n\n".join(v["answer"])} for q, v in out.items()}


def written_answers(path: Path, name: str, prompts: dict[str, str]) -> dict[str, str]:
    """What a student wrote under each hand-graded question's prompt (the markdown cells after the
    prompt cell, up to the next code cell or heading); ``""`` where nothing or the placeholder."""
    import nbformat
    try:
        cells = nbformat.read(path, as_version=4).cells
    except Exception:  # not a notebook: nothing to gather (grades.csv says why)
        return {}
    answers = {}
    for q, prompt in prompts.items():
        # otter prefixes the prompt cell with "<!-- BEGIN QUESTION -->" and closes the question with a cell of its own
        at = next((i for i, c in enumerate(cells) if c.cell_type == "markdown" and prompt in c.source), None)
        written = []
        for cell in cells[at + 1:] if at is not None else []:
            if cell.cell_type != "markdown" or cell.source.lstrip().startswith("#") or "<!-- END QUESTION" in cell.source:
                break
            if cell.source.strip() and PLACEHOLDER not in cell.source:
                written.append(cell.source.strip())
        answers[q] = "\n\n".join(written)
    return answers


PLACEHOLDER = "_Type your answer here, replacing this text._"  # otter's answer cell in the student version


def write_key(out: Path, built: dict[str, Path]) -> Path:
    """``out/instructor_key.md``: every hand-graded question with its model answer and rubric (the
    solution cells of the sources), for the instructor only."""
    import jupytext
    lines = ["# Instructor's key: the hand-graded questions", "",
             "Model answers and rubrics, from the assignment sources' solution cells. Grade each answer in "
             "grades/answers.md and type the points into grades/grades.csv's `manual_points`.", ""]
    for name in built:
        for q, item in hand_graded(jupytext.read(HERE / f"{name}.py")).items():
            lines += [f"## {name}, {q} ({item['points']:g} point{'s' if item['points'] != 1 else ''})", "",
                      item["prompt"], "", item["answer"], ""]
    path = out / "instructor_key.md"
    path.write_text("\n".join(lines))
    return path


def write_handout(out: Path, built: dict[str, Path]) -> Path:
    """``out/handout``: the student notebooks, a wheel of ``adjointdpm`` and ``toy`` only, and
    the instructions. The wheel is built from a copy of those two packages, so neither the
    assignment sources (with their solutions) nor their tests can be in it."""
    handout = out / "handout"
    handout.mkdir(parents=True, exist_ok=True)
    for name, dest in built.items():
        shutil.copytree(dest / "student", handout / name)
    wheel = student_wheel(handout)
    deps = " ".join(f"'{d}'" for d in pins("torch"))
    (handout / "INSTRUCTIONS.md").write_text(f"""# Course assignments: instructions

Each assignment builds on a tutorial: work through it first (the course site your instructor
publishes with `make site`, or the project's `notebooks/`): assignment 1 on notebook 01, sections
1-5; assignment 2 on notebook 01, sections 6-9, and notebook 02; assignment 3 on notebook 03.

1. Install the library (Python 3.10 or later), in a fresh virtual environment. A CPU is all the
   assignments need; install PyTorch's CPU build first (a few hundred MB instead of several GB of
   CUDA libraries), then the wheel beside these instructions:

       python -m venv .venv && . .venv/bin/activate
       pip install {deps} --index-url https://download.pytorch.org/whl/cpu
       pip install {wheel.name} jupyterlab

   (With a GPU, or to let pip choose, leave out `--index-url ...`.)

2. Open each assignment folder's notebook in Jupyter ({", ".join(built)}), run every cell in
   order and answer the questions where the notebook says so. `grader.check("q1")` runs the
   visible tests of a question; hidden tests grade it afterwards with other inputs, comparing
   what your functions return with the solution's. Each question says what it may not use from
   the library: while its hidden tests run those pieces raise, so a solution that calls them
   scores nothing on that question.
3. Questions marked "graded by hand" are read by your instructor: write in the markdown cell
   under the question, replacing its placeholder text.
4. Submit each notebook under its own name, unchanged: {", ".join(f"`{n}.ipynb`" for n in built)}.
   Every notebook is run from top to bottom, in a sandbox without network or files beyond the
   library, with a time limit of a few minutes and a cap on what it prints; a notebook that does
   not finish in time scores zero, so remove long experiments before you submit.
5. What each assignment builds on: {", ".join(f"{n} -- {READING[n]}" for n in built if n in READING)}. The
   tutorials are in the course repository's `notebooks/` (and on the course site). The paper: Pan et al.,
   "AdjointDPM: Adjoint Sensitivity Method for Gradient Backpropagation of Diffusion Probabilistic
   Models", ICLR 2024, https://arxiv.org/abs/2307.10711; the AdjointDEIS solvers: Blasingame and Liu,
   "AdjointDEIS: Efficient Gradients for Diffusion Models", NeurIPS 2024, https://arxiv.org/abs/2405.15020.
""")
    return handout


PYPROJECT = ROOT / "pyproject.toml"  # the one home of every pinned version (the course is tested with them)


def pins(*names: str) -> list[str]:
    """``name==version`` for each of ``names``, as the repository's pyproject.toml pins it (its
    dependencies or an optional group); a ValueError naming the file if it or a pin is missing."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: its backport
        import tomli as tomllib
    try:
        project = tomllib.loads(PYPROJECT.read_text())["project"]
    except (OSError, KeyError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"cannot read the pinned versions from {PYPROJECT} ({type(err).__name__}: {err}); "
                         "course.py runs from the repository, beside its pyproject.toml") from None
    found = {}
    for req in [*project.get("dependencies", []), *sum(project.get("optional-dependencies", {}).values(), [])]:
        name, sep, version = req.split(";")[0].partition("==")
        if sep:
            found[name.strip().lower()] = f"{name.strip()}=={version.strip()}"
    missing = [n for n in names if n.lower() not in found]
    if missing:
        raise ValueError(f"{PYPROJECT} pins no version (name==version) of {', '.join(missing)}")
    return [found[n.lower()] for n in names]


READING = {  # the tutorial sections each assignment builds on
    "a1_adjoint_step": "notebook 01, sections 3 and 5 (the adjoint ODE, eq. 11; a gradient check)",
    "a2_reparameterization": "notebook 01, sections 4 and 6, and notebook 02, sections 2 and 4 (eq. 10; Table 1)",
    "a3_audit": "notebook 01, sections 7 and 8, and notebook 03, section 2 (an application; choosing a strategy)",
}


def student_wheel(folder: Path) -> Path:
    """A wheel of the library and the toy scale (nothing else), written to ``folder``."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "shared" / "adjointdpm", tmp / "adjointdpm", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copytree(ROOT / "toy", tmp / "toy", ignore=shutil.ignore_patterns("__pycache__"))
        torch_pin, torchsde_pin, otter_pin = pins("torch", "torchsde", "otter-grader")
        deps = [torch_pin, "numpy", "scipy", "matplotlib", "tqdm", "torchdiffeq", torchsde_pin, "safetensors", otter_pin]
        (tmp / "pyproject.toml").write_text(f"""[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "adjointdpm-course"
version = "0.1.0"
description = "adjointdpm and its toy scale, for the course assignments"
requires-python = ">=3.10"
dependencies = {json.dumps(deps)}

[tool.setuptools]
packages = ["adjointdpm", "adjointdpm.tools", "toy"]
""")
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet",
                               "--wheel-dir", str(folder), str(tmp)], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"building the student wheel failed:\n{proc.stderr[-2000:]}")
    return next(folder.glob("adjointdpm_course-*.whl"))


def write_solutions(out: Path, built: dict[str, Path]) -> Path:
    """``out/solutions``: the solution notebooks (their public tests only: the hidden ones live in ``hidden/``),
    executed, so that they show what a finished notebook prints; a solution that fails to run stops the build."""
    import nbformat
    from nbconvert.preprocessors import ExecutePreprocessor
    solutions = out / "solutions"
    solutions.mkdir(parents=True, exist_ok=True)
    for name, dest in built.items():
        nb = nbformat.read(dest / "autograder" / f"{name}.ipynb", as_version=4)
        with tempfile.TemporaryDirectory() as tmp:
            nbformat.write(nb, Path(tmp) / f"{name}.ipynb")  # otter's Notebook opens the file it runs in
            ExecutePreprocessor(timeout=600).preprocess(nb, {"metadata": {"path": tmp}})
        nbformat.write(nb, solutions / f"{name}.ipynb")
    return solutions


# ---------------------------------------------------------------------------------------------
# finding the submissions

@dataclass
class Submission:
    student: str
    assignment: str
    path: Path | None
    note: str = ""


def _normal(name: str) -> str:
    return re.sub(r"[\s\-.]+", "_", name.lower())


def find_submissions(submissions: Path, names: list[str]) -> tuple[list[Submission], list[str]]:
    """One :class:`Submission` per student folder and assignment (``path=None``: nothing to
    grade), and the files that match no assignment. A file matches an assignment by its exact
    name or, failing that, by starting with the assignment's number (``a3``): the newest such
    notebook is graded (or the newest such file, which may turn out not to be a notebook)."""
    found, matched = [], set()
    for student in sorted(p for p in submissions.iterdir() if p.is_dir()):
        files = sorted(p for p in student.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts)
        for name in names:
            exact = student / f"{name}.ipynb"
            close = [p for p in files if re.match(rf"{name.split('_')[0]}(?!\d)", _normal(p.name))]
            matched.update(close)
            if exact.is_file():
                found.append(Submission(student.name, name, exact))
            elif close:
                path = max(close, key=lambda p: (p.suffix.lower() == ".ipynb", p.stat().st_mtime))
                found.append(Submission(student.name, name, path,
                                        f"graded {path.relative_to(student)}, expected {name}.ipynb"))
            else:
                found.append(Submission(student.name, name, None, f"no {name}.ipynb in {student.name}/"))
    unmatched = [str(p.relative_to(submissions)) for p in sorted(submissions.rglob("*"))
                 if p.is_file() and p not in matched and ".ipynb_checkpoints" not in p.parts]
    return found, unmatched


# ---------------------------------------------------------------------------------------------
# grading one notebook: its code in the sandbox, the verdict here

def hidden_tests(name: str) -> tuple:
    """The hidden tests of assignment ``name`` (``hidden/<name>.py`` beside this file)."""
    import importlib
    return importlib.import_module(f"hidden.{name}").TESTS


def grader_key(built: Path, name: str) -> str:
    """What a result was graded against: the grader's files and the references in the build."""
    digest = hashlib.sha256()
    for path in sorted([*(built / "grader").rglob("*.py"), *(built / name / "autograder").glob("outputs.*"),
                        built / name / "questions.json"]):
        digest.update(path.relative_to(built).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


MAX_REPORT = 1 << 20  # outputs.json: a report of a few kilobytes; more is not the runner's


def read_outputs(folder: Path) -> dict | None:
    """What the runner in the sandbox wrote, as ``{test: {"status", "error", "values", "tensors"}}``, read as data
    only (JSON and safetensors: nothing in them can run); ``None`` if it wrote nothing readable."""
    import safetensors.torch
    try:
        if (folder / "outputs.json").stat().st_size > MAX_REPORT:
            return None
        report = json.loads((folder / "outputs.json").read_text())
        tensors = safetensors.torch.load_file(str(folder / "outputs.safetensors"))
        tests = report["tests"]
        if not isinstance(tests, dict):
            return None
    except (OSError, ValueError, KeyError, TypeError, safetensors.SafetensorError):
        return None
    out = {}
    for test, entry in tests.items():
        if not isinstance(entry, dict):
            continue
        values = entry.get("values") if isinstance(entry.get("values"), dict) else {}
        mine = {k[len(test) + 1:]: v for k, v in tensors.items() if k.startswith(f"{test}/")}
        expect = entry.get("expect") if isinstance(entry.get("expect"), dict) else {}
        expect |= {k[len(test) + 8:]: v for k, v in tensors.items() if k.startswith(f"expect/{test}/")}
        out[test] = {"status": str(entry.get("status", "")), "error": str(entry.get("error", ""))[:200],
                     "values": {**values, **mine}, "expect": expect}
    return out


def setup_of(name: str):
    """``setup()`` for the checks: the namespace of assignment ``name``'s set-up cells (the code before its first
    question), run here once from the source, never from a notebook."""
    namespace = {}

    def setup() -> dict:
        if not namespace:
            import jupytext
            import torch
            cells = []
            for cell in jupytext.read(HERE / f"{name}.py").cells:
                if cell.cell_type == "raw" and cell.source.lstrip().startswith("# BEGIN QUESTION"):
                    break
                if cell.cell_type == "code":
                    cells.append(cell.source)
            dtype = torch.get_default_dtype()
            try:
                with contextlib.redirect_stdout(io.StringIO()):  # what the set-up prints is for its notebook
                    exec(compile("\n\n".join(cells), f"<set-up of {name}>", "exec"), namespace)
            finally:
                torch.set_default_dtype(dtype)  # a set-up may choose float64 for its own notebook
        return namespace
    return setup


def reason(test, entry: dict | None) -> str:
    """Why a hidden test failed, in words a student may read: its failure message and, when their code raised,
    the exception's type (Python's own, by name) or the library piece it refused. Never a value, never text
    the notebook chose."""
    if entry is None or entry["status"] == "ok":
        return test.failure_message
    if entry["status"] == "refused" and entry["error"] in test.forbid:
        return f"this question may not use the library's {entry['error']} (so this test fails)"
    error = entry["error"]
    named = error if error.isidentifier() and isinstance(getattr(builtins, error, None), type) and \
        issubclass(getattr(builtins, error), BaseException) else "an exception of its own type"
    return f"{test.failure_message} (your code raised {named})"


def verdict(built: Path, name: str, outputs: dict | None, setup) -> dict:
    """``{question: {points, possible, failed: [reasons]}}`` for the auto-graded questions of ``name``: each hidden
    test's check compares the notebook's outputs with the solution's (``<name>/autograder/outputs.*`` in the build), here; a
    question scores its points when every hidden test of it passes (all or nothing, as the sources say)."""
    reference = read_outputs(built / name / "autograder")
    if reference is None:
        raise ValueError(f"no readable reference for {name} under {built}: run `course.py build --out {built}` again")
    asked = json.loads((built / name / "questions.json").read_text())
    out = {q: {"points": 0.0, "possible": c["points"], "failed": []} for q, c in asked.items() if not c["manual"]}
    for test in hidden_tests(name):
        entry = (outputs or {}).get(test.name)
        want = {**reference[test.name]["values"], **reference[test.name]["expect"]}
        passed = entry is not None and entry["status"] == "ok" and _passes(test, entry["values"], want, setup)
        if not passed:
            out[test.question]["failed"].append(reason(test, entry))
    for q, item in out.items():
        item["points"] = 0.0 if item["failed"] else item["possible"]
    return out


def _passes(test, got: dict, want: dict, setup) -> bool:
    """The check's answer; a check that raises on a notebook's odd output has not passed it."""
    try:
        return bool(test.check(got, want, setup))
    except Exception:
        return False


def run_notebook(notebook: Path, name: str, built: Path, out: Path, limits, bwrap: str | None,
                 expect: bool = False) -> "sandbox.Ran":
    """The runner on ``notebook`` (named ``<name>.ipynb`` in its scratch folder, as otter's cell expects), in the
    sandbox when ``bwrap`` is given, else in a plain process (the build's run of the solution, or
    ``--no-sandbox``); its outputs go to ``out``."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        shutil.copy(notebook, scratch / f"{name}.ipynb")
        argv = [f"{name}.ipynb", name, "/out" if bwrap else str(out)] + (["--expect"] if expect else [])
        if bwrap:
            grader = {rel: built / "grader" / rel for rel in (*GRADER, f"hidden/{name}.py")}  # not the other assignments'
            command = sandbox.command(bwrap, library=built / "grader" / "library", grader=grader,
                                      scratch=scratch, out=out, argv=[sys.executable, "/grader/runner.py", *argv])
            return sandbox.run(command, limits)
        env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", TQDM_DISABLE="1")
        return sandbox.run([sys.executable, str(built / "grader" / "runner.py"), *argv], limits, cwd=scratch, env=env)
@dataclass
class Result:
    student: str
    assignment: str
    status: str
    reason: str = ""
    file: str = ""
    sha256: str = ""
    autograder: str = ""  # grader_key: the grader's files and the references it was graded against
    questions: dict = field(default_factory=dict)  # {question: {points, possible, failed}} of the auto-graded
    seconds: float = 0.0
    limit: float = 0.0  # the time limit it was graded under


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):  # a file of any size, a megabyte at a time
            digest.update(chunk)
    return digest.hexdigest()


def grade_submission(sub: Submission, built: Path, limits: "sandbox.Limits", bwrap: str | None) -> tuple[Result, dict | None]:
    """Run one submission in the sandbox (``bwrap``; ``None``: without one) under ``limits``; never raises for a
    bad submission (the status and reason say what went wrong). Returns the result, its questions still
    empty, and the outputs the notebook's functions gave, for :func:`verdict`."""
    import nbformat
    if sub.path is None:
        raise ValueError(f"{sub.student}: nothing to grade for {sub.assignment}")
    result = Result(sub.student, sub.assignment, "ok", sub.note, limit=limits.timeout)
    result.file, result.sha256, result.autograder = str(sub.path), _sha256(sub.path), grader_key(built, sub.assignment)

    def finish(status: str, reason: str):
        result.status, result.reason = status, "; ".join(r for r in (sub.note, reason) if r)
        return result, None
    size = sub.path.stat().st_size
    if size > limits.notebook_mib * 2 ** 20:
        return finish("too large", f"{sub.path.name} is {size / 2 ** 20:.1f} MiB, over the {limits.notebook_mib:g} MiB limit")
    try:
        nbformat.validate(nbformat.read(sub.path, as_version=4))
    except Exception as err:  # any way a file can fail to be a notebook
        first = (str(err).strip().splitlines() or [""])[0][:200]
        return finish("not a notebook", f"{sub.path.name}: {type(err).__name__}: {first}")
    with tempfile.TemporaryDirectory() as out:
        ran = run_notebook(sub.path, sub.assignment, built, Path(out), limits, bwrap)
        result.seconds = ran.seconds
        if ran.status == "timeout":
            return finish("timeout", f"did not finish within {limits.timeout:g} s")
        if ran.status == "output limit":
            return finish("output limit", f"printed more than {limits.output_mib:g} MiB")
        outputs = read_outputs(Path(out))
        if outputs is None:
            lines = [line for line in ran.output.decode(errors="replace").splitlines() if line.strip()]
            return finish("crashed", lines[-1][:300] if lines else f"exit status {ran.returncode}")
    return result, outputs


# ---------------------------------------------------------------------------------------------
# the gradebook

def read_results(path: Path) -> list[Result]:
    """The finished results. A line that is not one (cut off by an interrupted write, or garbage) is skipped and
    counted on stderr with the file's name: its notebook is graded again, as a corrupt shard is made again."""
    out, skipped = [], 0
    if path.exists():
        for line in path.read_bytes().decode(errors="replace").splitlines():
            try:
                out.append(Result(**json.loads(line)))
            except (json.JSONDecodeError, TypeError):
                skipped += bool(line.strip())
    if skipped:
        lines = "1 line that is not a grading result is" if skipped == 1 else f"{skipped} lines that are not grading results are"
        print(f"{path}: {lines} skipped; the notebooks they held are graded again", file=sys.stderr)
    return out


def _manual_points(path: Path) -> dict[tuple[str, str], str]:
    """Hand-graded points an instructor typed into an earlier ``grades.csv``."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {(_uncell(r["student"]), r["assignment"]): r.get("manual_points", "") for r in csv.DictReader(f)}


def _number(text: str, where: str = "") -> float:
    try:
        return float(text) if str(text).strip() else 0.0
    except ValueError:
        raise ValueError(f"grades.csv: manual_points {where}is {text!r}, not a number: type a number (or nothing) "
                         "and run the grading again") from None


def write_answers(results: list[Result], out: Path) -> Path:
    """``out/answers.md``: each hand-graded question once, then every student's written answer to it,
    so an instructor grades one question across the class in one file."""
    import jupytext
    lines = ["# Written answers to the hand-graded questions", "",
             "Model answers and rubrics: dist/assignments/instructor_key.md. Type the points into grades.csv's "
             "`manual_points` and run the grading again (nothing is regraded).", ""]
    for name in sorted({r.assignment for r in results}):
        questions = hand_graded(jupytext.read(HERE / f"{name}.py"))
        mine = sorted((r for r in results if r.assignment == name), key=lambda r: r.student)
        written = {r.student: written_answers(Path(r.file), name, {q: v["prompt"] for q, v in questions.items()})
                   if r.file else {} for r in mine}
        for q, item in questions.items():
            lines += [f"## {name}, {q} ({item['points']:g} point{'s' if item['points'] != 1 else ''})", "",
                      "> " + item["prompt"].replace("\n", "\n> "), ""]
            for r in mine:
                answer = written[r.student].get(q, "")
                lines += [f"### {r.student}", "", answer or f"_(no answer: {r.status})_", ""]
    return files.write_text(out / "answers.md", "\n".join(lines))


def write_gradebook(results: list[Result], built: Path, out: Path, unmatched: list[str] = ()) -> list[dict]:
    """Write grades.csv, questions.csv, canvas.csv, grades.md, answers.md and feedback/; returns grades.csv's
    rows."""
    out.mkdir(parents=True, exist_ok=True)
    manual_typed = _manual_points(out / "grades.csv")
    asked = {name: json.loads((built / name / "questions.json").read_text()) for name in {r.assignment for r in results}}
    rows, long = [], []
    for r in sorted(results, key=lambda r: (r.student, r.assignment)):
        questions = asked[r.assignment]
        auto = {q: c for q, c in questions.items() if not c["manual"]}
        manual_possible = sum(c["points"] for c in questions.values() if c["manual"])
        auto_points = sum(r.questions.get(q, {}).get("points", 0.0) for q in auto)
        manual = manual_typed.get((r.student, r.assignment), "")
        rows.append({"student": r.student, "assignment": r.assignment, "status": r.status, "reason": r.reason,
                     "auto_points": auto_points, "auto_possible": sum(c["points"] for c in auto.values()),
                     "manual_points": manual, "manual_possible": manual_possible,
                     "total": auto_points + _number(manual, f"of {r.student}, {r.assignment} "),
                     "total_possible": sum(c["points"] for c in questions.values())})
        for q, config in questions.items():
            got = r.questions.get(q, {})
            long.append({"student": r.student, "assignment": r.assignment, "question": q,
                         "kind": "hand-graded" if config["manual"] else "auto",
                         "points": "" if config["manual"] else got.get("points", 0.0), "possible": config["points"],
                         "status": r.status, "feedback": "; ".join(got.get("failed", []))})
    _write_csv(out / "grades.csv", rows)
    _write_csv(out / "questions.csv", long)
    _write_canvas(out / "canvas.csv", rows)
    _write_feedback(out / "feedback", results, long)
    write_answers(results, out)
    lines = ["| student | assignment | status | auto | hand-graded | total | reason |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['student']} | {r['assignment']} | {r['status']} | {r['auto_points']:g}/{r['auto_possible']:g} | "
              f"{r['manual_points'] or '-'}/{r['manual_possible']:g} | {r['total']:g}/{r['total_possible']:g} | "
              f"{r['reason']} |" for r in rows]
    if unmatched:
        lines += ["", "Files that match no assignment (not graded): " + ", ".join(unmatched)]
    files.write_text(out / "grades.md", "\n".join(lines) + "\n")
    return rows


def _cell(value):
    """A spreadsheet cell that is never a formula: text that a spreadsheet would evaluate (``=``, ``+``, ``-``,
    ``@`` first, or a tab or carriage return) gets a leading apostrophe, as OWASP advises for CSV exports."""
    return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _uncell(text: str) -> str:
    """The value :func:`_cell` wrote."""
    return text[1:] if text[:1] == "'" and text[1:2] in ("=", "+", "-", "@", "\t", "\r") else text


def _write_csv(path: Path, rows: list[dict]) -> None:
    if rows:
        with files.replacing(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)


def _write_canvas(path: Path, rows: list[dict]) -> None:
    """Canvas's gradebook import: Student, ID, SIS User ID, SIS Login ID, Section, then one
    column per assignment, and a "Points Possible" row. The student folder's name goes in
    "SIS Login ID" (Canvas matches on any one of the identifier columns)."""
    assignments = sorted({r["assignment"] for r in rows})
    students = sorted({r["student"] for r in rows})
    total = {(r["student"], r["assignment"]): r for r in rows}
    header = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section", *assignments]
    possible = {a: next(r["total_possible"] for r in rows if r["assignment"] == a) for a in assignments}
    with files.replacing(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerow(["    Points Possible", "", "", "", "", *(f"{possible[a]:g}" for a in assignments)])
        for s in students:
            writer.writerow(["", "", "", _cell(s), "", *(f"{total[(s, a)]['total']:g}" for a in assignments)])


def _write_feedback(folder: Path, results: list[Result], long: list[dict]) -> None:
    folder.mkdir(exist_ok=True)
    for student in sorted({r.student for r in results}):
        lines = [f"# Feedback for {student}", ""]
        for r in sorted((r for r in results if r.student == student), key=lambda r: r.assignment):
            # a crash's reason is the grading process's last error line: the instructor's (grades.csv), not advice
            reason = ("the run stopped before its tests (the notebook may have ended it, or run out of memory); "
                      "your instructor has its last line" if r.status == "crashed" else r.reason)
            lines += [f"## {r.assignment}", "", f"Status: {r.status}" + (f" ({reason})" if reason else ""), ""]
            for row in (x for x in long if x["student"] == student and x["assignment"] == r.assignment):
                if row["kind"] == "hand-graded":
                    lines.append(f"- {row['question']}: graded by hand (out of {row['possible']:g})")
                else:
                    verdict = f"{row['points']:g}/{row['possible']:g}"
                    lines.append(f"- {row['question']}: {verdict}" + (f". {row['feedback']}" if row["feedback"] else ""))
            lines.append("")
        files.write_text(folder / f"{student}.md", "\n".join(lines))


# ---------------------------------------------------------------------------------------------
# grade: the whole class

def _keeps(result: Result, timeout: float) -> bool:
    """Whether an earlier result stands for a rerun with this time limit (see :func:`grade`)."""
    return result.status in ("ok", "not a notebook") or (result.status == "timeout" and result.limit >= timeout)


def built_names(built: Path) -> list[str]:
    """The assignments built under ``built``, checked to be built with the grader beside this file; a ValueError
    naming the command to run when there are none, or when the build is older."""
    names = sorted(p.name for p in built.iterdir() if (p / "questions.json").is_file()) if built.is_dir() else []
    if not names:
        raise ValueError(f"no built assignments under {built}: run `course.py build --out {built}` first")
    _current(built, names)
    return names


def _current(built: Path, names: list[str]) -> None:
    """A ValueError if the build's copy of the grader differs from the hidden tests beside this file: the
    references were computed with the build's, and the checks here must be theirs."""
    for rel in (*GRADER, *(f"hidden/{name}.py" for name in names)):
        copy = built / "grader" / rel
        if not copy.is_file() or copy.read_bytes() != (HERE / rel).read_bytes():
            raise ValueError(f"{built} was built with another version of the grader ({rel} differs): run "
                             f"`course.py build --out {built}` again")


def grade(submissions: Path, built: Path, out: Path, *, limits: sandbox.Limits = sandbox.Limits(), jobs: int = 2,
          regrade: bool = False, progress: bool = True, sandboxed: bool = True) -> list[dict]:
    """Grade every (student, assignment) pair, resuming from ``out/results.jsonl``. A result for the same file and
    grader is kept when it says something about the notebook (``ok``, ``not a notebook``, or ``timeout`` under a
    limit at least as long as this one); any other is graded again (a crash may be the grader's own: its set-up,
    a full disk); ``regrade=True`` grades everything again. Each notebook runs in the sandbox
    (``sandboxed=False``: in a plain process, unprotected); the verdicts are computed here, and this process
    alone writes the gradebook, holding ``out/.lock``. Returns grades.csv's rows."""
    from tqdm import tqdm
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    # Absolute at the door: each notebook runs with a temporary folder as its working directory.
    submissions, built, out = (Path(p).resolve() for p in (submissions, built, out))
    if not submissions.is_dir():
        raise ValueError(f"submissions folder {submissions} does not exist")
    names = built_names(built)
    bwrap = sandbox.check(sandbox.bwrap()) if sandboxed else None
    if not sandboxed:
        print("grading WITHOUT a sandbox (--no-sandbox): the notebooks run with your permissions and can read the "
              "solutions and change these grades", file=sys.stderr)
    found, unmatched = find_submissions(submissions, names)
    for path in unmatched:
        print(f"not graded (matches no assignment of {names}): {path}", file=sys.stderr)
    with files.exclusive(out):
        log = out / "results.jsonl"
        done = {(r.student, r.assignment, r.sha256, r.autograder): r for r in read_results(log)}
        keys = {name: grader_key(built, name) for name in names}
        setups = {name: setup_of(name) for name in names}
        results, todo = [], []
        for sub in found:
            if sub.path is None:
                results.append(Result(sub.student, sub.assignment, "missing", sub.note))
                continue
            key = (sub.student, sub.assignment, _sha256(sub.path), keys[sub.assignment])
            if key in done and not regrade and _keeps(done[key], limits.timeout):
                results.append(done[key])
            else:
                todo.append(sub)
        if log.exists() and not log.read_bytes().endswith(b"\n") and log.stat().st_size:
            with open(log, "a") as f:
                f.write("\n")  # end a line an interrupted run left unfinished
        with open(log, "a") as f, concurrent.futures.ThreadPoolExecutor(jobs) as pool, \
                tqdm(total=len(found), initial=len(results), desc="grading", disable=not progress) as bar:
            futures = [pool.submit(grade_submission, sub, built, limits, bwrap) for sub in todo]
            try:
                for future in concurrent.futures.as_completed(futures):
                    result, outputs = future.result()
                    if result.status == "ok":
                        result.questions = verdict(built, result.assignment, outputs, setups[result.assignment])
                    f.write(json.dumps(asdict(result)) + "\n")
                    f.flush()  # a finished notebook is never graded again
                    results.append(result)
                    bar.update()
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return write_gradebook(results, built, out, unmatched)


def calibrate(built: Path) -> list[str]:
    """For every hidden test with a pass mark, the solution's own value on the hidden inputs beside the mark:
    the lines to read after changing the hidden tests' seeds (keep each mark well below its solution's value)."""
    built = Path(built).resolve()
    names = built_names(built)
    lines = []
    for name in names:
        reference = read_outputs(built / name / "autograder")
        for test in hidden_tests(name):
            if test.measure is not None:
                value, mark, what = test.measure(reference[test.name]["values"], setup_of(name))
                lines.append(f"{name} {test.question} ({test.name}): {what}: the solution reaches {value:.3f}, "
                             f"the pass mark is {mark:.3f} ({value / mark:.2f}x the mark)")
    return lines


def _positive(kind):
    """An argparse type: a finite ``kind`` > 0, refused in one line otherwise (``nan``, ``inf``, 0, -1)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a {'whole ' if kind is int else ''}number: {text!r}") from None
        if not (value > 0 and value != float("inf")):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
        return value
    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="student, autograder, hand-out, grader and solutions versions of every assignment")
    b.add_argument("--out", type=Path, default=Path("dist/assignments"))
    g = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/<assignment>.ipynb into a gradebook")
    g.add_argument("submissions", type=Path)
    g.add_argument("--built", type=Path, default=Path("dist/assignments"), help="the folder `build` wrote")
    g.add_argument("--out", type=Path, default=Path("grades"), help="where the gradebook goes")
    default = sandbox.Limits()
    g.add_argument("--timeout", type=_positive(float), default=default.timeout,
                   help=f"seconds per notebook before it is stopped (default {default.timeout:g})")
    g.add_argument("--memory", type=_positive(float), default=default.memory_gib,
                   help=f"GiB of address space per notebook (default {default.memory_gib:g}; PyTorch alone maps about 2)")
    g.add_argument("--output-limit", type=_positive(float), default=default.output_mib,
                   help=f"MiB a notebook may print before it is stopped (default {default.output_mib:g})")
    g.add_argument("--max-notebook", type=_positive(float), default=default.notebook_mib,
                   help=f"MiB: a larger notebook file is refused unread (default {default.notebook_mib:g})")
    g.add_argument("--jobs", type=_positive(int), default=2, help="notebooks graded at once (default 2)")
    g.add_argument("--regrade", action="store_true", help="grade every notebook again (without it a rerun grades "
                   "only new or changed notebooks, gradings that did not finish (crashed, output limit, too large), "
                   "and timeouts under a longer --timeout)")
    g.add_argument("--no-sandbox", action="store_true", help="run the notebooks without the sandbox: only for "
                   "notebooks you trust, as they can then read the solutions and change the grades")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    c = sub.add_parser("calibrate", help="the solution's value on the hidden inputs beside each pass mark")
    c.add_argument("--built", type=Path, default=Path("dist/assignments"), help="the folder `build` wrote")
    args = parser.parse_args(argv)
    with one_line_errors(parser, resumes=args.command == "grade"):
        if args.command == "build":
            built = build(args.out)
            print(f"built {', '.join(built)}. Hand out {args.out / 'handout'} (and nothing else); after the deadline "
                  f"{args.out / 'solutions'}; keep the rest of {args.out} (the references and the grader)")
        elif args.command == "calibrate":
            print("\n".join(calibrate(args.built)))
        else:
            limits = sandbox.Limits(timeout=args.timeout, memory_gib=args.memory, output_mib=args.output_limit,
                                    notebook_mib=args.max_notebook)
            rows = grade(args.submissions, args.built, args.out, limits=limits, jobs=args.jobs, regrade=args.regrade,
                         progress=not args.no_progress, sandboxed=not args.no_sandbox)
            print((args.out / "grades.md").read_text())
            print(f"{len(rows)} rows: {args.out / 'grades.csv'}, questions.csv, canvas.csv, feedback/")


if __name__ == "__main__":
    main()
