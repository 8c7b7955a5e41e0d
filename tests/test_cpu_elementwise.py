"""The CPU kernels of Add/Sub/Mul/Div and Gather (opencann.ops.cpu_elementwise) against NumPy and the
reference kernels; ``python tests/test_cpu_elementwise.py`` prints their per-call cost."""
import timeit
import warnings

import numpy as np
import pytest

from opencann.errors import AclError
from opencann.ops import cpu_elementwise as fast
from opencann.ops import elementwise as ref
from opencann.ops import indexing
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


def test_mixed_and_integer_types_and_legacy_broadcast_use_the_reference():
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


if __name__ == "__main__":
    a, b = np.ones(64, np.float32), np.ones(64, np.float32)
    idx, table = np.arange(20).reshape(1, 20), np.ones((1000, 64), np.float32)
    for label, stmt in (("Add reference", lambda: ref._arith(np.add)(a, b)), ("Add cpu", lambda: cpu("Add")(a, b)),
                        ("Gather reference", lambda: indexing.gather(table, idx)),
                        ("Gather cpu", lambda: fast.gather_cpu(table, idx))):
        print(f"{label}: {min(timeit.repeat(stmt, number=2000, repeat=5)) / 2000 * 1e6:.2f} us per call")
