"""TBE primitives built into CPU kernels (Numba) against NumPy: every primitive over float32/float16/int32,
broadcasting, non-contiguous inputs and odd shapes. Many primitives share one multi-output kernel so that
the number of Numba compilations stays small."""
import math

import numpy as np
import pytest

from opencann import tbe
from opencann.errors import AclError, ErrorCode

UNARY_F = {"vabs": np.abs, "vneg": np.negative, "vrelu": lambda a: np.maximum(a, 0), "vexp": np.exp,
           "vtanh": np.tanh, "vsigmoid": lambda a: 1 / (1 + np.exp(-a)), "verf": np.vectorize(math.erf)}
POSITIVE_F = {"vlog": np.log, "vsqrt": np.sqrt, "vrsqrt": lambda a: 1 / np.sqrt(a), "vrec": lambda a: 1 / a}
BINARY_F = {"vadd": np.add, "vsub": np.subtract, "vmul": np.multiply, "vdiv": np.divide, "vmax": np.maximum,
            "vmin": np.minimum}
SCALAR_F = {"vadds": np.add, "vmuls": np.multiply, "vmaxs": np.maximum, "vmins": np.minimum, "vdivs": np.divide}
CMP = {"lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal, "eq": np.equal,
       "ne": np.not_equal}


def strided(rng, shape, dtype, low=-3.0, high=3.0):
    """A non-contiguous view of random values (every other column of a wider array)."""
    wide = rng.uniform(low, high, shape[:-1] + (2 * shape[-1],)).astype(dtype)
    return wide[..., ::2]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_primitives_with_broadcasting(dtype):
    rng = np.random.default_rng(1)
    a = tbe.placeholder((3, 1, 5), dtype, name="a")
    b = tbe.placeholder((4, 5), dtype, name="b")
    p = tbe.placeholder((3, 4, 5), dtype, name="p")  # positive values for log/sqrt/rsqrt/rec/pow
    outs, refs = [], []
    an = strided(rng, (3, 1, 5), dtype)
    bn = rng.uniform(-3, 3, (4, 5)).astype(dtype)
    bn[0, 0] = an[0, 0, 0]  # one tie for the compares
    pn = rng.uniform(0.25, 4, (3, 4, 5)).astype(dtype)
    a32, b32, p32 = (v.astype(np.float32) for v in (an, bn, pn))
    for name, ref in UNARY_F.items():
        outs.append(getattr(tbe, name)(a))
        refs.append(ref(a32))
    for name, ref in POSITIVE_F.items():
        outs.append(getattr(tbe, name)(p))
        refs.append(ref(p32))
    for name, ref in BINARY_F.items():
        outs.append(getattr(tbe, name)(a, b))
        refs.append(ref(a32, b32))
    for name, ref in SCALAR_F.items():
        outs.append(getattr(tbe, name)(b, 1.5))
        refs.append(ref(b32, np.float32(1.5)))
    outs.append(tbe.vpow(p, tbe.broadcast(a, (3, 4, 5))))
    refs.append(np.power(p32, a32))
    for mode, ref in CMP.items():
        outs.append(tbe.vcmp(a, b, mode))
        refs.append(ref(an, bn))
    outs += [tbe.vsel(tbe.vcmp(a, 0.0, "gt"), a, b), tbe.vsel(tbe.vcmp(b, 0.0, "lt"), 0.0, b)]
    refs += [np.where(a32 > 0, a32, b32), np.where(b32 < 0, 0, b32)]
    kernel = tbe.build(outs, name="float_prims", inputs=[a, b, p])
    got = kernel(an, bn, pn)
    tol = {"float32": 2e-6, "float16": 1e-3}[dtype]
    for out, res, ref in zip(outs, got, refs, strict=True):
        assert res.shape == out.shape == np.broadcast_shapes(ref.shape, out.shape), out.op
        if out.dtype == "bool":
            np.testing.assert_array_equal(res, ref, err_msg=out.op)
        else:
            assert res.dtype == np.dtype(dtype), out.op
            np.testing.assert_allclose(res.astype(np.float32), np.broadcast_to(ref.astype(dtype), res.shape)
                                       .astype(np.float32), rtol=tol, atol=tol, err_msg=out.op)


def test_float32_math_approximations_at_special_values():
    """exp/tanh/erf/sigmoid run as vectorizable polynomials on float32: check their edges against NumPy."""
    x = tbe.placeholder((15,), "float32", name="x")
    xn = np.array([np.nan, np.inf, -np.inf, 100, -100, -95, 88.7, -87.5, 0, -0.0, 1e-8, -3e-4, 5e-4, 9.5, -20],
                  np.float32)
    got = tbe.build([tbe.vexp(x), tbe.vtanh(x), tbe.verf(x), tbe.vsigmoid(x)], name="special")(xn)
    x64 = xn.astype(np.float64)
    with np.errstate(over="ignore"):
        refs = [np.exp(x64), np.tanh(x64), np.vectorize(math.erf)(x64), 1 / (1 + np.exp(-xn))]  # float32, as TBE
    for res, ref in zip(got, refs, strict=True):
        np.testing.assert_allclose(res, ref.astype(np.float32), rtol=1e-6, atol=1e-44)


def test_int32_primitives_wrap_like_numpy():
    rng = np.random.default_rng(2)
    a = tbe.placeholder((2, 3, 4), "int32", name="a")
    b = tbe.placeholder((3, 1), "int32", name="b")
    an = strided(rng, (2, 3, 4), np.float64, -1000, 1000).astype(np.int32)
    an[0, 0, 0], an[0, 0, 1] = 2 ** 31 - 1, -2 ** 31
    bn = np.array([[7], [-3], [2 ** 20]], np.int32)
    cases = {"vadd": (tbe.vadd(a, b), an + bn), "vsub": (tbe.vsub(a, b), an - bn), "vmul": (tbe.vmul(a, b), an * bn),
             "vmax": (tbe.vmax(a, b), np.maximum(an, bn)), "vmin": (tbe.vmin(a, b), np.minimum(an, bn)),
             "vabs": (tbe.vabs(a), np.abs(an)), "vneg": (tbe.vneg(a), -an), "vrelu": (tbe.vrelu(a), np.maximum(an, 0)),
             "vadds": (tbe.vadds(a, 5), an + np.int32(5)), "vmuls": (tbe.vmuls(a, -2), an * np.int32(-2)),
             "vmaxs": (tbe.vmaxs(a, 3), np.maximum(an, 3)), "vmins": (tbe.vmins(a, 3), np.minimum(an, 3)),
             "vcmp": (tbe.vcmp(a, b, "ge"), an >= bn), "vsel": (tbe.vsel(tbe.vcmp(a, 0, "lt"), b, a),
                                                                np.where(an < 0, bn, an)),
             "cast": (tbe.cast_to(a, "float32"), an.astype(np.float32)),
             "chain": (tbe.vmax(tbe.vadd(a, a), b), np.maximum(an + an, bn))}
    outs = [c[0] for c in cases.values()]
    got = tbe.build(outs, name="int_prims", inputs=[a, b])(an, bn)
    for (name, (out, ref)), res in zip(cases.items(), got, strict=True):
        assert res.dtype == np.dtype(out.dtype), name
        np.testing.assert_array_equal(res, ref, err_msg=name)


def test_small_ints_int64_float64_and_bool():
    u, s8 = tbe.placeholder((5,), "uint8", name="u"), tbe.placeholder((5,), "int8", name="s8")
    big, f, m = tbe.placeholder((5,), "int64"), tbe.placeholder((5,), "float64"), tbe.placeholder((5,), "bool")
    un, sn = np.array([0, 1, 200, 255, 7], np.uint8), np.array([-128, -1, 0, 100, 127], np.int8)
    bn, fn = np.array([2 ** 40, -3, 0, 5, -(2 ** 62)], np.int64), np.array([-1.5, 0.25, 2, 1e300, -0.0])
    mn = np.array([True, False, True, True, False])
    cases = [(tbe.vadds(u, 100), un + np.uint8(100)), (tbe.vneg(s8), -sn), (tbe.vabs(s8), np.abs(sn)),
             (tbe.vmuls(big, 3), bn * 3), (tbe.reduce_sum(big), bn.sum()),
             (tbe.vexp(tbe.vmins(f, 50.0)), np.exp(np.minimum(fn, 50))), (tbe.vtanh(f), np.tanh(fn)),
             (tbe.vsel(m, u, tbe.cast_to(s8, "uint8")), np.where(mn, un, sn.astype(np.uint8))),
             (tbe.cast_to(m, "int32"), mn.astype(np.int32)), (tbe.vcmp(m, True, "eq"), mn),
             (tbe.cast_to(tbe.vmuls(f, 2.0), "float32"), (fn * 2).astype(np.float32))]
    got = tbe.build([c[0] for c in cases], name="dtypes", inputs=[u, s8, big, f, m])(un, sn, bn, fn, mn)
    for (out, ref), res in zip(cases, got, strict=True):
        assert res.dtype == np.dtype(out.dtype), out
        np.testing.assert_allclose(res, ref, rtol=1e-15, err_msg=repr(out))


def test_casts_round_and_truncate_like_astype():
    x = tbe.placeholder((64,), "float32", name="x")
    xn = np.concatenate([np.linspace(-70000, 70000, 32), np.linspace(-2.5, 2.5, 21), [1e-8, 6e-8, -3e-5, 65519.9,
                         65520.0, 1 + 2 ** -11, 1 + 3 * 2 ** -11, np.inf, -np.inf, 0.0, -0.0]]).astype(np.float32)
    to16 = tbe.cast_to(tbe.cast_to(x, "float16"), "float32")
    back = tbe.cast_to(tbe.vadds(tbe.cast_to(x, "float16"), 1.0), "float32")  # float16 arithmetic runs in float32
    to_int = tbe.cast_to(tbe.vmins(tbe.vmaxs(x, -1e9), 1e9), "int32")
    to_bool = tbe.cast_to(x, "bool")
    from_bool = tbe.cast_to(tbe.vcmp(x, 0.0, "gt"), "float32")
    r16, rb, ri, rbool, rfb = tbe.build([to16, back, to_int, to_bool, from_bool], name="casts")(xn)
    np.testing.assert_array_equal(r16, xn.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(rb, xn.astype(np.float16).astype(np.float32) + 1)
    finite = np.isfinite(xn)
    np.testing.assert_array_equal(ri[finite], np.clip(xn, -1e9, 1e9).astype(np.int32)[finite])
    np.testing.assert_array_equal(rbool, xn.astype(bool))
    np.testing.assert_array_equal(rfb, (xn > 0).astype(np.float32))


REDUCTIONS = {"reduce_sum": np.sum, "reduce_max": np.max, "reduce_min": np.min, "reduce_mean": np.mean,
              "reduce_prod": np.prod}
AXES = [([0], False), ([1, 2], True), (None, False), ([-1], True), (1, False), ([0, 2], False)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_reductions_over_axis_combinations(dtype):
    rng = np.random.default_rng(3)
    x = tbe.placeholder((3, 4, 5), dtype, name="x")
    xn = strided(rng, (3, 4, 5), dtype, 0.5, 1.5)
    outs, refs = [], []
    per_op = 2 if dtype == "float32" else 1  # float32 covers every axis combination, float16 one per primitive
    for k, (name, ref) in enumerate(REDUCTIONS.items()):
        for axis, keep in [AXES[(per_op * k + j) % len(AXES)] for j in range(per_op)]:
            outs.append(getattr(tbe, name)(x, axis, keepdims=keep))
            refs.append(ref(xn.astype(np.float64), axis=None if axis is None else tuple(np.atleast_1d(axis)),
                            keepdims=keep))
    got = tbe.build(outs, name=f"reductions_{dtype}")(xn)
    for out, res, ref in zip(outs, got, refs, strict=True):
        assert res.shape == ref.shape == out.shape and res.dtype == np.dtype(dtype), out
        np.testing.assert_allclose(res.astype(np.float64), ref.astype(dtype).astype(np.float64),
                                   rtol=1e-6 if dtype == "float32" else 1e-3, err_msg=repr(out))


def test_int32_reductions():
    x = tbe.placeholder((4, 6), "int32", name="x")
    xn = np.arange(-12, 12, dtype=np.int32).reshape(4, 6) * 1000
    xn[1, 1] = 2 ** 31 - 1  # the int32 sum wraps like numpy's with dtype=int32
    outs = [tbe.reduce_sum(x, [1]), tbe.reduce_max(x, [0], keepdims=True), tbe.reduce_min(x), tbe.reduce_prod(x, 0)]
    got = tbe.build(outs, name="int_reductions")(xn)
    refs = [xn.sum(1, dtype=np.int32), xn.max(0, keepdims=True), xn.min(), xn.prod(0, dtype=np.int32)]
    for res, ref in zip(got, refs, strict=True):
        assert res.dtype == np.int32
        np.testing.assert_array_equal(res, ref)


def test_fused_softmax_and_layernorm_chain():
    rng = np.random.default_rng(4)
    x = tbe.placeholder((6, 33), "float32", name="x")
    g = tbe.placeholder((33,), "float32", name="g")
    e = tbe.vexp(tbe.vsub(x, tbe.reduce_max(x, 1, keepdims=True)))
    softmax = tbe.vdiv(e, tbe.reduce_sum(e, 1, keepdims=True))
    centered = tbe.vsub(x, tbe.reduce_mean(x, 1, keepdims=True))
    var = tbe.reduce_mean(tbe.vmul(centered, centered), 1, keepdims=True)
    norm = tbe.vmul(tbe.vmul(centered, tbe.vrsqrt(tbe.vadds(var, 1e-5))), g)
    xn, gn = rng.standard_normal((6, 33)).astype(np.float32), rng.standard_normal(33).astype(np.float32)
    sm, ln = tbe.build([softmax, norm], name="softmax_ln", inputs=[x, g])(xn, gn)
    ex = np.exp(xn - xn.max(1, keepdims=True))
    np.testing.assert_allclose(sm, ex / ex.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    c = xn - xn.mean(1, keepdims=True)
    np.testing.assert_allclose(ln, c / np.sqrt((c * c).mean(1, keepdims=True) + 1e-5) * gn, rtol=1e-4, atol=1e-5)


def test_parallel_chain_matches_numpy():
    """Large iteration spaces take the prange paths (parallel=True): a flat map, a row reduction and an
    accumulate-in-memory-order reduction over a middle axis."""
    rng = np.random.default_rng(5)
    x = tbe.placeholder((256, 160), "float32", name="x")
    w = tbe.placeholder((64, 32, 40), "float32", name="w")
    y = tbe.vadd(tbe.vtanh(tbe.vmuls(tbe.vrelu(tbe.vadds(tbe.vmuls(x, 1.5), 0.25)), 0.5)), x)
    kernel = tbe.build([y, tbe.reduce_sum(y, 1), tbe.reduce_max(tbe.vabs(w), 1)], name="par")
    assert "prange(" in kernel.source and "parallel=True" in kernel.source
    xn = rng.standard_normal((256, 160)).astype(np.float32)
    wn = rng.standard_normal((64, 32, 40)).astype(np.float32)
    ry, r1, rw = kernel(xn, wn)
    ref = np.tanh(np.maximum(xn * np.float32(1.5) + np.float32(0.25), 0) * np.float32(0.5)) + xn
    np.testing.assert_allclose(ry, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(r1, ref.astype(np.float64).sum(1), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(rw, np.abs(wn).max(1))


def test_odd_shapes_zero_size_scalar_and_passthrough():
    z = tbe.placeholder((0, 5), "float32", name="z")
    one = tbe.placeholder((1, 1), "float32", name="one")
    s = tbe.placeholder((), "float32", name="s")
    outs = [tbe.vexp(z), tbe.reduce_sum(z, 0), tbe.reduce_prod(z, [0, 1]), tbe.vadd(one, s), tbe.vmuls(s, 3.0),
            s, tbe.const(2.5, "float32"), tbe.reduce_sum(s), tbe.vmul(z, one)]
    got = tbe.build(outs, name="odd", inputs=[z, one, s])(np.zeros((0, 5), np.float32),
                                                        np.full((1, 1), 2, np.float32), np.array(4, np.float32))
    assert got[0].shape == (0, 5) and got[8].shape == (0, 5)
    np.testing.assert_array_equal(got[1], np.zeros(5, np.float32))
    assert got[2].shape == () and got[2] == 1
    assert got[3].shape == (1, 1) and got[3][0, 0] == 6
    assert got[4].shape == () and got[4] == 12 and got[5] == 4 and got[6] == 2.5 and got[7] == 4


def test_out_buffers_are_written():
    x = tbe.placeholder((3, 4), "float32", name="x")
    kernel = tbe.build([tbe.vmuls(x, 2.0), tbe.cast_to(tbe.reduce_max(x, 1), "float16")], name="outs")
    xn = np.arange(12, dtype=np.float32).reshape(3, 4)
    a = np.zeros((3, 8), np.float32)[:, ::2]  # non-contiguous destination
    b = np.zeros(3, np.float16)
    ra, rb = kernel(xn, out=[a, b])
    assert ra is a and rb is b
    np.testing.assert_array_equal(a, xn * 2)
    np.testing.assert_array_equal(b, np.array([3, 7, 11], np.float16))
    c = np.empty((3, 4), np.float32)
    kernel(xn, out=[c, b])
    np.testing.assert_array_equal(c, xn * 2)


def test_out_may_alias_an_input():
    x, y = tbe.placeholder((3, 4), "float32", name="x"), tbe.placeholder((2, 1, 1), "float32", name="y")
    kernel = tbe.build([tbe.vmuls(x, 2.0), tbe.vadd(x, y)], name="alias")  # two map stages both read x
    xn, yn = np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[[1]], [[2]]], np.float32)
    ref = xn + yn
    other = np.empty((2, 3, 4), np.float32)
    kernel(xn, yn, out=[xn, other])  # in place: x becomes 2x, the second output still sees the old x
    np.testing.assert_array_equal(other, ref)
    np.testing.assert_array_equal(xn, np.arange(12, dtype=np.float32).reshape(3, 4) * 2)


def test_node_attributes_are_read_only():
    x = tbe.placeholder((2, 3), "float32", name="x")
    y = tbe.vadd(x, tbe.placeholder((3,), "float32"))
    assert (y.op, y.shape, y.dtype, len(y.inputs)) == ("vadd", (2, 3), "float32", 2) and x.name == "x"
    with pytest.raises(AttributeError):
        y.shape = (1,)


@pytest.mark.parametrize("make", [
    lambda x, i: tbe.vadd(x, tbe.placeholder((3,), "float32")),  # (2, 4) and (3,) do not broadcast
    lambda x, i: tbe.vadd(x, i),  # dtypes differ
    lambda x, i: tbe.vexp(i),  # float-only primitive on int32
    lambda x, i: tbe.vdiv(i, i),
    lambda x, i: tbe.reduce_sum(x, 2),
    lambda x, i: tbe.reduce_sum(x, [0, -2]),
    lambda x, i: tbe.reduce_max(tbe.placeholder((0, 3), "float32"), 0),
    lambda x, i: tbe.vcmp(x, x, "lower"),
    lambda x, i: tbe.vsel(x, x, x),
    lambda x, i: tbe.vmuls(i, 0.5),
    lambda x, i: tbe.vadds(i, 2 ** 40),
    lambda x, i: tbe.vadds(x, 1j),
    lambda x, i: tbe.broadcast(x, (4, 2)),
    lambda x, i: tbe.placeholder((2, -1), "float32"),
    lambda x, i: tbe.placeholder((2, 4), "complex64"),
    lambda x, i: tbe.cast_to(x, "str"),
    lambda x, i: tbe.build([tbe.vneg(x)], inputs=[i]),  # x is not an input
    lambda x, i: tbe.build([x], inputs=[]),
    lambda x, i: tbe.build([x], inputs=[x], device="npu"),
])
def test_bad_input_raises_invalid_param(make):
    x, i = tbe.placeholder((2, 4), "float32", name="x"), tbe.placeholder((2, 4), "int32", name="i")
    with pytest.raises(AclError) as err:
        make(x, i)
    assert err.value.code == ErrorCode.INVALID_PARAM and "tbe" in str(err.value)


def test_kernel_call_checks_arguments():
    x = tbe.placeholder((2, 4), "float32", name="x")
    kernel = tbe.build(tbe.vneg(x), name="neg")
    np.testing.assert_array_equal(kernel(np.ones((2, 4), np.float32)), -np.ones((2, 4), np.float32))
    for bad in ([np.ones((2, 4), np.float64)], [np.ones((4, 2), np.float32)], []):
        with pytest.raises(AclError) as err:
            kernel(*bad)
        assert err.value.code == ErrorCode.INVALID_PARAM


def test_float32_math_polynomials_stay_within_their_ulp_bounds_and_gelu_keeps_its_edges():
    """exp's and erf's polynomials run as fused multiply-adds: exp within 1 ulp, tanh within 7 and erf within 6 of
    the float64 value over a dense grid; Gelu(-12) is still -0 (erf rounds to -1 there), NaN stays NaN."""
    n = 200_001
    x = tbe.placeholder((n,), "float32", name="x")
    gelu = tbe.vmul(tbe.vmuls(x, 0.5), tbe.vadds(tbe.verf(tbe.vmuls(x, float(1 / np.sqrt(2.0)))), 1.0))
    kernel = tbe.build([tbe.vexp(x), tbe.vtanh(x), tbe.verf(x), gelu], name="fma_math")
    assert "fma32(" in kernel.source
    xn = np.linspace(-12, 12, n, dtype=np.float32)
    xn[:3] = [-12, np.nan, -0.0]
    e, t, f, g = kernel(xn)
    x64 = xn[3:].astype(np.float64)
    for got, ref, bound in ((e, np.exp(x64), 1), (t, np.tanh(x64), 7), (f, np.vectorize(math.erf)(x64), 6)):
        ulps = np.abs(got[3:] - ref) / np.spacing(np.abs(ref).astype(np.float32))
        assert ulps.max() <= bound
    assert g[0] == 0 and np.signbit(g[0]) and np.isnan(g[1]) and g[2] == 0 and np.signbit(g[2])
