"""The corpus (tests/migrate/corpus): each case migrates to its golden output and golden reports byte for
byte, every migrated file parses, migrating again changes nothing, and changes.csv is exactly the diff.

Regenerate the goldens after an intended change with ``UPDATE_GOLDEN=1 pytest tests/migrate/test_corpus.py``
and review the diff.
"""
from __future__ import annotations

import ast
import csv
import difflib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from opencann.migrate.edits import Change, apply_changes, split_lines
from tests.migrate.conftest import GOLDEN, case_input, cases, migrate_case

UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
REPORTS = ("migration_report.txt", "changes.csv", "api_analysis.csv")
EXPECTED_RULES = {  # what each case is there to show
    "keras_fit": {"OC001", "OC002"}, "custom_loop": {"OC001", "OC002"}, "tf_data_static": {"OC030"},
    "tf1_session": {"OC010", "OC014"}, "tf1_monitored": {"OC011"}, "estimator_legacy": {"OC104"},
    "horovod_keras": {"OC040"}, "mirrored_strategy": {"OC041"}, "mixed_precision": {"OC003"},
    "gpu_specific": {"OC020", "OC021", "OC022", "OC023", "OC025", "OC027", "OC029"},
    "aliased_imports": {"OC050", "OC051"},
    "notebook": {"OC001", "OC022"}, "broken_syntax": {"OC060"}, "contrib_tf1": {"OC104", "OC010"},
    "summaries_debug": {"OC102"}, "project_multi": {"OC021", "OC002"}, "modern_syntax": {"OC002"},
}


def produced_files(folder: Path) -> dict[str, bytes]:
    files = {f"output/{p.relative_to(folder / 'output').as_posix()}": p.read_bytes()
             for p in sorted((folder / "output").rglob("*")) if p.is_file()}
    files.update({name: (folder / name).read_bytes() for name in REPORTS})
    return files


def test_corpus_has_every_kind_of_script():
    assert len(cases()) >= 15
    assert set(EXPECTED_RULES) <= set(cases())


@pytest.mark.parametrize("case", cases())
def test_case_matches_its_golden_files(case, migrated_corpus):
    folder, migration, info = migrated_corpus[case]
    produced = produced_files(folder)
    golden = GOLDEN / case
    if UPDATE:
        shutil.rmtree(golden, ignore_errors=True)
        for rel, data in produced.items():
            (golden / rel).parent.mkdir(parents=True, exist_ok=True)
            (golden / rel).write_bytes(data)
    expected = {p.relative_to(golden).as_posix(): p.read_bytes() for p in sorted(golden.rglob("*")) if p.is_file()}
    assert sorted(produced) == sorted(expected)
    for rel, data in produced.items():
        assert data == expected[rel], f"{case}/{rel} differs from its golden file"
    assert EXPECTED_RULES.get(case, set()) <= {f.rule for f in migration.findings}


def python_sources(folder: Path) -> dict[str, str]:
    """Every migrated Python text: .py files, and notebooks' code cells joined (IPython lines as pass)."""
    sources = {}
    for path in (folder / "output").rglob("*"):
        if path.suffix == ".py":
            sources[str(path)] = path.read_text()
        elif path.suffix == ".ipynb":
            cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
            lines = [("pass" if line.lstrip().startswith(("%", "!")) else line.rstrip("\n")) + "\n"
                     for cell in cells if not cell.startswith("%%") for line in split_lines(cell)]
            sources[str(path)] = "".join(lines)
    return sources


@pytest.mark.parametrize("case", [c for c in cases() if c != "broken_syntax"])
def test_every_migrated_file_parses(case, migrated_corpus):
    for path, source in python_sources(migrated_corpus[case][0]).items():
        ast.parse(source, filename=path)


@pytest.mark.parametrize("case", cases())
def test_migrating_a_migrated_case_changes_nothing(case, migrated_corpus, tmp_path):
    output = migrated_corpus[case][0] / "output"
    src = output / case_input(case).name if case_input(case).is_file() else output
    migration, _ = migrate_case(case, tmp_path, src)
    assert [c for r in migration.results for c in r.changes] == []
    again = produced_files(tmp_path)
    for rel, data in produced_files(migrated_corpus[case][0]).items():
        if rel.startswith("output/"):
            assert again[rel] == data, rel


def read_changes(folder: Path) -> dict[str, list[Change]]:
    changes: dict[str, list[Change]] = {}
    with open(folder / "changes.csv", newline="") as f:
        for row in csv.DictReader(f):
            change = Change(int(row["start_line"]), int(row["end_line"]), row["operation"], row["old"], row["new"],
                            row["rule_id"].split(";"))
            changes.setdefault(row["file"], []).append(change)
    return changes


@pytest.mark.parametrize("case", cases())
def test_changes_csv_is_exactly_the_diff(case, migrated_corpus):
    folder, migration, info = migrated_corpus[case]
    reported = read_changes(folder)
    sections = {s.path: s for r in migration.results for s in r.sections}
    assert set(reported) <= set(sections)
    assert sum(len(v) for v in reported.values()) == info["edits"]["total"]
    for path, section in sections.items():
        changes = reported.get(path, [])
        assert apply_changes(section.original, changes) == section.migrated, path
        old, new = split_lines(section.original), split_lines(section.migrated)
        touched = {n for c in changes for n in range(c.start, c.end + 1)}
        diffed = {i + 1 for tag, i1, i2, _, _ in difflib.SequenceMatcher(None, old, new, autojunk=False).get_opcodes()
                  if tag in ("replace", "delete") for i in range(i1, i2)}
        assert diffed <= touched, path
        for c in changes:
            assert c.op == ("INSERT" if not c.old else "DELETE" if not c.new else "MODIFY")
            assert all(rule.startswith("OC") for rule in c.rules)


@pytest.mark.parametrize("case", cases())
def test_text_report_lists_every_finding_under_its_level(case, migrated_corpus):
    folder, migration, info = migrated_corpus[case]
    text = (folder / "migration_report.txt").read_text()
    lines = text.split("-----\n", 1)[1].splitlines()
    levels = [re.match(r"^.+:\d+:\d+: (ERROR|WARNING|INFO): OC\d{3} ", line).group(1).lower() for line in lines]
    assert len(levels) == len(migration.findings)
    assert info["findings"] == {level: levels.count(level) for level in ("error", "warning", "info")}
    assert "Items by level: " + ", ".join(f"{k.upper()} {v}" for k, v in info["findings"].items()) in text
    assert json.loads((folder / "summary.json").read_text()) == info
