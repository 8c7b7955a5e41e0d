"""Fast CPU kernels for TensorFlow-domain training ops: 2-D convolution gradients, MaxPoolGrad, ReluGrad and
the fused optimizer updates.

The reference kernels of :mod:`opencann.ops.tf_nn`, :mod:`opencann.ops.tf_ops` and
:mod:`opencann.ops.tf_training` stay the oracle and the fallback (other dtypes, ranks, grouped and depthwise
filters, broadcast operands). float32 2-D convolution gradients work
channels-last: a Numba loop gathers the input windows into a reused ``(N*Ho*Wo, kh*kw*C)`` im2col buffer
(columns in the filter's ``(kh, kw, C)`` order) and the filter gradient is one BLAS product
``cols.T @ dy``; the input gradient is the product ``dy @ W.T`` scatter-added back by a Numba col2im.
MaxPoolGrad is a direct Numba loop routing each window's gradient to its first maximum, as TensorFlow's
CPU kernel does; ReluGrad one pass. The optimizer updates (``ApplyAdam``, ``ApplyMomentum``, ...) compute
the new variable and slots in one Numba pass, element by element in the reference's float32 operation
order, instead of a NumPy temporary per operation. The Numba kernels are serial (one thread).
"""
from __future__ import annotations

import numba
import numpy as np

from opencann.ops import tf_nn, tf_ops, tf_training
from opencann.ops.blas import sgemm
from opencann.ops.cpu_conv import _buffer, _im2col_nhwc
from opencann.ops.registry import kernel

F32 = np.dtype(np.float32)
DOMAIN = "opencann"


def _im2col(x, cols, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo):
    """Windows of NHWC ``x`` into rows ``(n, oh, ow)`` x columns ``(i, j, c)`` (the forward conv's loop per image)."""
    per = ho * wo
    for b in range(x.shape[0]):
        _im2col_nhwc(x[b], cols[b * per:(b + 1) * per], kh, kw, sh, sw, dh, dw, ph, pw, 0, ho, wo)


@numba.njit(cache=True)
def _col2im(cols, dx, kh, kw, sh, sw, dh, dw, ph, pw, ho, wo):
    """The adjoint of :func:`_im2col`: scatter-add the columns onto a zeroed NHWC ``dx``."""
    n, h, w, c = dx.shape
    dx[:] = 0.0
    rows = dx.reshape(n, h, w * c)
    span = kw * c
    r = 0
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                iw0 = ow * sw - pw
                inside = dw == 1 and iw0 >= 0 and iw0 + kw <= w
                for i in range(kh):
                    ih = oh * sh - ph + i * dh
                    if ih < 0 or ih >= h:
                        continue
                    k = i * span
                    if inside:
                        base = iw0 * c
                        for t in range(span):
                            rows[b, ih, base + t] += cols[r, k + t]
                    else:
                        for j in range(kw):
                            iw = iw0 + j * dw
                            if 0 <= iw < w:
                                for ch in range(c):
                                    rows[b, ih, iw * c + ch] += cols[r, k + j * c + ch]
                r += 1


@numba.njit(cache=True)
def _max_pool_grad(x, g, dx, kh, kw, sh, sw, ph, pw):
    """Each NHWC window's gradient onto its first (row-major) maximum among the unpadded elements."""
    n, h, w, c = x.shape
    ho, wo = g.shape[1], g.shape[2]
    dx[:] = 0.0
    best = np.empty(c, x.dtype)
    at = np.empty(c, np.int64)  # flat (ih * w + iw) of each channel's maximum
    for b in range(n):
        for oh in range(ho):
            for ow in range(wo):
                first = True
                for i in range(kh):
                    ih = oh * sh - ph + i
                    if ih < 0 or ih >= h:
                        continue
                    for j in range(kw):
                        iw = ow * sw - pw + j
                        if iw < 0 or iw >= w:
                            continue
                        here = ih * w + iw
                        if first:
                            first = False
                            for ch in range(c):
                                best[ch] = x[b, ih, iw, ch]
                                at[ch] = here
                        else:
                            for ch in range(c):
                                v = x[b, ih, iw, ch]
                                if v > best[ch]:
                                    best[ch] = v
                                    at[ch] = here
                if not first:
                    for ch in range(c):
                        dx[b, at[ch] // w, at[ch] % w, ch] += g[b, oh, ow, ch]


@numba.njit(cache=True)
def _relu_grad(g, f, out):
    for i in range(g.size):
        out[i] = g[i] if f[i] > 0 else 0.0


# --- dispatch -------------------------------------------------------------------------------------

def _conv_plan(in_shape, filter_shape, dy, strides, padding, explicit_paddings, dilations, data_format, depthwise):
    """(channels-last dy, channels-last input shape, geometry) for a float32 2-D conv the Numba path takes,
    else None."""
    if len(filter_shape) != 4 or depthwise or dy.dtype != F32 or dy.ndim != 4:
        return None
    dy_l, x_last, kernel_, strides_, dilations_, begin, groups, _ = tf_nn._conv_geometry(
        in_shape, filter_shape, dy, strides, padding, explicit_paddings, dilations, data_format, depthwise)
    if groups != 1:
        return None
    geom = (kernel_[0], kernel_[1], strides_[0], strides_[1], dilations_[0], dilations_[1], begin[0], begin[1],
            dy_l.shape[1], dy_l.shape[2])
    return np.ascontiguousarray(dy_l), tuple(x_last), geom


@kernel("ConvBackpropFilter", "cpu", domain=DOMAIN)
def conv_backprop_filter(input, filter_sizes, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                         dilations=(), data_format="NHWC", depthwise=0):
    sizes = tuple(int(s) for s in filter_sizes)
    plan = None if input.dtype != F32 else _conv_plan(input.shape, sizes, out_backprop, strides, padding,
                                                      explicit_paddings, dilations, data_format, depthwise)
    if plan is None:
        return tf_nn.conv_backprop_filter(input, filter_sizes, out_backprop, strides=strides, padding=padding,
                                          explicit_paddings=explicit_paddings, dilations=dilations,
                                          data_format=data_format, depthwise=depthwise)
    dy, _, geom = plan
    x = np.ascontiguousarray(tf_nn._to_last(input, data_format))
    rows, m = dy.shape[0] * geom[8] * geom[9], dy.shape[-1]
    cols = _buffer(rows * sizes[0] * sizes[1] * sizes[2]).reshape(rows, -1)
    _im2col(x, cols, *geom)
    return sgemm(cols, dy.reshape(rows, m), trans_a=True).reshape(sizes)


@kernel("ConvBackpropInput", "cpu", domain=DOMAIN)
def conv_backprop_input(input_sizes, filter, out_backprop, *, strides=(), padding="VALID", explicit_paddings=(),
                        dilations=(), data_format="NHWC", depthwise=0):
    sizes = [int(s) for s in input_sizes]
    plan = None if filter.dtype != F32 else _conv_plan(sizes, filter.shape, out_backprop, strides, padding,
                                                       explicit_paddings, dilations, data_format, depthwise)
    if plan is None:
        return tf_nn.conv_backprop_input(input_sizes, filter, out_backprop, strides=strides, padding=padding,
                                         explicit_paddings=explicit_paddings, dilations=dilations,
                                         data_format=data_format, depthwise=depthwise)
    dy, x_last, geom = plan
    rows, m = dy.shape[0] * geom[8] * geom[9], dy.shape[-1]
    w = np.ascontiguousarray(filter).reshape(-1, m)  # (kh * kw * C, M)
    cols = _buffer(rows * w.shape[0]).reshape(rows, -1)
    sgemm(dy.reshape(rows, m), w, out=cols, trans_b=True)
    dx = np.empty(x_last, F32)
    _col2im(cols, dx, *geom)
    return tf_nn._from_last(dx, data_format)


@kernel("MaxPoolGrad", "cpu", domain=DOMAIN)
def max_pool_grad(orig_input, orig_output, grad, *, ksize=(), strides=(), padding="VALID", explicit_paddings=(),
                  data_format="NHWC"):
    if orig_input.dtype != F32 or grad.dtype != F32 or orig_input.ndim != 4:
        return tf_nn.max_pool_grad(orig_input, orig_output, grad, ksize=ksize, strides=strides, padding=padding,
                                   explicit_paddings=explicit_paddings, data_format=data_format)
    x = np.ascontiguousarray(tf_nn._to_last(orig_input, data_format))
    g = np.ascontiguousarray(tf_nn._to_last(grad, data_format))
    kernel_, strides_, begin = tf_nn._pool_geometry(x.shape, g, ksize, strides, padding, explicit_paddings,
                                                    data_format)
    dx = np.empty(x.shape, F32)
    _max_pool_grad(x, g, dx, kernel_[0], kernel_[1], strides_[0], strides_[1], begin[0], begin[1])
    return tf_nn._from_last(dx, data_format)


@kernel("ReluGrad", "cpu", domain=DOMAIN)
def relu_grad(gradients, features):
    if gradients.dtype != F32 or features.dtype != F32 or gradients.shape != features.shape:
        return tf_ops.relu_grad(gradients, features)
    out = np.empty(gradients.shape, F32)
    _relu_grad(np.ascontiguousarray(gradients).reshape(-1), np.ascontiguousarray(features).reshape(-1),
               out.reshape(-1))
    return out


# --- fused optimizer updates ----------------------------------------------------------------------

@numba.njit(cache=True)
def _momentum(var, accum, lr, grad, momentum, nesterov, keras, new_var, new_accum):
    for i in range(var.size):
        g = grad[i]
        if keras:
            a = accum[i] * momentum - g * lr
            new_var[i] = var[i] + (a * momentum - g * lr if nesterov else a)
        else:
            a = accum[i] * momentum + g
            new_var[i] = var[i] - (g * lr + a * momentum * lr if nesterov else a * lr)
        new_accum[i] = a


@numba.njit(cache=True)
def _adam(var, m, v, alpha, one_minus_b1, one_minus_b2, beta1, epsilon, grad, nesterov, new_var, new_m, new_v):
    for i in range(var.size):
        g = grad[i]
        mi = m[i] + (g - m[i]) * one_minus_b1
        vi = v[i] + (g * g - v[i]) * one_minus_b2
        direction = g * one_minus_b1 + beta1 * mi if nesterov else mi
        new_var[i] = var[i] - (direction * alpha) / (np.sqrt(vi) + epsilon)
        new_m[i] = mi
        new_v[i] = vi


@numba.njit(cache=True)
def _rms_prop(var, ms, mom, lr, one_minus_rho, momentum, epsilon, grad, new_var, new_ms, new_mom):
    for i in range(var.size):
        g = grad[i]
        s = ms[i] + (g * g - ms[i]) * one_minus_rho
        m = mom[i] * momentum + (g * lr) / np.sqrt(s + epsilon)
        new_var[i] = var[i] - m
        new_ms[i] = s
        new_mom[i] = m


def _flat(tensors, scalars):
    """The tensors flattened (all float32, one shape, contiguous) and the scalars as float32, else None."""
    shape = tensors[0].shape
    if any(t.dtype != F32 or t.shape != shape for t in tensors) or \
            any(np.ndim(s) or np.asarray(s).dtype != F32 for s in scalars):
        return None
    return [np.ascontiguousarray(t).reshape(-1) for t in tensors], [np.float32(s) for s in scalars]


def _outputs(var, n: int):
    return [np.empty(var.shape, F32) for _ in range(n)]


@kernel("ApplyMomentum", "cpu", domain=DOMAIN)
def apply_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    return _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, False)


@kernel("ApplyKerasMomentum", "cpu", domain=DOMAIN)
def apply_keras_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    return _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, True)


def _apply_momentum(var, accum, lr, grad, momentum, use_nesterov, keras):
    flat = _flat([var, accum, grad], [lr, momentum])
    if flat is None:
        ref = tf_training.apply_keras_momentum if keras else tf_training.apply_momentum
        return ref(var, accum, lr, grad, momentum, use_nesterov=use_nesterov)
    (v, a, g), (lr32, mom32) = flat
    out = _outputs(var, 2)
    _momentum(v, a, lr32, g, mom32, bool(use_nesterov), keras, *(o.reshape(-1) for o in out))
    return tuple(out)


@kernel("ApplyAdam", "cpu", domain=DOMAIN)
def apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad, *, use_nesterov=0):
    flat = _flat([var, m, v, grad], [beta1_power, beta2_power, lr, beta1, beta2, epsilon])
    if flat is None:
        return tf_training.apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad,
                                      use_nesterov=use_nesterov)
    (var_f, m_f, v_f, g), (b1p, b2p, lr32, b1, b2, eps) = flat
    one = np.float32(1)
    alpha = lr32 * np.sqrt(one - b2p) / (one - b1p)
    out = _outputs(var, 3)
    _adam(var_f, m_f, v_f, alpha, one - b1, one - b2, b1, eps, g, bool(use_nesterov), *(o.reshape(-1) for o in out))
    return tuple(out)


@kernel("ApplyRMSProp", "cpu", domain=DOMAIN)
def apply_rms_prop(var, ms, mom, lr, rho, momentum, epsilon, grad):
    flat = _flat([var, ms, mom, grad], [lr, rho, momentum, epsilon])
    if flat is None:
        return tf_training.apply_rms_prop(var, ms, mom, lr, rho, momentum, epsilon, grad)
    (v, s, m, g), (lr32, rho32, mom32, eps) = flat
    out = _outputs(var, 3)
    _rms_prop(v, s, m, lr32, np.float32(1) - rho32, mom32, eps, g, *(o.reshape(-1) for o in out))
    return tuple(out)
