"""TensorLists (TensorArray v2, the per-step values of RNN loops and their gradients) as IR sequences.

A TensorList value is an IR sequence (``SequenceType``; a Python list of arrays at run time) rather than
a tensor with a leading element axis: lists start empty or reserved before their element shape is known
(the batch size is dynamic), grow by pushes inside loops and shrink by pops in gradient loops, all of
which sequences do without copying the elements. Where ONNX has the operator it is used (SequenceEmpty,
SequenceInsert, SequenceLength, SplitToSequence); reserving, setting, reading, popping and stacking
slots that may not be set yet are ``opencann`` operators (:mod:`opencann.ops.tf_control`).
"""
from __future__ import annotations

from opencann.compiler.ir import SequenceType, TensorType, Value
from opencann.frontends.tensorflow.dtypes import np_dtype, onnx_code
from opencann.frontends.tensorflow.importer import Context, tf_op

INT32 = 6  # ONNX element type code


def _element_shape(ctx: Context, op, i: int) -> tuple | None:
    """The static element shape given by input ``i`` (None: unknown rank; None dims: unknown)."""
    shape = ctx.const_value(op, i)
    if shape is None or shape.ndim == 0:
        return None
    return tuple(int(d) if d >= 0 else None for d in shape)


def _list_type(op, shape: tuple | None) -> SequenceType:
    return SequenceType(TensorType(np_dtype(op.get_attr("element_dtype")), shape))


def _typed(v: Value, t) -> Value:
    v.type = t
    return v


def _same_type(ctx: Context, op, v: Value) -> Value:
    """``v`` typed like the op's input list."""
    return _typed(v, ctx.input(op, 0).type)


def _element(ctx: Context, op, v: Value) -> Value:
    """``v`` typed like an element of the op's input list, when TF's graph does not know its shape."""
    t = ctx.input(op, 0).type
    if op.outputs[-1].shape.rank is None and isinstance(t, SequenceType) and t.elem is not None:
        v.type = t.elem
    return v


@tf_op("EmptyTensorList")
def empty_tensor_list(ctx: Context, op):
    v = ctx.node("SequenceEmpty", [], dtype=onnx_code(op.get_attr("element_dtype")))
    return [_typed(v, _list_type(op, _element_shape(ctx, op, 0)))]


@tf_op("TensorListReserve")
def tensor_list_reserve(ctx: Context, op):
    v = ctx.node("TensorListReserve", [ctx.input(op, 1)], domain="opencann")
    return [_typed(v, _list_type(op, _element_shape(ctx, op, 0)))]


@tf_op("TensorListFromTensor")
def tensor_list_from_tensor(ctx: Context, op):
    t = op.inputs[0]
    shape = None if t.shape.rank is None else tuple(t.shape.as_list()[1:])
    v = ctx.node("SplitToSequence", [ctx.input(op, 0)], axis=0, keepdims=0)
    return [_typed(v, _list_type(op, shape))]


@tf_op("TensorListSetItem")
def tensor_list_set_item(ctx: Context, op):
    resize = int(bool(ctx.attr(op, "resize_if_index_out_of_bounds", False)))
    v = ctx.node("TensorListSetItem", ctx.inputs(op), domain="opencann", resize_if_index_out_of_bounds=resize)
    return [_same_type(ctx, op, v)]


@tf_op("TensorListPushBack")
def tensor_list_push_back(ctx: Context, op):
    return [_same_type(ctx, op, ctx.node("SequenceInsert", ctx.inputs(op)))]


@tf_op("TensorListPopBack")
def tensor_list_pop_back(ctx: Context, op):
    rest, last = ctx.node("TensorListPopBack", ctx.inputs(op), n_outputs=2, domain="opencann",
                          element_dtype=onnx_code(op.get_attr("element_dtype")))
    return [_same_type(ctx, op, rest), _element(ctx, op, last)]


@tf_op("TensorListGetItem")
def tensor_list_get_item(ctx: Context, op):
    item = ctx.node("TensorListGetItem", ctx.inputs(op), domain="opencann",
                    element_dtype=onnx_code(op.get_attr("element_dtype")))
    return [_element(ctx, op, item)]


@tf_op("TensorListStack")
def tensor_list_stack(ctx: Context, op):
    return [ctx.node("TensorListStack", ctx.inputs(op), domain="opencann",
                     element_dtype=onnx_code(op.get_attr("element_dtype")))]


@tf_op("TensorListLength")
def tensor_list_length(ctx: Context, op):
    return [ctx.node("Cast", [ctx.node("SequenceLength", [ctx.input(op, 0)])], to=INT32)]


@tf_op("TensorListElementShape")
def tensor_list_element_shape(ctx: Context, op):
    t = ctx.input(op, 0).type
    shape = t.elem.shape if isinstance(t, SequenceType) and t.elem is not None else None
    attrs = {} if shape is None else {"element_shape": [d if isinstance(d, int) else -1 for d in shape]}
    return [ctx.node("TensorListElementShape", [ctx.input(op, 0)], domain="opencann",
                     shape_type=onnx_code(op.get_attr("shape_type")), **attrs)]


def zeros_like(ctx: Context, op) -> list:
    """ZerosLike of a TensorList (called by the ZerosLike converter for variant inputs)."""
    return [_same_type(ctx, op, ctx.node("TensorListZerosLike", [ctx.input(op, 0)], domain="opencann"))]


def add_n(ctx: Context, op) -> list:
    """AddN of TensorLists (called by the AddN converter for variant inputs)."""
    return [_same_type(ctx, op, ctx.node("TensorListAddN", ctx.inputs(op), domain="opencann"))]
