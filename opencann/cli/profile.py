"""``opencann profile MODEL``: per-operator time of an ``.om`` or ``.onnx`` model on the CPU.

    opencann profile resnet18.om --iterations 50 --top 15
    opencann profile model.onnx --input_shape "x:1,3,224,224" --by type --output report.json

Runs the model ``--warmup`` times, ``--iterations`` times plain, then ``--iterations`` times with every
kernel timed (:mod:`opencann.runtime.profiler`); prints the slowest nodes (or op types) with their share
of the run, the run time, the kernels' total and the executor's overhead.
"""
from __future__ import annotations

import json
import os

import numpy as np

from opencann.cli.run import load_npy, random_input
from opencann.errors import AclError, ErrorCode
from opencann.fileio import write_text


def register(sub) -> None:
    p = sub.add_parser("profile", help="time a model's operators (per node or per op type)", description=__doc__)
    p.add_argument("model", help="an .om file, or an .onnx file (compiled as opencann atc does)")
    p.add_argument("--input", nargs="*", default=[], help=".npy files, one per model input (random if omitted)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.add_argument("--input_shape", default="", help='for .onnx: "name:n,c,h,w;..." as for opencann atc')
    p.add_argument("--iterations", type=int, default=20, help="profiled runs (default 20)")
    p.add_argument("--warmup", type=int, default=2, help="runs before timing (default 2)")
    p.add_argument("--top", type=int, default=20, help="rows shown (default 20; 0: all)")
    p.add_argument("--by", choices=["node", "type"], default="node", help="one row per node or per op type")
    p.add_argument("--output", help="write the full report as JSON")
    p.set_defaults(handler=profile_model)


def load_compiled(path: str, input_shape: str = ""):
    """A CompiledModel from an ``.om`` file, or an ``.onnx`` file through the atc pipeline."""
    from opencann.compiler import om

    if path.endswith(".om"):
        return om.load(path)
    if not path.endswith(".onnx"):
        raise AclError(ErrorCode.INVALID_FILE, f"'{path}': profile takes an .om or .onnx file")
    from opencann.cli.atc import parse_input_shape
    from opencann.compiler.pipeline import BuildOptions, compile_graph
    from opencann.frontends.onnx import import_onnx

    if not os.path.isfile(path):
        raise AclError(ErrorCode.INVALID_FILE, f"model file '{path}' does not exist")
    return compile_graph(import_onnx(path), BuildOptions(input_shape=parse_input_shape(input_shape)))


def profile_model(args) -> int:
    from opencann.runtime.executor import Plan
    from opencann.runtime.model import _describe
    from opencann.runtime.profiler import Profiler

    if args.iterations < 1 or args.warmup < 0 or args.top < 0:
        raise AclError(ErrorCode.INVALID_PARAM, "--iterations must be >= 1, --warmup and --top >= 0")
    compiled = load_compiled(args.model, args.input_shape)
    if compiled.target != "cpu":
        raise AclError(ErrorCode.RESOURCE_NOT_MATCH, f"'{args.model}' was built for '{compiled.target}': "
                       "profile runs on the CPU (rebuild with --soc_version cpu)")
    descs = _describe(compiled.graph.inputs, "ND")
    if args.input and len(args.input) != len(descs):
        raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"the model has {len(descs)} inputs, "
                       f"{len(args.input)} --input files were given")
    rng = np.random.default_rng(args.seed)
    batch = min(compiled.extra.get("dynamic_batch_size", []), default=1)
    inputs = [load_npy(p) for p in args.input] or [random_input(d, rng, batch) for d in descs]
    report = Profiler(Plan(compiled.graph, "cpu")).profile(inputs, args.iterations, args.warmup)
    report = {"model": args.model, "inputs": [{"name": d.name, "dtype": str(x.dtype), "shape": list(x.shape)}
                                              for d, x in zip(descs, inputs)], "warmup": args.warmup, **report}
    show(report, args.by, args.top)
    if args.output:
        write_text(args.output, json.dumps(report, indent=1))
        print(f"report written to {args.output}")
    return 0


def show(report: dict, by: str, top: int) -> None:
    """The report as a rich table (the ``top`` rows), then the run's totals."""
    from rich.console import Console
    from rich.table import Table

    rows = report["nodes" if by == "node" else "types"]
    shown = rows[:top] if top else rows
    table = Table(title=f"{report['graph']}: {report['iterations']} profiled runs, "
                  f"{len(shown)} of {len(rows)} {'nodes' if by == 'node' else 'op types'}")
    first = ["node", "op"] if by == "node" else ["op", "nodes"]
    for col in (*first, "calls", "ms/run", "mean ms", "median ms", "%", *(["output shapes"] if by == "node" else [])):
        left = col in ("node", "op", "output shapes")
        table.add_column(col, justify="left" if left else "right", overflow="fold" if left else "ellipsis")
    for r in shown:
        cells = [r["name"], r["op"]] if by == "node" else [r["op"], str(r["nodes"])]
        cells += [str(r["calls"]), f"{r['per_run_ms']:.4f}", f"{r['mean_ms']:.4f}", f"{r['median_ms']:.4f}",
                  f"{r['percent']:.1f}"]
        if by == "node":
            cells.append(" ".join(str(s) for s in r["shapes"]))
        table.add_row(*cells)
    console = Console()
    console.print(table)
    run, plain = report["run_ms"], report["plain_run_ms"]
    console.print(f"run: median {run['median']:.4f} ms, mean {run['mean']:.4f} ms profiled "
                  f"(unprofiled median {plain['median']:.4f} ms); kernels {report['kernel_ms']:.4f} ms, "
                  f"executor overhead {report['overhead_ms']:.4f} ms per run", highlight=False)
