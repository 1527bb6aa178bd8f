"""The course assignments under otter-grader: the solutions score full marks, the student
versions as handed out score zero on every question, and a solution with one planted bug
loses exactly that question's points. Graded through `course.py grade` on a folder."""
import csv
import importlib.util
from pathlib import Path

import nbformat
import pytest

HERE = Path(__file__).resolve().parents[1] / "notebooks" / "assignments"
spec = importlib.util.spec_from_file_location("course", HERE / "course.py")
course = importlib.util.module_from_spec(spec)
spec.loader.exec_module(course)

# (assignment, text in the solution, planted bug, the question it breaks)
BUGS = {
    "a1_adjoint_step": ("return eps.detach(), -vjp", "return eps.detach(), vjp", "q1"),  # sign of the adjoint
    "a2_reparameterization": ("return model(schedule.alpha(t) * y, t.expand(y.shape[0]))",
                              "return model(y, t.expand(y.shape[0]))", "q1"),  # the missing alpha factor
    "a3_audit": ("return delta.clamp(-tau, tau)", "return delta.clamp(-2 * tau, 2 * tau)", "q1"),  # the box
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    assert sorted(course.build(out)) == sorted(BUGS)
    return out


@pytest.mark.parametrize("name", sorted(BUGS))
def test_solution_full_blank_zero_bug_loses_its_question(name, built, tmp_path):
    old, new, broken = BUGS[name]
    solution = built / name / "autograder" / f"{name}.ipynb"
    nb = nbformat.read(solution, as_version=4)
    assert sum(old in cell.source for cell in nb.cells) == 1
    for cell in nb.cells:
        cell.source = cell.source.replace(old, new)
    subs = tmp_path / "submissions"
    for student, source in (("solution", solution), ("blank", built / name / "student" / f"{name}.ipynb")):
        (subs / student).mkdir(parents=True)
        (subs / student / f"{name}.ipynb").write_bytes(source.read_bytes())
    (subs / "planted_bug").mkdir()
    nbformat.write(nb, subs / "planted_bug" / f"{name}.ipynb")

    course.grade(subs, built, tmp_path / "grades")
    with open(tmp_path / "grades" / "grades.csv") as f:
        rows = list(csv.DictReader(f))
    points = {(r["student"], r["question"]): (float(r["points"]), float(r["possible"])) for r in rows}
    questions = sorted({q for _, q in points})
    assert len(questions) >= 2
    for q in questions:
        got, possible = points[("solution", q)]
        assert got == possible > 0, f"solution loses points on {q}"
        assert points[("blank", q)][0] == 0, f"the unanswered version scores on {q}"
        expected = 0 if q == broken else possible
        assert points[("planted_bug", q)][0] == expected, f"planted bug: {q}"


def test_student_version_has_no_solutions(built):
    for name, (old, _, _) in BUGS.items():
        student = (built / name / "student" / f"{name}.ipynb").read_text()
        assert old not in student and "BEGIN SOLUTION" not in student and "hidden: true" not in student
