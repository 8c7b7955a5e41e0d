"""TensorFlow's TensorList operators that ONNX's sequence operators cannot express, and If's truth
value of a condition tensor (domain ``opencann``).

A TensorList is an IR sequence: a Python list of arrays at run time, never mutated (every operator
returns a new list). A list made by ``TensorListReserve`` starts as ``None`` holes, slots not yet set;
reading, popping or stacking a hole gives zeros shaped like the list's set elements or, when none is
set, like the fully defined element shape passed in, as TensorFlow does. Creating, pushing to,
measuring and unstacking lists use ONNX's SequenceEmpty / SequenceInsert / SequenceLength /
SplitToSequence (see :mod:`opencann.frontends.tensorflow.ops.tensorlist`); ZerosLike and AddN on lists
(gradient accumulation) are ``TensorListZerosLike`` and ``TensorListAddN``.
"""
from __future__ import annotations

import numpy as np

from opencann.compiler import dtypes
from opencann.errors import AclError, ErrorCode
from opencann.ops.registry import op

DOMAIN = "opencann"


def _index(index, length: int, what: str) -> int:
    i = _int(index)
    if not 0 <= i < length:
        raise AclError(ErrorCode.INVALID_PARAM, f"{what}: index {i} is out of range for a list of {length}")
    return i


def _int(x) -> int:
    """A scalar (or the first element of a tensor) as an int; ints and 0-d arrays (a loop's index) the fast way."""
    if type(x) is int:
        return x
    return int(x.item()) if type(x) is np.ndarray and x.ndim == 0 else int(np.asarray(x).reshape(-1)[0])


def _hole(items: list, element_shape, element_dtype: int, what: str) -> np.ndarray:
    """Zeros for an unset slot: shaped like a set element, else like the (fully defined) element shape."""
    known = next((x for x in items if x is not None), None)
    if known is not None:
        return np.zeros(known.shape, dtype=known.dtype)
    shape = np.asarray(element_shape).reshape(-1)
    if np.asarray(element_shape).ndim == 0 or (shape < 0).any():
        raise AclError(ErrorCode.INVALID_PARAM, f"{what}: the list has no element set and its element shape "
                       f"{shape.tolist()} is not fully defined")
    return np.zeros(tuple(int(d) for d in shape), dtype=dtypes.from_onnx(element_dtype))


@op("TensorListReserve", domain=DOMAIN)
def tensor_list_reserve(num_elements):
    n = int(np.asarray(num_elements).reshape(-1)[0])
    if n < 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"TensorListReserve: num_elements {n} is negative")
    return [None] * n


@op("TensorListSetItem", domain=DOMAIN)
def tensor_list_set_item(items, index, item, *, resize_if_index_out_of_bounds=0):
    out = list(items)
    i = _int(index)
    if resize_if_index_out_of_bounds and i >= len(out):
        out.extend([None] * (i + 1 - len(out)))
    out[_index(i, len(out), "TensorListSetItem")] = item
    return out


@op("TensorListGetItem", domain=DOMAIN)
def tensor_list_get_item(items, index, element_shape, *, element_dtype):
    item = items[_index(index, len(items), "TensorListGetItem")]
    return _hole(items, element_shape, element_dtype, "TensorListGetItem") if item is None else item


@op("TensorListPopBack", domain=DOMAIN)
def tensor_list_pop_back(items, element_shape, *, element_dtype):
    """(the list without its last element, that element)."""
    if not items:
        raise AclError(ErrorCode.INVALID_PARAM, "TensorListPopBack: the list is empty")
    item = items[-1]
    return items[:-1], _hole(items, element_shape, element_dtype, "TensorListPopBack") if item is None else item


@op("TensorListStack", domain=DOMAIN)
def tensor_list_stack(items, element_shape, *, element_dtype):
    """The elements stacked on a new leading axis (holes as zeros; an empty list gives ``[0, *shape]``)."""
    if not items:
        return _hole(items, element_shape, element_dtype, "TensorListStack")[np.newaxis][:0]
    if any(x is None for x in items):
        zeros = _hole(items, element_shape, element_dtype, "TensorListStack")
        items = [zeros if x is None else x for x in items]
    return np.stack(items)


@op("TensorListElementShape", domain=DOMAIN)
def tensor_list_element_shape(items, *, shape_type, element_shape=None):
    """The shape of the list's elements: a set element's, else the static one (-1: unknown dimension,
    a scalar -1: unknown rank)."""
    known = next((x for x in items if x is not None), None)
    shape = list(known.shape) if known is not None else element_shape
    return np.array(-1 if shape is None else shape, dtype=dtypes.from_onnx(shape_type))


@op("TensorListZerosLike", domain=DOMAIN)
def tensor_list_zeros_like(items):
    """TensorFlow's ZerosLike on a list: zeros for each set element, holes stay holes. Elements of one shape
    and dtype share one read-only zeros array (lists are never mutated; a gradient loop's accumulator starts
    as such a list)."""
    zeros: dict[tuple, np.ndarray] = {}
    out = []
    for x in items:
        if x is None:
            out.append(None)
            continue
        key = (x.shape, x.dtype)
        if key not in zeros:
            zeros[key] = np.zeros(x.shape, x.dtype)
            zeros[key].flags.writeable = False
        out.append(zeros[key])
    return out


@op("TensorListAddN", domain=DOMAIN)
def tensor_list_add_n(*lists):
    """TensorFlow's AddN on lists: slot-wise sums, a hole counting as zero (all holes stay a hole)."""
    if len({len(items) for items in lists}) > 1:
        raise AclError(ErrorCode.INVALID_PARAM, "AddN: the TensorLists differ in length")
    if len(lists) == 2:  # a gradient loop's accumulator plus one iteration's mostly-empty list: skip its holes
        out = list(lists[0])
        for i, x in enumerate(lists[1]):
            if x is not None:
                out[i] = x if out[i] is None else out[i] + x
        return out
    out = []
    for slot in zip(*lists):
        total = None
        for x in slot:
            total = x if total is None else total if x is None else total + x
        out.append(total)
    return out


@op("TruthValue", domain=DOMAIN)
def truth_value(x):
    """TensorFlow's If condition: a scalar when non-zero (non-empty string), a tensor when non-empty."""
    return np.array(bool(x.item()) if x.ndim == 0 else x.size > 0)


@op("TensorListPushBackMany", domain=DOMAIN)
def tensor_list_push_back_many(*lists_then_items):
    """k lists then k items: each list with its item appended (a gradient loop's accumulators, one launch)."""
    k = len(lists_then_items) // 2
    return tuple([*lists_then_items[i], lists_then_items[k + i]] for i in range(k))


@op("TensorListPopBackMany", domain=DOMAIN)
def tensor_list_pop_back_many(*lists_then_shapes, element_dtypes):
    """k lists then their k element shapes: the k lists without their last elements, then those k elements
    (each as :func:`tensor_list_pop_back` gives it)."""
    k = len(lists_then_shapes) // 2
    lists = lists_then_shapes[:k]
    if all(items and items[-1] is not None for items in lists):  # the usual case: no holes to fill
        return (*[items[:-1] for items in lists], *[items[-1] for items in lists])
    pops = [tensor_list_pop_back(lists_then_shapes[i], lists_then_shapes[k + i], element_dtype=element_dtypes[i])
            for i in range(k)]
    return tuple(rest for rest, _ in pops) + tuple(last for _, last in pops)


@op("TensorListAddItem", domain=DOMAIN)
def tensor_list_add_item(items, num_elements, index, item):
    """``TensorListAddN(items, TensorListSetItem(TensorListReserve(num_elements), index, item))`` in one launch (a
    gradient loop adding one element's gradient to its accumulator list): the same checks, the same sums."""
    n = _int(num_elements)
    if n != len(items):
        raise AclError(ErrorCode.INVALID_PARAM, "AddN: the TensorLists differ in length")
    i = _index(index, n, "TensorListSetItem")
    out = list(items)
    out[i] = item if out[i] is None else out[i] + item
    return out
