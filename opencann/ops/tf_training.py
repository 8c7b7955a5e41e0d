"""TensorFlow's optimizer update kernels (``Apply*``, domain ``opencann``), with TensorFlow's semantics.

TensorFlow updates variables in place; these kernels are pure: they take the variable and its slots
(accumulators) first, then the hyper-parameters and the gradient, in TensorFlow's input order, and
return the new variable and slots, in the same order. Arithmetic follows TensorFlow's CPU kernels
(``tensorflow/core/kernels/training_ops.cc``) in the variable's dtype.
"""
import numpy as np

from opencann.ops.registry import op

DOMAIN = "opencann"


def _like(x: np.ndarray, value) -> np.ndarray:
    return np.asarray(value).astype(x.dtype, copy=False)


@op("ApplyGradientDescent", domain=DOMAIN)
def apply_gradient_descent(var, alpha, delta):
    return _like(var, var - delta * alpha)


@op("ApplyMomentum", domain=DOMAIN)
def apply_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    accum = accum * momentum + grad
    step = grad * lr + accum * momentum * lr if use_nesterov else accum * lr
    return _like(var, var - step), _like(var, accum)


@op("ApplyKerasMomentum", domain=DOMAIN)
def apply_keras_momentum(var, accum, lr, grad, momentum, *, use_nesterov=0):
    accum = accum * momentum - grad * lr
    step = accum * momentum - grad * lr if use_nesterov else accum
    return _like(var, var + step), _like(var, accum)


@op("ApplyAdam", domain=DOMAIN)
def apply_adam(var, m, v, beta1_power, beta2_power, lr, beta1, beta2, epsilon, grad, *, use_nesterov=0):
    one = np.ones((), var.dtype)
    alpha = lr * np.sqrt(one - beta2_power) / (one - beta1_power)
    m = m + (grad - m) * (one - beta1)
    v = v + (grad * grad - v) * (one - beta2)
    direction = grad * (one - beta1) + beta1 * m if use_nesterov else m
    return _like(var, var - (direction * alpha) / (np.sqrt(v) + epsilon)), _like(var, m), _like(var, v)


@op("ApplyRMSProp", domain=DOMAIN)
def apply_rms_prop(var, ms, mom, lr, rho, momentum, epsilon, grad):
    ms = ms + (grad * grad - ms) * (np.ones((), var.dtype) - rho)
    mom = mom * momentum + (grad * lr) / np.sqrt(ms + epsilon)
    return _like(var, var - mom), _like(var, ms), _like(var, mom)


@op("ApplyCenteredRMSProp", domain=DOMAIN)
def apply_centered_rms_prop(var, mg, ms, mom, lr, rho, momentum, epsilon, grad):
    one_minus_rho = np.ones((), var.dtype) - rho
    ms = ms + (grad * grad - ms) * one_minus_rho
    mg = mg + (grad - mg) * one_minus_rho
    mom = mom * momentum + (grad * lr) / np.sqrt((ms - mg * mg) + epsilon)
    return _like(var, var - mom), _like(var, mg), _like(var, ms), _like(var, mom)


@op("ApplyAdagrad", domain=DOMAIN)
def apply_adagrad(var, accum, lr, grad, *, update_slots=1):
    if update_slots:
        accum = accum + grad * grad
    return _like(var, var - grad * lr / np.sqrt(accum)), _like(var, accum)


@op("ApplyAdagradV2", domain=DOMAIN)
def apply_adagrad_v2(var, accum, lr, epsilon, grad, *, update_slots=1):
    if update_slots:
        accum = accum + grad * grad
    return _like(var, var - grad * lr / (np.sqrt(accum) + epsilon)), _like(var, accum)


@op("ApplyAdadelta", domain=DOMAIN)
def apply_adadelta(var, accum, accum_update, lr, rho, epsilon, grad):
    one_minus_rho = np.ones((), var.dtype) - rho
    accum = accum * rho + grad * grad * one_minus_rho
    update = np.sqrt(accum_update + epsilon) / np.sqrt(accum + epsilon) * grad
    accum_update = accum_update * rho + update * update * one_minus_rho
    return _like(var, var - update * lr), _like(var, accum), _like(var, accum_update)
