"""The one Markdown table writer of the reports: exact output, alignment, escaping, refusals."""
import pytest

from adjointdpm.tools.report import markdown_table


def test_markdown_table_exact_output():
    assert markdown_table(["NFE", "a | b", "note"], [[10, 0.5, "x|y"], [20, "", "two\nlines"]]) == (
        "| NFE | a \\| b | note |\n"
        "|---|---|---|\n"
        "| 10 | 0.5 | x\\|y |\n"
        "| 20 |  | two lines |")


def test_markdown_table_alignment():
    assert markdown_table(["l", "r", "c", "d"], [(1, 2, 3, 4)], align=["left", "right", "center", None]) == (
        "| l | r | c | d |\n"
        "|:---|---:|:---:|---|\n"
        "| 1 | 2 | 3 | 4 |")
    assert markdown_table(["only"], []) == "| only |\n|---|"


def test_markdown_table_refuses_ragged_rows_and_unknown_alignment():
    with pytest.raises(ValueError, match="row 1 has 1 cells for 2 columns"):
        markdown_table(["a", "b"], [[1, 2], [3]])
    with pytest.raises(ValueError, match="align has 1 entries for 2 columns"):
        markdown_table(["a", "b"], [], align=["left"])
    with pytest.raises(ValueError, match="got 'middle'"):
        markdown_table(["a"], [], align=["middle"])
