"""Numba CPU kernels for RNN, GRU and LSTM (the reference kernels in :mod:`opencann.ops.rnn` are the oracle).

Same semantics as the reference: every direction, ``sequence_lens``, initial states, peepholes, clip,
``input_forget``, ``linear_before_reset``, layouts 0 and 1, all ONNX activations; float16/bfloat16 run in
float32. The input projections of all time steps are one GEMM up front (``X @ W^T``); the whole
recurrence of a direction (recurrent mat-vec products ``h @ R^T``, gates, state updates) is one Numba call
writing into the preallocated ``Y`` and final states, instead of a Python loop over time steps. ``W^T`` and
``R^T`` of constant weights are copied once (:func:`opencann.ops.blas.transposed`); the plain LSTM (one
direction, default cell, no lengths) skips the general driver (batch-1 models are latency-bound). An LSTM with a batch
of ``_GEMM_BATCH`` or more does each step's recurrent product of the whole batch as one MKL ``cblas_sgemm``
called from inside the Numba loop (:func:`opencann.ops.blas.gemm`, by address); the
default float32 LSTM cell (sigmoid/tanh/tanh, no clip) is one fused loop. float32 tanh and
sigmoid use a rational approximation (Eigen's, within 4e-7 of tanh) that vectorizes. Recurrences too
large for a Numba mat-vec to keep up with BLAS (``batch * gates * hidden**2 > _MAX_MACS`` multiply-adds
per step; the crossover measured at 2-4 M) run the reference kernel, which calls BLAS per step from Python
(not an LSTM on the GEMM path: 1.8x faster than that at batch 32, hidden 256).

Also ``opencann::EmbeddingLSTM`` (reference and kernel), the plain LSTM over an embedding lookup that
:mod:`opencann.compiler.passes.fold_embedding` makes: each step's input projection is a row of a precomputed table,
gathered inside the recurrence, so there is no input GEMM, and nothing is allocated per step.
"""
from __future__ import annotations

import functools
import math
import weakref

import numpy as np
from numba import njit
from onnx import defs, helper

from opencann.compiler.ir import TensorType
from opencann.errors import AclError, ErrorCode
from opencann.ops import blas
from opencann.ops import rnn as ref
from opencann.ops.blas import sgemm
from opencann.ops.registry import OPENCANN_DOMAIN, kernel, op

_MAX_MACS = 1 << 21  # recurrent multiply-adds per time step above which BLAS per step wins
_GEMM_BATCH = 4  # batch from which the LSTM's recurrent products are one MKL GEMM per step
_FASTMATH = {"reassoc", "contract", "nsz", "arcp"}  # no nnan/ninf: clip may be inf
_CODES = {name: i for i, name in enumerate(("relu", "tanh", "sigmoid", "affine", "leakyrelu", "thresholdedrelu",
                                            "scaledtanh", "hardsigmoid", "elu", "softsign", "softplus"))}


_ZERO, _HALF, _ONE = np.float32(0.0), np.float32(0.5), np.float32(1.0)  # float32 math for float32 data
F32 = np.dtype(np.float32)
_bias_sums: dict[int, tuple] = {}  # id of a constant LSTM bias -> (weak reference to it, Wb + Rb)


@njit(cache=True, inline="always", error_model="numpy")
def _act(code, x, a, b):  # noqa: C901 - one branch per ONNX activation
    if code == 0:
        return max(x, _ZERO)
    if code == 1:
        return math.tanh(x)
    if code == 2:
        return _HALF * (math.tanh(_HALF * x) + _ONE)
    if code == 3:
        return a * x + b
    if code == 4:
        return x if x >= _ZERO else a * x
    if code == 5:
        return x if x > a else _ZERO
    if code == 6:
        return a * math.tanh(b * x)
    if code == 7:
        return min(max(a * x + b, _ZERO), _ONE)
    if code == 8:
        return x if x >= _ZERO else a * math.expm1(x)
    if code == 9:
        return x / (_ONE + abs(x))
    return max(x, _ZERO) + math.log1p(math.exp(-abs(x)))


@njit(cache=True, inline="always", error_model="numpy")
def tanh32(x):
    """tanh as a rational function (Eigen's float32 approximation, within 4e-7): vectorizes, unlike tanhf."""
    x = min(max(x, np.float32(-9.0)), np.float32(9.0))
    x2 = x * x
    p = np.float32(-2.76076847742355e-16)
    p = p * x2 + np.float32(2.00018790482477e-13)
    p = p * x2 + np.float32(-8.60467152213735e-11)
    p = p * x2 + np.float32(5.12229709037114e-08)
    p = p * x2 + np.float32(1.48572235717979e-05)
    p = p * x2 + np.float32(6.37261928875436e-04)
    p = p * x2 + np.float32(4.89352455891786e-03)
    q = np.float32(1.19825839466702e-06)
    q = q * x2 + np.float32(1.18534705686654e-04)
    q = q * x2 + np.float32(2.26843463243900e-03)
    q = q * x2 + np.float32(4.89352518554385e-03)
    return x * p / q


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _apply(code, v, a, b, fast):
    """``v[:] = activation(v)``; ``fast``: float32 data, tanh and sigmoid through :func:`tanh32`."""
    if fast and code == 1:
        for k in range(v.shape[0]):
            v[k] = tanh32(v[k])
    elif fast and code == 2:
        for k in range(v.shape[0]):
            v[k] = _HALF * (tanh32(_HALF * v[k]) + _ONE)
    else:
        for k in range(v.shape[0]):
            v[k] = _act(code, v[k], a, b)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _project(z, h, rt, bias, col):
    """``z[:] = bias + h @ rt[:, col:col + len(z)]``: rows of ``rt`` (R transposed) scaled and summed, four at a
    time (vectorizes without the horizontal sums of dot products: 3x faster at hidden 64)."""
    m, hidden = z.shape[0], h.shape[0]
    for j in range(m):
        z[j] = bias[j]
    k = 0
    while k + 4 <= hidden:
        h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
        r0, r1, r2, r3 = rt[k, col:col + m], rt[k + 1, col:col + m], rt[k + 2, col:col + m], rt[k + 3, col:col + m]
        for j in range(m):
            z[j] += h0 * r0[j] + h1 * r1[j] + h2 * r2[j] + h3 * r3[j]
        k += 4
    for q in range(k, hidden):
        hq, rq = h[q], rt[q, col:col + m]
        for j in range(m):
            z[j] += hq * rq[j]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _clip(v, limit):
    for k in range(v.shape[0]):
        v[k] = min(max(v[k], -limit), limit)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _rnn_seq(xw, rt, bias, h, lens, reverse, codes, al, be, clip, fast, y, d):
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    z = np.empty(hidden, xw.dtype)
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        for n in range(batch):
            if t >= lens[n]:
                continue
            _project(z, h[n], rt, bias, 0)
            for j in range(hidden):
                z[j] += xw[t, n, j]
            _clip(z, clip)
            _apply(codes[0], z, al[0], be[0], fast)
            h[n] = z
            y[t, d, n] = z


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _gru_seq(xw, rt, wb, rb, h, lens, reverse, codes, al, be, clip, fast, linear_before_reset, y, d):
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    zr = np.empty(2 * hidden, xw.dtype)
    rh = np.empty(hidden, xw.dtype)
    cand = np.empty(hidden, xw.dtype)
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        for n in range(batch):
            if t >= lens[n]:
                continue
            _project(zr, h[n], rt, rb, 0)
            for j in range(2 * hidden):
                zr[j] += xw[t, n, j] + wb[j]
            _clip(zr, clip)
            _apply(codes[0], zr, al[0], be[0], fast)
            for k in range(hidden):
                rh[k] = h[n, k] if linear_before_reset else zr[hidden + k] * h[n, k]
            _project(cand, rh, rt, rb[2 * hidden:], 2 * hidden)
            for j in range(hidden):
                reset = zr[hidden + j] if linear_before_reset else _ONE
                cand[j] = xw[t, n, 2 * hidden + j] + wb[2 * hidden + j] + reset * cand[j]
            _clip(cand, clip)
            _apply(codes[1], cand, al[1], be[1], fast)
            for j in range(hidden):
                value = (_ONE - zr[j]) * cand[j] + zr[j] * h[n, j]
                h[n, j] = value
                y[t, d, n, j] = value


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def sigmoid32(x):
    return _HALF * (tanh32(_HALF * x) + _ONE)


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _lstm_cell_default(z, x, p, h, c):
    """:func:`_lstm_cell` for float32 with the default activations, no clip: one pass (vectorizes)."""
    hidden = h.shape[0]
    for k in range(hidden):
        i = sigmoid32(z[k] + x[k] + p[0, k] * c[k])
        f = sigmoid32(z[2 * hidden + k] + x[2 * hidden + k] + p[2, k] * c[k])
        ck = f * c[k] + i * tanh32(z[3 * hidden + k] + x[3 * hidden + k])
        c[k] = ck
        h[k] = sigmoid32(z[hidden + k] + x[hidden + k] + p[1, k] * ck) * tanh32(ck)


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _cell(z, x, h, c):
    """One plain LSTM step of one batch entry (float32, default activations): ``z + x`` are the pre-activations of
    gates i, o, f, c; updates ``h`` and ``c`` in place."""
    hidden = h.shape[0]
    for k in range(hidden):
        i, o = sigmoid32(z[k] + x[k]), sigmoid32(z[hidden + k] + x[hidden + k])
        f, g = sigmoid32(z[2 * hidden + k] + x[2 * hidden + k]), tanh32(z[3 * hidden + k] + x[3 * hidden + k])
        ck = f * c[k] + i * g
        c[k] = ck
        h[k] = o * tanh32(ck)


@njit(cache=True, inline="always", fastmath=_FASTMATH, error_model="numpy")
def _lstm_cell(z, x, p, h, c, codes, al, be, clip, fast, input_forget, act):
    """One LSTM step of one batch entry: ``z`` holds ``bias + h @ r^T`` (gates i, o, f, c), ``x`` this step's
    input projection; updates ``h`` and ``c`` in place."""
    hidden = h.shape[0]
    if fast and not input_forget and clip == np.inf and codes[0] == 2 and codes[1] == 1 and codes[2] == 1:
        _lstm_cell_default(z, x, p, h, c)
        return
    i, o, f, g = z[:hidden], z[hidden:2 * hidden], z[2 * hidden:3 * hidden], z[3 * hidden:]
    for k in range(hidden):
        i[k] += x[k] + p[0, k] * c[k]
        f[k] += x[2 * hidden + k] + p[2, k] * c[k]
        g[k] += x[3 * hidden + k]
    _clip(i, clip)
    _clip(f, clip)
    _clip(g, clip)
    _apply(codes[0], i, al[0], be[0], fast)
    if input_forget:
        for k in range(hidden):
            f[k] = _ONE - i[k]
    else:
        _apply(codes[0], f, al[0], be[0], fast)
    _apply(codes[1], g, al[1], be[1], fast)
    for k in range(hidden):
        c[k] = f[k] * c[k] + i[k] * g[k]
        o[k] = min(max(o[k] + x[hidden + k] + p[1, k] * c[k], -clip), clip)
        act[k] = c[k]
    _apply(codes[0], o, al[0], be[0], fast)
    _apply(codes[2], act, al[2], be[2], fast)
    for k in range(hidden):
        h[k] = o[k] * act[k]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _lstm_seq(xw, rt, bias, p, h, c, lens, reverse, codes, al, be, clip, fast, input_forget, y, d):
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    z = np.empty(4 * hidden, xw.dtype)
    act = np.empty(hidden, xw.dtype)
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        for n in range(batch):
            if t >= lens[n]:
                continue
            _project(z, h[n], rt, bias, 0)
            _lstm_cell(z, xw[t, n], p, h[n], c[n], codes, al, be, clip, fast, input_forget, act)
            y[t, d, n] = h[n]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _lstm_seq_gemm(fn, xw, rt, bias, p, h, c, lens, reverse, codes, al, be, clip, fast, input_forget, y, d):
    """:func:`_lstm_seq` with each step's recurrent product of the whole batch, ``h @ rt``, one ``gemm`` call
    (MKL's ``cblas_sgemm``: float32, C-contiguous ``h`` and ``rt``)."""
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    z = np.empty((batch, 4 * hidden), xw.dtype)
    act = np.empty(hidden, xw.dtype)
    for s in range(steps):
        t = steps - 1 - s if reverse else s
        blas.gemm(fn, False, False, batch, 4 * hidden, hidden, _ONE, h, 0, hidden, rt, 0, 4 * hidden, _ZERO, z, 0,
                  4 * hidden)
        for n in range(batch):
            if t >= lens[n]:
                continue
            zn = z[n]
            for j in range(4 * hidden):
                zn[j] += bias[j]
            _lstm_cell(zn, xw[t, n], p, h[n], c[n], codes, al, be, clip, fast, input_forget, act)
            y[t, d, n] = h[n]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _lstm_plain_seq(xw, rt, bias, h, c, y):
    """:func:`_lstm_seq` for the plain LSTM (float32, default cell, no peepholes or lengths, one direction): fewer
    arguments to dispatch (~2 us less a call)."""
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    z = np.empty(4 * hidden, xw.dtype)
    for t in range(steps):
        for n in range(batch):
            _project(z, h[n], rt, bias, 0)
            _cell(z, xw[t, n], h[n], c[n])
            y[t, 0, n] = h[n]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _lstm_plain_seq_gemm(fn, xw, rt, h, c, y):
    """:func:`_lstm_plain_seq` with each step's recurrent product of the whole batch, ``h @ rt``, one ``gemm`` call
    (``cblas_sgemm``); ``xw`` includes the biases."""
    steps, batch, hidden = xw.shape[0], xw.shape[1], rt.shape[0]
    z = np.empty((batch, 4 * hidden), xw.dtype)
    for t in range(steps):
        blas.gemm(fn, False, False, batch, 4 * hidden, hidden, _ONE, h, 0, hidden, rt, 0, 4 * hidden, _ZERO, z, 0,
                  4 * hidden)
        for n in range(batch):
            _cell(z[n], xw[t, n], h[n], c[n])
            y[t, 0, n] = h[n]


def _params(op_name: str, defaults: tuple, n_dir: int, dtype, clip, activations, alphas, betas) -> list[tuple]:
    """Per direction, the Numba kernel's activation codes, alphas and betas, clip limit and float32 flag."""
    if activations is None and alphas is None and betas is None:  # the common case: a cheaper key
        return _cached_params((op_name, n_dir, dtype, clip, None, None, None), defaults)
    key = (op_name, n_dir, np.dtype(dtype), clip, *(tuple(v) if v is not None else None
                                                     for v in (activations, alphas, betas)))
    return _cached_params(key, defaults)


@functools.lru_cache(maxsize=256)
def _cached_params(key: tuple, defaults: tuple) -> list[tuple]:
    op_name, n_dir, dtype, clip, activations, alphas, betas = key
    out = []
    for specs in ref._activation_specs(activations, alphas, betas, list(defaults), n_dir, op_name):
        codes = np.array([_CODES[name] for name, _, _ in specs], np.int64)
        al = np.array([0.0 if a is None else a for _, a, _ in specs], dtype)
        be = np.array([0.0 if b is None else b for _, _, b in specs], dtype)
        out.append((codes, al, be, dtype.type(np.inf if clip is None else clip), dtype == np.float32))
    return out


def _small(X, R, gates: int, layout) -> bool:
    """Whether the recurrence is small enough for the Numba mat-vec (and the input a 3-d float array)."""
    if X.dtype.kind != "f" or X.ndim != 3:
        return False
    return X.shape[0 if layout else 1] * gates * R.shape[-1] ** 2 <= _MAX_MACS


def _gemm(X, layout):
    """The address of MKL's ``cblas_sgemm`` where each step's recurrent product should be one GEMM of the whole
    batch (a batch of at least ``_GEMM_BATCH``, float32 compute, MKL loaded), else None. Faster than the
    reference's BLAS call per step from Python at any size (1.8x at batch 32, hidden 256)."""
    if X.dtype.kind != "f" or X.ndim != 3 or ref._compute_dtype(X) != np.float32:
        return None
    return _gemm_for(X.shape[0 if layout else 1])


def _gemm_for(batch: int):
    """The address of MKL's ``cblas_sgemm`` for a float32 batch of at least ``_GEMM_BATCH`` (MKL loaded), else None."""
    return (blas.sgemm_address() or None) if batch >= _GEMM_BATCH else None


def _drive(op_name: str, gates: int, run, X, W, R, B, sequence_lens, initial_states, *, hidden_size, direction,
           layout):
    """The reference driver's semantics (see :func:`opencann.ops.rnn._run`) with less Python per call: Y and
    the final states are allocated once and written in place by ``run(d, reverse, xw, rt, wb, rb, states, lens,
    y)``, the Numba call of direction ``d`` (``xw``: the input projections without bias, ``rt``: R^T; writes
    ``y[:, d]``)."""
    dt = ref._compute_dtype(X)
    x = X.astype(dt, copy=False)
    if layout:
        x = x.transpose(1, 0, 2)
        initial_states = [None if s is None else s.transpose(1, 0, 2) for s in initial_states]
    steps, batch, _ = x.shape
    n_dir, hidden = W.shape[0], ref._check_weights(op_name, gates, W, R, hidden_size)
    flags = ref._directions(direction, n_dir, op_name)
    width = gates * hidden
    b = np.zeros((n_dir, 2 * width), dt) if B is None else B.astype(dt, copy=False)
    if sequence_lens is None:
        lens, y = np.empty(batch, np.int64), np.empty((steps, n_dir, batch, hidden), dt)
        lens.fill(steps)
    else:  # padded steps stay zero
        lens, y = sequence_lens.astype(np.int64, copy=False), np.zeros((steps, n_dir, batch, hidden), dt)
    states = [np.zeros((n_dir, batch, hidden), dt) if s is None else np.array(s, dt, order="C")
              for s in initial_states]
    x2 = x.reshape(steps * batch, -1)
    xw = np.empty((steps * batch, width), dt)
    wt, rt = blas.transposed(W), blas.transposed(R)  # made once for constants
    if wt.dtype != dt or rt.dtype != dt:
        wt, rt = wt.astype(dt), rt.astype(dt)
    for d, reverse in enumerate(flags):
        sgemm(x2, wt[d], xw)
        run(d, reverse, xw.reshape(steps, batch, width), rt[d], b[d, :width], b[d, width:], [s[d] for s in states],
            lens, y)
    if layout:
        y = y.transpose(2, 0, 1, 3)
        states = [s.transpose(1, 0, 2) for s in states]
    return tuple(o.astype(X.dtype, copy=False) for o in (y, *states))


@kernel("RNN", "cpu")
def rnn(X, W, R, B=None, sequence_lens=None, initial_h=None, *, hidden_size=None, direction="forward",
        activations=None, activation_alpha=None, activation_beta=None, clip=None, layout=0, output_sequence=0):
    if not _small(X, R, 1, layout):
        return ref.rnn(X, W, R, B, sequence_lens, initial_h, hidden_size=hidden_size, direction=direction,
                       activations=activations, activation_alpha=activation_alpha, activation_beta=activation_beta,
                       clip=clip, layout=layout)
    params = _params("RNN", ("Tanh",), W.shape[0], ref._compute_dtype(X), clip, activations, activation_alpha,
                     activation_beta)

    def run(d, reverse, xw, rt, wb, rb, states, lens, y):
        _rnn_seq(xw, rt, wb + rb, states[0], lens, reverse, *params[d], y, d)

    return _drive("RNN", 1, run, X, W, R, B, sequence_lens, [initial_h], hidden_size=hidden_size,
                  direction=direction, layout=layout)


@kernel("GRU", "cpu")
def gru(X, W, R, B=None, sequence_lens=None, initial_h=None, *, hidden_size=None, direction="forward",
        activations=None, activation_alpha=None, activation_beta=None, clip=None, linear_before_reset=0,
        layout=0, output_sequence=0):
    if not _small(X, R, 3, layout):
        return ref.gru(X, W, R, B, sequence_lens, initial_h, hidden_size=hidden_size, direction=direction,
                       activations=activations, activation_alpha=activation_alpha, activation_beta=activation_beta,
                       clip=clip, linear_before_reset=linear_before_reset, layout=layout)
    params = _params("GRU", ("Sigmoid", "Tanh"), W.shape[0], ref._compute_dtype(X), clip, activations,
                     activation_alpha, activation_beta)

    def run(d, reverse, xw, rt, wb, rb, states, lens, y):
        _gru_seq(xw, rt, wb, rb, states[0], lens, reverse, *params[d], bool(linear_before_reset), y, d)

    return _drive("GRU", 3, run, X, W, R, B, sequence_lens, [initial_h], hidden_size=hidden_size,
                  direction=direction, layout=layout)


@kernel("LSTM", "cpu")
def lstm(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, hidden_size=None,
         direction="forward", activations=None, activation_alpha=None, activation_beta=None, clip=None,
         input_forget=0, layout=0, output_sequence=0):
    gemm = _gemm(X, layout)
    if gemm is None and not _small(X, R, 4, layout):
        return ref.lstm(X, W, R, B, sequence_lens, initial_h, initial_c, P, hidden_size=hidden_size,
                        direction=direction, activations=activations, activation_alpha=activation_alpha,
                        activation_beta=activation_beta, clip=clip, input_forget=input_forget, layout=layout)
    hidden = R.shape[-1]
    if sequence_lens is P is activations is activation_alpha is activation_beta is clip is None and not input_forget \
            and direction == "forward" and hidden_size in (None, hidden) and _plain(X, W, R, B, initial_h, initial_c,
                                                                                    layout):
        return _plain_lstm(gemm, X, W, R, B, initial_h, initial_c, hidden)
    params = _params("LSTM", ("Sigmoid", "Tanh", "Tanh"), W.shape[0], ref._compute_dtype(X), clip, activations,
                     activation_alpha, activation_beta)

    def run(d, reverse, xw, rt, wb, rb, states, lens, y):
        p = np.zeros((3, hidden), xw.dtype) if P is None else P[d].astype(xw.dtype).reshape(3, hidden)
        _lstm_recur(gemm, xw, rt, wb + rb, p, states[0], states[1], lens, reverse, params[d], bool(input_forget), y,
                    d)

    return _drive("LSTM", 4, run, X, W, R, B, sequence_lens, [initial_h, initial_c], hidden_size=hidden_size,
                  direction=direction, layout=layout)


def _lstm_recur(gemm, xw, rt, bias, p, h, c, lens, reverse, params, input_forget, y, d) -> None:
    """Direction ``d``'s recurrence: the Numba mat-vec loop, or (``gemm`` given) one MKL GEMM per step."""
    if gemm is None:
        _lstm_seq(xw, rt, bias, p, h, c, lens, reverse, *params, input_forget, y, d)
    else:
        with blas.OneThread():
            _lstm_seq_gemm(gemm, xw, rt, bias, p, h, c, lens, reverse, *params, input_forget, y, d)


def _plain(X, W, R, B, initial_h, initial_c, layout) -> bool:
    """Whether an LSTM (already known forward, with default activations, no clip, peepholes or lengths) is the plain
    float32 one of :func:`_plain_lstm`: one direction, layout 0, weights and states of the expected shapes."""
    if layout or X.dtype != F32 or X.ndim != 3 or W.dtype != F32 or R.dtype != F32 or W.ndim != 3 or W.shape[0] != 1:
        return False
    hidden, batch = R.shape[-1], X.shape[1]
    state = (1, batch, hidden)
    return (W.shape[1] == 4 * hidden and R.shape == (1, 4 * hidden, hidden)
            and (B is None or B.dtype == F32 and B.shape == (1, 8 * hidden))
            and (initial_h is None or initial_h.shape == state) and (initial_c is None or initial_c.shape == state))


def _bias_sum(B, hidden: int) -> np.ndarray:
    """``Wb + Rb`` of a one-direction float32 LSTM (zeros without ``B``); made once for a constant ``B`` (~0.7 us
    a call)."""
    if B is None:
        return np.zeros(4 * hidden, F32)
    key = id(B)
    hit = _bias_sums.get(key)
    if hit is not None and hit[0]() is B:
        return hit[1]
    total = B[0, :4 * hidden] + B[0, 4 * hidden:]
    if blas._is_constant(B):
        _bias_sums[key] = (weakref.ref(B, lambda _, key=key: _bias_sums.pop(key, None)), total)
    return total


def _plain_lstm(gemm, X, W, R, B, initial_h, initial_c, hidden: int):
    """The plain LSTM with less Python per call than :func:`_drive` (~14 us less at batch 1: latency-bound)."""
    steps, batch, _ = X.shape
    bias = _bias_sum(B, hidden)
    h, c = (np.zeros((1, batch, hidden), F32) if s is None else np.array(s, F32, order="C")
            for s in (initial_h, initial_c))
    y, xw = np.empty((steps, 1, batch, hidden), F32), np.empty((steps, batch, 4 * hidden), F32)
    sgemm(X.reshape(steps * batch, -1), blas.transposed(W)[0], xw.reshape(steps * batch, -1))
    rt = blas.transposed(R)[0]
    if gemm is None:
        _lstm_plain_seq(xw, rt, bias, h[0], c[0], y)
    else:
        xw += bias
        with blas.OneThread():
            _lstm_plain_seq_gemm(gemm, xw, rt, h[0], c[0], y)
    return y, h, c


# --- opencann::EmbeddingLSTM ---------------------------------------------------------------------------------------
# The plain LSTM reading each step's input projection from a table: fold_embedding (a compiler pass) turns an
# embedding lookup feeding an LSTM into one of these, with ``table = E @ W^T + Wb + Rb`` (vocab x 4*hidden). With
# ``sequence=0`` (the node's Y is read by nobody) Y has no steps and is not written; with ``squeeze=1`` the final
# states are [batch, hidden], without the direction axis.

def _embedding_lstm_schema():
    opt = defs.OpSchema.FormalParameterOption
    inputs = [defs.OpSchema.FormalParameter(name, kind, "", param_option=o) for name, kind, o in (
        ("tokens", "I", opt.Single), ("table", "T", opt.Single), ("RT", "T", opt.Single),
        ("initial_h", "T", opt.Optional), ("initial_c", "T", opt.Optional))]
    outputs = [defs.OpSchema.FormalParameter(name, "T", "", param_option=opt.Optional) for name in ("Y", "Y_h", "Y_c")]
    return defs.OpSchema(
        "EmbeddingLSTM", OPENCANN_DOMAIN, 1, "forward LSTM (default activations) over table[tokens] projections",
        inputs=inputs, outputs=outputs,
        type_constraints=[("T", ["tensor(float)"], ""), ("I", ["tensor(int32)", "tensor(int64)"], "")],
        attributes=[defs.OpSchema.Attribute(k, helper.make_attribute(k, v), "") for k, v in (("batch_major", 0),
                                                                                              ("sequence", 1),
                                                                                              ("squeeze", 0))])


def _infer_embedding_lstm(node):
    tokens, rt = node.inputs[0].type, node.inputs[2].type
    if not (isinstance(tokens, TensorType) and isinstance(rt, TensorType)) or tokens.rank != 2 or rt.rank != 2:
        return [None] * len(node.outputs)
    steps, batch = tokens.shape[::-1] if node.attrs.get("batch_major", 0) else tokens.shape
    steps, hidden = steps if node.attrs.get("sequence", 1) else 0, rt.shape[0]
    state = (batch, hidden) if node.attrs.get("squeeze", 0) else (1, batch, hidden)
    return [TensorType(rt.dtype, s) for s in ((steps, 1, batch, hidden), state, state)]


def _check_embedding_lstm(tokens, table, rt, initial_h, initial_c, batch_major) -> tuple[int, int]:
    """``(batch, hidden)`` after checking the operands' dtypes, ranks and shapes (cheaply: batch-1 runs take ~25 us)."""
    hidden, width = rt.shape if rt.ndim == 2 else (-1, 0)
    batch = tokens.shape[0 if batch_major else 1] if tokens.ndim == 2 else -1
    state = (1, batch, hidden)
    if batch < 0 or width != 4 * hidden or table.ndim != 2 or table.shape[1] != width or table.dtype != F32 \
            or rt.dtype != F32 or tokens.dtype.kind not in "iu" \
            or initial_h is not None and (initial_h.shape != state or initial_h.dtype != F32) \
            or initial_c is not None and (initial_c.shape != state or initial_c.dtype != F32):
        given = zip(("tokens", "table", "RT", "initial_h", "initial_c"), (tokens, table, rt, initial_h, initial_c))
        raise AclError(ErrorCode.INVALID_PARAM, "opencann::EmbeddingLSTM: " + ", ".join(
            f"{name} {a.dtype}{list(a.shape)}" for name, a in given if a is not None) + " do not fit")
    return batch, hidden


def _bad_token(vocab: int) -> AclError:
    return AclError(ErrorCode.INVALID_PARAM, f"opencann::EmbeddingLSTM: a token is outside [-{vocab}, {vocab})")


@op("EmbeddingLSTM", domain=OPENCANN_DOMAIN, infer=_infer_embedding_lstm, schema=_embedding_lstm_schema())
def embedding_lstm_reference(tokens, table, RT, initial_h=None, initial_c=None, *, batch_major=0, sequence=1,
                             squeeze=0):
    """The reference LSTM over the gathered rows with an identity ``W`` and no bias (the table holds both)."""
    _check_embedding_lstm(tokens, table, RT, initial_h, initial_c, batch_major)
    vocab = table.shape[0]
    if tokens.size and (tokens.min() < -vocab or tokens.max() >= vocab):
        raise _bad_token(vocab)
    x = table[tokens.T if batch_major else tokens]
    eye = np.eye(table.shape[1], dtype=table.dtype)[None]
    y, h, c = ref.lstm(x, eye, np.ascontiguousarray(RT.T)[None], None, None, initial_h, initial_c,
                       hidden_size=RT.shape[0])
    return (y if sequence else y[:0].copy()), *((h[0], c[0]) if squeeze else (h, c))


@njit(cache=True, error_model="numpy")
def _rows(tokens, batch_major, vocab):
    """``(rows, ok)``: the table row of each (step, batch entry), negative tokens counting from the end; ``ok`` is
    False when a token is out of range."""
    steps, batch = (tokens.shape[1], tokens.shape[0]) if batch_major else (tokens.shape[0], tokens.shape[1])
    rows = np.empty((steps, batch), np.int64)
    for t in range(steps):
        for n in range(batch):
            tok = np.int64(tokens[n, t] if batch_major else tokens[t, n])
            if tok < 0:
                tok += vocab
            if tok < 0 or tok >= vocab:
                return rows, False
            rows[t, n] = tok
    return rows, True


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _embedding_lstm_seq(tokens, batch_major, table, rt, h, c, y):
    """The recurrence of ``opencann::EmbeddingLSTM`` with Numba mat-vecs, states ``h`` and ``c`` (1, batch, hidden)
    updated in place, ``y`` written unless it has no steps; False if a token is out of range."""
    rows, ok = _rows(tokens, batch_major, table.shape[0])
    if not ok:
        return False
    z, zero = np.empty(rt.shape[1], table.dtype), np.zeros(rt.shape[1], table.dtype)
    h, c = h[0], c[0]
    for t in range(rows.shape[0]):
        for n in range(rows.shape[1]):
            _project(z, h[n], rt, zero, 0)
            _cell(z, table[rows[t, n]], h[n], c[n])
            if y.shape[0]:
                y[t, 0, n] = h[n]
    return True


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy")
def _embedding_lstm_seq_gemm(fn, tokens, batch_major, table, rt, h, c, y):
    """:func:`_embedding_lstm_seq` with each step's recurrent product of the whole batch, ``h @ rt``, one ``gemm``
    call (``cblas_sgemm``)."""
    rows, ok = _rows(tokens, batch_major, table.shape[0])
    if not ok:
        return False
    (steps, batch), (hidden, width) = rows.shape, rt.shape
    z, h, c = np.empty((batch, width), table.dtype), h[0], c[0]
    for t in range(steps):
        blas.gemm(fn, False, False, batch, width, hidden, _ONE, h, 0, hidden, rt, 0, width, _ZERO, z, 0, width)
        for n in range(batch):
            _cell(z[n], table[rows[t, n]], h[n], c[n])
            if y.shape[0]:
                y[t, 0, n] = h[n]
    return True


@kernel("EmbeddingLSTM", "cpu", domain=OPENCANN_DOMAIN)
def embedding_lstm(tokens, table, RT, initial_h=None, initial_c=None, *, batch_major=0, sequence=1, squeeze=0):
    batch, hidden = _check_embedding_lstm(tokens, table, RT, initial_h, initial_c, batch_major)
    h, c = (np.zeros((1, batch, hidden), F32) if s is None else s.copy() for s in (initial_h, initial_c))
    y = np.empty((tokens.shape[1 if batch_major else 0] if sequence else 0, 1, batch, hidden), F32)
    gemm, RT = _gemm_for(batch), blas.aligned(RT)
    if gemm is None:
        ok = _embedding_lstm_seq(tokens, bool(batch_major), table, RT, h, c, y)
    else:
        with blas.OneThread():
            ok = _embedding_lstm_seq_gemm(gemm, tokens, bool(batch_major), table, RT, h, c, y)
    if not ok:
        raise _bad_token(table.shape[0])
    return (y, h[0], c[0]) if squeeze else (y, h, c)
