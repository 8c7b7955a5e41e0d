"""Single-precision GEMM through oneMKL's CBLAS (``libmkl_rt``), into preallocated outputs.

``sgemm(a, b, out, trans_a, trans_b, alpha, beta)`` computes ``out = alpha * op(a) @ op(b) + beta * out`` for
2-D float32 operands of any row or column stride (a view whose elements are not evenly spaced is copied
first), calling ``cblas_sgemm`` directly (no temporaries). libmkl_rt is looked for at first use in
``sys.prefix/lib`` (where the ``mkl`` wheel puts it), ``LD_LIBRARY_PATH`` and the linker's paths; where it
is missing, for other dtypes, for small products (``SMALL``: the ctypes call costs more than NumPy's), or
with ``OPENCANN_BLAS=numpy`` in the environment (read at first use), NumPy (its OpenBLAS) does the work
with the same semantics. Arrays declared with :func:`constant` (weights) are packed once into MKL's
internal layout when they are the ``b`` of a short, wide product (BERT's projections: ~1.2x faster); one
given with ``trans_b`` (Gemm's ``transB``) is multiplied through a row-major, 64-byte aligned copy made once
(1.2-1.6x).

Compiled code multiplies through :func:`gemm`, a Numba intrinsic that calls ``cblas_sgemm`` at the address
:func:`sgemm_address` gives (a plain call: no ctypes, no GIL; MKL's JIT kernels for small products pay off only
without Python around them).

MKL runs on its GNU OpenMP threading layer, the runtime Numba's ``omp`` layer uses too (at one thread it
measured as fast as the sequential layer); its thread count follows
:func:`opencann.runtime.threads.set_num_threads`, and is 1 in a child forked after MKL was loaded
(GNU OpenMP's pool does not survive ``fork``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import threading
import weakref

import numpy as np
from llvmlite import ir as llir
from numba import types
from numba.extending import intrinsic

from opencann.errors import AclError, ErrorCode

ENV_VAR = "OPENCANN_BLAS"
F32 = np.dtype(np.float32)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_PACKED, _B_MATRIX = 151, 162
_GNU_OPENMP = 3  # MKL_THREADING_GNU
_NAMES = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so")
PACK_MIN = 1 << 19  # elements of a constant op(b) worth a packed copy (for short, wide products: m < n)
SMALL = 1 << 20  # m*n*k up to which NumPy is as fast or faster (MKL through ctypes costs ~5-10 us more a call)
_Byte = ctypes.c_char
_lock = threading.Lock()
_state: dict = {}  # "lib": the loaded libmkl_rt or None, once looked for
MAX_PACKS = 4  # packed copies kept per constant (one per row count m, alpha, view)
_constants: dict[int, weakref.ref] = {}  # id -> the arrays declared constant
_packs: dict[int, dict] = {}  # id of a constant -> {(address, shape, strides, trans, m, alpha): packed op(b)}
_transposes: dict[int, tuple] = {}  # id of a constant or a view of one -> (weak reference to it, its transpose)
_aligned: dict[int, tuple] = {}  # id of a constant -> (weak reference to it, its 64-byte aligned copy)


def _candidates() -> list[str]:
    """Paths to try for libmkl_rt, best first."""
    dirs = [os.path.join(sys.prefix, "lib"), *os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)]
    paths = [os.path.join(d, n) for d in dirs if d for n in _NAMES if os.path.isfile(os.path.join(d, n))]
    found = ctypes.util.find_library("mkl_rt")
    return paths + ([found] if found else [])


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    c_int, c_void = ctypes.c_int, ctypes.c_void_p
    lib.MKL_Set_Threading_Layer.argtypes = [c_int]
    lib.MKL_Set_Num_Threads.argtypes = [c_int]
    lib.MKL_Set_Num_Threads.restype = None
    lib.MKL_Set_Num_Threads_Local.argtypes = [c_int]
    lib.cblas_sgemm.argtypes = [c_int] * 6 + [ctypes.c_float, c_void, c_int, c_void, c_int, ctypes.c_float, c_void,
                                              c_int]
    lib.cblas_sgemm.restype = None
    lib.cblas_sgemm_pack_get_size.argtypes = [c_int] * 4
    lib.cblas_sgemm_pack_get_size.restype = ctypes.c_size_t
    lib.cblas_sgemm_pack.argtypes = [c_int] * 6 + [ctypes.c_float, c_void, c_int, c_void]
    lib.cblas_sgemm_pack.restype = None
    lib.cblas_sgemm_compute.argtypes = [c_int] * 6 + [c_void, c_int, c_void, c_int, ctypes.c_float, c_void, c_int]
    lib.cblas_sgemm_compute.restype = None
    lib.cblas_sgemm_batch.argtypes = [c_int] + [c_void] * 13 + [c_int, c_void]
    lib.cblas_sgemm_batch.restype = None
    return lib


def _load() -> ctypes.CDLL | None:
    for path in _candidates():
        try:
            lib = _bind(ctypes.CDLL(path))
        except (OSError, AttributeError):
            continue
        lib.MKL_Set_Threading_Layer(_GNU_OPENMP)  # before any other MKL call
        os.register_at_fork(after_in_child=_after_fork)
        from opencann.runtime import threads

        if threads.requested() is not None:
            lib.MKL_Set_Num_Threads(threads.requested())
        return lib
    return None


def library() -> ctypes.CDLL | None:
    """The loaded libmkl_rt, or None where MKL is missing or ``OPENCANN_BLAS=numpy``."""
    if "lib" not in _state:
        with _lock:
            if "lib" not in _state:
                use_numpy = os.environ.get(ENV_VAR, "").strip().lower() == "numpy"
                _state["lib"] = None if use_numpy else _load()
    return _state["lib"]


def sgemm_address() -> int:
    """The address of MKL's ``cblas_sgemm`` for :func:`gemm` (0 where :func:`library` is None)."""
    lib = library()
    if lib is None:
        return 0
    address = _state.get("sgemm")
    if address is None:
        address = _state["sgemm"] = ctypes.cast(lib.cblas_sgemm, ctypes.c_void_p).value
    return address


@intrinsic
def gemm(typingctx, fn, trans_a, trans_b, m, n, k, alpha, a, a_off, lda, b, b_off, ldb, beta, c, c_off, ldc):
    """For Numba code: ``c[c_off:] (m x n, leading dimension ldc) = alpha * op(a[a_off:]) @ op(b[b_off:]) + beta *
    c[c_off:]``, row-major, by ``cblas_sgemm`` at address ``fn`` (:func:`sgemm_address`, not 0); ``a``, ``b``,
    ``c`` are float32 arrays (any layout: offsets and leading dimensions count elements from their first),
    ``trans_*`` booleans, sizes integers, ``alpha``/``beta`` floats. The caller checks the bounds."""
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 for t in (a, b, c)):
        return None
    sig = types.void(types.intp, types.boolean, types.boolean, types.intp, types.intp, types.intp, types.float32, a,
                     types.intp, types.intp, b, types.intp, types.intp, types.float32, c, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        i32, f32, vp = llir.IntType(32), llir.FloatType(), llir.IntType(8).as_pointer()
        fnty = llir.FunctionType(llir.VoidType(), [i32] * 6 + [f32, vp, i32, vp, i32, f32, vp, i32])
        (f, ta, tb, mm, nn, kk, al, av, ao, la, bv, bo, lb, be, cv, co, lc), tys = args, signature.args

        def flag(t):
            return builder.select(t, i32(_TRANS), i32(_NO_TRANS))

        def data(i, val, off):
            ptr = context.make_array(tys[i])(context, builder, val).data
            return builder.bitcast(builder.gep(ptr, [off]), vp)
        ints = [builder.trunc(v, i32) for v in (mm, nn, kk, la, lb, lc)]
        builder.call(builder.inttoptr(f, fnty.as_pointer()), [
            i32(_ROW_MAJOR), flag(ta), flag(tb), *ints[:3], al, data(7, av, ao), ints[3], data(10, bv, bo), ints[4],
            be, data(14, cv, co), ints[5]])
        return context.get_dummy_value()
    return sig, codegen


def _after_fork() -> None:
    """GNU OpenMP's thread pool does not survive ``fork`` (a parallel region would hang): a forked child's MKL
    stays on one thread."""
    _state["forked"] = True
    set_num_threads(1)


def set_num_threads(n: int) -> None:
    """MKL's thread count, where MKL is already loaded (a later load applies the requested count itself);
    always 1 in a process forked after MKL was loaded. Drops this thread's own count (threadpoolctl's)."""
    lib = _state.get("lib")
    if lib is not None:
        lib.MKL_Set_Num_Threads_Local(0)
        lib.MKL_Set_Num_Threads(1 if _state.get("forked") else n)


class OneThread:
    """MKL on one thread for the calling thread while the block runs, then its previous count: for kernels
    whose products are small or L2-sized (a second thread costs more than it gains, and on a busy machine its
    barriers wait for a descheduled worker: an LSTM's per-step products, a convolution's image groups)."""

    def __enter__(self):
        lib = library()
        self.lib, self.previous = lib, (lib.MKL_Set_Num_Threads_Local(1) if lib is not None else 0)
        return self

    def __exit__(self, *exc):
        if self.lib is not None:
            self.lib.MKL_Set_Num_Threads_Local(self.previous)


def constant(*arrays) -> None:
    """Declare float32 arrays that never change again, a model's weights: products with one of them as ``b`` then use
    a copy packed once into MKL's layout or a row-major copy (faster; one more copy of the weight in memory, dropped
    with the array). The owner of a view of read-only memory (ONNX's raw bytes) is declared, so every view of it
    counts; a view of other memory (a loaded model's weight in device memory) counts itself."""
    for x in arrays:
        if type(x) is not np.ndarray or x.dtype != F32:
            continue
        if x.base is not None and type(x.base) is np.ndarray and not x.base.flags.writeable:
            x = x.base
        key = id(x)
        if key not in _constants:
            _constants[key] = weakref.ref(x, lambda _, key=key: (_constants.pop(key, None), _packs.pop(key, None)))


def _packed_b(lib, b: np.ndarray, tb: int, ldb: int, m: int, n: int, k: int, alpha: float) -> np.ndarray | None:
    """``alpha * op(b)`` packed for MKL where ``b`` is (a view of) a constant, else None."""
    owner = b if b.base is None or id(b) in _constants else b.base
    if id(owner) not in _constants:
        return None
    cache = _packs.setdefault(id(owner), {})
    key = (_address(b), b.shape, b.strides, tb, m, alpha)
    packed = cache.get(key)
    if packed is None:
        if len(cache) >= MAX_PACKS:  # another row count (batch or sequence length): keep the newest few
            cache.pop(next(iter(cache)))
        packed = _aligned_empty((-(-lib.cblas_sgemm_pack_get_size(_B_MATRIX, m, n, k) // 4),), F32)
        lib.cblas_sgemm_pack(_ROW_MAJOR, _B_MATRIX, tb, m, n, k, alpha, _address(b), ldb, _address(packed))
        cache[key] = packed
    return packed


def _aligned_empty(shape: tuple[int, ...], dtype) -> np.ndarray:
    """An uninitialized C-contiguous array starting on a 64-byte boundary (MKL reads a misaligned weight up to 1.3x
    slower)."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + 64, np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip:skip + nbytes].view(dtype).reshape(shape)


def _is_constant(x: np.ndarray) -> bool:
    return id(x) in _constants or x.base is not None and id(x.base) in _constants


def aligned(x: np.ndarray) -> np.ndarray:
    """``x`` itself when it is C-contiguous on a 64-byte boundary or not a constant (see :func:`constant`), else a
    64-byte aligned copy made once and kept while ``x`` lives (a weight read row by row in vector code: one 16 bytes
    off measured 1.45x slower in the LSTM recurrence's mat-vecs)."""
    if (x.flags.c_contiguous and x.ctypes.data % 64 == 0) or not _is_constant(x):
        return x
    key = id(x)
    hit = _aligned.get(key)
    if hit is None or hit[0]() is not x:
        copy = _aligned_empty(x.shape, x.dtype)
        np.copyto(copy, x)
        hit = _aligned[key] = (weakref.ref(x, lambda _, key=key: _aligned.pop(key, None)), copy)
    return hit[1]


def transposed(x: np.ndarray) -> np.ndarray:
    """``x`` with its last two axes swapped, C-contiguous; for a constant (see :func:`constant`) or a view of one, a
    copy made once and kept while ``x`` lives (a row-major weight: BLAS multiplies by one 1.2-1.6x faster)."""
    key = id(x)
    hit = _transposes.get(key)
    if hit is not None and hit[0]() is x:
        return hit[1]
    t = _aligned_empty(x.shape[:-2] + x.shape[:-3:-1], x.dtype)
    np.copyto(t, np.swapaxes(x, -1, -2))
    if _is_constant(x):
        _transposes[key] = (weakref.ref(x, lambda _, key=key: _transposes.pop(key, None)), t)
    return t


def _rows_win(m: int, k: int, n: int) -> bool:
    """Whether ``a @ b.T`` (m x k x n) is faster with ``b.T`` copied row-major, 64-byte aligned (measured: always on
    MKL; on NumPy's OpenBLAS for n >= 64: 1.1-2x at m = 1-4, k = 256-2048, the same at 1 x 2048 x 512)."""
    return m * k * n > SMALL or n >= 64


def _layout(x: np.ndarray):
    """``(transposed, leading dimension)`` of a 2-D float32 ``x`` as BLAS sees it, or None (a copy is needed)."""
    r, c = x.shape
    s0, s1 = x.strides
    if (c == 1 or s1 == 4) and (r == 1 or (s0 >= 4 * c and s0 % 4 == 0)):
        return False, (s0 // 4 if r > 1 else max(c, 1))
    if (r == 1 or s0 == 4) and (c == 1 or (s1 >= 4 * r and s1 % 4 == 0)):
        return True, (s1 // 4 if c > 1 else max(r, 1))
    return None


def _address(x: np.ndarray) -> int:
    """The address of ``x``'s first element (the buffer route is ~5x cheaper than ``x.ctypes.data``)."""
    flags = x.flags
    if flags.writeable and flags.c_contiguous:
        return ctypes.addressof(_Byte.from_buffer(x))
    return x.ctypes.data


def _operand(x: np.ndarray, trans: bool):
    """``(x as BLAS reads it, transpose flag, leading dimension)``."""
    lay = _layout(x) if x.flags.aligned else None
    if lay is None:
        x = np.ascontiguousarray(x)
        lay = _layout(x)
    flipped, ld = lay
    return x, (_TRANS if trans != flipped else _NO_TRANS), ld


def _numpy_gemm(a, b, out, alpha, beta):
    """``out = alpha * a @ b + beta * out`` with NumPy (a, b already transposed as asked)."""
    if alpha == 1.0 and beta == 0.0:
        return np.matmul(a, b, out=out)
    y = np.matmul(a, b)
    y *= y.dtype.type(alpha)
    if beta != 0.0:
        y += out * out.dtype.type(beta)
    out[...] = y
    return out


def sgemm(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None, trans_a: bool = False,
          trans_b: bool = False, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``out = alpha * op(a) @ op(b) + beta * out`` (op transposes when asked) for 2-D ``a`` and ``b``; a fresh
    C-contiguous ``out`` when None (then ``beta`` is ignored). MKL for float32, else NumPy."""
    if out is not None and not trans_a and alpha == 1.0 and beta == 0.0 and a.ndim == b.ndim == 2:
        (m, k), n = a.shape, b.shape[0 if trans_b else 1]
        if m * k * n <= SMALL and out.shape == (m, n):  # the common small product: NumPy, without the dispatch below
            if trans_b:
                b = transposed(b) if _constants and _rows_win(m, k, n) and _is_constant(b) else b.T
            if out.dtype == a.dtype == b.dtype and out.flags.c_contiguous:
                return np.dot(a, b, out=out)  # ~0.5 us less than matmul
            return np.matmul(a, b, out=out)
    if a.ndim != 2 or b.ndim != 2:
        raise AclError(ErrorCode.INVALID_PARAM, f"sgemm: want 2-D operands, got shapes {a.shape} and {b.shape}")
    m, k = a.shape[::-1] if trans_a else a.shape
    kb, n = b.shape[::-1] if trans_b else b.shape
    if k != kb or (out is not None and out.shape != (m, n)):
        raise AclError(ErrorCode.INVALID_PARAM, f"sgemm: op(a) {m}x{k} @ op(b) {kb}x{n} do not multiply into "
                       f"{(m, n) if out is None else out.shape}")
    if trans_b and _constants and _rows_win(m, k, n) and _is_constant(b):
        b, trans_b = transposed(b), False
    fresh = out is None
    if fresh:
        out, beta = np.empty((m, n), np.result_type(a, b)), 0.0
    lib = library()
    if lib is None or a.dtype != F32 or b.dtype != F32 or out.dtype != F32 or m * n * k <= SMALL:
        return _numpy_gemm(a.T if trans_a else a, b.T if trans_b else b, out, alpha, beta)
    c_lay = (False, n) if fresh else _layout(out) if out.flags.aligned and out.flags.writeable else None
    if c_lay is not None and c_lay[0]:  # a column-major out: out.T = op(b).T @ op(a).T
        sgemm(b, a, out.T, not trans_b, not trans_a, alpha, beta)
        return out
    if c_lay is None or not fresh and (np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        tmp = np.array(out, F32, order="C") if beta != 0.0 else np.empty((m, n), F32)
        out[...] = sgemm(a, b, tmp, trans_a, trans_b, alpha, beta)
        return out
    a, ta, lda = _operand(a, trans_a)
    b, tb, ldb = _operand(b, trans_b)
    packed = _packed_b(lib, b, tb, ldb, m, n, k, alpha) if _constants and m < n and n * k >= PACK_MIN else None
    if packed is None:
        lib.cblas_sgemm(_ROW_MAJOR, ta, tb, m, n, k, alpha, _address(a), lda, _address(b), ldb, beta, _address(out),
                        c_lay[1])
    else:
        lib.cblas_sgemm_compute(_ROW_MAJOR, ta, _PACKED, m, n, k, _address(a), lda, _address(packed), ldb, beta,
                                _address(out), c_lay[1])
    return out


def is_constant(x: np.ndarray) -> bool:
    """Whether ``x`` itself was declared with :func:`constant` (a weight that never changes)."""
    ref = _constants.get(id(x))
    return ref is not None and ref() is x


def sgemm_unpacked(a: np.ndarray, b: np.ndarray, out: np.ndarray, trans_a: bool = False,
                   beta: float = 0.0) -> np.ndarray:
    """:func:`sgemm`'s ``out = op(a) @ b + beta * out`` without a packed copy of a constant ``b`` (convolutions:
    their weights are read once a run, from beyond the cache, where MKL's own packing per call is faster)."""
    lib = library()
    m, k = a.shape[::-1] if trans_a else a.shape
    lay = _layout(out) if out.flags.aligned and out.flags.writeable and out.ndim == 2 else None
    if lib is None or lay is None or lay[0] or b.ndim != 2 or (k, out.shape) != (b.shape[0], (m, b.shape[1])) \
            or not a.dtype == b.dtype == out.dtype == F32 or m * k * b.shape[1] <= SMALL \
            or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        return sgemm(a, b, out, trans_a=trans_a, beta=beta)
    a, ta, lda = _operand(a, trans_a)
    b, tb, ldb = _operand(b, False)
    lib.cblas_sgemm(_ROW_MAJOR, ta, tb, m, b.shape[1], k, 1.0, _address(a), lda, _address(b), ldb, beta,
                    _address(out), lay[1])
    return out


def sgemm_batch(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out[k] = a[k] @ b[k]`` for stacks of float32 matrices with unit column strides (e.g. a Winograd
    transform's products): one MKL ``cblas_sgemm_batch`` call (a ``cblas_sgemm`` call each costs ~10 us, a third
    of a small product), else :func:`sgemm` in a loop."""
    lib = library()
    parts, t, c = a.shape
    if lib is None or (a.strides[2], b.strides[2], out.strides[2]) != (4, 4, 4):
        for k in range(parts):
            sgemm(a[k], b[k], out[k])
        return
    ints = np.array([_NO_TRANS, _NO_TRANS, t, b.shape[2], c, a.strides[1] // 4, b.strides[1] // 4,
                     out.strides[1] // 4, parts], np.int32)  # transposes, m, n, k, lda, ldb, ldc, group size
    ones = np.array([1, 0], F32)  # alpha, beta
    firsts = np.array([a.ctypes.data, b.ctypes.data, out.ctypes.data], np.int64)[:, None]
    ptrs = firsts + np.arange(parts) * np.array([a.strides[0], b.strides[0], out.strides[0]], np.int64)[:, None]
    i, f, q = ints.ctypes.data, ones.ctypes.data, ptrs.ctypes.data
    lib.cblas_sgemm_batch(_ROW_MAJOR, i, i + 4, i + 8, i + 12, i + 16, f, q, i + 20, q + 8 * parts, i + 24, f + 4,
                          q + 16 * parts, i + 28, 1, i + 32)
