"""Migrate a project: every ``.py`` file and notebook under the input, other files copied unchanged.

Two passes: the first decodes and parses every file (finding the project-wide facts: the
mixed-precision policy, the entry files), the second rewrites. The input is only read; the output tree
is assembled in a temporary folder next to it and renamed into place, so it is never half-written.
"""
from __future__ import annotations

import ast
import io
import os
import shutil
import tempfile
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import libcst as cst

from opencann.migrate import notebook as nbmod
from opencann.migrate.analysis import Classifier, Lookup
from opencann.migrate.edits import Text, apply, line_changes
from opencann.migrate.results import ApiUse, FileResult, Finding, Section
from opencann.migrate.rewriter import Context, has_entry_shape, migrate_text, precision_modes, uses_tensorflow
from opencann.migrate.rules import BY_ID
from opencann.migrate.scan import Facts, Meta, parse

MAX_BYTES = 2 * 2**20  # LibCST's scope analysis takes about a minute per MB
SKIP_DIRS = (".ipynb_checkpoints", "__pycache__")


class InputError(ValueError):
    """Bad input or options (the CLI exits 2)."""


@dataclass
class Options:
    main: str | None = None  # the entry file, relative to the input folder
    distributed: str | None = None  # horovod | tf_strategy
    lookup: Lookup | None = None  # the API database (default: opencann.migrate.database.lookup)


@dataclass
class Migration:
    root: Path  # the input folder (a single-file input's parent)
    single: bool  # the input was one file
    results: list[FileResult] = field(default_factory=list)
    options: Options = field(default_factory=Options)

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings]

    @property
    def api_uses(self) -> list[ApiUse]:
        return [u for r in self.results for u in r.api_uses]


@dataclass
class _Unit:
    """A parsed file waiting for the rewrite pass."""

    result: FileResult
    encoding: str
    text: str
    meta: Meta
    facts: Facts
    notebook: nbmod.Notebook | None = None


def discover(src: Path) -> tuple[Path, list[str]]:
    """The root folder and the files to process, as sorted relative paths with "/" separators."""
    if src.is_file():
        return src.parent, [src.name]
    if not src.is_dir():
        raise InputError(f"input '{src}' does not exist")
    files = []
    for folder, dirs, names in os.walk(src):
        base = Path(folder).relative_to(src)
        links = [d for d in dirs if (Path(folder) / d).is_symlink()]  # copied as links, not walked
        dirs[:] = sorted(d for d in dirs if d not in links)
        files += [(base / n).as_posix() for n in names + links]
    return src, sorted(files)


def kind_of(rel: str) -> str:
    if any(part in SKIP_DIRS for part in rel.split("/")[:-1]):
        return "other"
    return {".py": "python", ".ipynb": "notebook"}.get(os.path.splitext(rel)[1], "other")


def migrate_project(src: Path, options: Options | None = None,
                    progress: Callable[[str], None] | None = None) -> Migration:
    options = options or Options()
    root, files = discover(src)
    migration = Migration(root, src.is_file(), options=options)
    if options.main is not None and options.main not in files:
        raise InputError(f"--main '{options.main}' is not a file of the input")
    classifier = Classifier(options.lookup)
    units = []
    for rel in files:
        result, unit = _load(root, rel, classifier)
        migration.results.append(result)
        if unit is not None:
            units.append(unit)
    entries = _entries(units, options, migration.single)
    by_path = {u.result.path: u for u in units}
    for result in migration.results:
        unit = by_path.get(result.path)
        if unit is not None:
            mode = _precision_mode(unit, by_path) if result.path in entries else "force_fp32"
            ctx = Context(classifier, result.path in entries, mode, options.distributed)
            try:
                _rewrite(unit, ctx)
            except Exception as exc:  # a rewriter bug must not stop the project: keep the file as it was
                result.sections, result.api_uses, result.output = [], [], None
                _fail(result, "OC064", "failed", error=f"{type(exc).__name__}: {exc}")
        if progress:
            progress(result.path)
    return migration


def _precision_mode(entry: _Unit, units: dict[str, _Unit]) -> str:
    """The precision mode an entry file asks for: the mixed-precision policy set in it or in a project
    module it imports (directly or not)."""
    modes = [m for path in _reachable(entry, units) for m in precision_modes(units[path].facts)]
    return next((m for m in ("allow_mix_precision", "allow_mix_precision_bf16") if m in modes), "force_fp32")


def _reachable(entry: _Unit, units: dict[str, _Unit]) -> list[str]:
    """The project files an entry imports, itself first (imports resolved from the project root and from
    each file's folder, as running the script would)."""
    modules = {}
    for path in units:
        if path.endswith(".py"):
            name = path[:-3].removesuffix("/__init__").replace("/", ".")
            modules[name] = path
    seen, todo = [entry.result.path], [entry.result.path]
    while todo:
        path = todo.pop()
        folder = path.rpartition("/")[0].replace("/", ".")
        for imp in units[path].facts.imports:
            for name, _ in imp.names:
                for candidate in (name, name.rpartition(".")[0], f"{folder}.{name}" if folder else name):
                    target = modules.get(candidate)
                    if target and target not in seen:
                        seen.append(target)
                        todo.append(target)
    return seen


def _entries(units: list[_Unit], options: Options, single: bool) -> set[str]:
    if options.main is not None:
        return {options.main}
    if single:
        return {u.result.path for u in units}
    return {u.result.path for u in units
            if uses_tensorflow(u.facts) and (u.notebook is not None or has_entry_shape(u.meta, u.facts))}


def _load(root: Path, rel: str, classifier: Classifier) -> tuple[FileResult, _Unit | None]:
    kind = kind_of(rel)
    result = FileResult(rel, kind, "copied")
    if kind == "other":
        return result, None
    path = root / rel
    if path.is_symlink() or path.stat().st_size > MAX_BYTES:
        if not path.is_symlink():
            _fail(result, "OC062", "skipped", limit=MAX_BYTES // 2**20)
        return result, None
    data = path.read_bytes()
    try:
        text, encoding = decode(data)
    except (SyntaxError, UnicodeError, LookupError) as exc:
        _fail(result, "OC061", "failed", error=str(exc))
        return result, None
    nb = None
    source = text
    if kind == "notebook":
        try:
            nb = nbmod.load(text)
        except nbmod.NotebookError as exc:
            _fail(result, "OC063", "failed", error=str(exc))
            return result, None
        if not nbmod.is_python(nb):
            result.status = "unchanged"
            return result, None
        source = nb.joined
    try:
        meta, facts = parse(source, classifier.known)
    except cst.ParserSyntaxError as exc:
        _syntax_error(result, nb, *_error_position(source, exc))
        return result, None
    except (RecursionError, ValueError, TypeError) as exc:  # the parser's limits (deep nesting, bad characters)
        _syntax_error(result, nb, 1, 1, f"{type(exc).__name__}: {exc}")
        return result, None
    return result, _Unit(result, encoding, source, meta, facts, nb)


def _error_position(source: str, exc: cst.ParserSyntaxError) -> tuple[int, int, str]:
    """Where the file stops being Python: Python's own parser (parsing only) names the place a reader
    expects (LibCST names the next token); LibCST's position when only LibCST refuses the file."""
    try:
        ast.parse(source)
    except SyntaxError as error:
        return error.lineno or 1, error.offset or 1, error.msg
    except (ValueError, RecursionError, MemoryError):
        pass
    return exc.raw_line, exc.raw_column + 1, exc.message


def _syntax_error(result: FileResult, nb: nbmod.Notebook | None, line: int, col: int, error: str) -> None:
    path_label = result.path
    if nb is not None and nb.cells:
        cell, line = nb.locate(line)
        path_label = f"{result.path}#{cell.label}"
    message = BY_ID["OC060"].message.format(error=" ".join(error.split()))
    result.findings.append(Finding(path_label, line, col, "error", "OC060", message))
    result.status = "failed"


def _fail(result: FileResult, rule_id: str, status: str, **fields) -> None:
    rule = BY_ID[rule_id]
    result.findings.append(Finding(result.path, 1, 1, rule.level, rule.id, rule.message.format(**fields)))
    result.status = status


def decode(data: bytes) -> tuple[str, str]:
    """Text and encoding (PEP 263 cookie or BOM, else UTF-8); refuses bytes that would not round-trip."""
    encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
    text = data.decode(encoding)
    if text.encode(encoding) != data:
        raise UnicodeError(f"the {encoding} text does not re-encode to the same bytes")
    return text, encoding


def _rewrite(unit: _Unit, ctx: Context) -> None:
    result = unit.result
    outcome = migrate_text(unit.text, unit.meta, unit.facts, ctx)
    result.entry = ctx.precision_mode if ctx.entry else ""
    if unit.notebook is None:
        _python_result(result, unit, outcome)
    else:
        _notebook_result(result, unit, outcome)
    result.status = "changed" if any(s.changes for s in result.sections) else "unchanged"
    if result.status == "unchanged":
        result.output = None


def _python_result(result: FileResult, unit: _Unit, outcome) -> None:
    changes = line_changes(Text(unit.text), outcome.edits)
    result.sections = [Section(result.path, unit.text, outcome.text, changes)]
    result.findings += [Finding(result.path, line, col, level, rule, msg) for line, col, level, rule, msg in
                        outcome.findings]
    result.api_uses = [ApiUse(result.path, *use) for use in outcome.uses]
    result.output = outcome.text.encode(unit.encoding)


def _notebook_result(result: FileResult, unit: _Unit, outcome) -> None:
    nb = unit.notebook
    per_cell = nbmod.split_edits(nb, outcome.edits)
    sources = {}
    for cell in nb.cells:
        text = Text(cell.source)
        edits = per_cell.get(cell.index, [])
        migrated = apply(text, edits)
        result.sections.append(Section(f"{result.path}#{cell.label}", cell.source, migrated, line_changes(text, edits)))
        if edits:
            sources[cell.index] = migrated
    for line, col, level, rule, msg in outcome.findings:
        cell, local = nbmod.finding_cell(nb, line, rule)
        result.findings.append(Finding(f"{result.path}#{cell.label}", local, col, level, rule, msg))
    for line, *rest in outcome.uses:
        cell, local = nb.locate(line)
        result.api_uses.append(ApiUse(f"{result.path}#{cell.label}", local, *rest))
    result.output = nbmod.dump(nb, sources).encode(unit.encoding) if sources else None


def write_tree(migration: Migration, out: Path, force: bool = False) -> None:
    """Write the migrated project to ``out`` (a folder; for a single-file input, a file path ending in its
    suffix, or a folder): assembled next to it, then renamed into place."""
    if migration.single and out.suffix == Path(migration.results[0].path).suffix:
        _write_file(migration.results[0], migration.root, out)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise InputError(f"output '{out}' exists and is not an empty folder (pass --force to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        for result in migration.results:
            _write_file(result, migration.root, tmp / result.path)
        if out.exists():
            shutil.rmtree(out) if out.is_dir() and not out.is_symlink() else out.unlink()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_file(result: FileResult, root: Path, target: Path) -> None:
    source = root / result.path
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_symlink():
        os.symlink(os.readlink(source), target)
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if result.output is not None:
                f.write(result.output)
            else:
                with open(source, "rb") as src:
                    shutil.copyfileobj(src, f)
        shutil.copymode(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
