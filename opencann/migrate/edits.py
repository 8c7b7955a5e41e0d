"""Edits on source text: span edits made by the rules, and the line changes the reports list.

The rewriter never regenerates a file: it replaces exact spans of the original text, so everything
outside them stays byte for byte. A :class:`SpanEdit` replaces the text between two (line, column)
positions (1-based lines, 0-based columns in characters, as LibCST's ``PositionProvider`` gives them).
:func:`line_changes` turns the accepted span edits into whole-line :class:`Change` records: lines
``start..end`` of the original (1-based, inclusive) become ``new``; an INSERT has ``old == ""`` and puts
``new`` before line ``start`` (``end == start - 1``), a DELETE has ``new == ""``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

_NEWLINE = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Lines with their line ends, split the way Python's tokenizer does (only \\r\\n, \\r and \\n)."""
    lines, start = [], 0
    for m in _NEWLINE.finditer(text):
        lines.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        lines.append(text[start:])
    return lines


def line_end(text: str) -> str:
    """The file's first line end (``\\n`` when it has none)."""
    m = _NEWLINE.search(text)
    return m.group() if m else "\n"


@dataclass(frozen=True)
class SpanEdit:
    start: tuple[int, int]
    end: tuple[int, int]
    text: str
    rule: str

    @property
    def is_insert(self) -> bool:
        return self.start == self.end


@dataclass
class EditGroup:
    """Span edits made by one rule application, accepted or dropped together, and what the report says."""

    rule: str
    edits: list[SpanEdit]
    line: int
    col: int
    message: str
    level: str = "info"


@dataclass
class Change:
    start: int
    end: int
    op: str  # INSERT / MODIFY / DELETE
    old: str
    new: str
    rules: list[str] = field(default_factory=list)


class Text:
    """Source text addressed by (line, column) positions."""

    def __init__(self, text: str):
        self.text = text
        self.lines = split_lines(text)
        self._starts = [0]
        for line in self.lines:
            self._starts.append(self._starts[-1] + len(line))

    def offset(self, pos: tuple[int, int]) -> int:
        line, col = pos
        if line > len(self.lines):
            return len(self.text)
        return self._starts[line - 1] + col

    def slice(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        return self.text[self.offset(start):self.offset(end)]

    def line(self, number: int) -> str:
        return self.lines[number - 1] if 0 < number <= len(self.lines) else ""

    def indent(self, number: int) -> str:
        line = self.line(number)
        return line[:len(line) - len(line.lstrip(" \t\f"))]


def overlaps(a: SpanEdit, b: SpanEdit, text: Text) -> bool:
    """Whether two edits touch the same characters (insertions at a replaced span's ends do not)."""
    a0, a1, b0, b1 = (text.offset(p) for p in (a.start, a.end, b.start, b.end))
    if a0 == a1 and b0 == b1:
        return False
    if a0 == a1:
        return b0 < a0 < b1
    if b0 == b1:
        return a0 < b0 < a1
    return a0 < b1 and b0 < a1


def accept(groups: list[EditGroup], text: Text) -> list[EditGroup]:
    """The groups that do not collide with a larger one (an outer edit supersedes edits inside it)."""
    def size(group: EditGroup) -> int:
        return max((text.offset(e.end) - text.offset(e.start) for e in group.edits), default=0)

    accepted: list[EditGroup] = []
    for group in sorted(groups, key=lambda g: -size(g)):
        if not any(overlaps(e, f, text) for e in group.edits for g in accepted for f in g.edits):
            accepted.append(group)
    return sorted(accepted, key=lambda g: (g.line, g.col))


def ordered(edits: list[SpanEdit], text: Text) -> list[SpanEdit]:
    """Edits in text order; insertions at one place keep their given order and precede a replacement there."""
    keyed = [(text.offset(e.start), 0 if e.is_insert else 1, i, e) for i, e in enumerate(edits)]
    return [e for *_, e in sorted(keyed, key=lambda k: k[:3])]


def apply(text: Text, edits: list[SpanEdit]) -> str:
    out, pos = [], 0
    for e in ordered(edits, text):
        start, end = text.offset(e.start), text.offset(e.end)
        out.append(text.text[pos:start])
        out.append(e.text)
        pos = end
    out.append(text.text[pos:])
    return "".join(out)


def _line_range(e: SpanEdit) -> tuple[int, int]:
    """The original lines an edit touches; an insertion at a line start touches none: (l, l - 1)."""
    (l1, c1), (l2, c2) = e.start, e.end
    if e.is_insert:
        return (l1, l1 - 1) if c1 == 0 else (l1, l1)
    return (l1, l2 if c2 > 0 else l2 - 1)


def line_changes(text: Text, edits: list[SpanEdit]) -> list[Change]:
    """Whole-line changes covering ``edits``; edits that share lines (or one insertion point) merge."""
    groups: list[tuple[int, int, list[SpanEdit]]] = []
    for e in ordered(edits, text):
        first, last = _line_range(e)
        if groups and _joins(groups[-1][:2], (first, last)):
            gf, gl, members = groups[-1]
            groups[-1] = (gf, max(gl, last), members + [e])
        else:
            groups.append((first, last, [e]))
    return [_change(text, first, last, members) for first, last, members in groups]


def _joins(group: tuple[int, int], edit: tuple[int, int]) -> bool:
    (gf, gl), ef = group, edit[0]
    if gl < gf:  # the group is an insertion point so far
        return ef == gf
    return ef <= gl


def _change(text: Text, first: int, last: int, edits: list[SpanEdit]) -> Change:
    old = "".join(text.line(n) for n in range(first, last + 1))
    base = text.offset((first, 0))
    local = Text(old)
    shifted = [SpanEdit(_local(text, local, base, e.start), _local(text, local, base, e.end), e.text, e.rule)
               for e in edits]
    new = apply(local, shifted)
    op = "INSERT" if not old else "DELETE" if not new else "MODIFY"
    rules = sorted({e.rule for e in edits})
    return Change(first, last, op, old, new, rules)


def _local(text: Text, local: Text, base: int, pos: tuple[int, int]) -> tuple[int, int]:
    """A position of ``text`` as a position in ``local``, the excerpt that starts at offset ``base``."""
    offset = text.offset(pos) - base
    for i, start in enumerate(local._starts[:-1]):
        if offset < local._starts[i + 1] or i == len(local.lines) - 1:
            return i + 1, offset - start
    return 1, offset


def apply_changes(original: str, changes: list[Change]) -> str:
    """Re-apply reported line changes to the original text (what the report-versus-diff test checks)."""
    lines = split_lines(original)
    out, nxt = [], 1
    for c in sorted(changes, key=lambda c: (c.start, c.end)):
        out.extend(lines[nxt - 1:c.start - 1])
        if c.old != "".join(lines[c.start - 1:c.end]):
            raise ValueError(f"change at lines {c.start}-{c.end}: old text does not match the original")
        out.append(c.new)
        nxt = c.end + 1
    out.extend(lines[nxt - 1:])
    return "".join(out)
