"""A chain of 6 elementwise ops on 16M float32: opencann's fused TBE kernel vs NumPy (one op at a time) vs
ONNX Runtime (the same chain as an ONNX graph), next to the machine's memcpy bandwidth.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE .venv/bin/python benchmarks/tbe_fusion.py \\
        [--n 16777216] [--threads 1] [--budget 5] [--chain tanh|softsign]

Chain: y = act(relu(x * a + b) * c) + x with act = tanh (6 ops) or softsign v / (1 + |v|) (8 ops, no
transcendental). GB/s counts the bytes a single pass must move (read x, write y: 8 bytes per element), so
the memcpy row (``np.copyto`` of the same array, also 8 bytes per element) is the physical limit.
Runners are interleaved (``benchmarks.common.measure``); each gets ``--threads`` (Numba's pool for
opencann, intra-op threads for ORT; NumPy is single-threaded).
"""
import os
import sys

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.common import env_line, measure, summary, table  # noqa: E402

A, B, C = 1.5, 0.25, 0.5


def tbe_kernel(n: int, chain: str):
    from opencann import tbe

    x = tbe.placeholder((n,), "float32", name="x")
    v = tbe.vmuls(tbe.vrelu(tbe.vadds(tbe.vmuls(x, A), B)), C)
    act = tbe.vtanh(v) if chain == "tanh" else tbe.vdiv(v, tbe.vadds(tbe.vabs(v), 1.0))
    return tbe.build(tbe.vadd(act, x), name=f"bench_{chain}", inputs=[x])


def numpy_chain(x: np.ndarray, chain: str) -> np.ndarray:
    v = np.maximum(x * np.float32(A) + np.float32(B), np.float32(0)) * np.float32(C)
    return (np.tanh(v) if chain == "tanh" else v / (np.abs(v) + np.float32(1))) + x


def ort_session(n: int, chain: str, threads: int):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    consts = [helper.make_tensor(k, TensorProto.FLOAT, [], [v]) for k, v in (("a", A), ("b", B), ("c", C),
                                                                          ("one", 1.0))]
    nodes = [helper.make_node("Mul", ["x", "a"], ["t0"]), helper.make_node("Add", ["t0", "b"], ["t1"]),
             helper.make_node("Relu", ["t1"], ["t2"]), helper.make_node("Mul", ["t2", "c"], ["v"])]
    if chain == "tanh":
        nodes.append(helper.make_node("Tanh", ["v"], ["act"]))
    else:
        nodes += [helper.make_node("Abs", ["v"], ["av"]), helper.make_node("Add", ["av", "one"], ["den"]),
                  helper.make_node("Div", ["v", "den"], ["act"])]
    nodes.append(helper.make_node("Add", ["act", "x"], ["y"]))
    io = [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n]) for k in ("x", "y")]
    model = helper.make_model(helper.make_graph(nodes, "chain", io[:1], io[1:], consts),
                              opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    if threads > 1:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=5.0)
    ap.add_argument("--chain", choices=("tanh", "softsign"), default="tanh")
    args = ap.parse_args(argv)
    import numba

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    x = np.random.default_rng(0).standard_normal(args.n).astype(np.float32)
    kernel, sess = tbe_kernel(args.n, args.chain), ort_session(args.n, args.chain, args.threads)
    ref = numpy_chain(x, args.chain)
    out, dst = np.empty_like(x), np.empty_like(x)
    for got in (kernel(x), sess.run(None, {"x": x})[0]):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    runners = {"memcpy (np.copyto)": lambda: np.copyto(dst, x), "opencann fused (TBE)": lambda: kernel(x),
               "opencann fused, out=": lambda: kernel(x, out=[out]),
               "NumPy unfused": lambda: numpy_chain(x, args.chain), "onnxruntime": lambda: sess.run(None, {"x": x})}
    times = measure(runners, budget_s=args.budget, min_runs=5)
    gb = 8 * args.n / 1e9
    rows = []
    for name, ms in times.items():
        med, best = summary(ms)
        rows.append({"runner": name, "median ms": med, "min ms": best, "GB/s (median)": gb / med * 1e3,
                     "GB/s (min)": gb / best * 1e3, "runs": len(ms)})
    print(f"{env_line()}\nchain={args.chain}, n={args.n}, threads={args.threads}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
