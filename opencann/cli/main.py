"""The ``opencann`` command: ``info``, ``atc``, ``run``, ``profile``, ``demo``, ``migrate``.

Every failure prints one line naming what was wrong (an :class:`AclError` with its code) and exits 1;
usage errors exit 2. Nothing is left half-written: outputs are written to a temporary file and renamed.
"""
from __future__ import annotations

import argparse
import sys

from opencann.errors import AclError


def build_parser() -> argparse.ArgumentParser:
    from opencann.cli import atc, demo, info, migrate, profile, run

    parser = argparse.ArgumentParser(prog="opencann", description="opencann: an open Compute Architecture for "
                                     "Neural Networks on CPUs and NVIDIA GPUs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (info, atc, run, profile, demo, migrate):
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except AclError as exc:
        print(f"opencann {args.command}: error {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # an output path that cannot be written (a file where a folder should be, ...)
        print(f"opencann {args.command}: error {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"opencann {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
