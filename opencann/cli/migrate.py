"""``opencann migrate``: rewrite TensorFlow training scripts for opencann and report what needs manual work.

    opencann migrate -i project/ -o project_oc/ [-r report/] [-m train.py]
                     [--distributed horovod|tf_strategy] [--format txt,csv,json,html]
                     [--dry-run] [--fail-on error|warning|info|none] [--force] [--quiet]

The input (a folder, a .py file or a .ipynb notebook) is only read. Python files and notebooks are
migrated, every other file is copied unchanged. Reports go to REPORT_DIR (default: OUT with a
``_report`` suffix). Never interactive.

Exit status: 0 migrated, nothing at or above --fail-on (default: error) left to do; 1 migrated, with
items at or above --fail-on that need manual work (see the report); 2 bad usage or input (nothing written).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from opencann.migrate.rules import LEVELS

EXIT_OK, EXIT_ATTENTION, EXIT_USAGE = 0, 1, 2


def register(sub) -> None:
    p = sub.add_parser("migrate", help="rewrite TensorFlow scripts for opencann and report what is left to do",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-i", "--input", required=True, help="a folder, a .py file or a .ipynb notebook (only read)")
    p.add_argument("-o", "--output", help="the migrated copy: a folder (or, for a file input, a file with the "
                   "same suffix); required unless --dry-run")
    p.add_argument("-r", "--report", help="the report folder (default: OUTPUT_report)")
    p.add_argument("-m", "--main", help="the entry script, relative to the input folder: the one file that "
                   "gets oc.enable() (default: every script with a main guard or top-level TensorFlow calls)")
    p.add_argument("--distributed", choices=("horovod", "tf_strategy"),
                   help="the distributed mode of the scripts (reported: opencann has no collective API yet)")
    p.add_argument("--format", default="txt,csv,json,html", help="report formats, comma-separated "
                   "(txt, csv, json, html; default: all)")
    p.add_argument("--dry-run", action="store_true", help="analyse and report only; write no migrated files")
    p.add_argument("--fail-on", choices=(*LEVELS, "none"), default="error",
                   help="exit 1 when a finding is at or above this level (default: error)")
    p.add_argument("--force", action="store_true", help="replace an existing non-empty OUTPUT folder")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar, no summary")
    p.set_defaults(handler=run_migrate)


class UsageError(ValueError):
    pass


def run_migrate(args) -> int:
    from opencann.migrate.project import InputError

    try:
        return _run(args)
    except (UsageError, InputError) as exc:
        print(f"opencann migrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        print(f"opencann migrate: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args) -> int:
    from opencann.migrate.project import Options, write_tree
    from opencann.migrate.report import FORMATS, summary, text_report, write_reports

    src, out, report_dir = _paths(args)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    if not formats or any(f not in FORMATS for f in formats):
        raise UsageError(f"--format takes a comma-separated list of {', '.join(FORMATS)}")
    main = _relative_main(args.main, src)
    options = Options(main=main, distributed=args.distributed)
    migration = _with_progress(src, options, args.quiet)
    if out is not None and not args.dry_run:
        write_tree(migration, out, force=args.force)
    info = summary(migration, str(src), None if args.dry_run else str(out), args.fail_on)
    written = write_reports(migration, report_dir, info, formats) if report_dir is not None else []
    if not args.quiet:
        _print_summary(info, written)
        if report_dir is None:
            print(text_report(migration, info), end="")
    return info["exit_code"]


def _paths(args) -> tuple[Path, Path | None, Path | None]:
    src = Path(args.input)
    if not src.exists():
        raise UsageError(f"input '{src}' does not exist")
    if src.is_file() and src.suffix not in (".py", ".ipynb"):
        raise UsageError(f"input '{src}' is neither a folder nor a .py/.ipynb file")
    if args.output is None and not args.dry_run:
        raise UsageError("-o/--output is required (or pass --dry-run)")
    out = Path(args.output) if args.output else None
    report = Path(args.report) if args.report else _default_report(out)
    root = src.resolve() if src.is_dir() else src.resolve().parent
    for name, path in (("output", out), ("report folder", report)):
        if path is None:
            continue
        resolved = path.resolve()
        if src.is_dir() and (resolved == root or root in resolved.parents):
            raise UsageError(f"the {name} '{path}' is inside the input folder, which is never modified")
        if src.is_file() and resolved == src.resolve():
            raise UsageError(f"the {name} '{path}' is the input file, which is never modified")
        if resolved in src.resolve().parents:
            raise UsageError(f"the {name} '{path}' contains the input")
    return src, out, report


def _default_report(out: Path | None) -> Path | None:
    if out is None:
        return None
    return out.with_name(f"{out.stem if out.suffix in ('.py', '.ipynb') else out.name}_report")


def _relative_main(main: str | None, src: Path) -> str | None:
    if main is None:
        return None
    root = src if src.is_dir() else src.parent
    path = Path(main)
    if path.is_absolute():
        try:
            path = path.resolve().relative_to(root.resolve())
        except ValueError:
            raise UsageError(f"--main '{main}' is not inside the input folder") from None
    return path.as_posix()


def _with_progress(src: Path, options, quiet: bool):
    from opencann.migrate.project import discover, migrate_project

    if quiet:
        return migrate_project(src, options)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    total = len(discover(src)[1])
    columns = (TextColumn("migrating"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.description}"))
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        task = progress.add_task("", total=total)
        return migrate_project(src, options, lambda path: progress.update(task, advance=1, description=path))


def _print_summary(info: dict, written: list[Path]) -> None:
    files, edits, levels = info["files"], info["edits"], info["findings"]
    print(f"opencann migrate: {files['total']} files, {files['changed']} changed, {files['failed']} failed; "
          f"{edits['total']} edits; " + ", ".join(f"{level} {n}" for level, n in levels.items()))
    if info["output"]:
        print(f"  output: {info['output']}")
    for path in written:
        print(f"  report: {path}")
