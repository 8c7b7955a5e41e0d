"""Shared helpers of the benchmark scripts: interleaved timing, an environment header and markdown tables.

    from benchmarks.common import measure, env_line, table, summary
    times = measure({"opencann": run_a, "ort": run_b}, budget_s=3, min_runs=5)   # ms per call, per runner
"""
from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence

# Library names in the environment header, shown only when the benchmark has imported them (TF is slow).
_VERSIONED = ("numpy", "onnx", "onnxruntime", "numba", "torch", "tensorflow")


def measure(runners: Mapping[str, Callable[[], object]], budget_s: float, min_runs: int = 5) -> dict[str, list[float]]:
    """Interleave the runners, one call each per round, until ``budget_s`` is spent and each ran ``min_runs`` times.

    Each runner is called once untimed first (warm-up). The order rotates every round so that no runner
    always follows the same neighbour. Returns the milliseconds of every timed call, per runner.
    """
    names = list(runners)
    times: dict[str, list[float]] = {k: [] for k in names}
    for fn in runners.values():
        fn()
    start, rnd = time.perf_counter(), 0
    while rnd < min_runs or time.perf_counter() - start < budget_s:
        for k in names[rnd % len(names):] + names[:rnd % len(names)]:
            t0 = time.perf_counter()
            runners[k]()
            times[k].append((time.perf_counter() - t0) * 1e3)
        rnd += 1
    return times


def summary(ms: Sequence[float]) -> tuple[float, float]:
    """(median, min) of a list of timings."""
    return statistics.median(ms), min(ms)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_line() -> str:
    """numpy's BLAS: kernel architecture and thread count, from threadpoolctl when installed."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS unknown (threadpoolctl not installed)"
    for info in threadpool_info():
        if info.get("user_api") == "blas" and "numpy" in info.get("filepath", ""):
            return f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')}, " \
                   f"{info.get('num_threads')} thread(s)"
    return "BLAS unknown"


def env_line() -> str:
    """One line: date (UTC), CPU, core count, load average, BLAS and the versions of the imported libraries."""
    versions = [f"{m} {sys.modules[m].__version__}" for m in _VERSIONED if m in sys.modules]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (f"{now}; {cpu_model()}, {os.cpu_count()} CPUs, load average {load}; Python {platform.python_version()}, "
            f"{', '.join(versions)}; BLAS: {blas_line()}")


def _cell(v: object) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.3f}" if v < 100 else f"{v:.1f}"
    return str(v)


def table(rows: Sequence[Mapping[str, object]], markdown: bool = True) -> str:
    """A table of dict rows (columns: the keys of the first row; None prints as n/a): markdown, or aligned text."""
    if not rows:
        return ""
    cols = list(rows[0])
    cells = [cols] + [[_cell(r.get(c)) for c in cols] for r in rows]
    if markdown:
        cells.insert(1, ["---"] * len(cols))
        return "\n".join("| " + " | ".join(line) + " |" for line in cells)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cols))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() for line in cells)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM) in MiB, from /proc/self/status (Linux)."""
    return _status_kb("VmHWM") / 1024


def rss_mb() -> float:
    """This process's current resident memory (VmRSS) in MiB."""
    return _status_kb("VmRSS") / 1024


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise OSError(f"{key} not in /proc/self/status")
