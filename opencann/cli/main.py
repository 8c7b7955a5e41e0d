"""The `opencann` command."""
import sys


def main(argv: list[str] | None = None) -> int:
    print("opencann: demo arrives with the acl API (issue 3)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
