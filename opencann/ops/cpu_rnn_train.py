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
tanh, as :mod:`opencann.ops.cpu_rnn`; sigmoid from it), the products go through :func:`opencann.ops.blas.sgemm`.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from opencann.errors import AclError, ErrorCode
from opencann.ops.blas import SMALL, sgemm
from opencann.ops.cpu_rnn import sigmoid32, tanh32
from opencann.ops.registry import op

DOMAIN = "opencann"
F32 = np.dtype(np.float32)
FORWARD_ROLES = ("i", "f", "g", "o", "c", "tanh_c", "h")
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
_ONE = np.float32(1.0)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _forward(z, z2, b, c, gi, gf, gg, go, out):
    """Short loops over few arrays each: LLVM vectorizes them (one loop over all eleven arrays stays scalar)."""
    rows, hidden = c.shape
    for n in range(rows):
        zn, z2n = z[n], z2[n]
        for k in range(zn.shape[0]):
            zn[k] = zn[k] + z2n[k] + b[k]
        _act(zn[gi:gi + hidden], out[0, n], False)
        _act(zn[gf:gf + hidden], out[1, n], False)
        _act(zn[gg:gg + hidden], out[2, n], True)
        _act(zn[go:go + hidden], out[3, n], False)
        i, f, g, o, cn, tc, h, cp = out[0, n], out[1, n], out[2, n], out[3, n], out[4, n], out[5, n], out[6, n], c[n]
        for k in range(hidden):
            cn[k] = f[k] * cp[k] + i[k] * g[k]
        _act(cn, tc, True)
        for k in range(hidden):
            h[k] = o[k] * tc[k]


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


def _check(arrays, what: str) -> None:
    for a in arrays:
        if type(a) is not np.ndarray or a.dtype != F32:
            raise AclError(ErrorCode.INVALID_PARAM, f"{what}: wants float32 arrays, got "
                           f"{getattr(a, 'dtype', type(a).__name__)}")


@op("LSTMCellForward", domain=DOMAIN)
def lstm_cell_forward(x, w, h, r, b, c, *, gates, results):
    """One LSTM step (see the module docstring); the results are views of one fresh buffer."""
    _check((x, w, h, r, b, c), "LSTMCellForward")
    rows, hidden = c.shape
    if b.shape != (4 * hidden,) or w.shape[1] != 4 * hidden or r.shape[1] != 4 * hidden or \
            x.shape[0] != rows or h.shape[0] != rows:
        raise AclError(ErrorCode.INVALID_PARAM, f"LSTMCellForward: weights {w.shape}, {r.shape}, bias {b.shape} and "
                       f"inputs {x.shape}, {h.shape} do not fit the state {c.shape} (4 gates)")
    out = np.empty((7, *c.shape), F32)
    gi, gf, gg, go = (hidden * k for k in gates)
    _forward(_dot(x, w), _dot(h, r), b, c, gi, gf, gg, go, out)
    return tuple(out[k] for k in results) if len(results) > 1 else out[results[0]]


def _dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (fresh): NumPy's BLAS call for the small products of a cell (transposed views need no copy),
    :func:`sgemm` for large ones."""
    return np.dot(a, b) if a.shape[0] * a.shape[1] * b.shape[1] <= SMALL else sgemm(a, b)


def _accumulate(acc: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``acc + y``, into ``y`` (fresh) when it has the sum's shape and dtype."""
    if type(acc) is np.ndarray and acc.shape == y.shape and acc.dtype == y.dtype:
        return np.add(y, acc, out=y)
    return acc + y


@op("LSTMCellBackward", domain=DOMAIN)
def lstm_cell_backward(*arrays, gates, products, accumulate, bias, dc_out):
    """One LSTM step's gradient (see the module docstring)."""
    _check(arrays[:9], "LSTMCellBackward")
    roles, rest = arrays[:9], list(arrays[9:])
    operands = rest[:len(products)]
    accumulators = iter(rest[len(products):])
    rows, hidden = roles[2].shape
    if any(a.shape != (rows, hidden) for a in roles):
        raise AclError(ErrorCode.INVALID_PARAM, f"LSTMCellBackward: the cell's values differ in shape: "
                       f"{[a.shape for a in roles]}")
    dz, dcp = np.empty((rows, 4 * hidden), F32), np.empty((rows, hidden), F32)
    gi, gf, gg, go = (hidden * k for k in gates)
    _backward(*roles, gi, gf, gg, go, dz, dcp)
    outs = [dcp] if dc_out else []
    for kind, p, acc in zip(products, operands, accumulate, strict=True):
        y = _dot(*((dz, p.T), (p.T, dz), (dz, p), (p, dz))[kind])
        outs.append(_accumulate(next(accumulators), y) if acc else y)
    if bias >= 0:
        s = dz.sum(axis=0)
        outs.append(_accumulate(next(accumulators), s) if bias else s)
    return tuple(outs) if len(outs) > 1 else outs[0]
