"""TensorFlow's stateless random ops (domain ``opencann``), bit-compatible with TensorFlow on the CPU.

A stateless op draws from the same Philox-4x32-10 stream as the stateful ones
(:mod:`opencann.ops.tf_philox`), at a position given by its inputs: ``StatelessRandomGetKeyCounter``
scrambles a seed pair into a 64-bit key and a 128-bit counter, and the ``*V2`` ops read the stream
from that key and counter. So Keras' dropout masks and ``tf.random.stateless_*`` tensors come out as
TensorFlow's, bit for bit for uniform values (normal values within an ulp). Only the Philox algorithm
(1, and 3, "auto select", which is Philox on the CPU) exists; ThreeFry (2) is refused. The stream's
counter runs in its low 64 bits (a carry into the high half, after 2^64 draws, is not modelled).
"""
from __future__ import annotations

import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op
from opencann.ops.tf_philox import philox, philox_random

DOMAIN = "opencann"
PHILOX, AUTO_SELECT = 1, 3
SCRAMBLE_KEY = 0x02461E29_3EC8F720


def key_counter(seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """TensorFlow's scrambling of a seed pair into (key uint64[1], counter uint64[2])."""
    s0, s1 = (int(v) & 0xFFFFFFFFFFFFFFFF for v in np.asarray(seed).reshape(-1)[:2].astype(np.int64))
    mix = [int(w) for w in philox(SCRAMBLE_KEY, s1, np.array([s0], np.uint64))[0]]
    return np.array([mix[0] | mix[1] << 32], np.uint64), np.array([0, mix[2] | mix[3] << 32], np.uint64)


def draw(shape, key, counter, alg, distribution: str, dtype: int, minval=None, maxval=None) -> np.ndarray:
    """The stream at (key, counter) shaped into ``distribution`` samples of ONNX type ``dtype``."""
    if int(alg) not in (PHILOX, AUTO_SELECT):
        raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"random algorithm {int(alg)} is not supported "
                       "(opencann implements Philox only)")
    k, c = np.asarray(key, np.uint64).reshape(-1), np.asarray(counter, np.uint64).reshape(-1)
    return philox_random(shape, c[0], minval, maxval, distribution=distribution, dtype=dtype, seed=int(k[0]),
                         seed2=int(c[1]))[0]


@op("StatelessRandomGetKeyCounter", domain=DOMAIN)
def get_key_counter(seed):
    return key_counter(seed)


@op("StatelessRandomUniformV2", domain=DOMAIN)
def uniform_v2(shape, key, counter, alg, *, dtype=1):
    return draw(shape, key, counter, alg, "uniform", dtype)


@op("StatelessRandomNormalV2", domain=DOMAIN)
def normal_v2(shape, key, counter, alg, *, dtype=1):
    return draw(shape, key, counter, alg, "normal", dtype)


@op("StatelessTruncatedNormalV2", domain=DOMAIN)
def truncated_normal_v2(shape, key, counter, alg, *, dtype=1):
    return draw(shape, key, counter, alg, "truncated_normal", dtype)


@op("StatelessRandomUniformIntV2", domain=DOMAIN)
def uniform_int_v2(shape, key, counter, alg, minval, maxval):
    return draw(shape, key, counter, alg, "uniform_int", dtypes.to_onnx(minval.dtype), minval, maxval)


@op("StatelessRandomUniform", domain=DOMAIN)
def uniform_v1(shape, seed, *, dtype=1):
    return uniform_v2(shape, *key_counter(seed), PHILOX, dtype=dtype)


@op("StatelessRandomNormal", domain=DOMAIN)
def normal_v1(shape, seed, *, dtype=1):
    return normal_v2(shape, *key_counter(seed), PHILOX, dtype=dtype)


@op("StatelessTruncatedNormal", domain=DOMAIN)
def truncated_normal_v1(shape, seed, *, dtype=1):
    return truncated_normal_v2(shape, *key_counter(seed), PHILOX, dtype=dtype)


@op("StatelessRandomUniformInt", domain=DOMAIN)
def uniform_int_v1(shape, seed, minval, maxval):
    return uniform_int_v2(shape, *key_counter(seed), PHILOX, minval, maxval)
