"""TensorFlow's stateful random ops, bit-compatible with its CPU kernels (domain ``opencann``).

TensorFlow draws ``RandomUniform``, ``RandomStandardNormal``, ``TruncatedNormal`` and
``RandomUniformInt`` from a Philox-4x32-10 generator keyed by the op's ``seed`` whose 128-bit counter
starts at ``seed2 << 64``. Each run of the op reserves ``256 × size`` counters, so the op's state is one
number: the counters used so far. :func:`philox_random` takes that offset as an input and returns the
next one, so the caller (the TF1 session) keeps the state between runs. Uniform and integer values are
bit-exact; normal values use float64 ``log``/``sin``/``cos`` rounded to float32 (within an ulp of
TensorFlow's).
"""
import ml_dtypes
import numpy as np

from opencann.compiler import dtypes
from opencann.ops.registry import op

DOMAIN = "opencann"
ROUNDS = 10
MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
RESERVED_PER_OUTPUT = 256  # counters TensorFlow reserves per output element and run
TRUNCATE = 2.0
HALF = (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16))
U32 = np.uint64(0xFFFFFFFF)


def philox(seed: int, seed2: int, counters: np.ndarray) -> np.ndarray:
    """Philox-4x32-10 of the 64-bit ``counters`` (low half of the counter; high half ``seed2``):
    an array of shape ``counters.shape + (4,)`` of uint32 words."""
    seed, seed2 = seed & 0xFFFFFFFFFFFFFFFF, seed2 & 0xFFFFFFFFFFFFFFFF
    c = counters.astype(np.uint64)
    words = [(c & U32).astype(np.uint32), (c >> np.uint64(32)).astype(np.uint32),
             np.full(c.shape, seed2 & 0xFFFFFFFF, np.uint32), np.full(c.shape, seed2 >> 32, np.uint32)]
    k0, k1 = np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)
    with np.errstate(over="ignore"):
        for _ in range(ROUNDS):
            p0 = words[0].astype(np.uint64) * MULTIPLIERS[0]
            p1 = words[2].astype(np.uint64) * MULTIPLIERS[1]
            words = [(p1 >> np.uint64(32)).astype(np.uint32) ^ words[1] ^ k0, (p1 & U32).astype(np.uint32),
                     (p0 >> np.uint64(32)).astype(np.uint32) ^ words[3] ^ k1, (p0 & U32).astype(np.uint32)]
            k0, k1 = k0 + KEY_STEPS[0], k1 + KEY_STEPS[1]
    return np.stack(words, axis=-1)


def _unit_float(x: np.ndarray) -> np.ndarray:
    """uint32 words -> float32 in [0, 1) from their low 23 bits."""
    return ((x & np.uint32(0x7FFFFF)) | np.uint32(0x3F800000)).view(np.float32) - np.float32(1)


def _unit_double(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Word pairs -> float64 in [0, 1) from 52 bits."""
    bits = ((hi & np.uint32(0xFFFFF)).astype(np.uint64) << np.uint64(32)) | lo.astype(np.uint64)
    return (bits | np.uint64(1023 << 52)).view(np.float64) - 1.0


def _unit_half(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Words -> float16/bfloat16 in [0, 1) from the low mantissa bits."""
    if dtype == np.float16:
        bits = (np.uint16(15 << 10) | (x & np.uint32(0x3FF)).astype(np.uint16)).view(np.float16)
    else:
        bits = (np.uint16(127 << 7) | (x & np.uint32(0x7F)).astype(np.uint16)).view(dtype)
    return (bits.astype(np.float32) - np.float32(1)).astype(dtype)


def _box_muller(u1: np.ndarray, u2: np.ndarray, dtype) -> np.ndarray:
    """Pairs of uniforms -> pairs of normals, interleaved (TensorFlow's BoxMullerFloat/Double)."""
    u1 = np.maximum(u1, dtype(1e-7)).astype(np.float64)
    angle = (2 * np.pi * u2.astype(np.float64)).astype(dtype).astype(np.float64)
    radius = np.sqrt(dtype(-2) * np.log(u1).astype(dtype))
    return np.stack([np.sin(angle).astype(dtype) * radius, np.cos(angle).astype(dtype) * radius], axis=-1)


def _normals(words: np.ndarray, double: bool) -> np.ndarray:
    """Philox words ``(..., 4)`` -> normal candidates, in TensorFlow's order."""
    if double:
        return _box_muller(_unit_double(words[..., 0], words[..., 1]), _unit_double(words[..., 2], words[..., 3]),
                           np.float64).reshape(*words.shape[:-1], 2)
    return _box_muller(_unit_float(words[..., 0::2]), _unit_float(words[..., 1::2]),
                       np.float32).reshape(*words.shape[:-1], 4)


def _per_counter(distribution: str, dtype: np.dtype) -> int:
    return 2 if dtype in (np.float64, np.int64) else 4


def _stream(seed, seed2, offset: int, n: int, per: int, draw) -> np.ndarray:
    groups = -(-n // per)
    return draw(philox(seed, seed2, np.uint64(offset) + np.arange(groups, dtype=np.uint64))).reshape(-1)[:n]


def _truncated(seed, seed2, offset: int, n: int, double: bool) -> np.ndarray:
    """Per group of outputs, the first in-range normals drawn from 64 × group-size reserved counters."""
    per = 2 if double else 4
    groups = -(-n // per)
    starts = np.uint64(offset) + np.arange(groups, dtype=np.uint64) * np.uint64(per * RESERVED_PER_OUTPUT // 4)
    out = np.zeros((groups, per), np.float64 if double else np.float32)
    todo, blocks = np.arange(groups), 4
    while todo.size:
        counters = starts[todo, None] + np.arange(blocks, dtype=np.uint64)
        cand = _normals(philox(seed, seed2, counters), double).reshape(todo.size, -1)
        ok = np.abs(cand) < TRUNCATE
        rank = np.cumsum(ok, axis=1)
        rows, cols = np.nonzero(ok & (rank <= per))
        out[todo[rows], rank[rows, cols] - 1] = cand[rows, cols]
        todo, blocks = todo[rank[:, -1] < per], blocks * 4
    return out.reshape(-1)[:n]


def _uniform(words: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.float64:
        return _unit_double(words[..., 0::2], words[..., 1::2])
    if dtype in HALF:
        return _unit_half(words, dtype)
    return _unit_float(words)


def _uniform_int(words: np.ndarray, dtype: np.dtype, low, high) -> np.ndarray:
    low, high = int(low), int(high)
    if dtype == np.int64:
        bits = words[..., 0::2].astype(np.uint64) | (words[..., 1::2].astype(np.uint64) << np.uint64(32))
        return (low + (bits % np.uint64((high - low) & 0xFFFFFFFFFFFFFFFF)).astype(np.int64)).astype(np.int64)
    return (low + (words % np.uint32((high - low) & 0xFFFFFFFF)).astype(np.int64)).astype(dtype)


@op("PhiloxRandom", domain=DOMAIN)
def philox_random(shape, offset, minval=None, maxval=None, *, distribution="uniform", dtype=1, seed=0, seed2=0):
    """(values, offset after this run): ``distribution`` is ``uniform`` ([0, 1)), ``normal``,
    ``truncated_normal`` or ``uniform_int`` ([minval, maxval)); ``dtype`` an ONNX type code."""
    dt = dtypes.from_onnx(dtype)
    dims = tuple(int(d) for d in np.asarray(shape).reshape(-1))
    n, start = int(np.prod(dims, dtype=np.int64)), int(np.asarray(offset))
    per = _per_counter(distribution, dt)
    if distribution == "uniform":
        flat = _stream(seed, seed2, start, n, per, lambda w: _uniform(w, dt))
    elif distribution == "uniform_int":
        flat = _stream(seed, seed2, start, n, per, lambda w: _uniform_int(w, dt, minval, maxval))
    elif distribution == "normal":
        flat = _stream(seed, seed2, start, n, per, lambda w: _normals(w, dt == np.float64))
    else:
        flat = _truncated(seed, seed2, start, n, dt == np.float64)
    after = np.uint64((start + n * RESERVED_PER_OUTPUT) & 0xFFFFFFFFFFFFFFFF)
    return flat.astype(dt, copy=False).reshape(dims), np.asarray(after)
