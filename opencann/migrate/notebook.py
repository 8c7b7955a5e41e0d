"""Jupyter notebooks: the code cells are migrated as one module (names imported in one cell resolve in
the next), then split back so that every edit, finding and line number is per cell.

IPython syntax (``%magic``, ``!shell``, ``x = !cmd``, ``%%cell`` magics) is swapped for numbered
``pass`` placeholders while parsing and restored afterwards; a ``%%`` cell magic that does not run Python
(``%%bash``, ``%%writefile``...) leaves its cell untouched. The JSON is written back with the layout it
was read with (indentation, key order, ASCII escaping) when that layout can be reproduced, so only the
edited ``source`` strings differ.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from opencann.migrate.edits import SpanEdit, split_lines

PYTHON_CELL_MAGICS = ("%%time", "%%timeit", "%%capture", "%%prun", "%%debug")
_MAGIC_LINE = re.compile(r"^\s*(?:[%!?]|[\w.]+\s*=\s*[%!])")
ATTACH_TO_PREVIOUS = ("OC001", "OC002")  # the opencann import and oc.enable() stay with the imports cell


class NotebookError(ValueError):
    """Not a notebook this tool can read (not JSON, not nbformat 4)."""


@dataclass
class Cell:
    index: int  # position among all cells, 0-based
    source: str  # the original source text
    was_list: bool
    first_line: int = 0  # its first line in the joined module

    @property
    def label(self) -> str:
        return f"cell{self.index + 1}"


@dataclass
class Notebook:
    data: dict
    layout: dict | None  # json.dumps arguments that reproduce the file; None: nbformat's
    trailing_newline: bool
    cells: list[Cell]
    joined: str

    def locate(self, line: int) -> tuple[Cell, int]:
        """The cell holding a line of the joined module, and the line's number in that cell."""
        cell = self.cells[0]
        for c in self.cells:
            if c.first_line <= line:
                cell = c
        return cell, line - cell.first_line + 1


def load(text: str) -> Notebook:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NotebookError(f"invalid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list) or data.get("nbformat", 0) < 4:
        raise NotebookError("not an nbformat 4 notebook (no top-level 'cells' list)")
    cells = []
    for i, raw in enumerate(data["cells"]):
        if isinstance(raw, dict) and raw.get("cell_type") == "code":
            source = raw.get("source", "")
            was_list = isinstance(source, list)
            cells.append(Cell(i, "".join(source) if was_list else str(source), was_list))
    joined = _join(cells)
    return Notebook(data, _layout(text, data), text.endswith("\n"), cells, joined)


def is_python(nb: Notebook) -> bool:
    meta = nb.data.get("metadata") or {}
    language = (meta.get("kernelspec") or {}).get("language") or (meta.get("language_info") or {}).get("name")
    return language in (None, "python", "python3")


def _join(cells: list[Cell]) -> str:
    parts, line = [], 1
    counter = 0
    for cell in cells:
        lines = split_lines(cell.source)
        python_magic = bool(lines) and lines[0].strip().startswith(PYTHON_CELL_MAGICS)
        foreign = bool(lines) and lines[0].lstrip().startswith("%%") and not python_magic
        out = []
        for n, text in enumerate(lines, 1):
            if foreign or (n == 1 and python_magic) or _MAGIC_LINE.match(text):
                counter += 1
                ending = text[len(text.rstrip("\r\n")):] or "\n"
                indent = "" if foreign else text[:len(text) - len(text.lstrip())]
                text = f"{indent}pass  # opencann-ipython-{counter}{ending}"
            out.append(text)
        body = "".join(out)
        if body and not body.endswith(("\n", "\r")):
            body += "\n"
        cell.first_line = line
        line += len(split_lines(body))
        parts.append(body)
    return "".join(parts)


def finding_cell(nb: Notebook, line: int, rule: str) -> tuple[Cell, int]:
    """Where a finding of the joined module is reported: its cell and line there (the opencann import and
    oc.enable() inserted at a cell's start are reported where split_edits puts them)."""
    cell, local = nb.locate(line)
    position = nb.cells.index(cell)
    if local == 1 and rule in ATTACH_TO_PREVIOUS and position:
        cell = nb.cells[position - 1]
        local = len(split_lines(cell.source)) + 1
    return cell, local


def split_edits(nb: Notebook, edits: list[SpanEdit]) -> dict[int, list[SpanEdit]]:
    """The joined module's edits as edits of each cell's original source, keyed by cell index.

    Placeholder lines are never edited (no rule matches ``pass``), and every other line is the same in the
    joined module and in its cell, so positions carry over line for line."""
    per_cell: dict[int, list[SpanEdit]] = {}
    order = {c.index: i for i, c in enumerate(nb.cells)}
    for e in edits:
        cell, line = nb.locate(e.start[0])
        end_line, text = e.end[0] - cell.first_line + 1, e.text
        if e.is_insert and e.start[1] == 0 and line == 1 and e.rule in ATTACH_TO_PREVIOUS and order[cell.index]:
            cell = nb.cells[order[cell.index] - 1]
            line = end_line = len(split_lines(cell.source)) + 1
        lines = split_lines(cell.source)
        open_end = bool(lines) and not cell.source.endswith(("\n", "\r"))  # the joined module added a line end
        start, end = (line, e.start[1]), (end_line, e.end[1])
        if open_end and end_line > len(lines):
            start = (len(lines), len(lines[-1])) if e.is_insert else start
            end = (len(lines), len(lines[-1]))
            text = "\n" + text.rstrip("\r\n") if e.is_insert else text.rstrip("\r\n")
        per_cell.setdefault(cell.index, []).append(SpanEdit(start, end, text, e.rule))
    return per_cell


def dump(nb: Notebook, sources: dict[int, str]) -> str:
    """The notebook's JSON with the given cells' sources replaced."""
    data = nb.data
    for index, source in sources.items():
        cell = data["cells"][index]
        was_list = isinstance(cell.get("source"), list)
        cell["source"] = split_lines(source) if was_list else source
    layout = nb.layout or {"indent": 1, "ensure_ascii": False, "sort_keys": True}
    text = json.dumps(data, **layout)
    return text + "\n" if nb.trailing_newline else text


def _layout(text: str, data: dict) -> dict | None:
    for indent in (1, 2, 4, None, 3, "\t"):
        for ensure_ascii in (False, True):
            for sort_keys in (True, False):
                layout = {"indent": indent, "ensure_ascii": ensure_ascii, "sort_keys": sort_keys}
                if json.dumps(data, **layout) == text.rstrip("\n"):
                    return layout
    return None
