"""What migrating a project produces: per-file results with their findings, line changes and API uses."""
from __future__ import annotations

from dataclasses import dataclass, field

from opencann.migrate.edits import Change


@dataclass(frozen=True)
class Finding:
    """One report line: ``path:line:col: LEVEL: [rule] message`` (line and col 1-based)."""

    path: str
    line: int
    col: int
    level: str
    rule: str
    message: str

    def format(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.level.upper()}: {self.rule} {self.message}"


@dataclass(frozen=True)
class ApiUse:
    """One reference to a TensorFlow/Keras API (a row of api_analysis.csv)."""

    path: str
    line: int
    col: int
    module: str
    api: str
    category: str
    note: str


@dataclass
class Section:
    """One migrated unit of a file: the whole of a .py file, or one code cell of a notebook."""

    path: str  # as reported: "train.py", "nb.ipynb#cell3"
    original: str
    migrated: str
    changes: list[Change] = field(default_factory=list)


@dataclass
class FileResult:
    path: str  # relative to the input root, with "/" separators
    kind: str  # python | notebook | other
    status: str  # changed | unchanged | copied | failed | skipped
    sections: list[Section] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    api_uses: list[ApiUse] = field(default_factory=list)
    entry: str = ""  # for an entry file (the one that gets oc.enable), its precision mode
    output: bytes | None = None  # the bytes to write (None: copy the input as is)

    @property
    def changes(self) -> list[tuple[str, Change]]:
        return [(s.path, c) for s in self.sections for c in s.changes]
