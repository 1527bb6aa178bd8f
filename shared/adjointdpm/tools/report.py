"""Results files: :func:`write_result`, the one writer of an experiment's files, and
:func:`markdown_table`, the one table writer every report uses."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

from . import files

_RULES = {None: "---", "left": ":---", "right": "---:", "center": ":---:"}


def _cell(value) -> str:
    """A cell's text on one line, its ``|`` escaped so that it cannot split the row."""
    return " ".join(str(value).splitlines()).replace("|", "\\|")


def percent(share, decimals: int = 1) -> str:
    """A share in [0, 1] as a percentage with ``decimals`` places; ``"-"`` for a missing one (``None``)."""
    return "-" if share is None else f"{100 * share:.{decimals}f}%"


def markdown_table(header: Sequence, rows: Iterable[Sequence], align: Sequence | None = None) -> str:
    """A GitHub-flavoured Markdown table (no trailing newline)::

        | header | ... |
        |---|---:|
        | cell | ... |

    Every cell is ``str(value)``; a ``|`` in it is escaped (``\\|``) and line breaks become spaces.
    ``align``: one entry per column, ``None`` (the renderer's default), ``"left"``, ``"right"`` or
    ``"center"``. A row with another number of cells than the header is refused."""
    header = list(header)
    align = [None] * len(header) if align is None else list(align)
    if len(align) != len(header):
        raise ValueError(f"align has {len(align)} entries for {len(header)} columns")
    unknown = [a for a in align if a not in _RULES]
    if unknown:
        raise ValueError(f"align entries must be None, 'left', 'right' or 'center', got {unknown[0]!r}")
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", "|" + "".join(_RULES[a] + "|" for a in align)]
    for i, row in enumerate(rows):
        row = list(row)
        if len(row) != len(header):
            raise ValueError(f"row {i} has {len(row)} cells for {len(header)} columns")
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    return "\n".join(lines)


def write_result(out: Path, name: str, data, markdown: str | None = None,
                 figure: Callable[[Path], object] | None = None, significant: int | None = None) -> str | None:
    """The one writer of an experiment's files in ``out``: ``name.json`` (``data`` as strict JSON, floats
    rounded to ``significant`` digits), ``name.md`` (``markdown``, made from that data alone) and
    ``name.png`` (drawn by ``figure(path)``), each written whole or not at all; returns ``markdown``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_json(out / f"{name}.json", data, significant=significant)
    if markdown is not None:
        files.write_text(out / f"{name}.md", markdown)
    if figure is not None:
        figure(out / f"{name}.png")
    return markdown
