"""The CPU kernels of opencann.ops.cpu_elementwise (arithmetic, Sum, comparisons, Sigmoid/Tanh, Gather,
the scatter-adds) against NumPy and the reference kernels; ``python tests/test_cpu_elementwise.py`` prints
their per-call cost."""
import timeit
import warnings

import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops import cpu_elementwise as fast
from opencann.ops import elementwise as ref
from opencann.ops import indexing, tf_sparse
from opencann.ops.registry import lookup

OPS = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide}


def cpu(name: str):
    return lookup(name, 14).kernel_for("cpu")


@pytest.mark.parametrize("name", list(OPS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_same_dtype_floats_match_numpy_with_and_without_out(name, dtype):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(4).astype(dtype) + dtype(3)
    want = OPS[name](a, b)
    got = cpu(name)(a, b)
    assert got.dtype == dtype and got.shape == (3, 4)
    np.testing.assert_array_equal(got, want)
    out = np.empty((3, 4), dtype)
    assert cpu(name)(a, b, out=out) is out
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(cpu(name)(a, b), ref._arith(OPS[name])(a, b))


@pytest.mark.parametrize("out", [np.empty((2, 3, 4), np.float32), np.empty((3, 4), np.float64),
                                 np.empty(4, np.float32)])
def test_an_out_that_does_not_fit_is_ignored(out):
    a, b = np.ones((3, 4), np.float32), np.full((3, 1), 2, np.float32)
    got = cpu("Mul")(a, b, out=out)
    assert got is not out and got.shape == (3, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.full((3, 4), 2))


def test_in_place_on_the_first_input_unless_it_broadcasts():
    a, b = np.arange(4, dtype=np.float32), np.full(4, 2, np.float32)
    assert cpu("Sub")(a, b, out=a) is a
    np.testing.assert_array_equal(a, [-2, -1, 0, 1])
    small = np.ones(1, np.float32)
    got = cpu("Add")(small, b, out=small)
    assert got is not small and list(small) == [1]
    np.testing.assert_array_equal(got, [3, 3, 3, 3])


def test_mixed_types_integer_division_and_legacy_broadcast_use_the_reference():
    i, f = np.array([7, -7], np.int32), np.array([2, 2], np.float32)
    np.testing.assert_array_equal(cpu("Div")(i, np.array([2, 2], np.int32)), [3, -3])  # truncates toward zero
    got = cpu("Add")(i, f)
    assert got.dtype == np.int32 and list(got) == [9, -5]  # A's type, as the reference
    a, b = np.ones((2, 3), np.float32), np.array([1, 2], np.float32)
    legacy = lookup("Add", 6).kernel_for("cpu")(a, b, broadcast=1, axis=0)
    np.testing.assert_array_equal(legacy, [[2, 2, 2], [3, 3, 3]])


def test_division_by_zero_gives_infinities_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = cpu("Div")(np.array([1, -1, 0], np.float32), np.zeros(3, np.float32))
    assert np.isposinf(got[0]) and np.isneginf(got[1]) and np.isnan(got[2])


def test_gather_matches_the_reference_and_checks_the_range():
    data = np.arange(24, dtype=np.float32).reshape(4, 6)
    for indices, axis in ((np.array([[0, -1], [3, 1]]), 0), (np.array([5, -6, 2], np.int32), 1), (np.array(2), 0)):
        want = indexing.gather(data, indices, axis=axis)
        np.testing.assert_array_equal(fast.gather_cpu(data, indices, axis=axis), want)
    for bad in (np.array([4]), np.array([-5])):
        with pytest.raises(AclError, match="Gather: index out of range"):
            fast.gather_cpu(data, bad)
    assert lookup("Gather", 13).kernel_for("cpu") is fast.gather_cpu


def test_output_buffer_takes_only_a_fitting_contiguous_out():
    out = np.empty((2, 3), np.float32)
    assert fast.output_buffer(out, (2, 3)) is out
    for other in (None, out.T, np.empty((2, 3), np.float64), np.empty((3, 2), np.float32)):
        got = fast.output_buffer(other, (2, 3))
        assert got is not other and got.shape == (2, 3) and got.dtype == np.float32


def _edge_floats(dtype, shape=(6, 7)):
    x = np.random.default_rng(1).standard_normal(shape).astype(dtype) * 30
    x.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -100, 100, 0.0, -0.0, -1e-30]
    return x


@pytest.mark.parametrize("name", ["Sigmoid", "Tanh"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_and_tanh_give_the_reference_bits_quietly(name, dtype):
    definition = lookup(name, 13)
    x = _edge_floats(dtype)
    want = definition.reference(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for arg in (x, x.T, x[:, ::2], x[0, 0], x[:0]):  # contiguous, transposed, strided, 0-d, empty
            got = definition.kernel_for("cpu")(arg)
            assert type(got) is np.ndarray and got.dtype == dtype and got.shape == arg.shape
            np.testing.assert_array_equal(got, definition.reference(arg))
        out = np.empty_like(x)
        assert definition.kernel_for("cpu")(x, out=out) is out
        np.testing.assert_array_equal(out, want)
        for bad in (np.empty((7, 6), dtype), np.empty_like(x, np.float16), np.empty((7, 6), dtype).T):
            assert definition.kernel_for("cpu")(x, out=bad) is not bad
        own = x.copy()  # X's own dying buffer: Tanh works in place, Sigmoid (which reads X's sign last) does not
        got = definition.kernel_for("cpu")(own, out=own)
        np.testing.assert_array_equal(got, want)
        assert (got is own) == (name == "Tanh")
    if name == "Sigmoid":
        assert np.isnan(want.reshape(-1)[0]) and 0 < want.reshape(-1)[3] < 1e-40  # sigmoid(-100) is not 0


def test_sigmoid_tanh_of_other_types_are_the_reference():
    x = _edge_floats(np.float16)
    for name in ("Sigmoid", "Tanh"):
        got = lookup(name, 13).kernel_for("cpu")(x)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, lookup(name, 13).reference(x))


PREDICATES = {"And": (np.logical_and, 7), "Or": (np.logical_or, 7), "Xor": (np.logical_xor, 7),
              "Equal": (np.equal, 13), "Greater": (np.greater, 13), "Less": (np.less, 13),
              "GreaterOrEqual": (np.greater_equal, 16), "LessOrEqual": (np.less_equal, 16)}


@pytest.mark.parametrize("name", list(PREDICATES))
def test_predicates_match_the_reference_on_0d_broadcast_and_nan(name):
    ufunc, opset = PREDICATES[name]
    definition = lookup(name, opset)
    f = np.array([[np.nan], [1.0], [-2.0]], np.float32)
    pairs = [(np.array(3, np.int32), np.array(40, np.int32)), (np.array(True), np.array(False)),
             (f, np.array([1.0, np.nan], np.float32)), (np.array([1, 2], np.int64), np.array(2, np.int32)),
             (np.array([1, 2], np.float16), np.array([2, 2], np.float16))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in pairs:
            if name in ("And", "Or", "Xor"):
                a, b = a.astype(bool), b.astype(bool)
            got = definition.kernel_for("cpu")(a, b)
            assert type(got) is np.ndarray and got.dtype == np.bool_
            np.testing.assert_array_equal(got, ufunc(a, b))
            np.testing.assert_array_equal(got, definition.reference(a, b))


@pytest.mark.parametrize("name", ["Add", "Sub", "Mul"])
def test_integer_arithmetic_wraps_as_the_reference_and_0d_gives_an_array(name):
    for dtype in (np.int32, np.int64, np.uint8):
        info = np.iinfo(dtype)
        a, b = np.array([info.max, info.min, 7], dtype), np.array([2, 3, 5], dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = cpu(name)(a, b)
            scalar = cpu(name)(a[0].reshape(()), b[0].reshape(()))
        assert got.dtype == dtype and type(scalar) is np.ndarray and scalar.shape == () and scalar.dtype == dtype
        np.testing.assert_array_equal(got, ref._arith(OPS[name])(a, b))
        assert scalar == got[0]


def test_sum_of_two_floats_uses_out_and_other_cases_are_the_reference():
    rng = np.random.default_rng(2)
    a, b, c = (rng.standard_normal((3, 4)).astype(np.float32) for _ in range(3))
    sum_cpu = lookup("Sum", 13).kernel_for("cpu")
    out = np.empty((3, 4), np.float32)
    assert sum_cpu(a, b, out=out) is out
    np.testing.assert_array_equal(out, a + b)
    np.testing.assert_array_equal(sum_cpu(a, b, c), ref.sum_(a, b, c))
    np.testing.assert_array_equal(sum_cpu(a, b[0]), a + b[0])               # broadcasts
    got = sum_cpu(a, b.astype(np.float64))
    assert got.dtype == np.float32 and np.array_equal(got, ref.sum_(a, b.astype(np.float64)))
    assert sum_cpu(a) is a or np.array_equal(sum_cpu(a), a)


def _segment_case(rng, dtype=np.float32):
    data = rng.standard_normal((5, 4, 3)).astype(dtype)
    ids = np.array([[0, 2, 2, -1], [6, 0, -3, 2], [1, 1, 1, 6], [0, 0, 0, 0], [5, 4, 3, 2]], np.int32)
    return data, ids


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_unsorted_segment_sum_matches_the_reference(dtype):
    data, ids = _segment_case(np.random.default_rng(3), dtype)
    kernel = lookup("UnsortedSegmentSum", 1, "opencann").kernel_for("cpu")
    for d, i in ((data, ids), (data[:, :2], ids[:, :2]), (data.transpose(1, 0, 2)[:3], ids.T[:3]),
                 (data[:0], ids[:0])):  # row-shaped ids, column slices, non-contiguous, empty
        got = kernel(d, i, np.array(7, np.int32))
        want = tf_sparse.unsorted_segment_sum(d, i, np.array(7, np.int32))
        assert got.dtype == dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(AclError, match="UnsortedSegmentSum: segment id 6 is out of range for 6 segments"):
        kernel(data, ids, np.array([6], np.int64))


def test_scatternd_add_matches_the_reference_and_checks_indices():
    rng = np.random.default_rng(4)
    data = rng.standard_normal((4, 5, 3)).astype(np.float32)
    scatter = lookup("ScatterND", 18).kernel_for("cpu")
    cases = [(np.array([[[0, 1], [3, -1]], [[0, 1], [-4, 0]]]), rng.standard_normal((2, 2, 3))),  # repeats, negatives
             (np.array([[1], [1], [-1]], np.int32), rng.standard_normal((3, 5, 3))),
             (np.array([[1, 2, 0], [1, 2, 0]]), rng.standard_normal(2)),
             (np.zeros((0, 2), np.int64), np.zeros((0, 3)))]
    for idx, upd in cases:
        upd = upd.astype(np.float32)
        want = indexing.scatter_nd(data, idx, upd, reduction="add")
        for d, u in ((data, upd), (np.asfortranarray(data), np.asfortranarray(upd))):
            got = scatter(d, idx, u, reduction="add")
            assert got.dtype == np.float32 and got.shape == data.shape and not np.shares_memory(got, d)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    before = data.copy()
    for bad in (np.array([[4, 0]]), np.array([[0, -6]])):
        with pytest.raises(AclError, match="ScatterND: index out of range"):
            scatter(data, bad, np.ones((1, 3), np.float32), reduction="add")
    np.testing.assert_array_equal(data, before)
    np.testing.assert_array_equal(scatter(data, np.array([[1]]), np.ones((1, 5, 3), np.float32), reduction="mul"),
                                  indexing.scatter_nd(data, np.array([[1]]), np.ones((1, 5, 3), np.float32),
                                                      reduction="mul"))


@pytest.mark.parametrize("opset,shape,axes,keepdims", [(13, (32, 32, 4, 16), [0, 1], 1), (13, (5, 7, 3), [1, 0], 0),
                                                     (13, (9, 6), [-2], 1), (11, (4, 3, 2), [0], 0)])
def test_reduce_sum_over_leading_axes_gives_the_references_bits(opset, shape, axes, keepdims):
    d = lookup("ReduceSum", opset)
    assert d.kernel_for("cpu") is fast.reduce_sum_cpu
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    args, kw = ((x, np.array(axes)), {}) if opset >= 13 else ((x,), {"axes": axes})
    got = fast.reduce_sum_cpu(*args, keepdims=keepdims, **kw)
    want = d.reference(*args, keepdims=keepdims, **kw)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, x.astype(np.float64).sum(tuple(axes), keepdims=bool(keepdims)), rtol=1e-5,
                               atol=1e-4)  # float32 sums of up to 1024 values


@pytest.mark.parametrize("x,axes,noop", [(np.ones((3, 4), np.float32), np.array([1]), 0),  # trailing axes
                                         (np.ones((3, 4), np.float32), None, 0), (np.ones((3, 4), np.float32), None, 1),
                                         (np.ones((4, 3), np.float32).T, np.array([0]), 0),  # not contiguous
                                         (np.ones((3, 4)), np.array([0]), 0), (np.ones((0, 4), np.float32), [0], 0)])
def test_reduce_sum_other_cases_are_the_reference(x, axes, noop):
    d = lookup("ReduceSum", 13)
    got = fast.reduce_sum_cpu(x, axes, noop_with_empty_axes=noop)
    want = d.reference(x, axes, noop_with_empty_axes=noop)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    with pytest.raises(AclError):
        fast.reduce_sum_cpu(np.ones((3, 4), np.float32), np.array([2]))


if __name__ == "__main__":
    a, b = np.ones(64, np.float32), np.ones(64, np.float32)
    idx, table = np.arange(20).reshape(1, 20), np.ones((1000, 64), np.float32)
    x, i0 = np.random.default_rng(0).standard_normal((32, 32)).astype(np.float32), np.array(3, np.int32)
    grads, rows = np.ones((1280, 32), np.float32), np.random.default_rng(0).integers(0, 1000, (1280, 1))
    sig, less, scatter = lookup("Sigmoid", 13), lookup("Less", 13), lookup("ScatterND", 18)
    for label, stmt in (("Add reference", lambda: ref._arith(np.add)(a, b)), ("Add cpu", lambda: cpu("Add")(a, b)),
                        ("Gather reference", lambda: indexing.gather(table, idx)),
                        ("Gather cpu", lambda: fast.gather_cpu(table, idx)),
                        ("Sigmoid 32x32 reference", lambda: sig.reference(x)),
                        ("Sigmoid 32x32 cpu", lambda: sig.kernel_for("cpu")(x)),
                        ("Less 0-d reference", lambda: less.reference(i0, i0)),
                        ("Less 0-d cpu", lambda: less.kernel_for("cpu")(i0, i0)),
                        ("ScatterND add 1280 rows reference", lambda: scatter.reference(table[:, :32], rows, grads,
                                                                                          reduction="add")),
                        ("ScatterND add 1280 rows cpu", lambda: scatter.kernel_for("cpu")(table[:, :32], rows, grads,
                                                                                            reduction="add"))):
        print(f"{label}: {min(timeit.repeat(stmt, number=200, repeat=5)) / 200 * 1e6:.2f} us per call")
