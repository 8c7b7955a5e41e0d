"""Recurrent networks: RNN, GRU and LSTM (seed layer 2, NN library).

All three share one driver: the input projection ``X·Wᵀ + Wb`` is computed for every time step at once,
then a per-step cell updates the state; ``sequence_lens`` freezes a batch entry's state past its length
(its ``Y`` rows are zero there). float16/bfloat16 run in float32 and are cast back. One registration per
operator serves every opset: later versions only added attributes (``layout``, ``linear_before_reset``);
opset 1's ``output_sequence`` is accepted and ignored, since ``Y`` is produced whenever it is asked for.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op


def _sigmoid(x, a, b):
    return 0.5 * (np.tanh(0.5 * x) + 1)


def _elu(x, a, b):
    return np.where(x >= 0, x, a * np.expm1(np.minimum(x, 0)))


# name -> (function(x, alpha, beta), default alpha, default beta); None: the function takes no such value
_ACTIVATIONS: dict[str, tuple[Callable, float | None, float | None]] = {
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (_sigmoid, None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (_elu, 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.logaddexp(0, x), None, None),
}


def _activation_specs(names, alphas, betas, defaults: list[str], n_dir: int,
                      op_name: str) -> list[list[tuple[str, float | None, float | None]]]:
    """Per direction, ``(name, alpha, beta)`` of each activation function (lower-case names);
    alphas/betas are consumed in order by the functions that take them (missing ones get the default)."""
    names = [n.decode() if isinstance(n, bytes) else n for n in (names or defaults)]
    per_dir = len(defaults)
    if len(names) == per_dir * 2 and n_dir == 1:  # RNN's schema default lists both directions
        names = names[:per_dir]
    if len(names) == per_dir and n_dir == 2:
        names = names * 2
    if len(names) != per_dir * n_dir:
        raise AclError(ErrorCode.INVALID_PARAM, f"{op_name}: expected {per_dir * n_dir} activations, "
                                                f"got {len(names)}")
    alpha_it, beta_it = iter(alphas or ()), iter(betas or ())
    specs = []
    for name in names:
        if name.lower() not in _ACTIVATIONS:
            raise AclError(ErrorCode.INVALID_PARAM, f"{op_name}: unsupported activation '{name}'")
        _, da, db = _ACTIVATIONS[name.lower()]
        specs.append((name.lower(), next(alpha_it, da) if da is not None else None,
                      next(beta_it, db) if db is not None else None))
    return [specs[d * per_dir:(d + 1) * per_dir] for d in range(n_dir)]


def _activations(names, alphas, betas, defaults: list[str], n_dir: int, op_name: str) -> list[list[Callable]]:
    """Per direction, the activation functions (see :func:`_activation_specs`)."""
    return [[lambda x, fn=_ACTIVATIONS[name][0], a=a, b=b: fn(x, a, b) for name, a, b in specs]
            for specs in _activation_specs(names, alphas, betas, defaults, n_dir, op_name)]


def _directions(direction: str, n_dir: int, op_name: str) -> list[bool]:
    """Per direction, whether it runs in reverse."""
    flags = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if flags is None or len(flags) != n_dir:
        raise AclError(ErrorCode.INVALID_PARAM, f"{op_name}: direction '{direction}' does not match "
                                                f"{n_dir} weight direction(s)")
    return flags


def _compute_dtype(x: np.ndarray) -> np.dtype:
    return np.dtype(np.float64) if x.dtype == np.float64 else np.dtype(np.float32)


def _clipper(clip) -> Callable:
    if clip is None:
        return lambda v: v
    return lambda v: np.clip(v, -clip, clip)


def _recur(step: Callable, xw: np.ndarray, state: tuple, lens: np.ndarray | None, reverse: bool):
    """Run ``step(xw[t], *state) -> state`` over time; returns ``Y`` (the h of every step) and the final
    state. Entries of a batch stop updating (and emit zeros) past their sequence length."""
    steps = xw.shape[0]
    ys = np.zeros((steps, *state[0].shape), dtype=state[0].dtype)
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        new = step(xw[t], *state)
        if lens is not None:
            live = (t < lens)[:, None]
            new = tuple(np.where(live, n, s) for n, s in zip(new, state, strict=True))
            ys[t] = np.where(live, new[0], 0)
        else:
            ys[t] = new[0]
        state = new
    return ys, state


def _check_weights(op_name: str, gates: int, W, R, hidden_size) -> int:
    """The hidden size, after checking that W and R fit ``gates`` gates of it."""
    hidden = R.shape[-1]
    if hidden_size is not None and hidden_size != hidden:
        raise AclError(ErrorCode.INVALID_PARAM, f"{op_name}: hidden_size {hidden_size} does not match R {R.shape}")
    if W.shape[1] != gates * hidden or R.shape[1:] != (gates * hidden, hidden):
        raise AclError(ErrorCode.INVALID_PARAM, f"{op_name}: W {W.shape} / R {R.shape} do not fit "
                                                f"{gates} gates of hidden size {hidden}")
    return hidden


def _run(op_name: str, gates: int, make_step: Callable, X, W, R, B, sequence_lens, initial_states,
         *, hidden_size, direction, layout):
    """The shared driver: layouts, dtypes, biases and directions; returns ``(Y, *final_states)``. The input
    projections of all time steps are one GEMM; ``make_step(d, r, rb)`` gives direction d's cell."""
    dt = _compute_dtype(X)
    x = np.asarray(X, dtype=dt)
    if layout:
        x = x.transpose(1, 0, 2)
        initial_states = [None if s is None else s.transpose(1, 0, 2) for s in initial_states]
    steps, batch, _ = x.shape
    n_dir, hidden = W.shape[0], _check_weights(op_name, gates, W, R, hidden_size)
    b = np.zeros((n_dir, 2 * gates * hidden), dt) if B is None else np.asarray(B, dtype=dt)
    lens = None
    if sequence_lens is not None:
        lens = np.asarray(sequence_lens, dtype=np.int64)
        lens = None if (lens >= steps).all() else lens
    ys, finals = [], []
    for d, reverse in enumerate(_directions(direction, n_dir, op_name)):
        w, r = np.asarray(W[d], dtype=dt), np.asarray(R[d], dtype=dt)
        xw = (x.reshape(steps * batch, -1) @ w.T + b[d, :gates * hidden]).reshape(steps, batch, -1)
        state = tuple(np.zeros((batch, hidden), dt) if s is None else np.asarray(s[d], dtype=dt)
                      for s in initial_states)
        y, state = _recur(make_step(d, r, b[d, gates * hidden:]), xw, state, lens, reverse)
        ys.append(y)
        finals.append(state)
    y = np.stack(ys, axis=1)  # [seq, num_directions, batch, hidden]
    outs = [np.stack([f[i] for f in finals]) for i in range(len(initial_states))]
    if layout:
        y = y.transpose(2, 0, 1, 3)
        outs = [o.transpose(1, 0, 2) for o in outs]
    return tuple(o.astype(X.dtype, copy=False) for o in (y, *outs))


# --------------------------------------------------------------------------------------------- RNN


@op("RNN", since=1)
def rnn(X, W, R, B=None, sequence_lens=None, initial_h=None, *, hidden_size=None, direction="forward",
        activations=None, activation_alpha=None, activation_beta=None, clip=None, layout=0, output_sequence=0):
    acts = _activations(activations, activation_alpha, activation_beta, ["Tanh"], W.shape[0], "RNN")
    clamp = _clipper(clip)

    def make_step(d, r, rb):
        (f,) = acts[d]
        rt = r.T
        return lambda xw, h: (f(clamp(xw + h @ rt + rb)),)

    return _run("RNN", 1, make_step, X, W, R, B, sequence_lens, [initial_h],
                hidden_size=hidden_size, direction=direction, layout=layout)


# --------------------------------------------------------------------------------------------- GRU


@op("GRU", since=1)
def gru(X, W, R, B=None, sequence_lens=None, initial_h=None, *, hidden_size=None, direction="forward",
        activations=None, activation_alpha=None, activation_beta=None, clip=None, linear_before_reset=0,
        layout=0, output_sequence=0):
    """Gates z, r, h; ``linear_before_reset`` applies r after the recurrent projection of h."""
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], W.shape[0], "GRU")
    clamp = _clipper(clip)

    def make_step(d, r, rb):
        f, g = acts[d]
        hidden = r.shape[1]
        r_zr, r_h = r[:2 * hidden].T, r[2 * hidden:].T
        rb_zr, rb_h = rb[:2 * hidden], rb[2 * hidden:]

        def step(xw, h):
            zr = f(clamp(xw[:, :2 * hidden] + h @ r_zr + rb_zr))
            z, reset = zr[:, :hidden], zr[:, hidden:]
            if linear_before_reset:
                cand = xw[:, 2 * hidden:] + reset * (h @ r_h + rb_h)
            else:
                cand = xw[:, 2 * hidden:] + (reset * h) @ r_h + rb_h
            return ((1 - z) * g(clamp(cand)) + z * h,)

        return step

    return _run("GRU", 3, make_step, X, W, R, B, sequence_lens, [initial_h],
                hidden_size=hidden_size, direction=direction, layout=layout)


# -------------------------------------------------------------------------------------------- LSTM


@op("LSTM", since=1)
def lstm(X, W, R, B=None, sequence_lens=None, initial_h=None, initial_c=None, P=None, *, hidden_size=None,
         direction="forward", activations=None, activation_alpha=None, activation_beta=None, clip=None,
         input_forget=0, layout=0, output_sequence=0):
    """Gates i, o, f, c with optional peepholes ``P`` (i, o, f); ``input_forget`` couples f = 1 - i."""
    acts = _activations(activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"],
                        W.shape[0], "LSTM")
    clamp = _clipper(clip)
    dt = _compute_dtype(X)

    def make_step(d, r, rb):
        f, g, h_act = acts[d]
        hidden = r.shape[1]
        rt = r.T
        p = np.zeros((3, hidden), dt) if P is None else np.asarray(P[d], dtype=dt).reshape(3, hidden)

        def step(xw, h, c):
            z = xw + h @ rt + rb
            i = f(clamp(z[:, :hidden] + p[0] * c))
            forget = 1 - i if input_forget else f(clamp(z[:, 2 * hidden:3 * hidden] + p[2] * c))
            c_new = forget * c + i * g(clamp(z[:, 3 * hidden:]))
            o = f(clamp(z[:, hidden:2 * hidden] + p[1] * c_new))
            return o * h_act(c_new), c_new

        return step

    return _run("LSTM", 4, make_step, X, W, R, B, sequence_lens, [initial_h, initial_c],
                hidden_size=hidden_size, direction=direction, layout=layout)
