"""ONNX's own backend node tests (onnx.backend.test) run against opencann's CPU device.

Tests listed in ``onnx_expected_failures.txt`` are marked expected failures (an unexpected pass fails
the run, so the list stays honest); ``tools/onnx_conformance.py --write-docs`` regenerates the figures
in docs/conformance.md.
"""
import pathlib
import re
import warnings

import onnx.backend.test

from opencann.frontends.onnx.backend import OpencannBackend

warnings.filterwarnings("ignore", category=RuntimeWarning)

EXPECTED = pathlib.Path(__file__).with_name("onnx_expected_failures.txt")


def expected_failures() -> dict[str, str]:
    """Test name -> cause, from the list file (``# cause`` lines head each group)."""
    out, cause = {}, ""
    for line in EXPECTED.read_text().splitlines():
        line = line.strip()
        if line.startswith("#"):
            cause = line.lstrip("# ")
        elif line:
            out[line] = cause
    return out


backend_test = onnx.backend.test.BackendTest(OpencannBackend, __name__)
for _name in expected_failures():
    backend_test.xfail(f"^{re.escape(_name)}_cpu$")

OnnxBackendNodeModelTest = backend_test.test_cases["OnnxBackendNodeModelTest"]
