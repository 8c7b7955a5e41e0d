"""CPU code generator: a TBE plan becomes one Numba ``@njit`` function in a generated Python module.

The kernel takes C-contiguous arrays (the wrapper in ``build.py`` guarantees it; rank-0 arrays arrive with
shape ``(1,)`` and float16 arrives as float32, since Numba has no float16 on the CPU). Map stages over
operands of one shape use a flat loop; others use nested loops over the output shape with NumPy's
broadcasting folded into the index expressions. Reductions are loops with an accumulator (a scalar per
output, or an array filled in memory order when the innermost axis is kept); a sum along the innermost axis fills
a float64 row and adds it to eight partial sums (:class:`_Lanes`: vector code, not a chain of scalar adds).
Consecutive stages over one iteration space that do not read each other's results share one loop nest (one pass
over their inputs: maps, memory-order reductions and such row sums), and a
subexpression that varies along only a few of a nest's axes (``in[c] / 169.0`` inside a loop over (n, h, w, c))
is computed once per distinct value into a small array before the nest: the same operations on the same values,
so results are bit-identical. float32 exp, tanh and erf use the vectorizable ``HELPERS`` below.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from opencann.tbe.dsl import FLOATS, Tensor
from opencann.tbe.schedule import BodyEmitter, Plan, Stage, describe, is_flat

CTYPE = {"float16": "np.float32", "float32": "np.float32", "float64": "np.float64", "int8": "np.int8",
         "uint8": "np.uint8", "int32": "np.int32", "int64": "np.int64", "bool": "np.bool_"}
EXPR = {"vadd": "{0} + {1}", "vsub": "{0} - {1}", "vmul": "{0} * {1}", "vdiv": "{0} / {1}",
        "vmax": "np.maximum({0}, {1})", "vmin": "np.minimum({0}, {1})", "vabs": "np.abs({0})", "vneg": "-{0}",
        "vrelu": "np.maximum({0}, {t}(0))", "vexp": "np.exp({0})", "vlog": "np.log({0})",
        "vsqrt": "np.sqrt({0})", "vrsqrt": "{t}(1) / np.sqrt({0})", "vrec": "{t}(1) / {0}",
        "vtanh": "np.tanh({0})", "vsigmoid": "{t}(1) / ({t}(1) + np.exp(-{0}))", "verf": "math.erf({0})",
        "vpow": "np.power({0}, {1})", "vsel": "{1} if {0} else {2}"}
SCALAR_OPS = {"vadds": "vadd", "vmuls": "vmul", "vmaxs": "vmax", "vmins": "vmin", "vdivs": "vdiv"}
CMP = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}
# Helpers for float32 math (float16 runs in float32 too). libm's expf/tanhf/erf are scalar calls; these are
# branch-free polynomial forms LLVM vectorizes: exp is Cephes' expf (within 1 ulp of the true value),
# tanh and erf Eigen's rational approximations (within 7 and 6 ulp). exp's and erf's polynomials run as fused
# multiply-adds (``cpu_math.fma32``: ~20% fewer instructions; erf was 7.5 ulp with separate roundings); tanh's
# do not: fused, tanh(+-7.9053) (the clamp) rounds to +-0.99999976, not +-1, and tanh-Gelu(-inf) would be -inf,
# not NaN. Numba inlines them into the kernel.
EXP_P = (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1)
TANH_P = (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
          1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03)
TANH_Q = (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03)
ERF_P = (-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06, -5.69250639462346e-05,
         -7.34990630326855e-04, -2.95459980854025e-03, -1.60960333262415e-02)
ERF_Q = (-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03, -7.37332916720468e-03,
         -1.42647390514189e-02)


def _f32(c: float) -> str:
    return f"np.float32({c!r})"


def _horner(var: str, coefs: tuple, fused: bool = True) -> str:
    """The polynomial with ``coefs`` (highest power first) at ``var``: a fused multiply-add a coefficient, or a
    multiply and an add."""
    text = _f32(coefs[0])
    for c in coefs[1:]:
        text = f"fma32({text}, {var}, {_f32(c)})" if fused else f"({text} * {var} + {_f32(c)})"
    return text


def _clamp(var: str, bound: float) -> str:
    return f"np.minimum(np.maximum({var}, {_f32(-bound)}), {_f32(bound)})"


HELPERS = {
    "_exp_f32": f"""def _exp_f32(x):
    c = np.minimum(np.maximum(x, np.float32(-104.0)), np.float32(89.0))
    n = np.floor(c * {_f32(1.44269504088896341)} + np.float32(0.5))
    r = c - n * {_f32(0.693359375)} - n * {_f32(-2.12194440e-4)}
    y = {_horner("r", EXP_P)} * r * r + r + np.float32(1)
    k = np.int32(n)
    h = k >> 1  # 2**k as two factors, so that subnormal and overflowing results come out right
    p1 = np.int32((h + 127) << 23).view(np.float32)
    p2 = np.int32((k - h + 127) << 23).view(np.float32)
    return x if x != x else np.float32(y * p1 * p2)""",
    "_tanh_f32": f"""def _tanh_f32(x):
    c = {_clamp("x", 7.90531110763549805)}
    c2 = c * c
    p = {_horner("c2", TANH_P, False)}
    return x if np.abs(x) < np.float32(4e-4) else np.float32(c * p / {_horner("c2", TANH_Q, False)})""",
    "_erf_f32": f"""def _erf_f32(x):
    c = {_clamp("x", 4.0)}
    c2 = c * c
    return {_clamp(f"np.float32(c * {_horner('c2', ERF_P)} / {_horner('c2', ERF_Q)})", 1.0)}""",
    "_round_f16": """def _round_f16(v):
    # the float16 value nearest to float32 v (ties to even), as a float32
    a = abs(np.float64(v))
    if a != a or a >= 65520.0:
        return np.float32(v * np.float32(np.inf)) if a == a else np.float32(v)
    e = math.frexp(a)[1] if a >= 2.0 ** -14 else -13
    s = 2.0 ** (e - 11 + 52)
    r = (a + s) - s
    return np.float32(r if v >= 0 else -r)""",
}
F32_MATH = {"vexp": "_exp_f32({0})", "vtanh": "_tanh_f32({0})", "verf": "_erf_f32({0})",
            "vsigmoid": "np.float32(1) / (np.float32(1) + _exp_f32(-{0}))"}


def literal(value, dtype: str) -> str:
    """Python source for a constant of ``dtype`` (only numbers we formatted ourselves)."""
    if dtype == "bool":
        return "True" if value else "False"
    if dtype in FLOATS and not np.isfinite(value):
        return f"{CTYPE[dtype]}({'np.nan' if np.isnan(value) else 'np.inf' if value > 0 else '-np.inf'})"
    return f"{CTYPE[dtype]}({value!r})"


@dataclass
class Uses:
    """What the kernel body needs declared around it: flat views of buffers and helper functions."""
    flats: set = field(default_factory=set)
    helpers: set = field(default_factory=set)


HOIST_RATIO = 4  # hoist a subexpression when it has at most 1/HOIST_RATIO as many distinct values as evaluations


class _Body(BodyEmitter):
    """A Numba loop body; ``hoisted`` maps id(node) -> (array name, varying axes) of precomputed subexpressions."""

    literal = staticmethod(literal)

    def __init__(self, plan: Plan, flat: bool, uses: Uses, hoisted: dict | None = None):
        super().__init__(plan, flat)
        self.uses, self.hoisted = uses, hoisted or {}

    def _emit(self, node: Tensor, idx: list) -> str:
        if id(node) in self.hoisted:
            name, axes = self.hoisted[id(node)]
            at = [i if k in axes else "0" for k, i in enumerate(idx)]
            return self._assign(node, f"{name}[{', '.join(at) or '0'}]", "load " + name)
        return super()._emit(node, idx)

    def load(self, buf: str, node: Tensor, idx: list) -> str:
        if self.flat:
            self.uses.flats.add(buf)
            return f"{buf}_f[{idx[0]}]"
        return f"{buf}[{', '.join(idx) if idx else '0'}]"

    def _expr(self, node: Tensor, args: list) -> str:
        t = CTYPE[node.dtype]
        if node.op == "vcmp":
            return f"{args[0]} {CMP[node.attrs['mode']]} {args[1]}"
        if node.op == "cast_to":
            if node.dtype == "bool":
                return f"{args[0]} != 0"
            return self._helper("_round_f16({0})", f"{t}({args[0]})") if node.dtype == "float16" else f"{t}({args[0]})"
        if node.op in F32_MATH and t == "np.float32":
            return self._helper(F32_MATH[node.op], *args)
        text = EXPR[SCALAR_OPS.get(node.op, node.op)].format(*args, t=t)
        return text if node.dtype == "bool" else f"{t}({text})"

    def _helper(self, template: str, *args) -> str:
        self.uses.helpers.update(re.findall(r"_\w+_f(?:32|16)", template))
        return template.format(*args)

    def _assign(self, node: Tensor, expr: str, comment: str) -> str:
        name = f"v{len(self.lines)}"
        self.lines.append(f"{name} = {expr}  # {comment}")
        return name


def _acc_type(dtype: str) -> str:
    """Reductions accumulate in float64 for every float dtype."""
    return "np.float64" if dtype in FLOATS else CTYPE[dtype]


def _loops(dims: list, parallel: bool, runtime: bool = True) -> list:
    """Loop headers over (var, extent) pairs, the first one a prange when parallel. With ``runtime``, the
    innermost loop of a sequential nest runs to ``n_<extent>``, read from an argument's shape at run time
    (see ``_extents``)."""
    last = -1 if parallel or not runtime else len(dims) - 1
    return [f"for {v} in {'prange' if parallel and k == 0 else 'range'}({f'n_{n}' if k == last else n}):"
            for k, (v, n) in enumerate(dims)]


def _extents(plan: Plan, args: list, body: list) -> list:
    """Definitions of the ``n_<extent>`` loop bounds in ``body``: an argument's dimension of that extent where
    there is one. With a constant bound LLVM unrolls a short innermost loop completely and, outside a prange
    body, the unrolled code stays scalar (it cannot prove the arrays apart: 1.2-1.4x slower measured); a run-time
    bound gets the loop vectorized behind an aliasing check. A prange body is vectorized either way, faster
    with the constant."""
    shapes = [t.shape or (1,) for t in plan.inputs + plan.outputs]
    lines = []
    for n in sorted({int(m) for m in re.findall(r"\bn_(\d+)\b", "\n".join(body))}):
        where = next(((a, k) for a, shape in zip(args, shapes, strict=True) for k, d in enumerate(shape) if d == n),
                     None)
        lines.append(f"    n_{n} = {where[0]}.shape[{where[1]}]" if where else f"    n_{n} = {n}")
    return lines


def _nest(headers: list, body: list, indent: int) -> list:
    out = [" " * (indent + 4 * k) + h for k, h in enumerate(headers)]
    return out + [" " * (indent + 4 * len(headers)) + line for line in body]


def _index_vars(shape: tuple) -> list:
    """Loop variable per dimension; extent-1 dimensions get no loop, just index 0."""
    return ["0" if d == 1 else f"i{k}" for k, d in enumerate(shape)]


def _map_stage(plan: Plan, stage: Stage, uses: Uses, hoisted: dict) -> list:
    flat = is_flat(plan, stage)
    body = _Body(plan, flat, uses, None if flat else hoisted)  # a flat loop recomputes what other nests hoisted
    idx = ["i"] if flat else _index_vars(stage.shape)
    stores = []
    for node in stage.nodes:
        v = body.value(node, idx)
        stores += [f"{body.load(b, node, idx)} = {v}" for b in plan.buffers[id(node)] if b.startswith("out")]
    dims = [("i", math.prod(stage.shape))] if flat else [(f"i{k}", d) for k, d in enumerate(stage.shape) if d != 1]
    return _nest(_loops(dims, stage.parallel), body.lines + stores, 4)


def _update(op: str, acc_t: str, acc: str, v: str) -> str:
    if op in ("reduce_max", "reduce_min"):
        cmp = ">" if op == "reduce_max" else "<"
        return f"{acc} = {acc_t}({v}) if ({v} {cmp} {acc} or {v} != {v}) else {acc}"
    return f"{acc} = {acc_t}({acc} {'*' if op == 'reduce_prod' else '+'} {v})"


def _identity(op: str, dtype: str) -> str:
    if op not in ("reduce_max", "reduce_min"):
        return "1" if op == "reduce_prod" else "0"
    if dtype in FLOATS:
        return "-np.inf" if op == "reduce_max" else "np.inf"
    info = np.iinfo(dtype)
    return str(info.min if op == "reduce_max" else info.max)


def _walk_kept(stage: Stage) -> tuple:
    """The loops of a reduce stage: all its non-trivial axes, and the kept ones."""
    axes = stage.nodes[0].attrs["axes"]
    walk = [(f"i{k}", d) for k, d in enumerate(stage.shape) if d != 1]
    return walk, [(f"i{k}", d) for k, d in enumerate(stage.shape) if k not in axes and d != 1]


def _in_memory_order(stage: Stage) -> bool:
    """True for a reduction keeping the innermost axis: it accumulates into an array in one memory-order pass."""
    walk, kept = _walk_kept(stage)
    return bool(walk and kept and walk[-1] == kept[-1] and len(walk) > len(kept))


def _store(plan: Plan, stage: Stage, idx: list, acc: str) -> list:
    """The statements storing accumulator ``acc`` (the mean's division applied) at ``idx`` of every output."""
    node, shape = stage.nodes[0], stage.shape
    axes = node.attrs["axes"]
    out_idx = ", ".join(idx[k] if k not in axes else "0" for k in range(len(shape))
                        if node.attrs["keepdims"] or k not in axes)
    mean = f" / {math.prod(shape[k] for k in axes)}" if node.op == "reduce_mean" else ""
    return [f"{b}[{out_idx or '0'}] = {CTYPE[node.dtype]}({acc}{mean})" for b in plan.buffers[id(node)]]


def _reduce_parts(plan: Plan, stage: Stage, body: _Body, idx: list) -> tuple:
    """(statements before the nest, the update inside it, the store loops after it, the output per accumulator)."""
    node = stage.nodes[0]
    op, acc_t = node.op, _acc_type(node.dtype)
    v = body.value(node.inputs[0], idx)
    store = lambda acc: _store(plan, stage, idx, acc)
    init = f"{acc_t}({_identity(op, node.dtype)})"
    _, kept = _walk_kept(stage)
    if not _in_memory_order(stage):
        return [f"acc = {init}"], _update(op, acc_t, "acc", v), store("acc")
    accs = f"acc_{plan.buffers[id(node)][0]}"
    acc = f"{accs}[{', '.join(name for name, _ in kept)}]"
    pre = [f"{accs} = np.full({tuple(d for _, d in kept)}, {init}, {acc_t})"]
    return pre, _update(op, acc_t, acc, v), _nest(_loops(kept, False), store(acc), 0)


LANES = 8  # partial sums of a sum along the innermost axis (see _Lanes)
LANE_ROWS_MAX = 1 << 16  # elements of the per-iteration rows a parallel lane sum may allocate


@dataclass
class _Lanes:
    """A sum along the innermost axis in vector code: each row of values is computed into a float64 row (a
    vectorized loop) and added to :data:`LANES` partial sums (element j to sum j % LANES, a remainder to the
    first), which are added pairwise at the end: the scalar chain of one float64 add per element costs twice as
    long. The float64 sum of float32 values is exact in any order unless their magnitudes span more than
    ~2**23, so the result is almost always the sequential sum's bits; otherwise it differs from the exact sum by
    far less than a float32 ulp. Array ``name`` holds the sums and the row (one of each per iteration of a
    parallel outer loop)."""

    name: str
    row: str  # the index prefix of the iteration's row: "rows_out1[" or "rows_out1[i0, "
    n: int
    shape: tuple

    @classmethod
    def of(cls, plan: Plan, stage: Stage, parallel: bool) -> _Lanes | None:
        """The lanes of a float sum or mean along the innermost axis (of at least ``3 * LANES`` elements: for
        shorter rows the chain is as fast), else None."""
        walk, kept = _walk_kept(stage)
        node = stage.nodes[0]
        if node.op not in ("reduce_sum", "reduce_mean") or node.dtype not in FLOATS or not walk or walk[-1] in kept \
                or walk[-1][1] < 3 * LANES or (stage.parallel and kept and kept[0][1] * (LANES + walk[-1][1]) >
                                               LANE_ROWS_MAX):
            return None
        name, n = f"rows_{plan.buffers[id(node)][0]}", walk[-1][1]
        if parallel:
            return cls(name, f"{name}[{kept[0][0]}, ", n, (kept[0][1], LANES + n))
        return cls(name, f"{name}[", n, (LANES + n,))

    def alloc(self) -> str:
        return f"{self.name} = np.empty({self.shape}, np.float64)"

    def init(self) -> list:
        return [f"for u in range({LANES}):", f"    {self.row}u] = 0"]

    def fill(self, var: str, value: str) -> str:
        return f"{self.row}{LANES} + {var}] = {value}"

    def fold(self) -> list:
        """Add the row to the partial sums."""
        row, full = self.row, self.n - self.n % LANES
        lines = _nest([f"for j in range({LANES}, {LANES + full}, {LANES}):", f"for u in range({LANES}):"],
                      [f"{row}u] += {row}j + u]"], 0)
        return lines + (_nest([f"for j in range({LANES + full}, {LANES + self.n}):"], [f"{row}0] += {row}j]"], 0)
                        if full < self.n else [])

    def total(self, first: int = 0, count: int = LANES) -> str:
        """The partial sums added pairwise: ((0 + 1) + (2 + 3)) + ((4 + 5) + (6 + 7))."""
        if count == 1:
            return f"{self.row}{first}]"
        half = count // 2
        return f"({self.total(first, half)} + {self.total(first + half, half)})"


def _lane_sum(plan: Plan, stage: Stage, uses: Uses, hoisted: dict) -> list | None:
    """A sum along the innermost axis (other reduced axes outside it) as :class:`_Lanes`; None for others."""
    walk, kept = _walk_kept(stage)
    parallel = stage.parallel and bool(kept)
    lanes = _Lanes.of(plan, stage, parallel)
    if lanes is None:
        return None
    idx, reduced = _index_vars(stage.shape), [w for w in walk if w not in kept]
    body = _Body(plan, False, uses, hoisted)
    value = body.value(stage.nodes[0].inputs[0], idx)
    var, n = reduced[-1]
    fill = _nest([f"for {var} in range({n if parallel else f'n_{n}'}):"], body.lines + [lanes.fill(var, value)], 0)
    nest = _nest(_loops(reduced[:-1], False, runtime=False), fill + lanes.fold(), 0)
    inner = lanes.init() + nest + [f"acc = {lanes.total()}"] + _store(plan, stage, idx, "acc")
    return ["    " + lanes.alloc()] + _nest(_loops(kept, parallel), inner, 4)


def _reduce_stage(plan: Plan, stage: Stage, uses: Uses, hoisted: dict) -> list:
    """Loops with a scalar accumulator per output element (lanes for a sum along the innermost axis); when the
    innermost axis is kept, one pass in memory order accumulating into an array instead (no strided walks down
    columns)."""
    lanes = _lane_sum(plan, stage, uses, hoisted)
    if lanes is not None:
        return lanes
    body = _Body(plan, False, uses, hoisted)
    walk, kept = _walk_kept(stage)
    pre, update, post = _reduce_parts(plan, stage, body, _index_vars(stage.shape))
    if _in_memory_order(stage):
        nest = _nest(_loops(walk, stage.parallel and walk[0] == kept[0]), body.lines + [update], 0)
        return ["    " + line for line in pre + nest + post]
    reduced = [(f"i{k}", d) for k, d in enumerate(stage.shape) if k in stage.nodes[0].attrs["axes"] and d != 1]
    inner = _nest(_loops(reduced, False, runtime=False), body.lines + [update], 0)  # a scalar chain: no SIMD
    return _nest(_loops(kept, stage.parallel and bool(kept)), pre + inner + post, 4)


def _row_sum(plan: Plan, stage: Stage) -> bool:
    """A sum or mean over just the innermost axis that :class:`_Lanes` computes (it can share a loop nest)."""
    walk, kept = _walk_kept(stage)
    return len(kept) == len(walk) - 1 > 0 and _Lanes.of(plan, stage, False) is not None


def _merged_stages(plan: Plan, stages: list, uses: Uses, hoisted: dict) -> list:
    """Stages over one iteration space as one loop nest: map stores, memory-order reduction updates and row sums
    (their rows filled in the innermost loop, added up after it)."""
    body, idx = _Body(plan, False, uses, hoisted), _index_vars(stages[0].shape)
    walk = [(f"i{k}", d) for k, d in enumerate(stages[0].shape) if d != 1]
    pre, inner, post, parallel = [], [], [], all(s.parallel for s in stages)
    for stage in stages:
        if stage.kind == "reduce" and _in_memory_order(stage):
            parallel = parallel and walk[0] == _walk_kept(stage)[1][0]
    before, after = [], []  # row sums: the statements around the innermost loop
    for stage in stages:
        if stage.kind == "map":
            for node in stage.nodes:
                v = body.value(node, idx)
                inner += [f"{b}[{', '.join(idx)}] = {v}" for b in plan.buffers[id(node)] if b.startswith("out")]
        elif _in_memory_order(stage):
            first, update, last = _reduce_parts(plan, stage, body, idx)
            pre, post = pre + first, post + last
            inner.append(update)
        else:
            lanes = _Lanes.of(plan, stage, parallel)
            pre.append(lanes.alloc())
            inner.append(lanes.fill(walk[-1][0], body.value(stage.nodes[0].inputs[0], idx)))
            before += lanes.init()
            after += lanes.fold() + [f"acc = {lanes.total()}"] + _store(plan, stage, idx, "acc")
    headers = _loops(walk, parallel)
    if before:
        nest = _nest(headers[:-1], before + _nest(headers[-1:], body.lines + inner, 0) + after, 0)
    else:
        nest = _nest(headers, body.lines + inner, 0)
    return ["    " + line for line in pre + nest + post]


def _reads(plan: Plan, stage: Stage) -> set:
    """The buffers a stage's expressions load."""
    todo, seen, names = [n.inputs[0] if stage.kind == "reduce" else n for n in stage.nodes], set(), set()
    while todo:
        node = todo.pop()
        if id(node) not in seen:
            seen.add(id(node))
            home = plan.home(node)
            names.add(home) if home else todo.extend(node.inputs)
    return names


def _groups(plan: Plan) -> list:
    """Consecutive stages that can share a loop nest: one iteration space (not a flat map), memory-order
    reductions and row sums, and none reading a buffer another one of the group writes."""
    mergeable = lambda s: s.kind == "map" or _in_memory_order(s) or _row_sum(plan, s)
    groups: list = []
    for stage in plan.stages:
        group = groups[-1] if groups else []
        writes = {b for s in group for n in s.nodes for b in plan.buffers[id(n)]}
        if (group and mergeable(stage) and mergeable(group[0]) and group[0].shape == stage.shape
                and not _reads(plan, stage) & writes):
            group.append(stage)
        else:
            groups.append([stage])
    return groups


def _varies(plan: Plan, node: Tensor, memo: dict) -> frozenset:
    """The axes of ``node.shape`` along which its value changes."""
    if id(node) not in memo:
        if node.op == "const":
            axes = frozenset()
        elif plan.home(node) is not None:
            axes = frozenset(k for k, d in enumerate(node.shape) if d != 1)
        else:
            axes = frozenset(a + node.ndim - i.ndim for i in node.inputs for a in _varies(plan, i, memo))
        memo[id(node)] = axes
    return memo[id(node)]


def _hoist(plan: Plan, stages: list, uses: Uses, hoisted: dict) -> list:
    """Loops computing, before a nest over ``stages``, the subexpressions with few distinct values (largest first)."""
    if len(stages) == 1 and is_flat(plan, stages[0]):
        return []
    size, memo, lines = math.prod(stages[0].shape), {}, []
    todo = [n.inputs[0] if s.kind == "reduce" else n for s in stages for n in s.nodes]
    while todo:
        node = todo.pop()
        if id(node) in hoisted or node.op in ("const", "placeholder") or plan.home(node) is not None:
            continue
        axes = _varies(plan, node, memo)
        if node.op == "broadcast" or math.prod(node.shape[a] for a in axes) * HOIST_RATIO > size:
            todo.extend(node.inputs)
            continue
        name = f"h{len(hoisted)}"
        body = _Body(plan, False, uses, hoisted)
        idx = [f"i{k}" if k in axes else "0" for k in range(node.ndim)]
        v = body.value(node, idx)
        shape = tuple(d if k in axes else 1 for k, d in enumerate(node.shape)) or (1,)
        lines += [f"    {name} = np.empty({shape}, {CTYPE[node.dtype]})"]
        store = [f"{name}[{', '.join(idx) or '0'}] = {v}"]
        lines += _nest(_loops([(f"i{k}", node.shape[k]) for k in sorted(axes)], False), body.lines + store, 4)
        hoisted[id(node)] = (name, axes)
    return lines


def generate(plan: Plan, key: str) -> str:
    """The module source: imports, the helpers it uses and ``kernel(in..., out...)``."""
    args = [f"in{k}" for k in range(len(plan.inputs))] + [f"out{k}" for k in range(len(plan.outputs))]
    uses, body, hoisted, k = Uses(), [], {}, 0
    for group in _groups(plan):
        for stage in group:
            what = ", ".join(f"{'/'.join(plan.buffers[id(n)])} = {describe(n, plan)}" for n in stage.nodes)
            body.append(f"    # stage {k}: {stage.kind} over {stage.shape}: {what}")
            k += 1
        body += _hoist(plan, group, uses, hoisted)
        if len(group) > 1:
            body += _merged_stages(plan, group, uses, hoisted)
        else:
            body += (_map_stage if group[0].kind == "map" else _reduce_stage)(plan, group[0], uses, hoisted)
    temps = [f"    {name} = np.empty({node.shape or (1,)}, {CTYPE[node.dtype]})" for name, node in plan.temps]
    aliases = [f"    {b}_f = {b}.reshape(-1)" for b in sorted(uses.flats)]
    parallel = any("prange(" in line for line in body)
    head = [f'"""opencann TBE kernel {key[:16]} (generated; CPU, Numba)."""', "import math", "",
            "import numpy as np", "from numba import njit, prange", ""]
    if uses.helpers & {"_exp_f32", "_erf_f32"}:
        head[-1:] = ["", "from opencann.tbe.cpu_math import fma32", ""]
    helpers = [f'\n@njit(inline="always")\n{HELPERS[h]}\n' for h in sorted(uses.helpers)]
    fn = ["", f"@njit(parallel={parallel}, fastmath=False, cache=True, error_model='numpy')",
          f"def kernel({', '.join(args)}):"] + temps + aliases + _extents(plan, args, body) + body
    fn += ["    return None", ""]
    return "\n".join(head + helpers + fn)
