"""CUDA code generator: a TBE plan becomes CUDA C, one ``extern "C" __global__`` function per stage.

A plain elementwise kernel is one function. Each function takes every buffer (inputs, outputs, temporaries,
C-contiguous) and walks its iteration space with a grid-stride loop; index arithmetic uses the constant
shapes. Reductions give one thread per output element looping over the reduced axes, or, for long ones,
a block per output element combining through shared memory. float16 is loaded and stored through
``cuda_fp16.h`` and computed in float.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from opencann.tbe.dsl import FLOATS, Tensor
from opencann.tbe.schedule import BodyEmitter, Plan, Stage, describe, is_flat

STORE = {"float16": "__half", "float32": "float", "float64": "double", "int8": "signed char",
         "uint8": "unsigned char", "int32": "int", "int64": "long long", "bool": "bool"}
COMPUTE = dict(STORE, float16="float")
MATH = ("exp", "log", "sqrt", "rsqrt", "tanh", "erf", "pow", "fabs")
EXPR = {"vadd": "{0} + {1}", "vsub": "{0} - {1}", "vmul": "{0} * {1}", "vdiv": "{0} / {1}",
        "vmax": "tbe_max({0}, {1})", "vmin": "tbe_min({0}, {1})", "vabs": "tbe_abs({0})", "vneg": "-{0}",
        "vrelu": "tbe_max({0}, ({t})0)", "vexp": "{exp}({0})", "vlog": "{log}({0})", "vsqrt": "{sqrt}({0})",
        "vrsqrt": "{rsqrt}({0})", "vrec": "({t})1 / {0}", "vtanh": "{tanh}({0})", "verf": "{erf}({0})",
        "vsigmoid": "({t})1 / (({t})1 + {exp}(-{0}))", "vpow": "{pow}({0}, {1})", "vsel": "{0} ? {1} : {2}"}
SCALAR_OPS = {"vadds": "vadd", "vmuls": "vmul", "vmaxs": "vmax", "vmins": "vmin", "vdivs": "vdiv"}
CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
HELPERS = """template <typename T> __device__ __forceinline__ T tbe_max(T a, T b) { return (a > b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T tbe_min(T a, T b) { return (a < b || a != a) ? a : b; }
template <typename T> __device__ __forceinline__ T tbe_abs(T a) { return a < (T)0 ? -a : a; }"""
BLOCK = 256  # threads per block (a power of two: the reduction tree halves it)
MAX_GRID = 4096
BLOCK_REDUCE_MIN = 256  # reductions over at least this many elements get one thread block per output element


@dataclass
class Launches:
    configs: list  # (grid, block) per stage
    temps: list  # (shape, dtype) of the temporary buffers, in argument order


def literal(value, dtype: str) -> str:
    """C source for a constant of ``dtype`` (only numbers we formatted ourselves)."""
    t = COMPUTE[dtype]
    if dtype == "bool":
        return "true" if value else "false"
    if dtype in FLOATS:
        if np.isnan(value):
            return f"(({t})__int_as_float(0x7fffffff))"
        if np.isinf(value):
            return f"(({t}){'-' if value < 0 else ''}__int_as_float(0x7f800000))"
        return f"(({t}){float(value)!r})"
    if value == np.iinfo(np.int64).min:
        return "(-9223372036854775807LL - 1)"
    return f"(({t}){int(value)}LL)"


def _math(ctype: str) -> dict:
    return {f: f + ("f" if ctype == "float" else "") for f in MATH}


def _index_type(plan: Plan) -> str:
    sizes = [s.size for s in plan.inputs + plan.outputs] + [math.prod(s.shape) for s in plan.stages]
    return "long long" if max(sizes, default=0) >= 2 ** 31 - 1 else "int"


class _Body(BodyEmitter):
    """A CUDA C loop body."""

    literal = staticmethod(literal)

    def __init__(self, plan: Plan, flat: bool, it: str):
        super().__init__(plan, flat)
        self.it = it

    def offset(self, node: Tensor, idx: list) -> str:
        if self.flat:
            return idx[0]
        strides = [math.prod(node.shape[k + 1:]) for k in range(node.ndim)]
        terms = [f"{i} * {s}" if s != 1 else i for i, s in zip(idx, strides, strict=True) if i != "0"]
        return " + ".join(terms) or "0"

    def load(self, buf: str, node: Tensor, idx: list) -> str:
        ref = f"{buf}[{self.offset(node, idx)}]"
        return f"__half2float({ref})" if node.dtype == "float16" and not buf.startswith("tmp") else ref

    def _expr(self, node: Tensor, args: list) -> str:
        t = COMPUTE[node.dtype]
        if node.op == "vcmp":
            return f"{args[0]} {CMP[node.attrs['mode']]} {args[1]}"
        if node.op == "cast_to":
            if node.dtype == "bool":
                return f"{args[0]} != 0"
            return f"__half2float(__float2half((float){args[0]}))" if node.dtype == "float16" else f"({t}){args[0]}"
        if node.op == "vabs" and node.dtype in FLOATS:
            return f"{_math(t)['fabs']}({args[0]})"
        return EXPR[SCALAR_OPS.get(node.op, node.op)].format(*args, t=t, **_math(t))

    def _assign(self, node: Tensor, expr: str, comment: str) -> str:
        name = f"v{len(self.lines)}"
        self.lines.append(f"const {COMPUTE[node.dtype]} {name} = ({COMPUTE[node.dtype]})({expr});  // {comment}")
        return name


def _unravel(names: list, dims: list, flat: str, it: str) -> list:
    """Statements splitting the flat index ``flat`` into the named indices of ``dims`` (row-major)."""
    if not dims:
        return []
    lines = [f"{it} r = {flat};"]
    for k in range(len(dims) - 1, 0, -1):
        lines += [f"const {it} {names[k]} = r % {dims[k]};", f"r /= {dims[k]};"]
    return lines + [f"const {it} {names[0]} = r;"]


def _store(plan: Plan, buf: str, node: Tensor, offset: str, value: str) -> str:
    half = node.dtype == "float16" and not buf.startswith("tmp")
    return f"{buf}[{offset}] = {f'__float2half({value})' if half else value};"


def _grid_loop(n: int, it: str, body: list) -> list:
    step = f"i += ({it})gridDim.x * blockDim.x"
    head = [f"for ({it} i = blockIdx.x * ({it})blockDim.x + threadIdx.x; i < {n}; {step}) {{"]
    return head + ["    " + line for line in body] + ["}"]


def _map_stage(plan: Plan, stage: Stage, it: str) -> list:
    flat = is_flat(plan, stage)
    names = [f"i{k}" for k in range(len(stage.shape))]
    body = _Body(plan, flat, it)
    idx = ["i"] if flat else names
    stores = []
    for node in stage.nodes:
        v = body.value(node, idx)
        stores += [_store(plan, b, node, body.offset(node, idx), v) for b in plan.buffers[id(node)] if b[:3] == "out"]
    pre = [] if flat else _unravel(names, list(stage.shape), "i", it)
    return _grid_loop(math.prod(stage.shape), it, pre + body.lines + stores)


def _combine(op: str, t: str, a: str, b: str) -> str:
    if op in ("reduce_max", "reduce_min"):
        return f"tbe_{op[-3:]}({a}, {b})"
    return f"({t})({a} {'*' if op == 'reduce_prod' else '+'} {b})"


def _identity(op: str, dtype: str) -> str:
    if op not in ("reduce_max", "reduce_min"):
        return "1" if op == "reduce_prod" else "0"
    high = op == "reduce_min"
    if dtype in FLOATS:
        return literal(float("inf") if high else float("-inf"), dtype)
    info = np.iinfo(dtype)
    return literal(int(info.max if high else info.min), dtype)


def _indent(lines: list) -> list:
    return ["    " + line for line in lines]


def _reduced_size(stage: Stage) -> int:
    return math.prod(stage.shape[k] for k in stage.nodes[0].attrs["axes"])


def _reduce_stage(plan: Plan, stage: Stage, it: str) -> list:
    """One thread per output element, or, for long reductions, one block per output element whose threads
    stride over the reduced elements and combine through a shared-memory tree."""
    node = stage.nodes[0]
    axes, op = node.attrs["axes"], node.op
    t = "double" if node.dtype == "float64" else COMPUTE[node.dtype]
    kept = [k for k in range(len(stage.shape)) if k not in axes]
    body = _Body(plan, False, it)
    v = body.value(node.inputs[0], [f"i{k}" for k in range(len(stage.shape))])
    update = body.lines + [f"acc = {_combine(op, t, 'acc', f'({t}){v}')};"]
    n_red, out_shape = _reduced_size(stage), tuple(stage.shape[k] for k in kept)
    strides = [math.prod(out_shape[j + 1:]) for j in range(len(kept))]
    offset = " + ".join(f"i{k} * {s}" if s != 1 else f"i{k}" for k, s in zip(kept, strides, strict=True)) or "0"
    finish = ([f"acc = acc / ({t}){n_red};"] if op == "reduce_mean" else []) + [
        _store(plan, b, node, offset, f"({COMPUTE[node.dtype]})acc") for b in plan.buffers[id(node)]]
    init = f"{t} acc = ({t}){_identity(op, node.dtype)};"
    if n_red < BLOCK_REDUCE_MIN:
        for k in reversed(axes):
            update = [f"for ({it} i{k} = 0; i{k} < {stage.shape[k]}; ++i{k}) {{"] + _indent(update) + ["}"]
        return _grid_loop(math.prod(out_shape), it, _unravel([f"i{k}" for k in kept], list(out_shape), "i", it)
                          + [init] + update + finish)
    red = _unravel([f"i{k}" for k in axes], [stage.shape[k] for k in axes], "j", it)
    tree = ["sdata[threadIdx.x] = acc;", "__syncthreads();", f"for (int s = {BLOCK // 2}; s > 0; s >>= 1) {{",
            f"    if (threadIdx.x < s) sdata[threadIdx.x] = "
            f"{_combine(op, t, 'sdata[threadIdx.x]', 'sdata[threadIdx.x + s]')};",
            "    __syncthreads();", "}", "if (threadIdx.x == 0) {", "    acc = sdata[0];"] + _indent(finish) + [
            "}", "__syncthreads();"]
    per_output = (_unravel([f"i{k}" for k in kept], list(out_shape), "o", it) + [init]
                  + [f"for ({it} j = threadIdx.x; j < {n_red}; j += blockDim.x) {{"] + _indent(red + update) + ["}"]
                  + tree)
    head = f"for ({it} o = blockIdx.x; o < {math.prod(out_shape)}; o += gridDim.x) {{"
    return [f"__shared__ {t} sdata[{BLOCK}];", head] + _indent(per_output) + ["}"]


def kernel_names(plan: Plan, key: str) -> list:
    return [f"tbe_{key[:16]}_s{k}" for k in range(len(plan.stages))]


def _params(plan: Plan) -> str:
    ins = [f"const {STORE[t.dtype]}* __restrict__ in{k}" for k, t in enumerate(plan.inputs)]
    outs = [f"{STORE[t.dtype]}* __restrict__ out{k}" for k, t in enumerate(plan.outputs)]
    temps = [f"{COMPUTE[n.dtype]}* __restrict__ {name}" for name, n in plan.temps]
    return ", ".join(ins + outs + temps)


def launches(plan: Plan, key: str) -> Launches:
    """Grid and block per stage (from the iteration space) and the temporaries the wrapper allocates."""
    configs = []
    for stage in plan.stages:
        if stage.kind == "reduce" and _reduced_size(stage) >= BLOCK_REDUCE_MIN:
            configs.append((max(1, min(65535, stage.nodes[0].size)), BLOCK))
            continue
        n = math.prod(stage.shape) if stage.kind == "map" else stage.nodes[0].size
        configs.append((max(1, min(MAX_GRID, -(-n // BLOCK))), BLOCK))
    temps = [(n.shape, "float32" if n.dtype == "float16" else n.dtype) for _, n in plan.temps]
    return Launches(configs, temps)


def generate(plan: Plan, key: str) -> str:
    """The CUDA C module: helpers and one ``extern "C" __global__`` function per stage."""
    it = _index_type(plan)
    out = [f"// opencann TBE kernel {key[:16]} (generated; CUDA C for NVRTC)", "#include <cuda_fp16.h>", "",
           HELPERS, ""]
    for k, (stage, name) in enumerate(zip(plan.stages, kernel_names(plan, key), strict=True)):
        what = ", ".join(f"{'/'.join(plan.buffers[id(n)])} = {describe(n, plan)}" for n in stage.nodes)
        out.append(f"// stage {k}: {stage.kind} over {stage.shape}: {what}")
        out.append(f'extern "C" __global__ void {name}({_params(plan)}) {{')
        lines = (_map_stage if stage.kind == "map" else _reduce_stage)(plan, stage, it)
        out += ["    " + line for line in lines] + ["}", ""]
    return "\n".join(out)
