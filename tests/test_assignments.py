"""The course assignments, graded as a class would be: `course.py grade` on one folder of submissions, in
the sandbox, among them hostile ones. The solutions score full marks, the blank hand-outs zero, a planted
bug loses exactly its question, a shortcut through the library loses the question it shortcuts, a crash in
one question costs no other, a hanging notebook is stopped at the time limit while the others are graded, a
file that is not a notebook, a misnamed one and a missing one each get their row, and an interrupted run
resumes without grading a finished notebook again. The hostile class: notebooks that switch off otter's
runner, the comparisons or the refusals, that patch the function a reference used to be computed with, that
read the solutions or the hidden tests out through their feedback, that leave a process behind to forge the
gradebook, that flood the output or are too large to read: each gets what its answers earn."""
import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "notebooks" / "assignments"
spec = importlib.util.spec_from_file_location("course", HERE / "course.py")
course = importlib.util.module_from_spec(spec)
sys.modules["course"] = course  # its dataclasses look their module up
spec.loader.exec_module(course)

A1, A2, A3 = "a1_adjoint_step", "a2_reparameterization", "a3_audit"
# (assignment, text in the solution, planted bug, the question it breaks)
BUGS = {
    A1: ("return eps.detach(), -vjp", "return eps.detach(), vjp", "q1"),  # sign of the adjoint
    A2: ("return model(schedule.alpha(t) * y, t.expand(y.shape[0]))", "return model(y, t.expand(y.shape[0]))", "q1"),
    A3: ("return delta.clamp(-tau, tau)", "return delta.clamp(-2 * tau, 2 * tau)", "q1"),  # the box
}
# Answers that call the library instead of doing the work (each replaces the solution's function): each earned full marks before the hidden tests passed
# their own arguments and refused the library's pieces. (assignment, code, question it shortcuts)
SHORTCUTS = {
    "adjoint_from_library": (A1, """
        def grad_x_T(x_T, steps, step=rk4_step, rhs=adjoint_rhs):
            x = x_T.clone().requires_grad_()
            x_end = sample(model, x, schedule, steps=steps, solver="rk4", t_start=t_start, t_end=t_end,
                           gradient=Adjoint())
            (grad,) = torch.autograd.grad(x_end, x, loss_grad(x_end.detach()))
            return grad
        """, "q3"),
    "rk4_from_library": (A1, """
        def rk4_step(rhs, y, a, rho, h):
            from adjointdpm.solvers import RK4
            (y, a), _ = RK4().step(lambda z, s: rhs(*z, s), (y, a), rho, rho + h, ())
            return y, a
        """, "q2"),
    "field_from_sampler": (A2, """
        def reparam_field(y, rho):
            t_s = schedule.time_of_rho(rho)
            t_t = t_s / 2  # Euler on eq. 10 is exact for the difference quotient at any step
            x_t = sample(model, schedule.alpha(t_s) * y, schedule, steps=1, solver="euler", space="reparam",
                         t_start=float(t_s), t_end=float(t_t))
            return (x_t / schedule.alpha(t_t) - y) / (schedule.rho(t_t) - rho)
        """, "q1"),
    "dpm1_from_sampler": (A2, """
        def dpm1_step(x_s, t_s, t_t, field=reparam_field):
            return sample(model, x_s, schedule, steps=1, solver="dpm1", t_start=float(t_s), t_end=float(t_t))
        """, "q2"),
    "audit_ignores_projection": (A3, """
        def audit(x_T, labels, tau, iters=20, gradient=None, project=project):
            delta = torch.zeros_like(x_T, requires_grad=True)
            for _ in range(iters):
                loss = -classifier(generate(x_T + delta, gradient or Adjoint())).gather(1, labels[:, None]).sum()
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta.copy_((delta + tau / 4 * grad.sign()).clamp(-tau, tau))
            return delta.detach()
        """, "q2"),
}
TIMEOUT = 150  # seconds per notebook: a solution takes 5-30 s on 2 busy cores
HANG = 3  # seconds: the limit under which a notebook that never ends is graded, apart from the class
# The class's limits: as the defaults, but an output cap and a notebook size that the flood and the padded
# notebook below pass cheaply (a solution prints a few kilobytes and weighs about 30 KB).
LIMITS = course.sandbox.Limits(timeout=TIMEOUT, output_mib=1, notebook_mib=0.5)
SIGN_BUG = BUGS[A1][:2]
# Each hostile cell ends the blank hand-out (``blank``), the solution (``solution``) or the solution with A1's
# sign bug (``bug``):
# (assignment, base, cell, the auto points it must get, of A1's 10 or A3's 7)
HOSTILE = {
    "runner_patch": (A1, "blank", """
        import otter.test_files.ok_test
        otter.test_files.ok_test.run_doctest = lambda name, s, g: (True, '')
        """, 0),
    "tamper_off": (A1, "bug", """
        import contextlib, torch
        torch.allclose = lambda *a, **k: True
        try:
            import forbid
            forbid.absent = lambda *a, **k: contextlib.nullcontext()
            forbid.plan = lambda *a: []
            forbid.untampered = lambda ns: None
        except ImportError:
            pass
        """, 7),
    "vjp_patch": (A1, "bug", """
        import sys, torch
        _vjp = torch.func.vjp
        def _negating(f, *xs, **kw):  # negates for every caller but this notebook's cells
            out, fn = _vjp(f, *xs, **kw)
            if not sys._getframe(1).f_code.co_filename.startswith("<ipython"):
                return out, lambda *a: tuple(-g for g in fn(*a))
            return out, fn
        torch.func.vjp = _negating
        """, None),  # its own q3 runs through the vjp it broke: at most 7
    "read_out": (A1, "blank", """
        import glob, os
        _found = []
        for _pid in os.listdir("/proc"):
            try:
                _found.append(os.readlink(f"/proc/{_pid}/cwd"))
            except OSError:
                pass
        _texts = []
        for _path in [*glob.glob("/grader/hidden/*.py"), *glob.glob(SOLUTIONS + "/**/*.ipynb", recursive=True),
                      *glob.glob("/proc/*/cwd/*")]:
            try:
                _texts.append(open(_path).read()[:300])
            except OSError:
                pass
        def adjoint_rhs(y, a_y, rho):
            raise RuntimeError(" ".join(_texts + _found)[:3000])
        """, 0),
    "forger": (A1, "blank", """
        import subprocess, sys
        subprocess.Popen([sys.executable, "-c", "import time, pathlib; time.sleep(4); "
                          "p = pathlib.Path(GRADES) / 'results.jsonl'; p.write_text(p.read_text() + FORGED)"],
                         start_new_session=True)
        """, 0),
    "flood": (A1, "blank", """print("x" * 2_000_000)""", None),
    "sandboxed": (A3, "solution", """
        _seen = []
        for _path in (README, SOLUTION):
            try:
                open(_path).read()
                _seen.append(_path)
            except OSError:
                pass
        try:
            open(PWNED, "w").write("x")
            _seen.append(PWNED)
        except OSError:
            pass
        if _seen:  # q1 breaks wherever the sandbox lets a notebook see or write outside its scratch folder
            def project(delta, tau):
                return delta
        """, 7),
}


def make(*args):
    """``make ARGS`` from the repository root, as the README tells an instructor to type it."""
    proc = subprocess.run(["make", "-s", *args], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout


def relative(path: Path) -> str:
    return os.path.relpath(path, ROOT)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """``make assignments``, with the build folder given relative to the repository root."""
    out = tmp_path_factory.mktemp("dist")
    make("assignments", f"BUILT={relative(out)}")
    assert sorted(p.name for p in out.iterdir() if (p / "questions.json").exists()) == sorted(BUGS)
    return out


def _solution(built, name):
    return nbformat.read(built / name / "autograder" / f"{name}.ipynb", as_version=4)


def _replaced(nb, code):
    """``nb`` with the function that ``code`` defines redefined right after the solution's (otter
    runs a question's tests where its ``grader.check`` cell stands)."""
    code = textwrap.dedent(code).strip()
    header = code.split("(", 1)[0] + "("  # "def name("
    at = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and header in c.source)
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(code))
    return nb


@pytest.fixture(scope="module")
def graded(built, tmp_path_factory):
    """One class: the submissions above, graded in one run (2 at a time)."""
    subs = tmp_path_factory.mktemp("submissions")
    add = lambda student, name, nb: (subs / student).mkdir(exist_ok=True) or nbformat.write(nb, subs / student / name)
    for name in BUGS:
        add("solution", f"{name}.ipynb", _solution(built, name))
        add("blank", f"{name}.ipynb", nbformat.read(built / name / "student" / f"{name}.ipynb", as_version=4))
        old, new, _ = BUGS[name]
        bug = _solution(built, name)
        assert sum(old in cell.source for cell in bug.cells) == 1
        for cell in bug.cells:
            cell.source = cell.source.replace(old, new)
        add(f"bug_{name[:2]}", f"{name}.ipynb", bug)
    for student, (name, code, _) in SHORTCUTS.items():
        add(student, f"{name}.ipynb", _replaced(_solution(built, name), code))
    add("crash_q2", f"{A1}.ipynb",
        _replaced(_solution(built, A1), "def rk4_step(rhs, y, a, rho, h):\n    raise NotImplementedError"))
    out = subs.parent / "grades"
    values = {"SOLUTIONS": str(built), "GRADES": str(out), "FORGED": json.dumps(FORGED_LINE) + "\n",
              "README": str(ROOT / "README.md"), "SOLUTION": str(built / A3 / "autograder" / f"{A3}.ipynb"),
              "PWNED": str(ROOT / "pwned-by-a-notebook")}
    for student, (name, base, code, _) in HOSTILE.items():
        nb = {"blank": nbformat.read(built / name / "student" / f"{name}.ipynb", as_version=4),
              "bug": _solution(built, name), "solution": _solution(built, name)}[base]
        if base == "bug":
            for cell in nb.cells:
                cell.source = cell.source.replace(*SIGN_BUG)
        code = "".join(f"{k} = {v!r}\n" for k, v in values.items() if k in code) + textwrap.dedent(code)
        nb.cells.append(nbformat.v4.new_code_cell(code))  # last: what it defines replaces the notebook's own
        add(student, f"{name}.ipynb", nb)
    padded = _solution(built, A3)
    padded.cells.append(nbformat.v4.new_markdown_cell("x" * 600_000))
    add("padded", f"{A3}.ipynb", padded)
    (subs / "garbage").mkdir()
    (subs / "garbage" / f"{A3}.ipynb").write_text("this is a PDF export, not a notebook")
    add("misnamed", f"{A3} (1).ipynb", _solution(built, A3))
    (subs / "nothing").mkdir()
    rows = course.grade(subs, built, out, limits=LIMITS, jobs=2, progress=False)
    return subs, out, rows


FORGED_LINE = {"student": "forger", "assignment": A1, "status": "ok", "questions": {"q1": {"points": 3.0}}}


def _table(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _points(out):
    return {(r["student"], r["assignment"], r["question"]): r for r in _table(out / "questions.csv")}


def test_every_student_and_assignment_has_a_row_with_its_status(graded):
    subs, out, rows = graded
    students = sorted(p.name for p in subs.iterdir())
    assert sorted((r["student"], r["assignment"]) for r in rows) == [(s, a) for s in students for a in sorted(BUGS)]
    grades = {(r["student"], r["assignment"]): r for r in _table(out / "grades.csv")}
    assert grades[("garbage", A3)]["status"] == "not a notebook" and f"{A3}.ipynb" in grades[("garbage", A3)]["reason"]
    assert grades[("misnamed", A3)]["status"] == "ok" and "(1)" in grades[("misnamed", A3)]["reason"]
    assert float(grades[("misnamed", A3)]["auto_points"]) == float(grades[("misnamed", A3)]["auto_possible"])
    assert grades[("nothing", A1)]["status"] == "missing" and float(grades[("nothing", A1)]["total"]) == 0
    assert grades[("flood", A1)]["status"] == "output limit" and "1 MiB" in grades[("flood", A1)]["reason"]
    assert grades[("padded", A3)]["status"] == "too large" and "0.5 MiB limit" in grades[("padded", A3)]["reason"]
    for r in grades.values():  # hand-graded points: blank, with their maximum
        assert r["manual_points"] == "" and float(r["manual_possible"]) >= 1
        assert float(r["total"]) == float(r["auto_points"])


def test_solution_full_blank_zero_bug_loses_its_question(graded):
    _, out, _ = graded
    points = _points(out)
    for name, (_, _, broken) in BUGS.items():
        questions = sorted(q for s, a, q in points if s == "solution" and a == name and points[(s, a, q)]["kind"] == "auto")
        assert len(questions) >= 2
        for q in questions:
            possible = float(points[("solution", name, q)]["possible"])
            assert float(points[("solution", name, q)]["points"]) == possible > 0, f"solution loses points on {q}"
            assert float(points[("blank", name, q)]["points"]) == 0, f"the unanswered version scores on {q}"
            expected = 0 if q == broken else possible
            assert float(points[(f"bug_{name[:2]}", name, q)]["points"]) == expected, f"planted bug: {name} {q}"


def test_shortcuts_lose_the_question_they_shortcut_and_only_that(graded):
    _, out, _ = graded
    points = _points(out)
    for student, (name, _, shortcut) in SHORTCUTS.items():
        for (s, a, q), row in points.items():
            if s == student and a == name and row["kind"] == "auto":
                expected = 0 if q == shortcut else float(row["possible"])
                assert float(row["points"]) == expected, f"{student}: {q}"
    feedback = (out / "feedback" / "adjoint_from_library.md").read_text()
    assert "this question may not use the library's adjointdpm.grad:ODEAdjoint.solve" in feedback
    assert "may not use the library's adjointdpm.sampling:sample" in (out / "feedback" / "dpm1_from_sampler.md").read_text()


def test_a_crash_in_q2_does_not_cost_q3(graded):
    _, out, _ = graded
    points = _points(out)
    assert float(points[("crash_q2", A1, "q2")]["points"]) == 0
    assert "NotImplementedError" in points[("crash_q2", A1, "q2")]["feedback"]
    for q in ("q1", "q3", "q4"):
        assert float(points[("crash_q2", A1, q)]["points"]) == float(points[("crash_q2", A1, q)]["possible"]), q


def test_hostile_notebooks_get_exactly_what_their_answers_earn(graded):
    """Switching off otter's runner, the comparisons or the refusals changes nothing: the verdict is computed
    outside, from what the notebook's functions returned. A patched ``torch.func.vjp`` reaches only the
    notebook's own outputs (its q3 runs through the rhs the grader passes, which calls it)."""
    _, out, _ = graded
    points = _points(out)
    auto = lambda student, name: {q: float(r["points"]) for (s, a, q), r in points.items()
                                  if s == student and a == name and r["kind"] == "auto"}
    for student, (name, _, _, expected) in HOSTILE.items():
        if expected is not None:
            assert sum(auto(student, name).values()) == expected, (student, auto(student, name))
    assert auto("tamper_off", A1) == {"q1": 0, "q2": 2, "q3": 3, "q4": 2}  # the sign bug's question, and no other
    patched = auto("vjp_patch", A1)
    assert patched["q1"] == 0 and patched["q2"] == 2 and patched["q4"] == 2 and sum(patched.values()) <= 7


def test_a_notebook_reads_and_writes_nothing_outside_its_sandbox(graded, built, tmp_path):
    """The solution with a cell that reads the repository and the solutions and writes into the repository, and
    breaks q1 if any of it worked: full marks, and nothing written. Graded without the sandbox, the same
    notebook loses q1 and writes its file (so this test fails where the sandbox is not in force)."""
    subs, out, _ = graded
    auto = lambda folder: {q: float(r["points"]) for (s, a, q), r in _points(folder).items()
                           if s == "sandboxed" and a == A3 and r["kind"] == "auto"}
    assert auto(out) == {"q1": 2, "q2": 3, "q3": 2}
    assert not (ROOT / "pwned-by-a-notebook").exists()
    (tmp_path / "subs").mkdir()
    shutil.copytree(subs / "sandboxed", tmp_path / "subs" / "sandboxed")
    try:
        course.grade(tmp_path / "subs", built, tmp_path / "grades", limits=LIMITS, progress=False, sandboxed=False)
        assert auto(tmp_path / "grades")["q1"] == 0 and (ROOT / "pwned-by-a-notebook").exists()
    finally:
        (ROOT / "pwned-by-a-notebook").unlink(missing_ok=True)


def test_nothing_read_in_the_sandbox_comes_back_through_the_feedback(graded, built):
    """The notebook that raises what it read (the hidden tests, the solutions, other processes' folders) gets
    its exception's type, never its text."""
    _, out, _ = graded
    feedback = (out / "feedback" / "read_out.md").read_text()
    assert "(your code raised RuntimeError)" in feedback
    for secret in ("import", "def ", "SOLUTION", "/proc", "/grader", "rhs_at_three_times", "otter"):
        assert secret not in feedback, secret


def test_a_process_left_behind_forges_nothing(graded):
    """A child in a session of its own, set to append full marks to results.jsonl 4 s after it starts: it ends
    with the sandbox, and the gradebook stays as the grader wrote it."""
    import time
    _, out, _ = graded
    before = {p: p.read_bytes() for p in (out / "results.jsonl", out / "grades.csv")}
    time.sleep(5)
    assert {p: p.read_bytes() for p in before} == before
    assert json.dumps(FORGED_LINE) not in (out / "results.jsonl").read_text()
    import psutil
    assert not [p for p in psutil.process_iter(["cmdline"]) if "time.sleep(4)" in " ".join(p.info["cmdline"] or [])]


def test_written_answers_are_gathered_beside_the_instructor_key(graded, built):
    subs, out, _ = graded
    key = (built / "instructor_key.md").read_text()
    for name, question in ((A1, "q5"), (A2, "q4"), (A3, "q4")):
        assert f"## {name}, {question}" in key
    assert key.count("**Model answer") == 3 and key.count("**Rubric") == 3
    answers = (out / "answers.md").read_text()
    assert "### solution" in answers and "**Model answer" in answers  # the solution notebook's cell, gathered
    assert "_(no answer: ok)_" in answers  # the blank hand-out's placeholder is no answer
    assert "_(no answer: missing)_" in answers


def test_feedback_names_failures_in_words_without_reference_values(graded):
    _, out, _ = graded
    bug = (out / "feedback" / "bug_a1.md").read_text()
    assert "q1: 0/3. adjoint_rhs does not give" in bug and "q2: 2/2" in bug and "graded by hand" in bug
    for path in (out / "feedback").iterdir():
        text = path.read_text()
        assert "tensor(" not in text and "_want" not in text and "Traceback" not in text, path.name
    canvas = list(csv.reader(open(out / "canvas.csv")))
    assert canvas[0][:5] == ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]
    assert canvas[1][0].strip() == "Points Possible" and {r[3] for r in canvas[2:]} >= {"solution", "blank"}


def test_an_interrupted_run_resumes_and_keeps_hand_graded_points(graded, built, monkeypatch):
    subs, out, rows = graded
    lines = (out / "results.jsonl").read_text().splitlines()
    before = _table(out / "grades.csv")
    kept = [line for line in lines if '"status": "timeout"' in line or '"solution"' not in line]
    (out / "results.jsonl").write_text("\n".join(kept) + "\n" + lines[0][:40])  # killed mid-write
    table = _table(out / "grades.csv")
    table[0]["manual_points"] = "1"  # the instructor grades a hand-graded question
    with open(out / "grades.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    regraded = []
    real = course.grade_submission
    monkeypatch.setattr(course, "grade_submission", lambda sub, *a: regraded.append(sub.student) or real(sub, *a))
    again = course.grade(subs, built, out, limits=LIMITS, jobs=2, progress=False)
    # what the interruption lost, and the two stopped by a limit (graded again: a limit may have changed)
    assert sorted(regraded) == ["flood", "padded", *["solution"] * len(BUGS)]
    after = {(r["student"], r["assignment"]): r for r in again}
    for r in before[1:]:
        assert after[(r["student"], r["assignment"])]["total"] == float(r["total"])
    assert after[(table[0]["student"], table[0]["assignment"])]["total"] == float(table[0]["auto_points"]) + 1
    longer = []  # a longer time limit grades again only the two whose limits are not the notebook's answer
    monkeypatch.setattr(course, "grade_submission", lambda sub, built, limits, *a: longer.append(sub.student) or
                        (course.Result(sub.student, sub.assignment, "timeout", limit=limits.timeout), None))
    course.grade(subs, built, out, limits=course.sandbox.Limits(timeout=TIMEOUT + 1, output_mib=1, notebook_mib=0.5),
                 jobs=2, progress=False)
    assert sorted(longer) == ["flood", "padded"]


def test_a_notebook_that_never_ends_is_stopped_at_its_limit_and_only_a_longer_limit_grades_it_again(built, tmp_path,
                                                                                                   monkeypatch):
    """Apart from the class, under a limit of a few seconds: the class's limit must let every honest
    notebook finish on busy cores, and a hang would hold a grading slot for all of it."""
    subs, out = tmp_path / "submissions", tmp_path / "grades"
    hang = _solution(built, A1)
    hang.cells.insert(1, nbformat.v4.new_code_cell("while True:\n    pass"))
    (subs / "hangs").mkdir(parents=True)
    nbformat.write(hang, subs / "hangs" / f"{A1}.ipynb")
    limits = lambda seconds: course.sandbox.Limits(timeout=seconds, output_mib=1, notebook_mib=0.5)  # noqa: E731
    course.grade(subs, built, out, limits=limits(HANG), jobs=1, progress=False)
    grades = {(r["student"], r["assignment"]): r for r in _table(out / "grades.csv")}
    assert grades[("hangs", A1)]["status"] == "timeout" and f"{HANG} s" in grades[("hangs", A1)]["reason"]
    regraded = []
    monkeypatch.setattr(course, "grade_submission", lambda sub, built, limits, *a: regraded.append(limits.timeout) or
                        (course.Result(sub.student, sub.assignment, "timeout", limit=limits.timeout), None))
    course.grade(subs, built, out, limits=limits(HANG), jobs=1, progress=False)
    assert regraded == []  # the same limit: its timeout stands
    course.grade(subs, built, out, limits=limits(HANG + 1), jobs=1, progress=False)
    assert regraded == [HANG + 1]


def test_the_documented_route_grades_the_solutions_in_full_and_regrades_after_a_set_up_crash(built, tmp_path):
    subs = tmp_path / "submissions"
    for name in BUGS:
        (subs / "solution").mkdir(parents=True, exist_ok=True)
        nbformat.write(_solution(built, name), subs / "solution" / f"{name}.ipynb")
    route = [f"SUBMISSIONS={relative(subs)}", f"BUILT={relative(built)}", f"GRADES={relative(tmp_path / 'grades')}"]
    make("grade", *route)
    grades = _table(tmp_path / "grades" / "grades.csv")
    assert [r["status"] for r in grades] == ["ok"] * len(BUGS)
    assert all(float(r["auto_points"]) == float(r["auto_possible"]) > 0 for r in grades)
    # the grader's own set-up failed for one notebook on a first run: its crash is not the student's grade
    log = tmp_path / "grades" / "results.jsonl"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    lines[0].update(status="crashed", reason="autograder zip not found", questions={})
    log.write_text("".join(json.dumps(r) + "\n" for r in lines))
    written = log.read_text().splitlines()
    make("grade", *route)
    assert log.read_text().splitlines()[:-1] == written  # only the crashed notebook was graded again: one line more
    again = _table(tmp_path / "grades" / "grades.csv")
    assert [r["status"] for r in again] == ["ok"] * len(BUGS)
    assert [r["total"] for r in again] == [r["total"] for r in grades]


def test_handout_has_no_solutions_or_tests_and_solutions_have_no_hidden_tests(built):
    handout = built / "handout"
    for name, (old, _, _) in BUGS.items():
        student = (handout / name / f"{name}.ipynb").read_text()
        assert old not in student and "BEGIN SOLUTION" not in student and "hidden: true" not in student
        solution = nbformat.read(built / "solutions" / f"{name}.ipynb", as_version=4)
        assert old in "".join(c.source for c in solution.cells)
        cases = [c for t in solution.metadata["otter"]["tests"].values() for s in t["suites"] for c in s["cases"]]
        assert cases and not any(c["hidden"] for c in cases)
        code = [c for c in solution.cells if c.cell_type == "code"]  # executed, as a finished notebook looks
        assert all(c.execution_count for c in code) and not any(o.output_type == "error" for c in code for o in c.outputs)
    (wheel,) = handout.glob("adjointdpm_course-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"adjointdpm", "toy", "adjointdpm_course-0.1.0.dist-info"}
    assert "adjointdpm/grad.py" in names and "toy/apps.py" in names
    import tomllib  # the pin the repository installs is the one the students are told
    torch_pin = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                     if d.startswith("torch=="))
    assert torch_pin in (handout / "INSTRUCTIONS.md").read_text()


def test_forbidden_pieces_are_absent_inside_under_every_name_and_work_after():
    sys.path.insert(0, str(HERE))
    try:
        from forbid import GRADIENTS, SAMPLE, STEPPERS, absent, plan
    finally:
        sys.path.remove(str(HERE))
    import torch

    import adjointdpm
    from adjointdpm import Adjoint, AdjointDEIS, VPSchedule, sample
    kept = [sample]  # a reference a notebook keeps where no name is bound: it reaches the refusal too
    model = lambda x, t, cond=None: x
    with absent(plan(SAMPLE, *GRADIENTS, *STEPPERS)):
        for call in (lambda: kept[0](model, torch.ones(1, 2), VPSchedule.linear(), steps=2),
                     lambda: adjointdpm.sample(model, torch.ones(1, 2), VPSchedule.linear(), steps=2),
                     lambda: Adjoint().solve(None, None),
                     lambda: AdjointDEIS(1).solve(None, None),  # a subclass whose method calls super()
                     lambda: adjointdpm.solvers.RK4().step(None, None, 0, 1, ())):
            with pytest.raises(PermissionError, match="this question may not use the library's"):
                call()
    x = sample(model, torch.ones(1, 2), VPSchedule.linear(), steps=2, gradient=Adjoint())
    assert kept[0] is sample and torch.isfinite(x).all()


@pytest.mark.parametrize("option", ["--timeout", "--memory", "--output-limit", "--max-notebook", "--jobs"])
@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_every_limit_refuses_what_is_not_a_finite_positive_number(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        course.main(["grade", str(tmp_path), option, value])
    assert exit.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_build_refuses_a_folder_holding_files_it_did_not_write(tmp_path, capsys):
    (tmp_path / "handout").mkdir()
    (tmp_path / "handout" / "my-notes.md").write_text("kept")
    with pytest.raises(SystemExit) as exit:
        course.main(["build", "--out", str(tmp_path)])
    assert exit.value.code == 2
    assert "holds files that no build wrote (handout/my-notes.md)" in capsys.readouterr().err
    assert (tmp_path / "handout" / "my-notes.md").read_text() == "kept"


def test_a_second_grader_on_the_same_gradebook_is_refused(graded, built):
    subs, out, _ = graded
    with course.files.exclusive(out):
        with pytest.raises(ValueError, match="another run .* is writing to"):
            course.grade(subs, built, out, limits=LIMITS, progress=False)


def test_without_a_sandbox_grading_refuses_in_one_line(graded, built, monkeypatch):
    subs, out, _ = graded
    monkeypatch.setattr(course.sandbox, "bwrap", lambda: None)
    with pytest.raises(ValueError, match=r"no sandbox to grade in: `make install` brings bubblewrap .* --no-sandbox \(make grade NO_SANDBOX=1\)"):
        course.grade(subs, built, out / "elsewhere", limits=LIMITS, progress=False)


def test_a_student_folder_named_like_a_formula_is_text_in_the_gradebook(tmp_path):
    """A folder named ``=HYPERLINK(...)`` lands in grades.csv as text a spreadsheet shows, not evaluates, and
    its typed hand-graded points are read back under its own name."""
    import csv
    name = '=HYPERLINK("http://x","click")'
    rows = [{"student": name, "assignment": "a1", "manual_points": "3"}, {"student": "ada", "assignment": "a1",
                                                                          "manual_points": ""}]
    course._write_csv(tmp_path / "grades.csv", rows)
    with open(tmp_path / "grades.csv", newline="") as f:
        cells = [r["student"] for r in csv.DictReader(f)]
    assert cells == ["'" + name, "ada"]
    assert course._manual_points(tmp_path / "grades.csv") == {(name, "a1"): "3", ("ada", "a1"): ""}


def test_a_garbage_results_log_is_named_and_its_lines_graded_again(tmp_path, capsys):
    log = tmp_path / "results.jsonl"
    good = course.Result("ada", "a1", "ok", "")
    log.write_bytes(json.dumps(course.asdict(good)).encode() + b"\n\xff\xfe garbage\n[1, 2]\n")
    assert course.read_results(log) == [good]
    assert capsys.readouterr().err == f"{log}: 2 lines that are not grading results are skipped; the notebooks they held are graded again\n"


def _solution_lines(master: Path) -> set[str]:
    """Every line of code between a ``# BEGIN SOLUTION`` and ``# END SOLUTION`` in a master's code (what the
    hand-out replaces; the raw cells' ``# # BEGIN SOLUTION`` keep the signature around it), long enough to be an
    answer's own (30 characters or more: shorter ones are idioms such as `with torch.enable_grad():`; not a comment)."""
    lines, inside = set(), False
    for line in master.read_text().splitlines():
        if line.strip() == "# END SOLUTION":
            inside = False
        elif line.strip() == "# BEGIN SOLUTION":
            inside = True
        elif inside and len(line.strip()) >= 30 and not line.strip().startswith("#"):
            lines.add(line.strip())
    return lines


def _forbidden_in(master: Path) -> set[str]:
    """The library pieces (``module:function``) an assignment's hidden tests refuse."""
    return {piece for test in course.hidden_tests(master.stem) for piece in test.forbid}


def _enclosing(source: str, line: str) -> str:
    """The top-level function (or class) of a module's source that holds ``line``."""
    import ast
    number = next(i for i, text in enumerate(source.splitlines(), 1) if line in text)
    for node in ast.parse(source).body:
        if getattr(node, "lineno", 0) <= number <= getattr(node, "end_lineno", 0) and hasattr(node, "name"):
            return node.name
    return "<module>"


def test_no_solution_body_is_anywhere_in_the_handout(built):
    """No answer line is in a hand-out notebook's code (another assignment's set-up included), and none is in
    the wheel's sources unless the question refuses the library function that holds it. The questions'
    own words (markdown) may show a line as a hint."""
    handout = built / "handout"
    code = "\n".join(c.source for nb in handout.rglob("*.ipynb") for c in nbformat.read(nb, as_version=4).cells
                     if c.cell_type == "code")
    (wheel,) = handout.glob("adjointdpm_course-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        modules = {n[:-3].replace("/", "."): zf.read(n).decode() for n in zf.namelist() if n.endswith(".py")}
    leaks, answers = [], 0
    for master in sorted(HERE.glob("a[0-9]_*.py")):
        refused = _forbidden_in(master)
        for line in _solution_lines(master):
            answers += 1
            if line in code:
                leaks.append((master.stem, "hand-out notebooks", line))
            for module, source in modules.items():
                module = module.removesuffix(".__init__")
                if line in source and f"{module}:{_enclosing(source, line)}" not in refused:
                    leaks.append((master.stem, f"{module}:{_enclosing(source, line)}", line))
    assert answers > 20  # the check reads real answers
    assert leaks == [], "\n".join(map(str, leaks))


def test_a_strategy_is_rebuilt_from_literals_only_and_never_with_a_huge_number():
    """a3's check rebuilds the strategy a notebook names, in the grading process: from a library class and literal
    arguments, and never with a number that would set the grader a billion steps."""
    from hidden import gradient_strategy
    from adjointdpm import Adjoint, AdjointDEIS
    assert isinstance(gradient_strategy("Adjoint(steps=None, solver=None, states='reintegrate')"), Adjoint)
    assert isinstance(gradient_strategy("AdjointDEIS(order=1, steps=None, states='reintegrate', form='data')"), AdjointDEIS)
    for text in ("Adjoint(steps=100000000)", "__import__('os').system('true')", "Adjoint(steps=len('x'))",
                 "Gradient()", "Sneaky()", "Adjoint(", "x" * 10000):
        assert gradient_strategy(text) is None, text
