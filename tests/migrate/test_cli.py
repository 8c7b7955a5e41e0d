"""``opencann migrate``: options, documented exit codes, never touching the input, reports on disk."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from opencann.cli.main import main
from tests.migrate.conftest import CORPUS

REPORT_FILES = {"migration_report.txt", "changes.csv", "api_analysis.csv", "summary.json", "report.html"}


def tree_digest(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(tmp_path) -> Path:
    src = tmp_path / "project"
    shutil.copytree(CORPUS / "project_multi", src)
    (src / "data.bin").write_bytes(bytes(range(256)))
    return src


def test_directory_migration_copies_other_files_and_never_touches_the_input(project, tmp_path, capsys):
    before = tree_digest(project)
    out, report = tmp_path / "out", tmp_path / "report"
    assert main(["migrate", "-i", str(project), "-o", str(out), "-r", str(report), "-m", "main.py", "-q"]) == 0
    assert tree_digest(project) == before
    after = tree_digest(out)
    assert set(after) == set(before)
    assert {k for k in after if after[k] != before[k]} == {"main.py", "data.py"}
    assert (out / "data.bin").read_bytes() == bytes(range(256))
    assert {p.name for p in report.iterdir()} == REPORT_FILES
    summary = json.loads((report / "summary.json").read_text())
    assert summary["entry_files"] == {"main.py": "force_fp32"} and summary["exit_code"] == 0
    assert capsys.readouterr().out == ""


def test_exit_codes_follow_fail_on(tmp_path, capsys):
    src = CORPUS / "horovod_keras.py"
    assert main(["migrate", "-i", str(src), "-o", str(tmp_path / "a.py"), "-q"]) == 1
    assert main(["migrate", "-i", str(src), "-o", str(tmp_path / "b.py"), "--fail-on", "none", "-q"]) == 0
    keras = CORPUS / "keras_fit.py"
    assert main(["migrate", "-i", str(keras), "-o", str(tmp_path / "c.py"), "-q"]) == 0
    assert main(["migrate", "-i", str(keras), "-o", str(tmp_path / "d.py"), "--fail-on", "info", "-q"]) == 1
    assert (tmp_path / "a_report" / "migration_report.txt").exists()
    assert "import opencann.tf as oc" in (tmp_path / "c.py").read_text()


@pytest.mark.parametrize("args,message", [
    (["-i", "missing_dir", "-o", "x"], "does not exist"),
    (["-i", "{corpus}/keras_fit.py"], "-o/--output is required"),
    (["-i", "{project}", "-o", "{project}/out"], "inside the input folder"),
    (["-i", "{project}", "-o", "{tmp}/o", "-r", "{project}/r"], "inside the input folder"),
    (["-i", "{project}", "-o", "{tmp}"], "contains the input"),
    (["-i", "{project}", "-o", "{tmp}/o", "--format", "txt,pdf"], "--format"),
    (["-i", "{project}", "-o", "{tmp}/o", "-m", "nope.py"], "--main 'nope.py'"),
    (["-i", "{project}/README.md", "-o", "{tmp}/o"], "neither a folder nor"),
    (["-i", "{project}", "-o", "{tmp}/full"], "exists and is not an empty folder"),
])
def test_usage_errors_exit_2_and_write_nothing(args, message, project, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    before = tree_digest(tmp_path)
    args = [a.format(corpus=CORPUS, project=project, tmp=tmp_path) for a in args]
    assert main(["migrate", *args, "-q"]) == 2
    assert message in capsys.readouterr().err
    assert tree_digest(tmp_path) == before


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["migrate", "-i", "x", "-o", "y", "--fail-on", "sometimes"])
    assert exc.value.code == 2


def test_force_replaces_an_existing_output(project, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    assert main(["migrate", "-i", str(project), "-o", str(out), "--force", "-q"]) == 0
    assert not (out / "stale.txt").exists() and (out / "main.py").exists()


def test_dry_run_writes_only_the_chosen_reports(project, tmp_path, capsys):
    report = tmp_path / "r"
    assert main(["migrate", "-i", str(project), "--dry-run", "-r", str(report), "--format", "csv,json", "-q"]) == 0
    assert {p.name for p in tmp_path.iterdir()} == {"project", "r"}
    assert {p.name for p in report.iterdir()} == {"changes.csv", "api_analysis.csv", "summary.json"}
    assert json.loads((report / "summary.json").read_text())["output"] is None
    assert main(["migrate", "-i", str(project), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "opencann migrate report" in printed and "main.py:" in printed


def test_the_command_runs_without_a_terminal_or_stdin(tmp_path):
    """Non-interactive: no stdin, progress on stderr, the summary on stdout, exit 1 for the estimator."""
    out = tmp_path / "out.py"
    proc = subprocess.run([sys.executable, "-m", "opencann.cli.main", "migrate", "-i",
                           str(CORPUS / "estimator_legacy.py"), "-o", str(out)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "migrating" in proc.stderr and "1/1" in proc.stderr
    assert "opencann migrate: 1 files, 1 changed" in proc.stdout
    assert f"report: {tmp_path / 'out_report' / 'report.html'}" in proc.stdout
