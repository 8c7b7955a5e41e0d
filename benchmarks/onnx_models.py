"""Inference latency, compile time and peak memory: opencann vs ONNX Runtime, TensorFlow and PyTorch eager.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/onnx_models.py \\
        [--models mlp,resnet,mobilenet,transformer,lstm] [--batch 1,32] [--size full|small] [--budget 10] \\
        [--peers ort,tf,torch] [--threads 1] [--min-runs 5] [--no-probe] [--markdown]

Models (``tests/models.py``, exported to ONNX from PyTorch): MLP 784-512-10, ResNet-18 and MobileNetV2 at
224x224, a BERT-base-sized encoder (12 layers, d=768, sequence 128) and a small LSTM classifier;
``--size small`` gives the test-sized versions. Runtimes:

- opencann: ``import_onnx`` + ``compile_graph`` (the ``opencann atc`` pipeline) + ``Executor``.
- ort: onnxruntime with all graph optimizations, on the same ONNX bytes.
- tf: the Keras equivalent of each model (``benchmarks/tf_models.py``: same layers and shapes, random
  weights, NHWC images) called through ``tf.function``. TensorFlow is imported only when requested.
- torch: the very ``torch.nn.Module`` that was exported, eager, under ``torch.inference_mode()``.

**Latency**: every runtime is called once to warm up, then one call each per round, the order rotating,
until ``--budget`` seconds have passed and each ran ``--min-runs`` times; median and min in ms. Ratios
are opencann's median over ORT's and over the best (lowest-median) peer's: below 1.0 opencann is faster.

**Threads**: every runtime gets ``--threads`` (default 1): ORT intra-op threads, TF intra-op threads
(inter-op 1, set before TensorFlow starts), ``torch.set_num_threads``, and for opencann the BLAS and Numba
pools (``opencann.runtime.threads.set_num_threads`` where it exists). ``OPENBLAS_NUM_THREADS`` and
``OMP_NUM_THREADS`` default to 1 when unset. With more than one thread, ORT's spin-waiting is switched off
so that its idle threads do not steal the cores of the runtime measured next.

**Compile time and peak memory** are measured in a fresh subprocess per runtime, model and batch, so that
nothing one runtime compiled or cached helps another. Compile time: opencann, ONNX import + compile +
executor + first run; ORT, session creation; TF, the first ``tf.function`` call (trace + run); torch, the
first call. Peak memory: the growth of the process's peak resident set (``VmHWM`` of
``/proc/self/status``, reset through ``/proc/self/clear_refs`` where allowed) from its resident set after
imports and reading the model file to the end of the first run: the runtime's copy of the weights plus
its working memory (for opencann, also what Numba takes to compile kernels missing from its cache).
For opencann, "act MB" is the activation memory of one run: the arena of the compiled graph's memory
plan (``opencann.runtime.memory_plan``) when that module exists, else the ``tracemalloc`` peak of a
second run (NumPy's allocations only: arrays made inside Numba kernels and BLAS scratch are not seen).

A peer that fails to import or to run is reported as n/a with the reason under the table.
"""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
warnings.filterwarnings("ignore")

from benchmarks.common import env_line, measure, peak_rss_mb, rss_mb, summary, table  # noqa: E402

MODELS = ("mlp", "resnet", "mobilenet", "transformer", "lstm")
PEERS = ("ort", "tf", "torch")
LABELS = {"opencann": "opencann", "ort": "ORT", "tf": "TF", "torch": "torch"}
FULL_NAMES = {"mlp": "MLP 784-512-10", "resnet": "ResNet-18", "mobilenet": "MobileNetV2",
              "transformer": "BERT-base encoder seq 128", "lstm": "LSTM"}


def set_threads(n: int) -> None:
    """BLAS and Numba thread pools of this process (opencann's kernels, and torch's BLAS)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(n, user_api="blas")
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def build_torch(name: str, batch: int, size: str, export: bool = True):
    """(ONNX bytes or None, input, the torch module) from ``tests.models.build``; the module is the one exported."""
    from tests import models

    seen, real = [], models.export

    def capture(model, x, *a, **k):
        seen.append(model.eval())
        return real(model, x, *a, **k) if export else None

    models.export = capture
    try:
        onnx_bytes, x = models.build(name, batch, size)
    finally:
        models.export = real
    return onnx_bytes, x, seen[0]


# -- the runtimes: each maker returns a no-argument callable running one inference on the batch -----------

def make_opencann(onnx_bytes: bytes, x: np.ndarray, threads: int):
    from opencann.compiler.pipeline import compile_graph
    from opencann.frontends.onnx import import_onnx
    from opencann.runtime import Executor

    graph = compile_graph(import_onnx(onnx_bytes)).graph
    ex = Executor(graph)
    try:
        from opencann.runtime.threads import set_num_threads
    except ImportError:
        set_num_threads = set_threads
    set_num_threads(threads)

    def run():
        return ex.run([x])[0]
    run.graph = graph
    return run


def make_ort(onnx_bytes: bytes, x: np.ndarray, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: x}
    return lambda: sess.run(None, feed)[0]


def make_tf(name: str, x: np.ndarray, size: str, threads: int):
    from benchmarks import tf_models

    tf = tf_models.configure(threads)
    model, xt = tf_models.build(name, x, size)
    fn, arg = tf.function(lambda t: model(t, training=False)), tf.constant(xt)
    return lambda: fn(arg).numpy()


def make_torch(module, x: np.ndarray, threads: int):
    import torch

    torch.set_num_threads(threads)
    arg = torch.from_numpy(x)

    def run():
        with torch.inference_mode():
            return module(arg).numpy()
    return run


def make(runtime: str, name: str, batch: int, size: str, threads: int, onnx_bytes: bytes, x: np.ndarray,
         module=None):
    """The runner of ``runtime`` for one model; torch builds its module when none is given."""
    if runtime == "opencann":
        return make_opencann(onnx_bytes, x, threads)
    if runtime == "ort":
        return make_ort(onnx_bytes, x, threads)
    if runtime == "tf":
        return make_tf(name, x, size, threads)
    return make_torch(module if module is not None else build_torch(name, batch, size, export=False)[2], x, threads)


# -- compile time and peak memory, in a fresh process ---------------------------------------------------

def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def activation_mb(run) -> tuple[float, str]:
    """opencann's activation memory of one run: the memory plan's arena if there is a planner, else the
    tracemalloc peak of one run."""
    try:
        from opencann.runtime.memory_plan import plan_memory
    except ImportError:
        import tracemalloc

        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        run()
        peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.stop()
        return peak / 2**20, "tracemalloc"
    return plan_memory(run.graph).arena_bytes / 2**20, "plan"


# runtime: (module imported before the baseline, building counts as compile time, the first run does)
_PROBE = {"opencann": ("opencann.compiler.pipeline", True, True), "ort": ("onnxruntime", True, False),
          "tf": ("keras", False, True), "torch": ("torch", False, True)}


def probe(runtime: str, name: str, batch: int, size: str, threads: int, model_path: str) -> dict:
    """Compile time (s) and peak memory growth (MiB) of one runtime on one model, in this (fresh) process."""
    x = np.load(model_path + ".npy")
    with open(model_path, "rb") as f:
        onnx_bytes = f.read()
    module, build_timed, run_timed = _PROBE[runtime]
    if runtime == "tf":
        importlib.import_module("benchmarks.tf_models").configure(threads)
    importlib.import_module(module)
    base = rss_mb()
    _reset_peak()
    t0 = time.perf_counter()
    run = make(runtime, name, batch, size, threads, onnx_bytes, x)
    t1 = time.perf_counter()
    run()
    t2 = time.perf_counter()
    out = {"compile_s": (t1 - t0) * build_timed + (t2 - t1) * run_timed, "peak_mb": peak_rss_mb() - base}
    if runtime == "opencann":
        out["act_mb"], out["act_method"] = activation_mb(run)
    return out


def run_probe(runtime: str, name: str, batch: int, args, model_path: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", runtime, "--models", name, "--batch", str(batch),
           "--size", args.size, "--threads", str(args.threads), "--model-file", model_path]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.probe_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"probe timed out after {args.probe_timeout} s"}
    lines = res.stdout.strip().splitlines()
    if res.returncode != 0 or not lines:
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"probe failed: {tail}"}
    return json.loads(lines[-1])


# -- the benchmark ----------------------------------------------------------------------------------------

def note(notes: list[str], text: str) -> None:
    """Record a note for the report, and show it now on stderr."""
    notes.append(text)
    print(text, file=sys.stderr, flush=True)


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]


def runners_for(name: str, batch: int, args, onnx_bytes, x, module, notes: list[str]) -> tuple[dict, dict]:
    """The runners that build and run on this model, and their first outputs; the others are noted as n/a."""
    runners, outputs = {}, {}
    for rt in ("opencann", *args.peers):
        try:
            runners[rt] = make(rt, name, batch, args.size, args.threads, onnx_bytes, x, module)
            outputs[rt] = np.array(runners[rt](), copy=True)
        except Exception as e:  # a peer (or opencann) that cannot build or run this model: n/a, say why
            note(notes, f"{name} batch {batch}: {LABELS[rt]} n/a ({_why(e)})")
            runners.pop(rt, None)
            if args.verbose:
                traceback.print_exc()
    return runners, outputs


def check_outputs(name: str, batch: int, outputs: dict, notes: list[str]) -> None:
    """opencann and torch run the exported weights: their outputs must match ORT's (a benchmark of wrong results
    would be meaningless)."""
    if "ort" not in outputs:
        return
    ref = outputs["ort"]
    for rt in ("opencann", "torch"):
        if rt in outputs:
            got = outputs[rt]
            err = float(np.max(np.abs(got - ref)) / (np.max(np.abs(ref)) + 1e-12)) if got.shape == ref.shape else 1.0
            if not err < 1e-3:
                note(notes, f"{name} batch {batch}: {LABELS[rt]} output differs from ORT (max rel err {err:.2e})")


def bench_one(name: str, batch: int, args, notes: list[str]) -> tuple[dict, dict | None]:
    onnx_bytes, x, module = build_torch(name, batch, args.size)
    label = FULL_NAMES[name] if args.size == "full" else f"{name} (small)"
    probes = {}
    if not args.no_probe:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            with open(path, "wb") as f:
                f.write(onnx_bytes)
            np.save(path + ".npy", x)
            for rt in ("opencann", *args.peers):
                probes[rt] = run_probe(rt, name, batch, args, path)
                if "error" in probes[rt]:
                    note(notes, f"{name} batch {batch}: {LABELS[rt]} compile/memory n/a ({probes[rt]['error']})")
    runners, outputs = runners_for(name, batch, args, onnx_bytes, x, module, notes)
    check_outputs(name, batch, outputs, notes)
    times = measure(runners, args.budget, args.min_runs) if runners else {}
    return latency_row(label, batch, args.peers, times), (memory_row(label, batch, args.peers, probes)
                                                          if probes else None)


def latency_row(label: str, batch: int, peers, times: dict) -> dict:
    med = {rt: summary(t)[0] for rt, t in times.items()}
    row = {"model": label, "batch": batch}
    for rt in ("opencann", *peers):
        row[f"{LABELS[rt]} median / min ms"] = (f"{med[rt]:.3f} / {min(times[rt]):.3f}" if rt in times else None)
    ran = [p for p in peers if p in med]
    oc = med.get("opencann")
    row["opencann / ORT"] = f"{oc / med['ort']:.2f}" if oc and "ort" in med else None
    best = min(ran, key=med.get) if ran else None
    row["opencann / best peer"] = f"{oc / med[best]:.2f} ({LABELS[best]})" if oc and best else None
    row["runs"] = min((len(t) for t in times.values()), default=0)
    return row


def memory_row(label: str, batch: int, peers, probes: dict) -> dict:
    row = {"model": label, "batch": batch}
    for key, unit, fmt in (("compile_s", "compile s", "{:.3f}"), ("peak_mb", "peak MB", "{:.1f}")):
        for rt in ("opencann", *peers):
            v = probes.get(rt, {}).get(key)
            row[f"{LABELS[rt]} {unit}"] = None if v is None else fmt.format(v)
    oc = probes.get("opencann", {})
    row["opencann act MB"] = f"{oc['act_mb']:.2f} ({oc['act_method']})" if "act_mb" in oc else None
    return row


def command_line() -> str:
    return "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/onnx_models.py " + \
        " ".join(shlex.quote(a) for a in sys.argv[1:])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated, of " + ",".join(MODELS))
    ap.add_argument("--batch", default="1", help="comma-separated batch sizes, e.g. 1,32")
    ap.add_argument("--size", choices=["small", "full"], default="full")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of interleaved measurement per model/batch")
    ap.add_argument("--min-runs", type=int, default=5, help="timed calls per runtime at least")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma-separated, of ort,tf,torch (or empty)")
    ap.add_argument("--threads", type=int, default=1, help="threads of every runtime")
    ap.add_argument("--no-probe", action="store_true", help="skip compile time and peak memory (subprocesses)")
    ap.add_argument("--probe-timeout", type=float, default=900.0, help="seconds per compile/memory subprocess")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables ready for benchmarks/RESULTS.md")
    ap.add_argument("--verbose", action="store_true", help="print tracebacks of failing runtimes")
    ap.add_argument("--probe", choices=["opencann", *PEERS], help=argparse.SUPPRESS)
    ap.add_argument("--model-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.peers = [p for p in args.peers.split(",") if p]
    args.batches = [int(b) for b in args.batch.split(",") if b]
    bad = [m for m in args.models if m not in MODELS] + [p for p in args.peers if p not in PEERS]
    if bad or args.threads < 1 or not args.batches:
        ap.error(f"unknown model/peer or bad value: {', '.join(bad) or args.threads}")
    return args


def report(args, lat_rows: list[dict], mem_rows: list[dict], notes: list[str]) -> str:
    busy = os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1)
    head = [f"Machine: {env_line()}; {args.threads} thread(s) per runtime.",
            f"Command: `{command_line()}`"]
    if busy:
        head.append("The machine was busy during this run (load average above half the CPUs): absolute times "
                    "are inflated, compare the ratios.")
    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        head.append("Warning: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE were set during this run.")
    parts = ["\n".join(head), "Latency (median / min ms; ratio = opencann median / peer median, < 1 is faster):",
             table(lat_rows, args.markdown)]
    if mem_rows:
        parts += ["Compile time (s) and peak memory growth (MB), each runtime in a fresh process:",
                  table(mem_rows, args.markdown)]
    if notes:
        parts.append("\n".join(f"- {n}" for n in notes))
    return "\n\n".join(parts)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.probe:
        print(json.dumps(probe(args.probe, args.models[0], args.batches[0], args.size, args.threads,
                               args.model_file)))
        return
    if "tf" in args.peers:
        try:
            from benchmarks import tf_models
            tf_models.configure(args.threads)  # before anything else starts TensorFlow's thread pools
        except Exception as e:
            print(f"TF n/a ({_why(e)})", file=sys.stderr)
    set_threads(args.threads)
    lat_rows, mem_rows, notes = [], [], []
    for name in args.models:
        for batch in args.batches:
            lat, mem = bench_one(name, batch, args, notes)
            lat_rows.append(lat)
            if mem:
                mem_rows.append(mem)
            print(f"{lat['model']}, batch {batch}:", "; ".join(f"{k} {v}" for k, v in lat.items()
                                                            if "ms" in k or "/" in k), file=sys.stderr, flush=True)
    print(report(args, lat_rows, mem_rows, notes))


if __name__ == "__main__":
    main()
