"""Tensor creation, shape and indexing kernels: old opsets, odd dtypes and shapes ONNX's suite skips.

Each case runs one node through the ONNX backend; the oracle is NumPy, or onnxruntime where it
implements the case.
"""
import functools

import ml_dtypes
import numpy as np
import pytest

from opencann.errors import AclError
from tests.ops.single_node import check_node, run_node

BF16 = ml_dtypes.bfloat16
RNG = np.random.default_rng(0)


run = run_node
check_ort = functools.partial(check_node, rtol=1e-6, atol=0)


def i64(*v):
    return np.array(v, dtype=np.int64)


# --- old operator versions (attributes that later became inputs) ---------------------------------

def test_reshape_v1_shape_attribute():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run("Reshape", x, opset=1, shape=[0, -1]), x.reshape(2, 12))


def test_slice_v1_attributes():
    x = RNG.standard_normal((5, 6)).astype(np.float32)
    y = run("Slice", x, opset=1, starts=[1, -4], ends=[100, -1], axes=[0, 1])
    np.testing.assert_array_equal(y, x[1:, -4:-1])


def test_pad_v2_reflect_attribute():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = run("Pad", x, opset=2, pads=[1, 2, 1, 0], mode="reflect")
    np.testing.assert_array_equal(y, np.pad(x, [(1, 1), (2, 0)], mode="reflect"))


def test_split_v2_attribute_and_equal_default():
    x = np.arange(10, dtype=np.int32)
    a, b = run("Split", x, n_outputs=2, opset=2, split=[3, 7])
    np.testing.assert_array_equal(a, x[:3])
    np.testing.assert_array_equal(b, x[3:])
    parts = run("Split", x, n_outputs=5, opset=11)
    assert [p.tolist() for p in parts] == [x[i:i + 2].tolist() for i in range(0, 10, 2)]


@pytest.mark.parametrize("axis", [0, 1, -1, -3])
def test_split_gives_views_like_np_split(axis):
    from opencann.ops.tensor import split_
    x = np.arange(2 * 6 * 4, dtype=np.float32).reshape(2, 6, 4)
    for arg in (x, x.transpose(1, 2, 0)[:4]):  # contiguous and not
        dim = arg.shape[axis]
        sizes = [dim - dim // 2, 0, dim // 2]
        want = np.split(arg, np.cumsum(sizes)[:-1], axis=axis)
        for split in (i64(*sizes), np.array(sizes, np.int32)):
            got = split_(arg, split, axis=axis, n_outputs=3)
            assert len(got) == 3 and all(np.shares_memory(g, arg) or not g.size for g in got)
            for g, w in zip(got, want, strict=True):
                assert g.shape == w.shape and g.strides == w.strides
                np.testing.assert_array_equal(g, w)
        equal = split_(arg, axis=axis, n_outputs=2)
        np.testing.assert_array_equal(np.concatenate(equal, axis=axis), arg)
    with pytest.raises(AclError, match="do not add up"):
        split_(x, i64(1, x.shape[axis]), axis=axis, n_outputs=2)


def test_reshape_of_an_int32_shape_and_zero_copies_a_dimension():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(run("Reshape", x, np.array([0, -1], np.int64)), x.reshape(2, 12))
    from opencann.ops.tensor import reshape
    assert np.shares_memory(reshape(x, np.array([4, 0, -1], np.int32)), x)
    assert reshape(x, np.array([4, 0, -1], np.int32)).shape == (4, 3, 2)
    assert reshape(x[0, 0], np.array([2, 2], np.uint64)).shape == (2, 2)


def test_squeeze_unsqueeze_v1_axes_attribute():
    x = np.zeros((1, 3, 1, 2), np.float32)
    assert run("Squeeze", x, opset=1, axes=[0, 2]).shape == (3, 2)
    assert run("Unsqueeze", x, opset=1, axes=[0, 5]).shape == (1, 1, 3, 1, 2, 1)


def test_topk_v1_k_attribute():
    x = np.array([[3, 1, 3, 2]], np.float32)
    values, idx = run("TopK", x, n_outputs=2, opset=1, k=2)
    np.testing.assert_array_equal(values, [[3, 3]])
    np.testing.assert_array_equal(idx, [[0, 2]])


def test_tile_v1_tiles_and_axis_inputs():
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    y = run("Tile", x, np.array(3, np.int64), np.array(1, np.int64), opset=1)
    np.testing.assert_array_equal(y, np.tile(x, (1, 3)))


def test_concat_v1_default_axis():
    a, b = np.ones((2, 1), np.float32), np.zeros((2, 3), np.float32)
    assert run("Concat", a, b, opset=1).shape == (2, 4)


def test_constant_scalar_attributes():
    assert run("Constant", value_ints=[1, 2]).dtype == np.int64
    assert run("Constant", value_float=2.5).dtype == np.float32
    s = run("Constant", value_strings=["a", "bc"])
    assert s.dtype == object and s.tolist() == ["a", "bc"]


# --- dtypes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
@pytest.mark.parametrize("dt", [np.float16, BF16, np.int32, np.uint64])
def test_scans_keep_dtype(op, dt):
    x = np.array([[1, 2, 3], [4, 5, 1]], dtype=dt)
    y = run(op, x, np.array(1, np.int32), opset=26, exclusive=1, reverse=1)
    ref = x.astype(np.float64)[:, ::-1]
    ref = np.cumsum(ref, 1) if op == "CumSum" else np.cumprod(ref, 1)
    ref = np.concatenate([np.full((2, 1), op == "CumProd"), ref[:, :-1]], 1)[:, ::-1]
    assert y.dtype == np.dtype(dt)
    np.testing.assert_array_equal(y.astype(np.float64), ref)


def test_topk_bfloat16_ties_keep_index_order():
    x = np.array([1, 5, 5, 2, 5, 1], dtype=BF16)
    values, idx = run("TopK", x, i64(4), n_outputs=2)
    np.testing.assert_array_equal(idx, [1, 2, 4, 3])
    assert values.dtype == BF16
    values, idx = run("TopK", x, i64(3), n_outputs=2, largest=0)
    np.testing.assert_array_equal(idx, [0, 5, 3])


def test_string_tensors():
    s = np.array([["a", "b"], ["c", "d"]], dtype=object)
    assert run("Concat", s, s, axis=0).tolist() == [["a", "b"], ["c", "d"]] * 2
    assert run("Gather", s, np.array(-1, np.int64), axis=1).tolist() == ["b", "d"]
    assert run("Transpose", s).tolist() == [["a", "c"], ["b", "d"]]


def test_argmax_select_last_bfloat16():
    x = np.array([[1, 3, 3], [2, 2, 0]], dtype=BF16)
    np.testing.assert_array_equal(run("ArgMax", x, axis=1, keepdims=0, select_last_index=1), [2, 1])


def test_range_dtypes():
    y = run("Range", np.array(1, np.int16), np.array(10, np.int16), np.array(4, np.int16))
    assert y.dtype == np.int16 and y.tolist() == [1, 5, 9]
    y = run("Range", np.array(0.5), np.array(-1.0), np.array(-0.5))
    assert y.dtype == np.float64 and y.tolist() == [0.5, 0.0, -0.5]


def test_onehot_float_indices_and_axis():
    idx = np.array([[0.0, 2.0], [-1.0, 7.0]], np.float32)
    y = run("OneHot", idx, np.array(3.0, np.float32), np.array([0, 9], np.int32), axis=1)
    assert y.shape == (2, 3, 2) and y.dtype == np.int32
    np.testing.assert_array_equal(y[:, :, 0], [[9, 0, 0], [0, 0, 9]])   # -1 counts from the end
    np.testing.assert_array_equal(y[:, :, 1], [[0, 0, 9], [0, 0, 0]])   # 7 is out of range: all off


# --- odd and zero-size shapes ---------------------------------------------------------------------

def test_reshape_allowzero_with_empty_tensor():
    x = np.zeros((0, 3), np.float32)
    assert run("Reshape", x, i64(3, 0), allowzero=1).shape == (3, 0)
    assert run("Reshape", x, i64(3, -1)).shape == (3, 0)
    with pytest.raises(AclError):
        run("Reshape", x, i64(0, -1))      # -1 is ambiguous next to a zero dimension


def test_zero_size_concat_split_slice():
    a, b = np.zeros((2, 0), np.float32), np.ones((2, 2), np.float32)
    assert run("Concat", a, b, axis=1).shape == (2, 2)
    parts = run("Split", b, i64(0, 2), n_outputs=2, axis=1)
    assert parts[0].shape == (2, 0) and parts[1].shape == (2, 2)
    assert run("Slice", b, i64(5), i64(9), i64(1)).shape == (2, 0)


def test_nonzero_and_topk_empty():
    assert run("NonZero", np.zeros((2, 3), bool)).shape == (2, 0)
    values, idx = run("TopK", np.ones((3, 4), np.float32), i64(0), n_outputs=2)
    assert values.shape == (3, 0) and idx.dtype == np.int64


def test_unique_not_sorted_with_axis():
    x = np.array([[2, 1], [0, 5], [2, 1], [0, 5], [1, 1]], np.int32)
    y, first, inverse, counts = run("Unique", x, n_outputs=4, axis=0, sorted=0)
    np.testing.assert_array_equal(y, [[2, 1], [0, 5], [1, 1]])
    np.testing.assert_array_equal(first, [0, 1, 4])
    np.testing.assert_array_equal(inverse, [0, 1, 0, 1, 2])
    np.testing.assert_array_equal(counts, [2, 2, 1])


def test_expand_and_scatter_do_not_alias_inputs():
    x = np.arange(3, dtype=np.float32)
    y = run("Expand", x, i64(2, 1))
    assert y.flags.writeable and y.shape == (2, 3)
    data = np.zeros(4, np.float32)
    run("ScatterElements", data, i64(1), np.ones(1, np.float32))
    assert not data.any()


# --- against onnxruntime --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_negative_pads_and_axes(mode):
    x = RNG.standard_normal((4, 5, 6)).astype(np.float32)
    check_ort("Pad", x, i64(2, -1, 1, 3), np.array(1.5, np.float32), i64(0, -1), mode=mode)


def test_slice_negative_steps_and_clamping():
    x = RNG.standard_normal((6, 7, 8)).astype(np.float32)
    check_ort("Slice", x, i64(-1, 100, 2), i64(-100, 1, 9), i64(0, 1, 2), i64(-2, -3, 1))


def test_gathernd_batch_dims():
    x = RNG.standard_normal((2, 3, 4, 5)).astype(np.float32)
    idx = RNG.integers(-3, 3, (2, 3, 6, 1)).astype(np.int64)
    check_ort("GatherND", x, idx, batch_dims=2)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatternd_reductions(reduction):
    x = RNG.standard_normal((4, 5, 3)).astype(np.float32)
    idx = np.array([[[0, 1], [3, -1]], [[2, 2], [1, 0]]], np.int64)
    upd = RNG.standard_normal((2, 2, 3)).astype(np.float32)
    check_ort("ScatterND", x, idx, upd, reduction=reduction)


def test_gather_elements_smaller_index():
    x = RNG.standard_normal((4, 5)).astype(np.float32)
    idx = np.array([[3, -1, 0], [1, 2, -4]], np.int64)
    check_ort("GatherElements", x, idx, axis=0)


def test_col2im_padded_strided_dilated():
    x = RNG.standard_normal((2, 2 * 4, 12)).astype(np.float32)
    check_ort("Col2Im", x, i64(6, 7), i64(2, 2), strides=[2, 2], dilations=[2, 1], pads=[1, 0, 0, 1])


@pytest.mark.parametrize("eq", ["ij,jk->ik", "bii->bi", "...ij,...jk", "i,i", "abc->cb"])
def test_einsum(eq):
    shapes = {"ij,jk->ik": [(3, 4), (4, 2)], "bii->bi": [(2, 3, 3)], "...ij,...jk": [(2, 3, 4), (2, 4, 5)],
              "i,i": [(5,), (5,)], "abc->cb": [(2, 3, 4)]}[eq]
    check_ort("Einsum", *(RNG.standard_normal(s).astype(np.float32) for s in shapes), equation=eq)


def test_depth_space_round_trip_crd():
    x = RNG.standard_normal((2, 8, 3, 5)).astype(np.float32)
    y = run("DepthToSpace", x, blocksize=2, mode="CRD")
    np.testing.assert_array_equal(run("SpaceToDepth", y, opset=28, blocksize=2, mode="CRD"), x)
