"""The report files: migration_report.txt, changes.csv, api_analysis.csv, summary.json, report.html.

Every file is written to a temporary name and renamed. Paths in the reports are relative to the input
folder (a notebook cell is ``nb.ipynb#cell3``, its lines counted in the cell); lines and columns are
1-based; changes.csv lines refer to the original file (an INSERT puts ``new`` before ``start line``).
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections import Counter
from pathlib import Path

from opencann.migrate.project import Migration
from opencann.migrate.rules import LEVELS, level_rank

CATEGORY_ORDER = ("supported", "migrated", "harmless", "manual", "removed", "unknown")
CATEGORY_TEXT = {
    "supported": "supported: runs on opencann as it is",
    "migrated": "supported after automatic migration",
    "harmless": "unsupported but harmless (debugging, summaries...)",
    "manual": "unsupported: needs manual migration",
    "removed": "deprecated or removed in TensorFlow 2.x",
    "unknown": "unknown: not in the API database",
}
FORMATS = ("txt", "csv", "json", "html")


def categories() -> dict[str, str]:
    """Category -> one-line description, from the API database when it is installed."""
    try:
        from opencann.migrate.database import CATEGORIES
    except ImportError:
        return dict(CATEGORY_TEXT)
    items = CATEGORIES.items() if isinstance(CATEGORIES, dict) else CATEGORIES
    described = {}
    for item in items:
        name, text = (item, CATEGORY_TEXT.get(item, item)) if isinstance(item, str) else item
        described[name] = text
    return described or dict(CATEGORY_TEXT)


def exit_code(migration: Migration, fail_on: str) -> int:
    """0: nothing at or above ``fail_on`` (``none`` never fails); 1: something is."""
    if fail_on == "none":
        return 0
    return int(any(level_rank(f.level) >= level_rank(fail_on) for f in migration.findings))


def summary(migration: Migration, src: str, out: str | None, fail_on: str) -> dict:
    results = migration.results
    changes = [c for r in results for _, c in r.changes]
    levels = Counter(f.level for f in migration.findings)
    cats = Counter(u.category for u in migration.api_uses)
    kinds, statuses = Counter(r.kind for r in results), Counter(r.status for r in results)
    from opencann import __version__

    return {
        "tool": "opencann migrate", "version": __version__, "input": src, "output": out,
        "options": {"main": migration.options.main, "distributed": migration.options.distributed,
                    "fail_on": fail_on},
        "files": {"total": len(results), **{k: kinds.get(k, 0) for k in ("python", "notebook", "other")},
                  **{s: statuses.get(s, 0) for s in ("changed", "unchanged", "failed", "skipped", "copied")}},
        "edits": {"total": len(changes), **{op: sum(c.op == op for c in changes) for op in ("INSERT", "MODIFY",
                                                                                           "DELETE")}},
        "findings": {level: levels.get(level, 0) for level in reversed(LEVELS)},
        "api_uses": {"total": sum(cats.values()), **{c: cats.get(c, 0) for c in CATEGORY_ORDER}},
        "entry_files": {r.path: r.entry for r in results if r.entry},
        "per_file": [{"path": r.path, "kind": r.kind, "status": r.status, "entry": bool(r.entry),
                      "edits": len(r.changes), "findings": dict(Counter(f.level for f in r.findings)),
                      "api_uses": len(r.api_uses)} for r in results],
        "exit_code": exit_code(migration, fail_on),
    }


def text_report(migration: Migration, info: dict) -> str:
    files, edits, levels, apis = info["files"], info["edits"], info["findings"], info["api_uses"]
    lines = [
        "opencann migrate report",
        "=======================",
        f"Input:  {info['input']}",
        f"Output: {info['output'] or '(dry run: nothing written)'}",
        "Entry files (oc.enable): " + (", ".join(f"{path} ({mode})" for path, mode in info["entry_files"].items())
                                       or "none"),
        "",
        f"Files: {files['total']} ({files['python']} Python, {files['notebook']} notebooks, {files['other']} other "
        f"copied); {files['changed']} changed, {files['unchanged']} unchanged, {files['failed']} failed, "
        f"{files['skipped']} skipped",
        f"Edits: {edits['total']} (INSERT {edits['INSERT']}, MODIFY {edits['MODIFY']}, DELETE {edits['DELETE']})",
        "Items by level: " + ", ".join(f"{level.upper()} {levels[level]}" for level in levels),
        f"API uses: {apis['total']} (" + ", ".join(f"{c} {apis[c]}" for c in CATEGORY_ORDER) + ")",
        "",
        "Findings (path:line:col: LEVEL: rule message)",
        "---------------------------------------------",
    ]
    findings = sorted(migration.findings, key=lambda f: (f.path, f.line, f.col, f.rule))
    lines += [f.format() for f in findings]
    return "\n".join(lines) + "\n"


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerows(rows)
    return buf.getvalue()


def changes_csv(migration: Migration) -> str:
    rows: list[list] = [["file", "start_line", "end_line", "operation", "old", "new", "rule_id"]]
    for result in migration.results:
        for path, c in result.changes:
            rows.append([path, c.start, c.end, c.op, c.old, c.new, ";".join(c.rules)])
    return _csv(rows)


def api_csv(migration: Migration) -> str:
    rows: list[list] = [["file", "line", "module", "api", "category", "note"]]
    rows += [[u.path, u.line, u.module, u.api, u.category, u.note] for u in migration.api_uses]
    return _csv(rows)


def write_reports(migration: Migration, report_dir: Path, info: dict, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write the chosen report formats; returns the files written."""
    report_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    if "txt" in formats:
        files["migration_report.txt"] = text_report(migration, info)
    if "csv" in formats:
        files["changes.csv"] = changes_csv(migration)
        files["api_analysis.csv"] = api_csv(migration)
    if "json" in formats:
        files["summary.json"] = json.dumps(info, indent=2, ensure_ascii=False) + "\n"
    if "html" in formats:
        from opencann.migrate.report_html import html_report

        files["report.html"] = html_report(migration, info, categories())
    written = []
    for name, text in files.items():
        written.append(write_text(report_dir / name, text))
    return written


def write_text(path: Path, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
