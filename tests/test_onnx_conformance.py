"""ONNX's own backend node tests (onnx.backend.test) run against opencann's CPU device.

Tests listed in ``onnx_expected_failures.txt`` under an ``# xfail:`` cause are expected failures (an
unexpected pass fails the run, so the list stays honest); those under ``# skip:`` (random outputs that can
match by chance) are skipped. ``tools/onnx_conformance.py --write-docs`` regenerates docs/conformance.md.
"""
import pathlib
import re
import warnings

import onnx.backend.test

from opencann.frontends.onnx.backend import OpencannBackend

warnings.filterwarnings("ignore", category=RuntimeWarning)

EXPECTED = pathlib.Path(__file__).with_name("onnx_expected_failures.txt")


def expected_failures() -> dict[str, tuple[str, str]]:
    """Test name -> (kind, cause), from the list file (``# xfail: cause`` / ``# skip: cause`` head groups)."""
    out, kind, cause = {}, "xfail", ""
    for line in EXPECTED.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            kind, _, cause = line.lstrip("# ").partition(": ")
        elif line:
            out[line] = (kind, cause)
    return out


backend_test = onnx.backend.test.BackendTest(OpencannBackend, __name__)
for _name, (_kind, _) in expected_failures().items():
    pattern = f"^{re.escape(_name)}_cpu$"
    backend_test.exclude(pattern) if _kind == "skip" else backend_test.xfail(pattern)

OnnxBackendNodeModelTest = backend_test.test_cases["OnnxBackendNodeModelTest"]
