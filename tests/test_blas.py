"""opencann.ops.blas: MKL's sgemm against NumPy over layouts, alpha/beta, fallbacks, threads and fork."""
import multiprocessing
import os
import subprocess
import sys

import numba
import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops import blas
from opencann.runtime import threads

RNG = np.random.default_rng(7)
HAS_MKL = blas.library() is not None


@pytest.fixture
def always_mkl(monkeypatch):
    """Every float32 product through MKL (small ones included, and small constants packed), where MKL is installed."""
    monkeypatch.setattr(blas, "SMALL", 0)
    monkeypatch.setattr(blas, "PACK_MIN", 0)


def rand(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def check(a, b, out=None, trans_a=False, trans_b=False, alpha=1.0, beta=0.0):
    base = None if out is None else out.copy()
    y = blas.sgemm(a, b, out, trans_a, trans_b, alpha, beta)
    ref = alpha * (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
    if base is not None:
        assert y is out
        ref = ref + beta * base
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    assert y.dtype == (np.result_type(a, b) if out is None else out.dtype)


def test_mkl_is_found_where_the_wheel_is_installed():
    wheel = any(os.path.isfile(os.path.join(sys.prefix, "lib", n)) for n in blas._NAMES)
    assert HAS_MKL == wheel


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (1, 784, 33), (5, 3, 7), (64, 128, 48), (3, 0, 4), (0, 5, 4),
                                   (4, 5, 0), (130, 257, 65)])
def test_shapes(always_mkl, m, k, n):
    check(rand(m, k), rand(k, n))
    check(rand(m, k), rand(k, n), out=rand(m, n), alpha=0.5, beta=-2.0)


@pytest.mark.parametrize("trans_a,trans_b", [(False, True), (True, False), (True, True)])
def test_transposed_operands(always_mkl, trans_a, trans_b):
    a = rand(20, 30) if trans_a else rand(30, 20)
    b = rand(40, 20) if trans_b else rand(20, 40)
    check(a, b, trans_a=trans_a, trans_b=trans_b)
    check(a.T.copy().T, b, trans_a=trans_a, trans_b=trans_b, out=rand(30, 40), alpha=2.0, beta=1.0)


def test_views_of_any_stride(always_mkl):
    big = rand(50, 80)
    check(big[3:33, 5:25], big[10:30, 40:75])  # row-major with lda > k
    check(big[:30, :20].T.T, big.T[:20, :35])  # a column-major view
    check(big[::2, ::3][:12, :9], rand(9, 4))  # unevenly spaced: copied
    check(big[::-1, :10][:7], big[:10, ::-1][:, :6])  # negative strides
    check(np.broadcast_to(rand(1, 8), (6, 8)), rand(8, 5))  # zero stride
    check(rand(1, 8)[:, :1], rand(1, 3))  # one row and one column


def test_outputs_of_any_layout(always_mkl):
    a, b = rand(12, 7), rand(7, 9)
    check(a, b, out=np.empty((9, 12), np.float32).T)  # column-major out
    check(a, b, out=rand(12, 20)[:, 3:12], beta=1.0)  # row-major with ldc > n
    check(a, b, out=rand(24, 18)[::2, ::2], alpha=-1.0, beta=0.5)  # strided: through a temporary


def test_output_overlapping_an_input(always_mkl):
    a = rand(16, 16)
    ref = a @ a
    np.testing.assert_allclose(blas.sgemm(a, a, a), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed")
def test_constant_weights_are_packed_once(always_mkl):
    w = rand(24, 40)
    blas.constant(w)
    key = id(w)
    for a, view, alpha in ((rand(5, 24), w, 1.0), (rand(5, 40), w.T, 0.5), (rand(3, 10), w[4:14, 8:30], 2.0),
                           (rand(5, 24), w, 1.0)):
        check(a, view, alpha=alpha)
        check(a, view, out=rand(a.shape[0], view.shape[1]), alpha=alpha, beta=1.0)
    assert len(blas._packs[key]) == 3  # one packed copy per view, transposition and alpha
    other = rand(24, 40)
    check(rand(5, 24), other)  # not declared: no packed copy
    check(rand(50, 24), w)  # m >= n: not packed either
    assert id(other) not in blas._packs and len(blas._packs[key]) == 3
    del w, view
    assert key not in blas._constants and key not in blas._packs  # dropped with the weight


@pytest.mark.parametrize("m", [1, 3, 40])
def test_transposed_constants_go_through_a_row_major_copy_made_once(m):
    """Gemm's transB weight (here read-only memory, as ONNX weights are): its transpose is copied once where the
    measured crossover says it pays, and dropped with the weight."""
    w = np.frombuffer(rand(96, 48).tobytes(), np.float32).reshape(96, 48)
    blas.constant(w)
    assert id(w.base) in blas._constants
    a = rand(m, 48)
    for _ in range(2):
        check(a, w, out=np.zeros((m, 96), np.float32), trans_b=True)
        check(a, w, trans_b=True, alpha=0.5)
    assert (id(w) in blas._transposes) == blas._rows_win(m, 48, 96)
    if id(w) in blas._transposes:
        t = blas._transposes[id(w)][1]
        assert t.flags.c_contiguous and np.array_equal(t, w.T) and blas.transposed(w) is t
        assert t.ctypes.data % 64 == 0  # MKL reads a misaligned copy up to 1.3x slower
    key = id(w)
    del w
    assert key not in blas._transposes


def test_transposed_of_a_variable_is_a_fresh_copy():
    x = rand(3, 5, 7)
    t = blas.transposed(x)
    assert t.flags.c_contiguous and np.array_equal(t, x.transpose(0, 2, 1)) and id(x) not in blas._transposes
    assert t.ctypes.data % 64 == 0
    x[0, 0, 0] = 9.0
    assert blas.transposed(x)[0, 0, 0] == 9.0



def test_a_declared_view_of_writable_memory_counts_itself():
    """A loaded model's weights are views of device memory: each declared view is a constant, its memory's owner
    is not (other views of it may change)."""
    memory = rand(2, 64, 80)
    w, other = memory[0], memory[1]
    blas.constant(w)
    assert id(w) in blas._constants and id(memory) not in blas._constants
    a = rand(40, 80)
    check(a, w, out=np.zeros((40, 64), np.float32), trans_b=True)
    check(a, other, out=np.zeros((40, 64), np.float32), trans_b=True)
    assert id(w) in blas._transposes and id(other) not in blas._transposes


def test_other_dtypes_go_to_numpy(always_mkl):
    check(rand(6, 5, dtype=np.float64), rand(5, 4, dtype=np.float64), alpha=3.0)
    check(rand(6, 5), rand(5, 4), out=np.zeros((6, 4)), beta=1.0)


def test_bad_shapes():
    with pytest.raises(AclError, match="do not multiply"):
        blas.sgemm(rand(3, 4), rand(5, 6))
    with pytest.raises(AclError, match="do not multiply"):
        blas.sgemm(rand(3, 4), rand(4, 6), np.empty((3, 5), np.float32))
    with pytest.raises(AclError, match="2-D"):
        blas.sgemm(rand(2, 3, 4), rand(4, 6))


def test_missing_mkl_falls_back_to_numpy(monkeypatch, always_mkl):
    monkeypatch.setattr(blas, "_candidates", lambda: ["/nonexistent/libmkl_rt.so.3"])
    monkeypatch.setattr(blas, "_state", {})
    assert blas.library() is None
    check(rand(9, 8), rand(10, 8), trans_b=True, out=rand(9, 10), alpha=0.5, beta=2.0)
    check(rand(9, 8), rand(8, 10))


def test_environment_forces_numpy():
    code = ("import numpy as np; from opencann.ops import blas; a = np.ones((200, 100), np.float32); "
            "assert blas.library() is None; print(blas.sgemm(a, a, trans_b=True)[0, 0])")
    env = {**os.environ, blas.ENV_VAR: "numpy"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "100.0"


@pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed")
def test_thread_count_follows_set_num_threads():
    before = threads.get_num_threads()["blas"]
    lib = blas.library()
    try:
        for n in (1, 2):
            threads.set_num_threads(n)
            assert lib.MKL_Get_Max_Threads() == n
    finally:
        threads.set_num_threads(before)


def _child(conn):
    a = np.ones((256, 256), np.float32)
    conn.send(float(blas.sgemm(a, a)[0, 0]))


@pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed")
def test_fork_after_threaded_gemm_does_not_hang():
    before = threads.get_num_threads()["blas"]
    try:
        threads.set_num_threads(2)
        a = rand(256, 256)
        blas.sgemm(a, a)
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child,))
        proc.start()
        proc.join(30)
        alive = proc.is_alive()
        if alive:
            proc.kill()
        assert not alive and proc.exitcode == 0 and parent.recv() == 256.0
        assert blas.library().MKL_Get_Max_Threads() == 2  # the parent keeps its threads
    finally:
        threads.set_num_threads(before)


def test_call_sites_through_mkl(always_mkl):
    """The CPU kernels' products (MatMul, Gemm with transB, im2col and 1x1 convs in both layouts, the RNN input
    projection) with every product on MKL, against the reference kernels."""
    from opencann.ops import conv as ref_conv
    from opencann.ops import cpu_conv, cpu_nn, cpu_rnn, linalg
    from opencann.ops import rnn as ref_rnn

    def close(y, ref):
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)

    a, w, c = rand(2, 5, 24), rand(24, 16), rand(16)
    close(cpu_nn.matmul_cpu(a, w), a @ w)
    close(cpu_nn.gemm_cpu(a[0], w.T.copy(), c, transB=1, alpha=0.5), linalg.gemm(a[0], w.T.copy(), c, transB=1,
                                                                                   alpha=0.5))
    x, k3, k1 = rand(2, 6, 9, 9), rand(8, 3, 3, 3), rand(8, 6, 1, 1)
    close(cpu_conv.conv(x, k3, c[:8], group=2, pads=[1, 1, 1, 1]), ref_conv.conv(x, k3, c[:8], group=2,
                                                                                   pads=[1, 1, 1, 1]))
    close(cpu_conv.conv(x, k1), ref_conv.conv(x, k1))
    nhwc = x.transpose(0, 2, 3, 1).copy()
    for wt in (rand(8, 6, 3, 3), k1):
        y = cpu_conv.fused_conv(nhwc, wt.transpose(2, 3, 1, 0).copy(), channels_last=1, strides=[2, 2])
        close(y, ref_conv.conv(x, wt, strides=[2, 2]).transpose(0, 2, 3, 1))
    xs, wr, rr = rand(7, 3, 10), rand(1, 16, 10), rand(1, 16, 4)
    for got, ref in zip(cpu_rnn.lstm(xs, wr, rr, hidden_size=4), ref_rnn.lstm(xs, wr, rr, hidden_size=4)):
        close(got, ref)


@pytest.mark.parametrize("mkl", [True, False])
def test_sgemm_batch_multiplies_every_pair_of_a_stack(mkl, monkeypatch):
    if not mkl:
        monkeypatch.setattr(blas, "library", lambda: None)  # the sgemm loop
    a = RNG.standard_normal((40, 36, 24)).astype(np.float32)  # tile-major: a[:, k] is a (40, 24) view
    b = RNG.standard_normal((36, 24, 20)).astype(np.float32)
    out = np.zeros((40, 36, 20), np.float32)
    blas.sgemm_batch(a.transpose(1, 0, 2)[:, :30], b, out.transpose(1, 0, 2)[:, :30])
    np.testing.assert_allclose(out[:30], np.einsum("tkc,kcm->tkm", a[:30], b), rtol=1e-5, atol=1e-4)
    assert not out[30:].any()


@numba.njit(cache=True)
def _flat_gemm(fn, ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc):
    blas.gemm(fn, ta, tb, m, n, k, alpha, a, ao, lda, b, bo, ldb, beta, c, co, ldc)


def _view(flat, off, rows, cols, ld):
    return np.lib.stride_tricks.as_strided(flat[off:], (rows, cols), (4 * ld, 4))


@pytest.mark.skipif(not HAS_MKL, reason="MKL is not installed")
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_from_compiled_code_honours_offsets_leading_dimensions_and_scales(trans_a, trans_b):
    """blas.gemm (what Numba kernels call) against NumPy on sub-matrices of flat buffers."""
    m, n, k, (lda, ldb, ldc), (ao, bo, co) = 5, 3, 4, (9, 7, 6), (2, 3, 1)
    a, b, c = rand(60), rand(60), rand(40)
    want_c = c.copy()
    op_a = _view(a, ao, *((k, m) if trans_a else (m, k)), lda)
    op_b = _view(b, bo, *((n, k) if trans_b else (k, n)), ldb)
    target = _view(want_c, co, m, n, ldc)
    target[...] = 0.5 * (op_a.T if trans_a else op_a) @ (op_b.T if trans_b else op_b) + 2.0 * target
    _flat_gemm(blas.sgemm_address(), trans_a, trans_b, m, n, k, 0.5, a, ao, lda, b, bo, ldb, 2.0, c, co, ldc)
    np.testing.assert_allclose(c, want_c, rtol=1e-5, atol=1e-5)  # elements outside the target are untouched too


def test_sgemm_address_is_zero_without_mkl(monkeypatch):
    monkeypatch.setattr(blas, "library", lambda: None)
    assert blas.sgemm_address() == 0


def test_aligned_copies_a_misaligned_constant_once():
    buf = np.arange(64 * 33, dtype=np.float32)
    start = (-buf.ctypes.data // 4) % 16 + 4  # 16 bytes past a 64-byte boundary
    x = buf[start:start + 64 * 32].reshape(64, 32)
    assert x.ctypes.data % 64 == 16
    assert blas.aligned(x) is x  # not a constant: used as it is
    blas.constant(x)
    a = blas.aligned(x)
    assert a.ctypes.data % 64 == 0 and a.flags.c_contiguous and np.array_equal(a, x)
    assert blas.aligned(x) is a
    y = blas._aligned_empty((8, 8), np.float32)
    blas.constant(y)
    assert blas.aligned(y) is y
