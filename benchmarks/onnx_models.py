"""opencann vs onnxruntime on the end-to-end models: batch 1, one thread, interleaved runs.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/onnx_models.py [--size full|small]

Prints median and min latency of each runtime and the ratio opencann / onnxruntime (lower is better).
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings("ignore")

from opencann.compiler.pipeline import compile_graph  # noqa: E402
from opencann.frontends.onnx import import_onnx  # noqa: E402
from opencann.runtime import Executor  # noqa: E402
from tests.models import MODELS, build  # noqa: E402


def blas_kernel() -> str:
    try:
        from threadpoolctl import threadpool_info

        info = [i for i in threadpool_info() if i.get("internal_api") == "openblas"]
        return f"{info[0].get('architecture')}, {info[0].get('num_threads')} thread(s)" if info else "unknown"
    except ImportError:
        return "threadpoolctl not installed"


def measure(runners: dict, budget_s: float, min_runs: int = 5) -> dict[str, list[float]]:
    """Interleave the runners (one call each per round) until the time budget is spent."""
    times = {k: [] for k in runners}
    for fn in runners.values():
        fn()  # warm-up
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_runs or time.perf_counter() - start < budget_s:
        for k, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", choices=["small", "full"], default="full")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of measurement per model")
    args = ap.parse_args()
    print(f"# {datetime.date.today()} {platform.machine()} {platform.processor() or ''} "
          f"numpy {np.__version__} BLAS: {blas_kernel()}, onnxruntime {ort.__version__}, size={args.size}")
    print("| model | opencann median ms | opencann min ms | ORT median ms | ORT min ms | ratio (median) |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model, x = build(name, 1, args.size)
        ex = Executor(compile_graph(import_onnx(model)).graph)  # what `opencann atc` builds
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        feed = {sess.get_inputs()[0].name: x}
        t = measure({"opencann": lambda ex=ex, x=x: ex.run([x]),
                     "ort": lambda sess=sess, feed=feed: sess.run(None, feed)}, args.budget)
        med = {k: statistics.median(v) for k, v in t.items()}
        print(f"| {name} | {med['opencann']:.3f} | {min(t['opencann']):.3f} | {med['ort']:.3f} | "
              f"{min(t['ort']):.3f} | {med['opencann'] / med['ort']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
