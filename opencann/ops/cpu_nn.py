"""Fast CPU kernels for the MatMul/LayerNorm/GELU/softmax hot spots, and the fused operators of domain ``opencann``.

Float32 products go into the planned output buffer (an N-D x 2-D product is one 2-D GEMM): with MKL, GEMM and
bias + activation epilogue are one Numba call (:func:`_gemm_act`, MKL by address through
:func:`opencann.ops.blas.gemm`: MLP 1.03x/1.13x -> 0.93x/0.98x ORT, batch 1/32) except the big products whose
constant weight :func:`opencann.ops.blas.sgemm` packs; otherwise that sgemm (NumPy's BLAS without MKL) and the
epilogue after it. Row-wise LayerNorm, GELU and the bias + activation epilogues (applied in place on the GEMM
output) are serial Numba loops (erf as a branch-free float32 approximation, so that they vectorize), compiled
on first use and cached on disk; softmax shifts short rows in Numba and exponentiates with NumPy's SIMD ``exp``.
Other dtypes and layouts fall back to the reference kernels, which also define the fused operators' semantics.

Fused operators (emitted by :mod:`opencann.compiler.passes.fuse_patterns`):

* ``FusedMatMul(A, B, bias?)``: ``act(alpha * (A @ B) + bias)``;
* ``FusedGemm(A, B, C?)``: ONNX Gemm, then ``act``;
* ``SkipLayerNormalization(X, Skip?, gamma, beta?, bias?)``: LayerNorm over the last axis of ``X + Skip + bias``,
  with ONNX Runtime's outputs (Y, Mean, InvStdDev, the sum); without Skip, a LayerNorm for any opset;
* ``Gelu(X)``: ONNX's Gelu (opset 20) for graphs of older opsets;
* ``SoftmaxGrad(dY, Y)``: ``(dY - sum(dY * Y)) * Y * scale`` over the last axis, the gradient of ``Y = Softmax(X)``
  (what the TensorFlow importer makes of TensorFlow's gradient of a Softmax), times attention's score scale;
* ``ScaledSoftmax(X)``: ``Softmax(scale * X)`` over the last axis (attention's scaled scores).

Both are emitted by :mod:`opencann.compiler.passes.fuse_training` (``fold_scales``); they multiply by ``scale``
in float32 where the Mul they replace did, so the values stay the same.

``act`` is the ``activation`` attribute: none, relu, gelu (erf), gelu_tanh, tanh, sigmoid, or softmax over the
last axis (attention's scores: ``softmax(alpha * Q @ K^T + bias)`` in one kernel).
"""
import math

import numba
import numpy as np
from onnx import defs, helper

from opencann.compiler.ir import Node, TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops import blas
from opencann.ops.activation import _sigmoid, gelu
from opencann.ops.blas import sgemm
from opencann.ops.cpu_elementwise import output_buffer
from opencann.ops.linalg import gemm, matmul
from opencann.ops.normalization import layer_norm
from opencann.ops.reduce import softmax
from opencann.ops.registry import OPENCANN_DOMAIN, kernel, op

F32 = np.dtype(np.float32)
ACTIVATIONS = ("none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid", "softmax")
_FLOATS = ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"]
_REDUCE = {"reassoc", "contract"}  # lets Numba vectorize the row sums
SHORT_ROW = 256  # softmax rows shorter than this find their maximum in Numba
_COMPILED = ACTIVATIONS[:-1]  # the epilogues :func:`_gemm_act` applies
_NO_BIAS = np.zeros(0, F32)
_NO_BIAS.flags.writeable = False  # the type of an initializer's bias: one compiled variant less


# --- schemas and shape inference ------------------------------------------------------------------

def _schema(name: str, doc: str, inputs: str, outputs: str, **attrs):
    """An ``opencann`` OpSchema; a trailing ``?`` marks an optional input or output."""
    def params(spec: str):
        opt = defs.OpSchema.FormalParameterOption
        return [defs.OpSchema.FormalParameter(p.rstrip("?"), "T", "", param_option=opt.Optional if p.endswith("?")
                                              else opt.Single) for p in spec.split()]
    return defs.OpSchema(name, OPENCANN_DOMAIN, 1, doc, inputs=params(inputs), outputs=params(outputs),
                         type_constraints=[("T", _FLOATS, "float tensors")],
                         attributes=[defs.OpSchema.Attribute(k, helper.make_attribute(k, v), "") for k, v in
                                     attrs.items()])


def _matmul_shape(a, b):
    """ONNX MatMul's result shape for operands of rank >= 2 (None where unknown)."""
    if a is None or b is None or len(a) < 2 or len(b) < 2:
        return None
    batch = []
    for x, y in zip((1,) * (len(b) - len(a)) + a[:-2], (1,) * (len(a) - len(b)) + b[:-2], strict=True):
        batch.append(y if x == 1 else x if y == 1 or x == y or not isinstance(y, int) else None)
    return (*batch, a[-2], b[-1])


def _shape(v) -> tuple | None:
    return v.type.shape if v is not None and isinstance(v.type, TensorType) else None


def _infer_fused_matmul(node: Node):
    x = node.inputs[0].type
    if not isinstance(x, TensorType):
        return [None]
    return [TensorType(x.dtype, _matmul_shape(_shape(node.inputs[0]), _shape(node.inputs[1])))]


def _infer_fused_gemm(node: Node):
    x, a, b = node.inputs[0].type, _shape(node.inputs[0]), _shape(node.inputs[1])
    if not isinstance(x, TensorType):
        return [None]
    shape = None
    if a is not None and b is not None and len(a) == len(b) == 2:
        shape = (a[1 if node.attrs.get("transA", 0) else 0], b[0 if node.attrs.get("transB", 0) else 1])
    return [TensorType(x.dtype, shape)]


def _infer_same(node: Node):
    return [node.inputs[0].type]


def _infer_skip_layer_norm(node: Node):
    x = node.inputs[0].type
    if not isinstance(x, TensorType):
        return [None] * len(node.outputs)
    stats = TensorType(F32, None if x.shape is None else (*x.shape[:-1], 1))
    return [x, stats, stats, x][:len(node.outputs)]


# --- reference kernels of the fused operators ----------------------------------------------------

def _activate(y: np.ndarray, activation: str) -> np.ndarray:
    if activation == "none":
        return y
    if activation == "relu":
        return np.maximum(y, y.dtype.type(0))
    if activation in ("gelu", "gelu_tanh"):
        return gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    if activation == "tanh":
        return np.tanh(y)
    if activation == "sigmoid":
        return _sigmoid(y).astype(y.dtype, copy=False)
    if activation == "softmax":
        return softmax(y, axis=-1)
    raise AclError(ErrorCode.INVALID_PARAM, f"fused activation '{activation}' is not one of {', '.join(ACTIVATIONS)}")


@op("FusedMatMul", domain=OPENCANN_DOMAIN, infer=_infer_fused_matmul, schema=_schema(
    "FusedMatMul", "act(alpha * (A @ B) + bias)", "A B bias?", "Y", alpha=1.0, activation="none"))
def fused_matmul(a, b, bias=None, *, alpha=1.0, activation="none"):
    y = matmul(a, b)
    if alpha != 1.0:
        y = (y * alpha).astype(y.dtype, copy=False)
    if bias is not None:
        y = (y + bias).astype(y.dtype, copy=False)
    return _activate(y, activation)


@op("FusedGemm", domain=OPENCANN_DOMAIN, infer=_infer_fused_gemm, schema=_schema(
    "FusedGemm", "act(Gemm(A, B, C))", "A B C?", "Y", alpha=1.0, beta=1.0, transA=0, transB=0,
    activation="none"))
def fused_gemm(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation="none"):
    return _activate(gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB), activation)


@op("SkipLayerNormalization", domain=OPENCANN_DOMAIN, infer=_infer_skip_layer_norm, schema=_schema(
    "SkipLayerNormalization", "LayerNorm(X + Skip + bias) over the last axis", "X Skip? gamma beta? bias?",
    "Y Mean? InvStdDev? Sum?", epsilon=1e-5))
def skip_layer_norm(x, skip, gamma, beta=None, bias=None, *, epsilon=1e-5):
    s = x if skip is None else x + skip
    s = (s if bias is None else s + bias).astype(x.dtype, copy=False)
    y, mean, inv_std = layer_norm(s, gamma, beta, axis=-1, epsilon=epsilon, stash_type=1)
    return y, mean, inv_std, s


@op("Gelu", domain=OPENCANN_DOMAIN, infer=_infer_same, schema=_schema(
    "Gelu", "ONNX Gelu (opset 20)", "X", "Y", approximate="none"))
def gelu_any_opset(x, *, approximate="none"):
    return gelu(x, approximate=approximate)


@op("SoftmaxGrad", domain=OPENCANN_DOMAIN, infer=_infer_same, schema=_schema(
    "SoftmaxGrad", "(dY - sum(dY * Y, last axis)) * Y * scale: the input gradient of Y = Softmax(X) over the last "
    "axis, scaled", "dY Y", "dX", scale=1.0))
def softmax_grad(dy, y, *, scale=1.0):
    dx = ((dy - (dy * y).sum(axis=-1, keepdims=True)) * y).astype(dy.dtype, copy=False)
    return dx if scale == 1.0 else (dx * dx.dtype.type(scale)).astype(dx.dtype, copy=False)


@op("ScaledSoftmax", domain=OPENCANN_DOMAIN, infer=_infer_same, schema=_schema(
    "ScaledSoftmax", "Softmax(scale * X) over the last axis", "X", "Y", scale=1.0))
def scaled_softmax(x, *, scale=1.0):
    return softmax((x * x.dtype.type(scale)).astype(x.dtype, copy=False), axis=-1)


# --- Numba loops (float32, serial) ---------------------------------------------------------------

@numba.njit(cache=True, inline="always", error_model="numpy")
def _erf(x):
    """erf in float32 arithmetic: a rational approximation on [-4, 4] (Eigen's), branch-free so loops vectorize."""
    x = min(max(x, np.float32(-4.0)), np.float32(4.0))
    x2 = x * x
    p = x2 * np.float32(-2.72614225801306e-10) + np.float32(2.77068142495902e-08)
    p = x2 * p + np.float32(-2.10102402082508e-06)
    p = x2 * p + np.float32(-5.69250639462346e-05)
    p = x2 * p + np.float32(-7.34990630326855e-04)
    p = x2 * p + np.float32(-2.95459980854025e-03)
    p = x2 * p + np.float32(-1.60960333262415e-02)
    q = x2 * np.float32(-1.45660718464996e-05) + np.float32(-2.13374055278905e-04)
    q = x2 * q + np.float32(-1.68282697438203e-03)
    q = x2 * q + np.float32(-7.37332916720468e-03)
    q = x2 * q + np.float32(-1.42647390514189e-02)
    return x * p / q


@numba.njit(cache=True, inline="always", error_model="numpy")
def _act(v, code):
    if code == 1:
        return max(v, np.float32(0.0))
    if code == 2:
        return np.float32(0.5) * v * (np.float32(1.0) + _erf(v * np.float32(0.7071067811865476)))
    if code == 3:
        inner = np.float32(0.7978845608028654) * (v + np.float32(0.044715) * v * v * v)
        return np.float32(0.5) * v * (np.float32(1.0) + np.float32(math.tanh(inner)))
    if code == 4:
        return np.float32(math.tanh(v))
    if code == 5:
        return np.float32(1.0 / (1.0 + math.exp(-v)))
    return v


@numba.njit(cache=True, error_model="numpy")
def _epilogue(y, bias, alpha, code):
    """``y = act(alpha * y + bias)`` in place; ``y`` is (rows, n), ``bias`` (n,)."""
    a = np.float32(alpha)
    for i in range(y.shape[0]):
        row = y[i]
        if code == 0:
            for j in range(row.shape[0]):
                row[j] = a * row[j] + bias[j]
        elif code == 1:
            for j in range(row.shape[0]):
                row[j] = max(a * row[j] + bias[j], np.float32(0.0))
        elif code == 2:
            for j in range(row.shape[0]):
                row[j] = _act(a * row[j] + bias[j], 2)
        else:
            for j in range(row.shape[0]):
                row[j] = _act(a * row[j] + bias[j], code)


@numba.njit(cache=True, inline="always")
def _overlap(x, y):
    """Whether the memory spans of dense arrays ``x`` and ``y`` overlap."""
    return x.ctypes.data < y.ctypes.data + y.nbytes and y.ctypes.data < x.ctypes.data + x.nbytes


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _gemm_act(fn, a, b, trans_a, trans_b, y, bias, alpha, code):
    """``y = act(alpha * op(a) @ op(b) + bias)`` for C-contiguous float32 ``a`` ((m, k), or (k, m) transposed),
    ``b``, ``y`` (m, n): MKL's ``cblas_sgemm`` at address ``fn``, then the epilogue, in one call; ``bias`` (n,) or
    empty for none."""
    lda = a.shape[1]
    k, m = a.shape if trans_a else a.shape[::-1]
    n = y.shape[1]
    if _overlap(y, a) or _overlap(y, b):
        c = np.empty((m, n), np.float32)
        blas.gemm(fn, trans_a, trans_b, m, n, k, np.float32(alpha), a, 0, lda, b, 0, b.shape[1], np.float32(0.0), c, 0,
                  n)
        for i in range(m):  # a loop: ``y[:] = c`` took ~20 s to compile
            for j in range(n):
                y[i, j] = c[i, j]
    else:
        blas.gemm(fn, trans_a, trans_b, m, n, k, np.float32(alpha), a, 0, lda, b, 0, b.shape[1], np.float32(0.0), y, 0,
                  n)
    if bias.shape[0]:
        _epilogue(y, bias, 1.0, code)
    elif code:
        _epilogue(y, np.zeros(n, np.float32), 1.0, code)


@numba.njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _layer_norm_rows(x, gamma, beta, eps, y, mean, inv_std):
    """LayerNorm of each row of ``x`` (rows, n) into ``y``; statistics accumulate in float64."""
    n = x.shape[1]
    for i in range(x.shape[0]):
        row = x[i]
        s = 0.0
        for j in range(n):
            s += row[j]
        m = s / n
        ss = 0.0
        for j in range(n):
            d = row[j] - m
            ss += d * d
        r = 1.0 / math.sqrt(ss / n + eps)
        mf, rf = np.float32(m), np.float32(r)
        out = y[i]
        for j in range(n):
            out[j] = (row[j] - mf) * rf * gamma[j] + beta[j]
        mean[i] = mf
        inv_std[i] = rf


@numba.njit(cache=True, error_model="numpy")
def _shift_rows(x, y):
    """``y = x - max(x)`` per row (a NaN in a row makes it all NaN downstream, as NumPy's max does)."""
    for i in range(x.shape[0]):
        row, out = x[i], y[i]
        m = row[0]
        for j in range(1, row.shape[0]):
            m = max(m, row[j])
        for j in range(row.shape[0]):
            out[j] = row[j] - m


@numba.njit(cache=True, error_model="numpy")
def _scaled_shift_rows(x, y, scale):
    """:func:`_shift_rows` of ``scale * x``, the products first written to ``y`` (float32, as a Mul by ``scale``
    before gives them; ~35% faster on 32-wide rows than scaling inside the max); apart from :func:`_shift_rows`,
    whose rows a product by 1 would slow by ~5%."""
    c = np.float32(scale)
    for i in range(x.shape[0]):
        row, out = x[i], y[i]
        for j in range(row.shape[0]):
            out[j] = row[j] * c
        m = out[0]
        for j in range(1, row.shape[0]):
            m = max(m, out[j])
        for j in range(row.shape[0]):
            out[j] = out[j] - m


@numba.njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _normalize_rows(y):
    """Divide each row of ``y`` by its sum, in place."""
    for i in range(y.shape[0]):
        row = y[i]
        s = np.float32(0.0)
        for j in range(row.shape[0]):
            s += row[j]
        inv = np.float32(1.0) / s
        for j in range(row.shape[0]):
            row[j] *= inv


@numba.njit(cache=True, fastmath=_REDUCE, error_model="numpy")
def _softmax_grad_rows(dy, y, dx, scale):
    """``dx = (dy - sum(dy * y)) * y``, then ``dx *= scale`` in a loop of its own, per row: the products
    round as a Mul by ``scale`` after would (~25% faster than one loop of strict float32 arithmetic); ``dx`` may be
    ``dy``: each element is read before it is written."""
    c = np.float32(scale)
    for i in range(dy.shape[0]):
        g, p, out = dy[i], y[i], dx[i]
        s = np.float32(0.0)
        for j in range(g.shape[0]):
            s += g[j] * p[j]
        for j in range(g.shape[0]):
            out[j] = (g[j] - s) * p[j]
        for j in range(g.shape[0]):
            out[j] *= c


# --- fast kernels --------------------------------------------------------------------------------

def _finish(y2d: np.ndarray, bias_row: np.ndarray, alpha: float, activation: str) -> None:
    """Apply the epilogue ``act(alpha * y + bias)`` to the rows of a fresh float32 product, in place."""
    if activation != "softmax":
        _epilogue(y2d, bias_row, alpha, ACTIVATIONS.index(activation))
        return
    if alpha != 1.0:
        np.multiply(y2d, np.float32(alpha), out=y2d)
    if bias_row.any():
        np.add(y2d, bias_row, out=y2d)
    _softmax_rows(y2d)


def _softmax_rows(y2d: np.ndarray, x2d: np.ndarray | None = None, scale: float = 1.0) -> None:
    """Softmax of each row of ``scale * x2d`` (default: ``y2d`` itself) into ``y2d`` (the row maximum is subtracted
    first; rows of -inf give NaN). Short rows (attention scores) scale and shift in one Numba pass, long ones through
    NumPy's SIMD ``max``; ``exp`` is NumPy's SIMD one either way (Numba's is a scalar call per element)."""
    x2d = y2d if x2d is None else x2d
    if y2d.shape[1] < SHORT_ROW:
        if scale == 1.0:
            _shift_rows(x2d, y2d)
        else:
            _scaled_shift_rows(x2d, y2d, scale)
    else:
        if scale != 1.0:
            x2d = np.multiply(x2d, np.float32(scale), out=y2d)
        with np.errstate(invalid="ignore"):
            np.subtract(x2d, x2d.max(axis=1, keepdims=True), out=y2d)
    np.exp(y2d, out=y2d)
    _normalize_rows(y2d)


def _f32(*arrays) -> bool:
    for a in arrays:  # a loop, not all() over a generator: this runs on every product (~0.3 us less)
        if a is not None and (type(a) is not np.ndarray or a.dtype != F32):
            return False
    return True


def _product(a: np.ndarray, b: np.ndarray, dest=None) -> np.ndarray | None:
    """``a @ b`` into a C-contiguous buffer (``dest`` when it fits) for non-empty operands of rank >= 2 (else None); a
    C-contiguous ``a`` times a 2-D ``b`` is one sgemm."""
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or a.size == 0 or b.size == 0:
        return None
    if b.ndim > 2 or not a.flags.c_contiguous:
        try:
            return np.matmul(a, b)
        except ValueError:  # batch dimensions that do not broadcast: the reference kernel reports it
            return None
    out = output_buffer(dest, (*a.shape[:-1], b.shape[1]))
    a2, y2 = a.reshape(-1, a.shape[-1]), out.reshape(-1, b.shape[1])
    if _compiled_gemm(a2, b, False, y2, _NO_BIAS, 1.0, 0) is None:
        sgemm(a2, b, y2)
    return out


def _compiled_gemm(a, b, trans_b, y, bias, alpha: float, code: int, trans_a: bool = False) -> tuple | None:
    """``y = act(alpha * op(a) @ op(b) + bias)`` by :func:`_gemm_act` (float32 2-D ``a`` and ``b``, C-contiguous
    ``y`` and (n,) ``bias``, ``_NO_BIAS`` for none; ``act`` not softmax) and what it called it with,
    ``(fn, b, trans_b)``; None, having done nothing, where MKL is missing, ``a`` or ``b`` is not C-contiguous, or
    :func:`sgemm` would pack a constant ``b`` (big, short, wide products, where a packed weight beats one call less:
    BERT's 128 x 768 x 3072 took 1.18x the time unpacked)."""
    fn = blas.sgemm_address()
    m, k = a.shape[::-1] if trans_a else a.shape
    n = y.shape[1]
    if not fn or (m < n and n * k >= blas.PACK_MIN) or not (a.flags.c_contiguous and b.flags.c_contiguous):
        return None
    if trans_b and blas._is_constant(b):
        b, trans_b = blas.transposed(b), False  # a row-major copy, made once
    _gemm_act(fn, a, b, bool(trans_a), bool(trans_b), y, bias, alpha, code)
    return fn, b, bool(trans_b)


def _bias_row(bias: np.ndarray | None, n: int) -> np.ndarray | None:
    """``bias`` as a contiguous (n,) row when it broadcasts as one (zeros for no bias), else None."""
    if bias is None:
        return np.zeros(n, F32)
    if bias.shape == (n,) and bias.flags.c_contiguous:  # the usual bias, as it is (~0.3 us less)
        return bias
    if bias.size == n and (bias.ndim == 0 or bias.shape[-1] == n):
        return np.ascontiguousarray(bias.reshape(n))
    return np.full(n, bias.reshape(()), F32) if bias.size == 1 else None


@kernel("MatMul", "cpu")
def matmul_cpu(a, b, out=None):
    y = _product(a, b, out) if _f32(a, b) and b.ndim == 2 else None
    return matmul(a, b) if y is None else y


@kernel("FusedMatMul", "cpu", domain=OPENCANN_DOMAIN)
def fused_matmul_cpu(a, b, bias=None, *, alpha=1.0, activation="none", out=None):
    if activation in _COMPILED and _f32(a, b, bias) and a.ndim >= 2 and b.ndim == 2 and a.shape[-1] == b.shape[0] \
            and a.size and b.size and (bias is None or bias.shape == (b.shape[1],) and bias.flags.c_contiguous):
        y = output_buffer(out, (*a.shape[:-1], b.shape[1]))  # GEMM and epilogue in one compiled call, where it can
        if _compiled_gemm(a.reshape(-1, b.shape[0]), b, False, y.reshape(-1, b.shape[1]),
                          _NO_BIAS if bias is None else bias, alpha, ACTIVATIONS.index(activation)) is not None:
            return y
    y = _product(a, b, out) if _f32(a, b, bias) and activation in ACTIVATIONS else None
    row = None if y is None else _bias_row(bias, y.shape[-1])
    if row is None or (bias is not None and bias.ndim > y.ndim):
        return fused_matmul(a, b, bias, alpha=alpha, activation=activation)
    _finish(y.reshape(-1, y.shape[-1]), row, alpha, activation)
    return y


@kernel("FusedGemm", "cpu", domain=OPENCANN_DOMAIN)
def fused_gemm_cpu(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, activation="none", out=None):
    return _fused_gemm(a, b, c, alpha, beta, transA, transB, activation, out)


def _fused_gemm(a, b, c, alpha, beta, transA, transB, activation, out):
    if not _f32(a, b, c) or a.ndim != 2 or b.ndim != 2 or activation not in ACTIVATIONS or not a.size or not b.size:
        return fused_gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB, activation=activation)
    a = a.T if transA else a
    k, n = b.shape[::-1] if transB else b.shape
    if a.shape[1] != k:
        raise AclError(ErrorCode.INVALID_PARAM, f"FusedGemm shapes {a.shape} and {(k, n)} do not multiply")
    y = output_buffer(out, (a.shape[0], n))
    sgemm(a, b, y, trans_b=bool(transB))  # a constant transposed b: through its row-major copy
    if (c is None or beta == 0.0) and alpha == 1.0 and activation == "none":
        return y
    row = _bias_row(None if c is None or beta == 0.0 else c, y.shape[1])
    if row is None:  # a full (M, N) C
        np.multiply(y, np.float32(alpha), out=y)
        np.add(y, c * np.float32(beta), out=y)
        return _activate(y, activation)
    if beta != 1.0 and c is not None:
        row = row * np.float32(beta)
    _finish(y, row, alpha, activation)
    return y


@kernel("Gemm", "cpu")
def gemm_cpu(a, b, c=None, *, alpha=1.0, beta=1.0, transA=0, transB=0, broadcast=1, out=None):
    if not broadcast and c is not None:
        return gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB, broadcast=broadcast)
    return _fused_gemm(a, b, c, alpha, beta, transA, transB, "none", out)


def _bind_gemm(alpha=1.0, beta=1.0, transA=0, transB=0, activation="none", broadcast=1):
    """(Fused)Gemm with its attributes bound, for the executor's launch list: the usual call (float32 2-D ``a`` and
    ``b``, a bias row ``c``, a planned ``out``) goes straight to the compiled GEMM + epilogue (:func:`_compiled_gemm`;
    the checks of ``b`` and ``c`` and the choice of operands are remembered while the same two arrays, the weights,
    come again: ~2 us less a call), or without MKL to sgemm and the epilogue; any other to the general kernel.
    A transposed ``a`` (a weight gradient's ``X^T @ dY``) goes the same way: ~5-10 us less a call than sgemm's
    dispatch through ctypes, the same MKL call."""
    code = ACTIVATIONS.index(activation) if activation in ACTIVATIONS[:-1] else -1
    row = beta == 1.0 and broadcast and code >= 0
    trans_a, trans_b, bare, alpha = bool(transA), int(bool(transB)), alpha == 1.0 and code == 0, float(alpha)
    ka, ma = 1 - int(trans_a), int(trans_a)  # the axes of a holding k and m
    memo = [(None, None, (), 0, 0, 0)]  # one tuple, replaced whole (concurrent runs read a consistent one): the
    # last b and c, (fn, b, trans_b) called with, k, n, least rows

    def run(a, b, c=None, out=None):
        last = memo[0]
        if b is last[0] and c is last[1] and type(a) is np.ndarray and a.dtype == F32 and a.ndim == 2 \
                and a.shape[ka] == last[3] and a.shape[ma] >= last[5] and a.flags.c_contiguous:
            y = output_buffer(out, (a.shape[ma], last[4]))
            fn, bb, tb = last[2]
            _gemm_act(fn, a, bb, trans_a, tb, y, _NO_BIAS if c is None else c, alpha, code)
            return y
        if row and type(a) is np.ndarray and type(b) is np.ndarray and a.dtype == b.dtype == F32 \
                and a.ndim == b.ndim == 2 and a.shape[ka] == b.shape[trans_b] and a.size and b.size and (
                    c is None or type(c) is np.ndarray and c.dtype == F32 and c.shape == (b.shape[1 - trans_b],)
                    and c.flags.c_contiguous):
            y = output_buffer(out, (a.shape[ma], b.shape[1 - trans_b]))
            called = _compiled_gemm(a, b, trans_b, y, _NO_BIAS if c is None else c, alpha, code, trans_a)
            if called:
                k, n = a.shape[ka], y.shape[1]
                memo[0] = (b, c, called, k, n, n if n * k >= blas.PACK_MIN else 1)
                return y
            sgemm(a, b, y, trans_a=trans_a, trans_b=trans_b)
            if c is not None or not bare:
                _epilogue(y, np.zeros(y.shape[1], F32) if c is None else c, alpha, code)
            return y
        if not broadcast and c is not None:
            return gemm(a, b, c, alpha=alpha, beta=beta, transA=transA, transB=transB, broadcast=broadcast)
        return _fused_gemm(a, b, c, alpha, beta, transA, transB, activation, out)

    return run


fused_gemm_cpu.bind_attrs = gemm_cpu.bind_attrs = _bind_gemm


def _gelu_cpu(x, *, approximate="none"):
    if not _f32(x) or approximate not in ("none", "tanh") or x.size == 0:
        return gelu(x, approximate=approximate)
    y = np.array(x, order="C")
    n = y.shape[-1] if y.ndim else 1
    _epilogue(y.reshape(-1, n), np.zeros(n, F32), 1.0, 2 if approximate == "none" else 3)
    return y


kernel("Gelu", "cpu", since=20)(_gelu_cpu)
kernel("Gelu", "cpu", domain=OPENCANN_DOMAIN)(_gelu_cpu)


@kernel("Softmax", "cpu", since=13)
def softmax_cpu(x, *, axis=-1, out=None):
    if not _f32(x) or x.ndim == 0 or axis not in (-1, x.ndim - 1) or x.shape[-1] == 0:
        return softmax(x, axis=axis)
    return _softmax(x, 1.0, out)


@kernel("ScaledSoftmax", "cpu", domain=OPENCANN_DOMAIN)
def scaled_softmax_cpu(x, *, scale=1.0, out=None):
    if not _f32(x) or x.ndim == 0 or x.shape[-1] == 0:
        return scaled_softmax(x, scale=scale)
    return _softmax(x, scale, out)


def _softmax(x: np.ndarray, scale: float, out) -> np.ndarray:
    x = np.ascontiguousarray(x)
    y = output_buffer(out, x.shape)
    _softmax_rows(y.reshape(-1, x.shape[-1]), x.reshape(-1, x.shape[-1]), scale)
    return y


@kernel("SoftmaxGrad", "cpu", domain=OPENCANN_DOMAIN)
def softmax_grad_cpu(dy, y, *, scale=1.0, out=None):
    if not _f32(dy, y) or dy.shape != y.shape or dy.ndim == 0 or dy.size == 0:
        return softmax_grad(dy, y, scale=scale)
    dy, y, n = np.ascontiguousarray(dy), np.ascontiguousarray(y), dy.shape[-1]
    dx = output_buffer(out, dy.shape)
    _softmax_grad_rows(dy.reshape(-1, n), y.reshape(-1, n), dx.reshape(-1, n), scale)
    return dx


def _normalize(s: np.ndarray, gamma, beta, epsilon: float):
    """LayerNorm over the last axis of contiguous float32 ``s``: (Y, Mean, InvStdDev)."""
    n = s.shape[-1]
    y = np.empty_like(s)
    mean = np.empty((*s.shape[:-1], 1), F32)
    inv_std = np.empty_like(mean)
    beta = np.zeros(n, F32) if beta is None else beta.reshape(n)
    _layer_norm_rows(s.reshape(-1, n), np.ascontiguousarray(gamma.reshape(n)), np.ascontiguousarray(beta),
                     float(epsilon), y.reshape(-1, n), mean.reshape(-1), inv_std.reshape(-1))
    return y, mean, inv_std


def _row_vectors(n: int, *params) -> bool:
    return all(p is None or p.size == n for p in params)


@kernel("LayerNormalization", "cpu", since=17)
def layer_norm_cpu(x, scale, b=None, *, axis=-1, epsilon=1e-5, stash_type=1):
    if not _f32(x, scale, b) or x.ndim == 0 or axis not in (-1, x.ndim - 1) or stash_type != 1 \
            or x.shape[-1] == 0 or not _row_vectors(x.shape[-1], scale, b):
        return layer_norm(x, scale, b, axis=axis, epsilon=epsilon, stash_type=stash_type)
    return _normalize(np.ascontiguousarray(x), scale, b, epsilon)


@kernel("SkipLayerNormalization", "cpu", domain=OPENCANN_DOMAIN)
def skip_layer_norm_cpu(x, skip, gamma, beta=None, bias=None, *, epsilon=1e-5):
    n = x.shape[-1] if x.ndim else 0
    if not _f32(x, skip, gamma, beta, bias) or n == 0 or (skip is not None and skip.shape != x.shape) \
            or not _row_vectors(n, gamma, beta, bias):
        return skip_layer_norm(x, skip, gamma, beta, bias, epsilon=epsilon)
    s = np.ascontiguousarray(x) if skip is None else np.add(x, skip)
    if bias is not None:
        s = np.add(s, bias.reshape(n), out=None if skip is None else s)
    return (*_normalize(s, gamma, beta, epsilon), s)
