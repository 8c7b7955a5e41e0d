"""``opencann::FusedInvertedResidual``: a MobileNetV2 block (1x1 expand -> depthwise -> 1x1 project) in one kernel.

Channels-last: ``x (N, H, W, C)``, weights as :mod:`opencann.ops.cpu_conv`'s channels-last ``FusedConv`` takes
them: the expansion ``we (1, 1, C, E)`` (None: no expansion, ``E = C``), the depthwise ``wd (kh, kw, 1, E)``, the
projection ``wp (1, 1, E, M)``, each with an optional bias, and an optional residual ``z (N, ho, wo, M)``. The
result is ``act2(conv(act1(conv(act0(conv(x, we) + be)), wd) + bd), wp) + bp + z)``, the depthwise conv with
the Conv attributes given (``strides``, ``pads``, ``dilations``, ``auto_pad``), activation ``i`` the
``activations[i]`` of FusedConv with ``alphas[i]`` / ``betas[i]``.

The fast float32 kernel runs over tiles of output rows of each image: it expands only the input rows that
tile's windows read (keeping the rows the previous tile already expanded), convolves them depthwise and
projects the result, so the expanded tensor (e.g. 112x112x96, 4.8 MB an image) never leaves the L2 cache.
Measured on MobileNetV2 (one thread, CPU time): batch 32 runs 0.65x as long as with the three FusedConvs
(their expanded tensors are 50-150 MB), batch 1 about 0.98x; blocks on 7x7 images break even.

Where MKL is loaded, the whole tile loop is one Numba call (:func:`_block`) that calls ``cblas_sgemm`` through
its address (:func:`opencann.ops.blas.gemm`); what every call of a node shares (weights as the kernel takes them,
tiling, activation codes) is worked out once (:class:`_Plan`). The Python tile loop, its ctypes GEMMs and per-call
set-up had cost ~35 us a block, ~0.6 ms of MobileNetV2's ~9 ms at batch 1.
"""
from __future__ import annotations

import numba
import numpy as np

from opencann.compiler.ir import Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops import blas, cpu_conv
from opencann.ops.blas import sgemm_unpacked as sgemm
from opencann.ops.cpu_conv_base import ACTIVATIONS, epilogue, scratch
from opencann.ops.cpu_depthwise import depthwise_nhwc
from opencann.ops.cpu_elementwise import output_buffer
from opencann.ops.registry import op

F32 = np.dtype(np.float32)
TILE_ELEMENTS = 1 << 17  # a tile's expanded rows (0.5 MiB) and depthwise output stay in L2 (1 MiB: 2% slower, batch 1)
MAX_PLANS = 64  # plans hold their weights: a bound on what they keep alive (MobileNetV2 has 17 blocks)
_plans: dict[tuple, _Plan] = {}  # (input shape and dtype, the weights' ids, the attributes) -> its plan


def _infer(node: Node):
    """``(N, ho, wo, M)``: the depthwise conv's output size, the projection's channels."""
    x, wd, wp = node.inputs[0].type, node.inputs[3].type, node.inputs[5].type
    if not all(isinstance(t, TensorType) and t.shape is not None and len(t.shape) == 4 for t in (x, wd, wp)):
        return [None]
    (n, h, w, _), (kh, kw), m = x.shape, wd.shape[:2], wp.shape[3]
    if not all(isinstance(d, int) for d in (h, w, kh, kw)):
        return [TensorType(x.dtype, (n, None, None, m))]
    geom = cpu_conv._geometry((h, w), (kh, kw), *_dw_args(node.attrs))
    if geom is None:
        return [None]
    return [TensorType(x.dtype, (n, *geom[3], m))]


def _dw_args(attrs) -> tuple:
    return (attrs.get("auto_pad", "NOTSET"), attrs.get("dilations"), attrs.get("pads"), attrs.get("strides"))


def _codes(activations, alphas, betas) -> list[tuple[int, np.float32, np.float32]]:
    if not (len(activations) == len(alphas) == len(betas) == 3):
        raise AclError(ErrorCode.INVALID_PARAM, f"FusedInvertedResidual: want 3 activations, alphas and betas, got "
                       f"{len(activations)}, {len(alphas)}, {len(betas)}")
    codes = []
    for name, a, b in zip(activations, alphas, betas, strict=True):
        if name not in ACTIVATIONS:
            raise AclError(ErrorCode.INVALID_PARAM, f"FusedInvertedResidual: unknown activation '{name}'")
        codes.append((ACTIVATIONS[name], np.float32(a), np.float32(b)))
    return codes


@op("FusedInvertedResidual", since=1, domain="opencann", infer=_infer)
def fused_inverted_residual(x, we, be, wd, bd, wp, bp=None, z=None, *, activations=("", "", ""),
                            alphas=(0.0, 0.0, 0.0), betas=(0.0, 0.0, 0.0), auto_pad="NOTSET", dilations=None,
                            pads=None, strides=None, out=None):
    weights = (we, be, wd, bd, wp, bp)
    dw = dict(auto_pad=auto_pad, dilations=dilations, pads=pads, strides=strides)
    attrs = (activations, alphas, betas, dilations, pads, strides)
    key = (x.shape, x.dtype, auto_pad, TILE_ELEMENTS, *map(id, weights), *map(_tuple, attrs))
    plan = _plans.get(key)
    if plan is None:
        plan = _plan(x, weights, _codes(activations, alphas, betas), dw)
        if len(_plans) >= MAX_PLANS:
            _plans.clear()
        if all(v is None or v.flags.c_contiguous for v in weights):  # its arrays are views: updates show through
            _plans[key] = plan
    if plan.fast and (z is None or z.dtype == F32):
        return _fast(x, plan, z, None if out is x else out)
    names = [(activations[i], alphas[i], betas[i]) for i in range(3)]
    y = x if we is None else _conv(x, we, be, None, names[0], group=1)
    y = _conv(y, wd, bd, None, names[1], group=wd.shape[3], **dw)
    return _conv(y, wp, bp, z, names[2], group=1)


def _tuple(v):
    return v if v is None or isinstance(v, str) else tuple(v)


class _Plan:
    """What a block's every call with the same input shape, weights and attributes shares: the weights as the
    kernel takes them, the geometry, the tiling, the activations and MKL's ``cblas_sgemm`` (0: none)."""

    def __init__(self, x, weights, codes, geom):
        we, be, wd, bd, wp, bp = self.weights = weights  # held: the plan's key has their ids
        self.fast = geom is not None and cpu_conv._is_f32(x, *weights)
        if not self.fast:
            return
        (sh, _), (dh, _), (ph, _), (ho, wo) = self.geom = geom
        n, h, w, c = x.shape
        kh, kw, _, e = wd.shape
        m = wp.shape[3]
        self.we = None if we is None else np.ascontiguousarray(we).reshape(c, e)
        self.wp, self.wd = np.ascontiguousarray(wp).reshape(e, m), np.ascontiguousarray(wd).reshape(kh, kw, e)
        self.be, self.bd, self.bp = _bias(be, e), _bias(bd, e), _bias(bp, m)
        self.codes, self.acts = codes, np.array(codes, dtype=F32)
        self.geom_array = np.array([v for pair in geom[:3] for v in pair], np.int64)
        rows = min(ho, max(1, TILE_ELEMENTS // (w * e * sh)))
        self.rows = -(-ho // -(-ho // rows))  # equal tiles of output rows
        span = (self.rows - 1) * sh + (kh - 1) * dh + 1  # input rows a tile reads, at most
        self.esize, self.dsize = min(span, h) * w * e, self.rows * wo * e
        self.out_shape = (n, ho, wo, m)
        self.sgemm = blas.sgemm_address()


def _plan(x, weights, codes, dw) -> _Plan:
    we, _, wd, _, wp, _ = weights
    expanded = (1, 1, x.shape[-1], x.shape[-1]) if we is None else we.shape
    if x.ndim != 4 or expanded[:3] != (1, 1, x.shape[3]) or wp.shape[:2] != (1, 1) or wd.ndim != 4 \
            or wd.shape[2] != 1 or wd.shape[3] != expanded[3] or wp.shape[2] != expanded[3]:
        raise AclError(ErrorCode.INVALID_PARAM, f"FusedInvertedResidual: input {x.shape} and weights {expanded}, "
                       f"{wd.shape}, {wp.shape} do not make 1x1 -> depthwise -> 1x1 channels-last convs")
    return _Plan(x, weights, codes, cpu_conv._geometry(x.shape[1:3], wd.shape[:2], **dw))


def _conv(x, w, b, z, act, **attrs):
    name, alpha, beta = act
    return cpu_conv.fused_conv(x, w, b, z, activation=name, alpha=alpha, beta=beta, channels_last=1, **attrs)


def _bias(b, m: int) -> np.ndarray:
    return np.zeros(m, F32) if b is None else np.ascontiguousarray(b, dtype=F32).reshape(m)


def _fast(x, plan: _Plan, z, out):
    """The float32 block, per image and tile of output rows: expand, depthwise conv, project (module docstring);
    in one Numba call where MKL is loaded (:func:`_block`), else tile by tile from Python."""
    x = np.ascontiguousarray(x)
    y = output_buffer(out, plan.out_shape)
    res = y if z is None else z if z.shape == y.shape and z.flags.c_contiguous \
        else np.ascontiguousarray(np.broadcast_to(z, y.shape))
    dbuf = scratch(plan.dsize, "ir_depthwise")
    ebuf = dbuf if plan.we is None else scratch(plan.esize, "ir_expanded")
    if plan.sgemm:
        _block(plan.sgemm, x, plan.wp if plan.we is None else plan.we, plan.be, plan.wd, plan.bd, plan.wp, plan.bp, y,
               res, z is not None, plan.we is not None, ebuf, dbuf, plan.rows, plan.geom_array, plan.acts)
        return y
    (sh, sw), (dh, dw), (ph, pw), (ho, wo) = plan.geom
    n, h, _, _ = x.shape
    kh, e, m, rows = plan.wd.shape[0], plan.wd.shape[2], y.shape[3], plan.rows
    (c0, a0, b0), (c1, a1, b1), (c2, a2, b2) = plan.codes
    for i in range(n):
        held = (0, 0)  # the input rows whose expansion ebuf holds
        for o0 in range(0, ho, rows):
            o1 = min(o0 + rows, ho)
            r0, r1 = max(0, o0 * sh - ph), min(h, (o1 - 1) * sh - ph + (kh - 1) * dh + 1)
            if plan.we is None:
                eb = x[i, r0:r1]
            else:
                eb = _expand(x[i], plan.we, plan.be, ebuf, held, r0, r1, c0, a0, b0)
                held = (r0, r1)
            db = dbuf[:(o1 - o0) * wo * e].reshape(o1 - o0, wo, e)
            depthwise_nhwc(eb, plan.wd, plan.bd, db, db, False, sh, sw, dh, dw, ph + r0 - o0 * sh, pw, c1, a1, b1)
            yt = y[i, o0:o1].reshape(-1, m)
            sgemm(db.reshape(-1, e), plan.wp, yt)
            epilogue(yt, plan.bp, res[i, o0:o1].reshape(-1, m), z is not None, False, c2, a2, b2)
    return y


@numba.njit(cache=True, nogil=True, error_model="numpy", boundscheck=False)
def _block(fn, x, we2, be, wd2, bd, wp2, bp, y, res, has_res, expand, ebuf, dbuf, rows, geom, acts):
    """:func:`_fast`'s tile loop in one call, the GEMMs by MKL at address ``fn`` (without the GIL, which the ctypes
    GEMMs released too: concurrent runs stay parallel)."""
    sh, sw, dh, dw, ph, pw = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    n, h, w, c = x.shape
    kh, e = wd2.shape[0], wd2.shape[2]
    ho, wo, m = y.shape[1], y.shape[2], y.shape[3]
    y2, r2 = y.reshape(n * ho * wo, m), res.reshape(n * ho * wo, m)
    for i in range(n):
        lo = hi = 0  # the input rows whose expansion ebuf holds
        for o0 in range(0, ho, rows):
            o1 = min(o0 + rows, ho)
            r0, r1 = max(0, o0 * sh - ph), min(h, (o1 - 1) * sh - ph + (kh - 1) * dh + 1)
            if expand:
                keep = hi - r0 if lo <= r0 < hi else 0
                src = (r0 - lo) * w * e
                for k in range(keep * w * e):  # forward: the kept rows move towards the front
                    ebuf[k] = ebuf[src + k]
                if r0 + keep < r1:
                    p = (r1 - r0 - keep) * w
                    blas.gemm(fn, False, False, p, e, c, 1.0, x, ((i * h + r0 + keep) * w) * c, c, we2, 0, e, 0.0, ebuf,
                              keep * w * e, e)
                    et = ebuf[keep * w * e:(r1 - r0) * w * e].reshape(p, e)
                    epilogue(et, be, et, False, False, int(acts[0, 0]), acts[0, 1], acts[0, 2])
                lo, hi = r0, r1
                eb = ebuf[:(r1 - r0) * w * e].reshape(r1 - r0, w, e)
            else:
                eb = x[i][r0:r1]
            db = dbuf[:(o1 - o0) * wo * e].reshape(o1 - o0, wo, e)
            depthwise_nhwc(eb, wd2, bd, db, db, False, sh, sw, dh, dw, ph + r0 - o0 * sh, pw, int(acts[1, 0]),
                           acts[1, 1], acts[1, 2])
            p0, p1 = (i * ho + o0) * wo, (i * ho + o1) * wo
            blas.gemm(fn, False, False, p1 - p0, m, e, 1.0, dbuf, 0, e, wp2, 0, m, 0.0, y2, p0 * m, m)
            epilogue(y2[p0:p1], bp, r2[p0:p1], has_res, False, int(acts[2, 0]), acts[2, 1], acts[2, 2])


def _expand(xi, we2, be, ebuf, held, r0, r1, code, a, b):
    """Input rows ``[r0, r1)`` of image ``xi`` expanded (1x1 conv and activation) into ``ebuf`` as ``(rows, W, E)``:
    rows the previous tile expanded (``held``) are moved to the front, only the others computed."""
    w, c, e = xi.shape[1], xi.shape[2], we2.shape[1]
    lo, hi = held
    keep = hi - r0 if lo <= r0 < hi else 0
    eb = ebuf[:(r1 - r0) * w * e].reshape(r1 - r0, w, e)
    if keep:
        eb[:keep] = ebuf[(r0 - lo) * w * e:(hi - lo) * w * e].reshape(keep, w, e)
    if r0 + keep < r1:
        et = eb[keep:].reshape(-1, e)
        sgemm(xi[r0 + keep:r1].reshape(-1, c), we2, et)
        epilogue(et, be, et, False, False, code, a, b)
    return eb
