"""The CPU generator's loop nests: independent stages over one iteration space share a nest, subexpressions with
few distinct values are computed once before it, sequential nests get run-time innermost bounds, sums along the
innermost axis add in lanes; the results are exactly NumPy's float32 operations and float64 sums accumulated in
memory order (or, for the lanes, the exactly rounded sums)."""
import math
import re

import numpy as np

from opencann import tbe

SHAPE = (6, 5, 5, 16)


def _sequential_sum(v: np.ndarray, keep: int) -> np.ndarray:
    """float64 sum over all but the last ``keep`` axes, element by element in memory order (as the kernels add)."""
    rows = v.astype(np.float64).reshape(-1, *v.shape[v.ndim - keep:])
    return np.cumsum(rows, axis=0)[-1].astype(np.float32)


def _batchnorm_grad():
    x = tbe.placeholder(SHAPE, name="x")
    s = tbe.placeholder((SHAPE[0], 1, 1, SHAPE[3]), name="s")
    g = tbe.placeholder(SHAPE[-1:], name="g")
    dy = tbe.vsel(tbe.vcmp(x, 0.0, "gt"), tbe.vdivs(tbe.broadcast(s, SHAPE), 25.0), 0.0)
    outs = [tbe.reduce_sum(dy, (0, 1, 2)), tbe.reduce_sum(tbe.vmul(x, dy), (0, 1, 2)), tbe.vmul(dy, g)]
    return outs, [x, s, g]


def test_sibling_reductions_and_a_map_share_one_nest_with_the_broadcast_division_hoisted():
    outs, ins = _batchnorm_grad()
    kernel = tbe.build(outs, name="bn_grad", inputs=ins)
    src = kernel.source
    assert src.count("for i1 in range(5):") == 1  # one pass over the (6, 5, 5, 16) space
    assert "h0 = np.empty((6, 1, 1, 16), np.float32)" in src and src.count("/ np.float32(25.0)") == 1
    assert re.search(r"n_16 = \w+\.shape\[\d\]", src) and "for i3 in range(n_16):" in src
    rng = np.random.default_rng(0)
    x, s, g = (rng.standard_normal(t.shape).astype(np.float32) for t in ins)
    r0, r1, m = kernel(x, s, g)
    dy = np.where(x > 0, np.broadcast_to(s / np.float32(25.0), SHAPE), np.float32(0))
    assert np.array_equal(m, dy * g)
    assert np.array_equal(r0, _sequential_sum(dy, 1)) and np.array_equal(r1, _sequential_sum(x * dy, 1))


def test_a_reduction_reading_another_runs_after_it_and_its_map_joins_it():
    x = tbe.placeholder(SHAPE, name="x")
    b = tbe.placeholder(SHAPE[-1:], name="b")
    y = tbe.vadd(x, b)
    mean = tbe.reduce_mean(y, (0, 1, 2), keepdims=True)
    d = tbe.vsub(y, mean)
    kernel = tbe.build([y, mean, d, tbe.reduce_mean(tbe.vmul(d, d), (0, 1, 2), keepdims=True)], inputs=[x, b])
    assert kernel.source.count("for i1 in range(5):") == 2  # mean, then variance and the map together
    rng = np.random.default_rng(1)
    xn, bn = rng.standard_normal(SHAPE).astype(np.float32), rng.standard_normal(16).astype(np.float32)
    ry, rm, rd, rv = kernel(xn, bn)
    count = np.float64(np.prod(SHAPE[:3]))
    yn = xn + bn
    mn = (np.cumsum(yn.astype(np.float64).reshape(-1, 16), axis=0)[-1] / count).astype(np.float32)
    assert np.array_equal(ry, yn) and np.array_equal(rm.reshape(16), mn) and np.array_equal(rd, yn - mn)
    vn = (np.cumsum((rd * rd).astype(np.float64).reshape(-1, 16), axis=0)[-1] / count).astype(np.float32)
    assert np.array_equal(rv.reshape(16), vn)


def test_a_scalar_subexpression_and_a_row_reduction_keep_their_values():
    x = tbe.placeholder((7, 33), name="x")
    s = tbe.placeholder((1, 1), name="s")
    b = tbe.placeholder((33,), name="b")
    w = tbe.placeholder((1, 5), name="w")
    root = tbe.vsqrt(tbe.vdivs(s, 3.0))
    y = tbe.vadd(tbe.vmul(x, root), b)
    kernel = tbe.build([y, tbe.reduce_max(y, -1), tbe.vmul(w, root)], inputs=[x, s, b, w])  # the last map is flat
    assert "h0 = np.empty((1, 1), np.float32)" in kernel.source
    xn = np.random.default_rng(2).standard_normal((7, 33)).astype(np.float32)
    sn, bn = np.array([[2.5]], np.float32), np.linspace(-1, 1, 33, dtype=np.float32)
    wn = np.arange(5, dtype=np.float32).reshape(1, 5)
    ry, rmax, rw = kernel(xn, sn, bn, wn)
    yn = xn * np.sqrt(sn / np.float32(3.0)) + bn
    assert np.array_equal(ry, yn) and np.array_equal(rmax, yn.max(-1))
    assert np.array_equal(rw, wn * np.sqrt(sn / np.float32(3.0)))


def _fsum(v: np.ndarray, axes: tuple) -> np.ndarray:
    """The exactly rounded sum over ``axes`` (math.fsum per output element), as float32."""
    moved = np.moveaxis(v.astype(np.float64), axes, range(v.ndim - len(axes), v.ndim))
    rows = moved.reshape(*moved.shape[:v.ndim - len(axes)], -1)
    return np.apply_along_axis(math.fsum, -1, rows).astype(np.float32)


def test_sums_along_the_innermost_axis_add_in_lanes_and_keep_the_exact_float64_sum():
    x = tbe.placeholder((6, 3, 37), name="x")
    b = tbe.placeholder((37,), name="b")
    y = tbe.vmul(tbe.vadd(x, b), tbe.vadd(x, b))
    outs = [tbe.reduce_sum(y, (1, 2)), tbe.reduce_mean(y, 2, keepdims=True), tbe.reduce_sum(y, None),
            tbe.reduce_max(y, 2)]
    kernel = tbe.build(outs, inputs=[x, b])
    assert len(re.findall(r"rows_out\d = np.empty", kernel.source)) == 3  # the max stays one scalar chain
    rng = np.random.default_rng(3)
    xn, bn = rng.standard_normal((6, 3, 37)).astype(np.float32), rng.standard_normal(37).astype(np.float32)
    s12, m2, total, mx = kernel(xn, bn)
    yn = (xn + bn) * (xn + bn)
    assert np.array_equal(s12, _fsum(yn, (1, 2))) and np.array_equal(total.reshape(()), _fsum(yn, (0, 1, 2)))
    mean = np.apply_along_axis(math.fsum, -1, yn.astype(np.float64)) / 37
    assert np.array_equal(m2, mean.astype(np.float32)[..., None])
    assert np.array_equal(mx, yn.max(2))
    i = tbe.placeholder((3, 40), "int32", name="i")
    ints = tbe.build([tbe.reduce_sum(i, 1)], inputs=[i])  # integers keep their own accumulator (and wrap)
    assert "rows_" not in ints.source
    iv = rng.integers(-2 ** 31, 2 ** 31, (3, 40)).astype(np.int32)
    assert np.array_equal(ints(iv), iv.sum(1, dtype=np.int32))


def test_row_sums_share_one_nest_with_maps_and_memory_order_sums():
    x, b = tbe.placeholder((4, 6, 40), name="x"), tbe.placeholder((40,), name="b")
    y = tbe.vadd(x, b)
    mean = tbe.reduce_mean(y, 2, keepdims=True)
    d = tbe.vsub(y, mean)
    outs = [mean, tbe.reduce_mean(tbe.vmul(d, d), 2, keepdims=True), d, tbe.reduce_sum(tbe.vmul(d, x), (0, 1))]
    kernel = tbe.build(outs, inputs=[x, b])
    assert kernel.source.count("for i1 in range(") == 2  # the mean, then the rest in one pass
    rng = np.random.default_rng(4)
    xn, bn = rng.standard_normal((4, 6, 40)).astype(np.float32), rng.standard_normal(40).astype(np.float32)
    rm, rv, rd, rs = kernel(xn, bn)
    yn = xn + bn
    mn = (np.apply_along_axis(math.fsum, -1, yn.astype(np.float64)) / 40).astype(np.float32)[..., None]
    assert np.array_equal(rm, mn) and np.array_equal(rd, yn - mn)
    vn = np.apply_along_axis(math.fsum, -1, (rd * rd).astype(np.float64)) / 40
    assert np.array_equal(rv, vn.astype(np.float32)[..., None])
    assert np.array_equal(rs, _sequential_sum(rd * xn, 1))
