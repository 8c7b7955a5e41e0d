"""``opencann atc``: compile a model to an offline model (``.om``), with ATC's flags.

    opencann atc --model resnet.onnx --framework 5 --output resnet --input_shape "input:1,3,224,224"
    opencann atc --model frozen.pb --framework 3 --output m --input_shape "x:1,224,224,3" --out_nodes "logits:0"
    opencann atc --mode 6 --om resnet.om          # print model information, planned peak activation memory
    opencann atc --mode 1 --om resnet.om --json resnet.json   # dump the model as JSON
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time

import numpy as np

from opencann.compiler import om
from opencann.compiler.ir import Graph, TensorType
from opencann.compiler.passes.precision import MODES
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.pipeline import PIPELINE, BuildOptions, compile_graph
from opencann.errors import AclError, ErrorCode
from opencann.fileio import write_text
from opencann.runtime.memory_plan import plan_memory

log = logging.getLogger("opencann.atc")
FRAMEWORKS = {"5": "ONNX", "3": "TensorFlow"}
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
              "null": logging.CRITICAL + 1}


def register(sub) -> None:
    p = sub.add_parser("atc", help="compile a model to an .om offline model (ATC-compatible flags)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", type=int, default=0, choices=[0, 1, 6],
                   help="0: build an .om (default); 1: model to JSON; 6: print .om information")
    p.add_argument("--model", help="the original model: an ONNX file (--framework 5); a frozen .pb or a "
                   "SavedModel directory (--framework 3)")
    p.add_argument("--weight", help="accepted for ATC compatibility (Caffe weights); unused")
    p.add_argument("--framework", default="5", choices=sorted(FRAMEWORKS), help="5: ONNX; 3: TensorFlow")
    p.add_argument("--output", help="output path prefix; '.om' is appended")
    p.add_argument("--om", help="an .om file, for --mode 1 and 6")
    p.add_argument("--json", help="output JSON file for --mode 1")
    p.add_argument("--input_shape", default="", help='"name:n,c,h,w;name2:..."; -1 marks a dynamic dimension')
    p.add_argument("--dynamic_batch_size", default="", help='allowed batch sizes, e.g. "1,2,4,8"')
    p.add_argument("--input_format", default="NCHW", choices=["NCHW", "NHWC", "ND", "NCDHW", "NDHWC"])
    p.add_argument("--out_nodes", default="", help='outputs to keep: "node_name:index;..."')
    p.add_argument("--precision_mode", default="force_fp32", choices=sorted(MODES))
    p.add_argument("--soc_version", default="cpu", help="target device kind: cpu or cuda")
    p.add_argument("--log", default="null", choices=sorted(LOG_LEVELS))
    p.add_argument("--dump-passes", dest="dump_passes", metavar="DIR", help="write the IR after each pass to DIR")
    p.set_defaults(handler=run_atc)


def parse_input_shape(text: str) -> dict[str, list[int]]:
    """``"a:1,3,224,224;b:1,-1"`` -> {"a": [1, 3, 224, 224], "b": [1, -1]}."""
    shapes: dict[str, list[int]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, dims = part.rpartition(":")
        try:
            values = [int(d) for d in dims.split(",")] if dims.strip() else []
        except ValueError:
            values = None
        if not sep or not name or values is None or any(d < -1 for d in values):
            raise AclError(ErrorCode.INVALID_PARAM, f"--input_shape: cannot read '{part}' (want name:d0,d1,...)")
        shapes[name] = values
    return shapes


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AclError(ErrorCode.INVALID_PARAM, f"{flag}: '{text}' is not a comma-separated list of ints") from None


def load_graph(path: str, framework: str, out_nodes: str = "") -> Graph:
    if not path:
        raise AclError(ErrorCode.INVALID_PARAM, "--model is required")
    if framework == "3":  # a frozen GraphDef or a SavedModel directory; --out_nodes are TF tensor names
        from opencann.frontends.tensorflow import import_tensorflow

        return import_tensorflow(path, outputs=_out_nodes(out_nodes) or None)
    from opencann.frontends.onnx import import_onnx

    return import_onnx(path)


def _out_nodes(text: str) -> list[str]:
    return [s.strip() for s in text.split(";") if s.strip()]


def options_from(args) -> BuildOptions:
    batches = _int_list(args.dynamic_batch_size, "--dynamic_batch_size")
    return BuildOptions(input_shape=parse_input_shape(args.input_shape), dynamic_batch_size=batches,
                        input_format=args.input_format,
                        out_nodes=[] if args.framework == "3" else _out_nodes(args.out_nodes),  # TF: at import
                        precision_mode=args.precision_mode, soc_version=args.soc_version)


def run_atc(args) -> int:
    logging.basicConfig(format="[%(levelname)s] %(name)s: %(message)s")
    log.setLevel(LOG_LEVELS[args.log])
    if args.mode == 6:
        return print_info(_need(args.om, "--om"))
    if args.mode == 1:
        return dump_json(args)
    if not args.output:
        raise AclError(ErrorCode.INVALID_PARAM, "--output is required")
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    start = time.perf_counter()
    steps = ["parse model", *(name for name, _ in PIPELINE), "write .om"]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task("atc: parse model", total=len(steps))
        graph = load_graph(args.model, args.framework, args.out_nodes)
        log.info("parsed %s: %d nodes", args.model, len(graph.nodes))
        bar.advance(task)

        def after(name: str, g: Graph) -> None:
            log.info("pass %s: %d nodes", name, len(g.nodes))
            if args.dump_passes:
                write_text(os.path.join(args.dump_passes, f"{steps.index(name):02d}_{name}.txt"), str(g))
            bar.update(task, advance=1, description=f"atc: {name}")

        compiled = compile_graph(graph, options_from(args), on_pass=after)
        bar.update(task, description="atc: write .om")
        path = om.save(compiled, args.output)
        bar.advance(task)
    weights = sum(v.const.nbytes for v in compiled.graph.initializers if v.const.dtype != object)
    print(f"ATC run success: {path} ({len(compiled.graph.nodes)} nodes, {weights / 1e6:.2f} MB of weights, "
          f"{args.precision_mode}, target {args.soc_version}) in {time.perf_counter() - start:.2f} s")
    return 0


def _need(value: str | None, flag: str) -> str:
    if not value:
        raise AclError(ErrorCode.INVALID_PARAM, f"{flag} is required in this mode")
    return value


def describe(compiled: om.CompiledModel) -> dict:
    """A JSON-ready description of a compiled model: its graph with tensor summaries instead of data."""
    header, _ = om.encode(compiled)
    for t in header["tensors"]:
        t.pop("strings", None)
    header.pop("data_sha256", None)
    return header


def dump_json(args) -> int:
    out = _need(args.json, "--json")
    if args.om:
        compiled = om.load(args.om)
    else:
        compiled = om.CompiledModel(load_graph(args.model, args.framework, args.out_nodes))
    write_text(out, json.dumps(describe(compiled), indent=1))
    print(f"ATC run success: wrote {out}")
    return 0


def _fmt_shape(t) -> str:
    if not isinstance(t, TensorType) or t.shape is None:
        return "?"
    return "[" + ",".join(str(d) if isinstance(d, int) else "-1" for d in t.shape) + "]"


def _fmt_bytes(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def memory_summary(graph: Graph) -> str:
    """One line: the planned peak activation memory (see :mod:`opencann.runtime.memory_plan`)."""
    plan = plan_memory(infer_shapes(graph))
    text = (f"activation memory: peak {_fmt_bytes(plan.arena_bytes)} planned arena (naive sum "
            f"{_fmt_bytes(plan.naive_bytes)}, largest live set {_fmt_bytes(plan.live_bytes)}, "
            f"{len(plan.buffers)} buffers, {plan.inplace} in place)")
    if plan.unknown:
        text += f"; {len(plan.unknown)} activation(s) of dynamic shape not planned"
    return text


def print_info(path: str) -> int:
    compiled = om.load(path)
    g = compiled.graph
    weights = sum(v.const.nbytes for v in g.initializers if v.const.dtype != object)
    ops: dict[str, int] = {}
    for n in g.nodes:
        ops[n.op] = ops.get(n.op, 0) + 1
    print(f"model: {path}\n  target: {compiled.target}\n  graph: {g.name}, {len(g.nodes)} nodes, "
          f"{len(g.initializers)} weights ({weights / 1e6:.2f} MB)")
    for label, values in (("input", g.inputs), ("output", g.outputs)):
        for i, v in enumerate(values):
            dt = np.dtype(v.type.dtype).name if isinstance(v.type, TensorType) else "?"
            print(f"  {label} {i}: {v.name} {dt} {_fmt_shape(v.type)}")
    print("  operators: " + ", ".join(f"{k}×{n}" for k, n in sorted(ops.items(), key=lambda kv: -kv[1])))
    print("  " + memory_summary(g))
    print("  build options: " + json.dumps(compiled.build_options))
    if compiled.extra:
        print("  extra: " + json.dumps(compiled.extra))
    return 0
