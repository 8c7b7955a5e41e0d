"""Run ONNX's backend node tests against opencann and print the pass count (and failures with -v).

    python tools/onnx_conformance.py [REGEX] [-v]
"""
import sys
import unittest
import warnings

warnings.filterwarnings("ignore")
import onnx.backend.test  # noqa: E402

from opencann.frontends.onnx.backend import OpencannBackend  # noqa: E402


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("-")]
    bt = onnx.backend.test.BackendTest(OpencannBackend, "conformance")
    if args:
        bt.include(args[0])
    cls = bt.test_cases["OnnxBackendNodeModelTest"]
    suite = unittest.TestSuite(cls(n) for n in sorted(dir(cls)) if n.startswith("test_"))
    with open("/dev/null", "w") as sink:
        res = unittest.TextTestRunner(verbosity=0, stream=sink).run(suite)
    fails = sorted((t.id().split(".")[-1], e) for t, e in res.failures + res.errors)
    ran = res.testsRun - len(res.skipped)
    print(f"ran {ran} passed {ran - len(fails)} failed {len(fails)}")
    if "-v" in sys.argv:
        for name, err in fails:
            print(name, "::", err.strip().splitlines()[-1][:300])


if __name__ == "__main__":
    main()
