"""Shared helpers of the migration tests: the corpus cases and migrating one into a folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from opencann.migrate.project import Options, migrate_project, write_tree
from opencann.migrate.report import summary, write_reports

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
GOLDEN = HERE / "golden"
MAINS = {"project_multi": "main.py"}  # cases migrated with -m


def cases() -> list[str]:
    return sorted(p.stem if p.is_file() else p.name for p in CORPUS.iterdir() if not p.name.startswith((".", "_")))


def case_input(case: str) -> Path:
    for candidate in (CORPUS / case, CORPUS / f"{case}.py", CORPUS / f"{case}.ipynb"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(case)


def migrate_case(case: str, out_root: Path, src: Path | None = None):
    """Migrate a corpus case into ``out_root/output`` (reports in ``out_root``) as the CLI would; returns
    the migration and its summary."""
    src = src or case_input(case)
    out = out_root / "output"
    if src.is_file():
        out = out / src.name
    migration = migrate_project(src, Options(main=MAINS.get(case)))
    write_tree(migration, out)
    info = summary(migration, f"{case}", "<OUT>", "error")
    write_reports(migration, out_root, info, ("txt", "csv", "json"))
    return migration, info


@pytest.fixture(scope="session")
def migrated_corpus(tmp_path_factory) -> dict[str, tuple]:
    """Every corpus case migrated once per session: case -> (folder, migration, summary)."""
    root = tmp_path_factory.mktemp("migrated")
    done = {}
    for case in cases():
        migration, info = migrate_case(case, root / case)
        done[case] = (root / case, migration, info)
    return done
