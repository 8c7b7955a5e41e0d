"""Fused LSTM cells for training loops (domain ``opencann``; made by :mod:`opencann.compiler.passes.fuse_rnn_loops`).

A Keras LSTM trains as two TensorFlow while loops: each forward iteration runs the cell (two products, the bias,
a Split, the gates) and each gradient iteration its derivative (the gate gradients, their Concat, the bias
gradient, four products with transposed operands, three accumulations). Each is one node here, one launch per
iteration instead of six and fourteen:

- ``LSTMCellForward(x, w, h, r, b, c)``: ``z = x @ w + h @ r + b`` split into the gate blocks ``gates`` (column
  blocks of i, f, g, o), ``c' = f * c + i * g``, ``h' = o * tanh(c')``; returns the roles ``results`` (codes
  into ``FORWARD_ROLES``).
- ``LSTMCellBackward(dh1, dh2, tc, o, dc, c, f, g, i, *operands, *accumulators)``: with ``dh = dh1 + dh2`` and
  ``dc' = dc + TanhGrad(tc, dh * o)``, the pre-activation gradients (TensorFlow's SigmoidGrad/TanhGrad formulas,
  in its operand order) laid out in the blocks ``gates`` of ``dz``; returns ``dc' * f`` (when ``dc_out``), then
  per product ``products[k]`` (0: ``dz @ P.T``, 1: ``P.T @ dz``, 2: ``dz @ P``, 3: ``P @ dz``), plus its
  accumulator when ``accumulate[k]``, then the bias gradient (``bias`` 0: the column sums, 1: plus an
  accumulator, -1: none).

float32 only (the pass fuses nothing else); the elementwise part is one Numba pass per row (Eigen's rational
tanh, as :mod:`opencann.ops.cpu_rnn`; sigmoid from it). Where MKL is loaded, a cell is one step of
:func:`forward_steps` / :func:`backward_steps` (products by ``cblas_sgemm`` from the Numba code, on one MKL
thread), the kernels :mod:`opencann.ops.cpu_rnn_loops` runs whole loops with: the same code, so the same bits;
elsewhere NumPy multiplies.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from opencann.errors import AclError, ErrorCode
from opencann.ops.blas import SMALL, OneThread, gemm, sgemm, sgemm_address
from opencann.ops.cpu_rnn import sigmoid32, tanh32
from opencann.ops.registry import op
from opencann.runtime import workers

DOMAIN = "opencann"
F32 = np.dtype(np.float32)
FORWARD_ROLES = ("i", "f", "g", "o", "c", "tanh_c", "h")
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_ONE, _ZERO = np.float32(1.0), np.float32(0.0)


@njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def forward_steps(fn, x, w, r, b, hs, cs, gi, gf, gg, go, acts):
    """``x.shape[0]`` steps, MKL's ``cblas_sgemm`` at ``fn`` for the products: step k reads ``hs[k]``, ``cs[k]`` and
    writes ``hs[k + 1]``, ``cs[k + 1]``, ``acts[:, k]`` (i, f, g, o, tanh c'). All C-contiguous, shapes checked."""
    steps, rows, d = x.shape
    hidden = cs.shape[2]
    n = 4 * hidden
    z, z2 = np.empty((rows, n), np.float32), np.empty((rows, n), np.float32)
    for k in range(steps):
        gemm(fn, False, False, rows, n, d, _ONE, x, k * rows * d, d, w, 0, n, _ZERO, z, 0, n)
        gemm(fn, False, False, rows, n, hidden, _ONE, hs, k * rows * hidden, hidden, r, 0, n, _ZERO, z2, 0, n)
        _forward_rows(z, z2, b, cs[k], gi, gf, gg, go, acts[0, k], acts[1, k], acts[2, k], acts[3, k], cs[k + 1],
                      acts[4, k], hs[k + 1])


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _forward(z, z2, b, c, gi, gf, gg, go, out):
    """One step from its products ``z``, ``z2`` (where MKL is missing) into ``out`` (the seven roles)."""
    _forward_rows(z, z2, b, c, gi, gf, gg, go, out[0], out[1], out[2], out[3], out[4], out[5], out[6])


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _forward_rows(z, z2, b, c, gi, gf, gg, go, i, f, g, o, cn, tc, h):
    """Short loops over few arrays each: LLVM vectorizes them (one loop over all eleven arrays stays scalar)."""
    rows, hidden = c.shape
    for n in range(rows):
        zn, z2n = z[n], z2[n]
        for k in range(zn.shape[0]):
            zn[k] = zn[k] + z2n[k] + b[k]
        _act(zn[gi:gi + hidden], i[n], False)
        _act(zn[gf:gf + hidden], f[n], False)
        _act(zn[gg:gg + hidden], g[n], True)
        _act(zn[go:go + hidden], o[n], False)
        a, e, u, v, cr, tr, hr, cp = i[n], f[n], g[n], o[n], cn[n], tc[n], h[n], c[n]
        for k in range(hidden):
            cr[k] = e[k] * cp[k] + a[k] * u[k]
        _act(cr, tr, True)
        for k in range(hidden):
            hr[k] = v[k] * tr[k]


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _act(x, y, tanh):
    if tanh:
        for k in range(x.shape[0]):
            y[k] = tanh32(x[k])
    else:
        for k in range(x.shape[0]):
            y[k] = sigmoid32(x[k])


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _backward(dh1, dh2, tc, o, dc, c, f, g, i, gi, gf, gg, go, dz, dcp):
    """Row by row, in loops over few arrays each (they vectorize)."""
    rows, hidden = tc.shape
    dh, d = np.empty(hidden, dz.dtype), np.empty(hidden, dz.dtype)
    for n in range(rows):
        a, b, t, on, cn, fn, gn, xn = dh1[n], dh2[n], tc[n], o[n], dc[n], f[n], g[n], i[n]
        zi, zf, zg, zo = dz[n, gi:gi + hidden], dz[n, gf:gf + hidden], dz[n, gg:gg + hidden], dz[n, go:go + hidden]
        for k in range(hidden):
            dh[k] = a[k] + b[k]
        for k in range(hidden):
            zo[k] = dh[k] * t[k] * on[k] * (_ONE - on[k])
        for k in range(hidden):
            d[k] = cn[k] + dh[k] * on[k] * (_ONE - t[k] * t[k])
        cp = c[n]
        for k in range(hidden):
            zf[k] = d[k] * cp[k] * fn[k] * (_ONE - fn[k])
        for k in range(hidden):
            zi[k] = d[k] * gn[k] * xn[k] * (_ONE - xn[k])
        for k in range(hidden):
            zg[k] = d[k] * xn[k] * (_ONE - gn[k] * gn[k])
        out = dcp[n]
        for k in range(hidden):
            out[k] = d[k] * fn[k]


@njit(cache=True, inline="always")
def _at(a, k):
    """Step ``k``'s element of a stack popped from its end (one element: the same every step)."""
    return a[0] if a.shape[0] == 1 else a[a.shape[0] - 1 - k]


@njit(cache=True, nogil=True, fastmath=_FASTMATH, error_model="numpy")
def backward_chain(fn, dh1, dc, dh2, tc, o, c, f, g, i, gi, gf, gg, go, kind, p, dz):
    """The serial part of ``dz.shape[0]`` gradient steps, last element of the stacks first (:func:`_at`; ``dh2``:
    its first element, then its last): ``dz[k]`` from ``dh1``, ``dc``, which carry the state; the product
    ``kind`` (-1: none) of ``dz[k]`` and ``p`` (popped as the roles) becomes the next ``dh1``."""
    rows, hidden = dh1.shape
    dcp = np.empty((rows, hidden), np.float32)
    for k in range(dz.shape[0]):
        _backward(dh1, dh2[min(k, dh2.shape[0] - 1)], _at(tc, k), _at(o, k), dc, _at(c, k), _at(f, k), _at(g, k),
                  _at(i, k), gi, gf, gg, go, dz[k], dcp)
        dc[:] = dcp
        if kind >= 0:
            _gemm_kind(fn, kind, dz[k], _at(p, k), dh1)


@njit(cache=True, nogil=True, error_model="numpy")
def backward_product(fn, kind, dz, p, y, accumulate):
    """Every step's product ``kind`` (LSTMCellBackward's ``products``) of ``dz[k]`` and ``p`` (popped as the
    roles) into ``y[k]`` (``y[0]`` when it holds one element), or added to ``y[0]`` when ``accumulate``."""
    out = np.empty(y.shape[1:], np.float32)
    for k in range(dz.shape[0]):
        target = out if accumulate else y[min(k, y.shape[0] - 1)]
        _gemm_kind(fn, kind, dz[k], _at(p, k), target)
        if accumulate:
            acc = y[0]
            for r in range(out.shape[0]):
                for j in range(out.shape[1]):
                    acc[r, j] = out[r, j] + acc[r, j]


@njit(cache=True, inline="always")
def _gemm_kind(fn, kind, dz, p, out):
    """``out`` = the product ``kind`` (0: ``dz @ p.T``, 1: ``p.T @ dz``, 2: ``dz @ p``, 3: ``p @ dz``)."""
    rows, n = dz.shape
    m, width = out.shape
    if kind == 0:
        gemm(fn, False, True, m, width, n, _ONE, dz, 0, n, p, 0, p.shape[1], _ZERO, out, 0, width)
    elif kind == 1:
        gemm(fn, True, False, m, width, rows, _ONE, p, 0, p.shape[1], dz, 0, n, _ZERO, out, 0, width)
    elif kind == 2:
        gemm(fn, False, False, m, width, n, _ONE, dz, 0, n, p, 0, width, _ZERO, out, 0, width)
    else:
        gemm(fn, False, False, m, width, rows, _ONE, p, 0, rows, dz, 0, width, _ZERO, out, 0, width)


@njit(cache=True, nogil=True, error_model="numpy")
def bias_sums(dz, db, accumulate):
    """Every step's ``db = dz[k].sum(axis=0)`` (rows in order), plus ``db`` when ``accumulate``."""
    rows, n = dz.shape[1], dz.shape[2]
    s = np.empty(n, np.float32)
    for k in range(dz.shape[0]):
        s[:] = dz[k, 0]
        for r in range(1, rows):
            for j in range(n):
                s[j] = s[j] + dz[k, r, j]
        for j in range(n):
            db[j] = s[j] + db[j] if accumulate else s[j]


PARALLEL_MACS = 1 << 21  # multiply-adds of a gradient loop's off-chain products worth a second thread


def backward_steps(fn: int, steps: int, dh1, dc, dh2, roles, gates, kinds, accumulate, state: int, operands, ys,
                   db, bias: int) -> None:
    """``steps`` gradient steps (see :func:`backward_chain`; ``roles``: tc, o, c, f, g, i; ``state``: the product
    that becomes the next ``dh1``, -1: none), then product q of every step (operand ``operands[q]``) into
    ``ys[q]`` as :func:`backward_product`, and the bias gradient into ``db`` (``bias`` 0: set, 1: accumulated,
    -1: none): each product's steps in order (the same sums as step by step), the products on
    :func:`opencann.runtime.workers.parallel_for`'s threads when they are large. Shapes checked by the caller."""
    rows, hidden = dh1.shape
    dz = np.empty((steps, rows, 4 * hidden), F32)
    pieces = [q for q in range(4) if q != state] + ([4] if bias >= 0 else [])

    def piece(n: int) -> None:
        q = pieces[n]
        if q == 4:
            bias_sums(dz, db, bias)
        else:
            backward_product(fn, kinds[q], dz, operands[q], ys[q], accumulate[q])

    with OneThread():
        backward_chain(fn, dh1, dc, dh2, *roles, *gates, kinds[state] if state >= 0 else -1,
                       operands[state if state >= 0 else 0], dz)
        macs = steps * rows * sum(ys[q][0].size for q in pieces if q < 4)
        if macs >= PARALLEL_MACS and workers.size() > 1:
            workers.parallel_for(piece, len(pieces))
        else:
            for n in range(len(pieces)):
                piece(n)


def _check(arrays, what: str) -> None:
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != F32:
            raise AclError(ErrorCode.INVALID_PARAM, f"{what}: wants float32 arrays, got "
                           f"{getattr(a, 'dtype', type(a).__name__)}")


@op("LSTMCellForward", domain=DOMAIN)
def lstm_cell_forward(x, w, h, r, b, c, *, gates, results):
    """One LSTM step (see the module docstring): :func:`forward_steps` for one step where MKL is loaded."""
    _check((x, w, h, r, b, c), "LSTMCellForward")
    rows, hidden = c.shape
    if b.shape != (4 * hidden,) or w.shape[1] != 4 * hidden or r.shape[1] != 4 * hidden or \
            x.shape[0] != rows or h.shape[0] != rows or w.shape[0] != x.shape[1] or r.shape[0] != hidden:
        raise AclError(ErrorCode.INVALID_PARAM, f"LSTMCellForward: weights {w.shape}, {r.shape}, bias {b.shape} and "
                       f"inputs {x.shape}, {h.shape} do not fit the state {c.shape} (4 gates)")
    gi, gf, gg, go = (hidden * k for k in gates)
    fn = sgemm_address()
    if fn:
        hs, cs = np.empty((2, rows, hidden), F32), np.empty((2, rows, hidden), F32)
        acts = np.empty((5, 1, rows, hidden), F32)
        hs[0], cs[0] = h, c
        with OneThread():
            forward_steps(fn, contiguous(x)[None], contiguous(w), contiguous(r), contiguous(b), hs, cs, gi, gf, gg, go,
                          acts)
        out = (*acts[:4, 0], cs[1], acts[4, 0], hs[1])
    else:
        out = np.empty((7, *c.shape), F32)
        _forward(_dot(x, w), _dot(h, r), b, c, gi, gf, gg, go, out)
    return tuple(out[k] for k in results) if len(results) > 1 else out[results[0]]


def contiguous(a: np.ndarray) -> np.ndarray:
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (fresh): NumPy's BLAS call for the small products of a cell (transposed views need no copy),
    :func:`sgemm` for large ones."""
    return np.dot(a, b) if a.shape[0] * a.shape[1] * b.shape[1] <= SMALL else sgemm(a, b)


def _accumulate(acc: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``acc + y``, into ``y`` (fresh) when it has the sum's shape and dtype."""
    if type(acc) is np.ndarray and acc.shape == y.shape and acc.dtype == y.dtype:
        return np.add(y, acc, out=y)
    return acc + y


def product_shape(kind: int, p: np.ndarray, rows: int, gates: int) -> tuple[int, int] | None:
    """The shape of LSTMCellBackward's product ``kind`` of ``dz`` (rows x gates) and ``p``; None where they do
    not fit."""
    fits = (p.shape[1] == gates, p.shape[0] == rows, p.shape[0] == gates, p.shape[1] == rows)[kind]
    return None if p.ndim != 2 or not fits else ((rows, p.shape[0]), (p.shape[1], gates), (rows, p.shape[1]),
                                                 (p.shape[0], gates))[kind]


@op("LSTMCellBackward", domain=DOMAIN)
def lstm_cell_backward(*arrays, gates, products, accumulate, bias, dc_out):
    """One LSTM step's gradient (see the module docstring): :func:`backward_steps` for one step where MKL is
    loaded and there are four products whose accumulators have their shapes."""
    _check(arrays[:9], "LSTMCellBackward")
    roles, rest = arrays[:9], list(arrays[9:])
    operands = rest[:len(products)]
    accumulators = rest[len(products):]
    rows, hidden = roles[2].shape
    if any(a.shape != (rows, hidden) for a in roles):
        raise AclError(ErrorCode.INVALID_PARAM, f"LSTMCellBackward: the cell's values differ in shape: "
                       f"{[a.shape for a in roles]}")
    gi, gf, gg, go = (hidden * k for k in gates)
    ys = _step_outputs(products, operands, accumulate, accumulators, rows, 4 * hidden)
    if ys is not None and sgemm_address() and (bias < 0 or _fits(accumulators[-1] if bias else None, (4 * hidden,))):
        db = np.array(accumulators[-1], F32) if bias == 1 else np.empty(4 * hidden, F32)
        dh1, dh2, tc, o, dc, c, f, g, i = (contiguous(a) for a in roles)
        dh1, dc = dh1.copy(), dc.copy()
        backward_steps(sgemm_address(), 1, dh1, dc, dh2[None], [a[None] for a in (tc, o, c, f, g, i)], (gi, gf, gg, go),
                       products, accumulate, -1, [contiguous(p)[None] for p in operands], ys, db, bias)
        return tuple(([dc] if dc_out else []) + [y[0] for y in ys] + ([db] if bias >= 0 else []))
    dz, dcp = np.empty((rows, 4 * hidden), F32), np.empty((rows, hidden), F32)
    _backward(*roles, gi, gf, gg, go, dz, dcp)
    outs = [dcp] if dc_out else []
    accumulators = iter(accumulators)
    for kind, p, acc in zip(products, operands, accumulate, strict=True):
        y = _dot(*((dz, p.T), (p.T, dz), (dz, p), (p, dz))[kind])
        outs.append(_accumulate(next(accumulators), y) if acc else y)
    if bias >= 0:
        s = dz.sum(axis=0)
        outs.append(_accumulate(next(accumulators), s) if bias else s)
    return tuple(outs) if len(outs) > 1 else outs[0]


def _fits(a, shape: tuple[int, ...]) -> bool:
    return a is None or type(a) is np.ndarray and a.dtype == F32 and a.shape == shape


def _step_outputs(products, operands, accumulate, accumulators, rows: int, gates: int) -> list[np.ndarray] | None:
    """:func:`backward_steps`'s product buffers for one step (accumulators copied in), or None where the products
    are not four float32 ones fitting ``dz`` with accumulators of their shapes."""
    if len(products) != 4 or not all(type(p) is np.ndarray and p.dtype == F32 for p in operands):
        return None
    ys, accs = [], iter(accumulators)
    for kind, p, acc in zip(products, operands, accumulate, strict=True):
        shape = product_shape(kind, p, rows, gates)
        a = next(accs) if acc else None
        if shape is None or not _fits(a, shape):
            return None
        ys.append(np.array(a, F32)[None] if acc else np.empty((1, *shape), F32))
    return ys
