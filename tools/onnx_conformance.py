"""Run ONNX's backend node tests against opencann and print the pass count (and failures with -v).

    python tools/onnx_conformance.py [REGEX] [-v] [--write-docs]

``--write-docs`` rewrites docs/conformance.md with the figures and the failing tests grouped by the
causes recorded in tests/onnx_expected_failures.txt.
"""
import datetime
import pathlib
import sys
import unittest
import warnings

warnings.filterwarnings("ignore")
import onnx  # noqa: E402
import onnx.backend.test  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from opencann.frontends.onnx.backend import OpencannBackend  # noqa: E402
from tests.test_onnx_conformance import expected_failures  # noqa: E402


def run(pattern: str | None) -> tuple[int, list[tuple[str, str]]]:
    bt = onnx.backend.test.BackendTest(OpencannBackend, "conformance")
    if pattern:
        bt.include(pattern)
    cls = bt.test_cases["OnnxBackendNodeModelTest"]
    suite = unittest.TestSuite(cls(n) for n in sorted(dir(cls)) if n.startswith("test_"))
    with open("/dev/null", "w") as sink:
        res = unittest.TextTestRunner(verbosity=0, stream=sink).run(suite)
    fails = sorted((t.id().split(".")[-1].removesuffix("_cpu"), e) for t, e in res.failures + res.errors)
    return res.testsRun - len(res.skipped), fails


def write_docs(ran: int, fails: list[tuple[str, str]]) -> None:
    causes = expected_failures()
    by_cause: dict[str, list[str]] = {}
    for name, _ in fails:
        by_cause.setdefault(causes.get(name, ("", "Not yet classified"))[1], []).append(name)
    lines = [
        "# ONNX conformance",
        "",
        f"opencann's CPU device against ONNX's own backend node tests (`onnx.backend.test`, onnx {onnx.__version__}),",
        f"measured {datetime.date.today()} with `python tools/onnx_conformance.py --write-docs`; the same tests run",
        "in CI through `tests/test_onnx_conformance.py`, where the tests below are expected failures.",
        "",
        f"**{ran - len(fails)} of {ran} node tests pass.** For comparison on this machine (from the issue):",
        "ONNX Runtime passes 1,588 and `onnx.reference` 1,860.",
        "",
        "## Failing tests by cause",
    ]
    for cause, names in sorted(by_cause.items()):
        lines += ["", f"**{cause}** ({len(names)})", ""] + [f"- `{n}`" for n in names]
    (ROOT / "docs" / "conformance.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    ran, fails = run(args[0] if args else None)
    print(f"ran {ran} passed {ran - len(fails)} failed {len(fails)}")
    if "-v" in sys.argv:
        for name, err in fails:
            print(name, "::", err.strip().splitlines()[-1][:300])
    if "--write-docs" in sys.argv:
        write_docs(ran, fails)


if __name__ == "__main__":
    main()
