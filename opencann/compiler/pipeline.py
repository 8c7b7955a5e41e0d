"""The compile pipeline: IR Graph + build options -> CompiledModel (what an ``.om`` file holds).

The passes run in the order of :data:`PIPELINE`; ``on_pass`` callbacks (progress display, ``--dump-passes``)
see the graph after each.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from opencann.compiler.ir import Graph, TensorType, Value
from opencann.compiler.om import CompiledModel
from opencann.compiler.passes.constant_fold import constant_fold
from opencann.compiler.passes.cse import cse
from opencann.compiler.passes.dead_code import eliminate_dead_code
from opencann.compiler.passes.fold_batchnorm import fold_batchnorm
from opencann.compiler.passes.fold_bias import fold_bias
from opencann.compiler.passes.fold_embedding import fold_embedding
from opencann.compiler.passes.fuse_attention import fuse_attention
from opencann.compiler.passes.fuse_conv import fuse_conv, to_channels_last
from opencann.compiler.passes.fuse_elementwise import fuse_elementwise
from opencann.compiler.passes.fuse_patterns import fuse_patterns
from opencann.compiler.passes.precision import MODES, convert_precision
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.compiler.passes.simplify import simplify
from opencann.errors import AclError, ErrorCode

TARGETS = ("cpu", "cuda")


@dataclass
class BuildOptions:
    """ATC's options, with ATC's names where it has them."""

    input_shape: dict[str, list[int]] = field(default_factory=dict)  # -1 = dynamic dimension
    dynamic_batch_size: list[int] = field(default_factory=list)
    input_format: str = "NCHW"
    out_nodes: list[str] = field(default_factory=list)  # "node_name:output_index"
    precision_mode: str = "force_fp32"
    soc_version: str = "cpu"

    def check(self) -> None:
        if self.precision_mode not in MODES:
            raise AclError(ErrorCode.INVALID_PARAM, f"--precision_mode '{self.precision_mode}' is not one of "
                           f"{', '.join(MODES)}")
        if self.soc_version not in TARGETS:
            raise AclError(ErrorCode.INVALID_PARAM, f"--soc_version '{self.soc_version}' is not one of "
                           f"{', '.join(TARGETS)}")
        if self.dynamic_batch_size and any(b <= 0 for b in self.dynamic_batch_size):
            raise AclError(ErrorCode.INVALID_PARAM, "--dynamic_batch_size values must be positive")


def apply_input_shapes(graph: Graph, options: BuildOptions) -> Graph:
    """Fix the graph inputs' shapes from ``--input_shape``; -1 stays dynamic (a symbolic dim)."""
    by_name = {v.name: v for v in graph.inputs}
    for name, dims in options.input_shape.items():
        if name not in by_name:
            raise AclError(ErrorCode.INVALID_PARAM, f"--input_shape names '{name}', which is not a model input "
                           f"(inputs: {', '.join(by_name)})")
        v = by_name[name]
        old = v.type.shape if isinstance(v.type, TensorType) else None
        if old is not None and len(old) != len(dims):
            raise AclError(ErrorCode.INVALID_PARAM, f"--input_shape gives '{name}' rank {len(dims)}, "
                           f"the model says {len(old)}")
        shape = tuple(d if d >= 0 else (old[i] if old and isinstance(old[i], str) else f"{name}_dim{i}")
                      for i, d in enumerate(dims))
        v.type = TensorType(v.type.dtype, shape)
    if options.dynamic_batch_size:
        for v in graph.inputs:
            if isinstance(v.type, TensorType) and v.type.shape:
                v.type = TensorType(v.type.dtype, ("batch", *v.type.shape[1:]))
    if options.input_shape or options.dynamic_batch_size:
        for node in graph.nodes:
            for out in node.outputs:
                out.type = None
    return graph


def select_outputs(graph: Graph, options: BuildOptions) -> Graph:
    """Make ``--out_nodes`` ("node:index;...") the graph's outputs."""
    if not options.out_nodes:
        return graph
    nodes = {n.name: n for n in graph.nodes}
    outputs: list[Value] = []
    for spec in options.out_nodes:
        name, _, idx = spec.rpartition(":") if ":" in spec else (spec, "", "0")
        node = nodes.get(name)
        if node is None or not idx.isdigit() or int(idx) >= len(node.outputs):
            raise AclError(ErrorCode.INVALID_PARAM, f"--out_nodes '{spec}' names no node output")
        outputs.append(node.outputs[int(idx)])
    graph.outputs = outputs
    return graph


def _mixed_or_fp32(options: BuildOptions) -> bool:
    """Conv fusion's modes: fp32, or mixed precision (fused convs keep an fp32 epilogue; force_fp16 does not)."""
    mode = MODES[options.precision_mode]
    return mode is None or mode[1]


PIPELINE: list[tuple[str, Callable[[Graph, BuildOptions], Graph]]] = [
    ("apply_input_shapes", apply_input_shapes),
    ("select_outputs", select_outputs),
    ("infer_shapes_early", lambda g, o: infer_shapes(g)),  # constant_fold folds Shape of known shapes
    ("constant_fold", lambda g, o: constant_fold(g, drop_folded=True)),
    ("simplify", lambda g, o: simplify(g)),
    ("cse", lambda g, o: cse(g)),
    ("fold_batchnorm", lambda g, o: fold_batchnorm(g)),
    ("fold_bias", lambda g, o: fold_bias(g)),
    ("eliminate_dead_code", lambda g, o: eliminate_dead_code(g)),
    ("infer_shapes", lambda g, o: infer_shapes(g)),
    ("fuse_conv", lambda g, o: to_channels_last(fuse_conv(g)) if _mixed_or_fp32(o) else g),
    ("fuse_patterns", lambda g, o: fuse_patterns(g)),
    ("fuse_attention", lambda g, o: fuse_attention(g)),
    ("fold_embedding", lambda g, o: fold_embedding(g) if MODES[o.precision_mode] is None else g),
    ("convert_precision", lambda g, o: convert_precision(g, o.precision_mode)),
    ("fuse_elementwise", lambda g, o: fuse_elementwise(g)),  # last: sees final dtypes (see its docstring)
]


def compile_graph(graph: Graph, options: BuildOptions | None = None,
                  on_pass: Callable[[str, Graph], None] | None = None) -> CompiledModel:
    """Run the pipeline over ``graph`` (modified in place) and package the result."""
    options = options or BuildOptions()
    options.check()
    for name, fn in PIPELINE:
        graph = fn(graph, options)
        if on_pass is not None:
            on_pass(name, graph)
    graph.validate()
    extra = {"dynamic_batch_size": options.dynamic_batch_size} if options.dynamic_batch_size else {}
    return CompiledModel(graph, build_options=asdict(options), target=options.soc_version, extra=extra)
