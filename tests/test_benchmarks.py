"""The benchmark scripts still run: benchmarks/onnx_models.py at a tiny size and budget, and its shared helpers."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from benchmarks.common import env_line, measure, summary, table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_measure_interleaves_and_respects_min_runs():
    calls = []
    runners = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    times = measure(runners, budget_s=0.0, min_runs=4)
    assert {k: len(v) for k, v in times.items()} == {"a": 4, "b": 4, "c": 4}
    assert calls[:3] == ["a", "b", "c"]  # warm-up, then rounds in rotating order
    assert calls[3:] == list("abc" "bca" "cab" "abc")
    assert all(t >= 0 for v in times.values() for t in v)


def test_measure_runs_for_the_budget():
    t0 = time.perf_counter()
    times = measure({"sleep": lambda: time.sleep(0.002)}, budget_s=0.05, min_runs=1)
    assert time.perf_counter() - t0 >= 0.05
    assert len(times["sleep"]) >= 5 and min(times["sleep"]) >= 2.0
    assert summary([3.0, 1.0, 2.0, 10.0]) == (2.5, 1.0)


def test_table_markdown_and_aligned():
    rows = [{"model": "mlp", "ms": 0.12345, "peer": None}, {"model": "resnet-18", "ms": 123.4, "peer": "x"}]
    assert table(rows).splitlines() == ["| model | ms | peer |", "| --- | --- | --- |",
                                        "| mlp | 0.123 | n/a |", "| resnet-18 | 123.4 | x |"]
    aligned = table(rows, markdown=False).splitlines()
    assert aligned[0] == "model      ms     peer" and aligned[2] == "resnet-18  123.4  x"
    assert table([]) == ""


def test_env_line_names_the_machine_and_versions():
    import numpy as np

    line = env_line()
    assert f"numpy {np.__version__}" in line and "CPUs" in line and "BLAS" in line


def _cells(text: str, model: str, batch: int) -> list[str]:
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[0] == model and cells[1] == str(batch):
            return cells
    raise AssertionError(f"no row for {model} batch {batch} in:\n{text}")


def test_onnx_models_script_smoke(tmp_path):
    """Tiny MLP at batch 2, ORT and torch peers, TF made unimportable: tables, ratios and the n/a note."""
    fake = tmp_path / "tensorflow"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    env["PYTHONPATH"] = str(tmp_path)
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "onnx_models.py"), "--size", "small", "--models", "mlp",
           "--batch", "2", "--peers", "ort,tf,torch", "--budget", "0.05", "--min-runs", "3", "--markdown"]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=110)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout
    assert "Command: `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE" in out and "onnxruntime" in out
    oc, ort_, tf_, torch_, ratio, best, runs = _cells(out.split("Compile time")[0], "mlp (small)", 2)[2:9]
    (oc_med, oc_min), (ort_med, _) = (map(float, c.split(" / ")) for c in (oc, ort_))
    assert 0 < oc_min <= oc_med and tf_ == "n/a" and torch_ != "n/a"
    assert float(ratio) == pytest.approx(oc_med / ort_med, rel=0.02, abs=0.01)
    assert re.fullmatch(r"\d+\.\d\d \((ORT|torch)\)", best) and int(runs) >= 3
    mem = _cells(out.split("Compile time")[1], "mlp (small)", 2)
    assert float(mem[2]) > 0 and float(mem[3]) > 0 and mem[4] == "n/a"  # compile s: opencann, ORT, TF
    assert float(mem[6]) > 0 and float(mem[7]) > 0  # peak MB: opencann, ORT
    assert "TF n/a (ImportError: blocked by the test)" in out
    assert "output differs" not in out


@pytest.fixture
def onnx_models(monkeypatch):
    """benchmarks/onnx_models.py as a module; the thread variables it sets on import stay out of os.environ."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    import benchmarks.onnx_models as mod

    return mod


def test_rows_ratios_and_output_check(onnx_models):
    times = {"opencann": [2.0, 3.0, 4.0], "ort": [1.0, 1.5, 2.0], "torch": [5.0, 6.0, 7.0]}
    row = onnx_models.latency_row("m", 1, ["ort", "tf", "torch"], times)
    assert row["opencann median / min ms"] == "3.000 / 2.000" and row["TF median / min ms"] is None
    assert row["opencann / ORT"] == "2.00" and row["opencann / best peer"] == "2.00 (ORT)" and row["runs"] == 3
    notes = []
    ref = np.ones((2, 3), np.float32)
    onnx_models.check_outputs("m", 1, {"ort": ref, "opencann": ref * (1 + 1e-5), "torch": ref + 0.01}, notes)
    assert notes == ["m batch 1: torch output differs from ORT (max rel err 1.00e-02)"]
