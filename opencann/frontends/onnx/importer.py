"""ONNX → IR: read a model (file, bytes or ModelProto) into an opencann Graph.

Model-local functions are inlined; shapes the model leaves out are filled by ONNX's shape inference;
every unsupported operator is reported at once with its node names.
"""
from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import onnx
import onnx.inliner  # not imported by `import onnx`
from google.protobuf.message import Message
from onnx import AttributeProto, helper, numpy_helper

from opencann.compiler import dtypes
from opencann.compiler.ir import Graph, Node, OptionalType, SequenceType, TensorType, Value, ValueType
from opencann.errors import AclError, ErrorCode

MIN_OPSET, MAX_OPSET = 1, onnx.defs.onnx_opset_version()
MAX_DOMAIN_OPSET = 2**31 - 1  # ONNX's schema lookup takes a C int
MAX_SHAPE_VECTOR = 1 << 16  # longest 1-D tensor ONNX's data propagation is run on


def load_model(source: str | os.PathLike | bytes | onnx.ModelProto) -> onnx.ModelProto:
    """Read and parse an ONNX model, external data included, with errors as AclError."""
    if isinstance(source, onnx.ModelProto):
        return source
    try:
        if isinstance(source, bytes):
            return onnx.load_from_string(source)
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise AclError(ErrorCode.INVALID_FILE, f"no such model file: {path}")
        return onnx.load(path)
    except AclError:
        raise
    except Exception as exc:
        raise AclError(ErrorCode.PARSE_MODEL, f"cannot parse ONNX model {_where(source)}: {exc}") from None


def _non_utf8(msg: Any) -> str | None:
    """Where the first string field that is not UTF-8 lies (protobuf hands those back as bytes), or None."""
    for fd, value in msg.ListFields():
        if fd.type == fd.TYPE_MESSAGE:
            if isinstance(value, Message):
                where = _non_utf8(value)
                if where is not None:
                    return f"{fd.name}.{where}"
                continue
            for i, item in enumerate(value):
                where = _non_utf8(item)
                if where is not None:
                    return f"{fd.name}[{i}].{where}"
        elif fd.type == fd.TYPE_STRING and (isinstance(value, bytes) or (
                not isinstance(value, str) and any(isinstance(v, bytes) for v in value))):
            return fd.name
    return None


def _where(source: Any) -> str:
    return f"'{os.fspath(source)}'" if isinstance(source, (str, os.PathLike)) else f"({len(source)} bytes)"


def import_onnx(source: str | os.PathLike | bytes | onnx.ModelProto, infer_shapes: bool = True) -> Graph:
    """The IR Graph of an ONNX model, validated and ready for the compiler."""
    model = load_model(source)
    where = _non_utf8(model)
    if where is not None:
        raise AclError(ErrorCode.PARSE_MODEL, f"ONNX model field {where} is not valid UTF-8 text")
    opsets = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
    version = opsets.get("", MAX_OPSET)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise AclError(ErrorCode.PARSE_MODEL, f"ONNX opset {version} is not supported "
                       f"(opencann reads opsets {MIN_OPSET}-{MAX_OPSET})")
    for domain, v in opsets.items():
        if not 0 <= v <= MAX_DOMAIN_OPSET:
            raise AclError(ErrorCode.PARSE_MODEL, f"opset {v} of domain '{domain}' is out of range")
    weights = {} if isinstance(source, onnx.ModelProto) else _detach_weights(model.graph)
    if model.functions:
        try:
            model = onnx.inliner.inline_local_functions(model)
        except Exception as exc:
            raise AclError(ErrorCode.PARSE_MODEL, f"cannot inline model functions: {exc}") from None
    if infer_shapes:
        model = _infer_shapes(model)
    graph = _convert_graph(model.graph, opsets, weights=weights)
    del model  # the parsed model (and the weights it holds) goes before validation, not after
    graph.validate()
    return graph


def _detach_weights(gp: onnx.GraphProto) -> dict[str, np.ndarray]:
    """The large floating-point initializers of a model opencann parsed itself, as arrays, their data cleared.

    Shape inference and inlining copy the whole model several times over; without the weights' bytes
    (never shape data) those copies are small, and the peak memory of an import is about twice the weights
    (the parsed model and the arrays) instead of five times.
    """
    weights = {}
    for t in gp.initializer:
        if (t.data_type in _FLOATS and t.data_location != onnx.TensorProto.EXTERNAL and t.name not in weights
                and len(t.raw_data) >= _DETACH_BYTES):
            weights[t.name] = _tensor(t)
            t.ClearField("raw_data")
    return weights


_FLOATS = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
_DETACH_BYTES = 4096


def _infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """ONNX's shape inference, with data propagation (shapes computed from Shape ops) where that is safe.

    Inference is a help, not a requirement: where it fails, types fall back to what the file says. Data
    propagation costs ONNX time and memory linear in the length of a 1-D float tensor (a declared length
    of 2**40 runs out of memory), so a model with a 1-D tensor longer than any shape vector goes without.
    """
    try:
        plain = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:
        return model
    if _has_long_vector(plain.graph):
        return plain
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return plain


def _has_long_vector(gp: onnx.GraphProto) -> bool:
    """Whether ``gp`` (or a subgraph) has a 1-D tensor longer than MAX_SHAPE_VECTOR, declared or inferred."""
    for vi in (*gp.input, *gp.output, *gp.value_info):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == 1 and dims[0].dim_value > MAX_SHAPE_VECTOR:
            return True
    if any(len(t.dims) == 1 and t.dims[0] > MAX_SHAPE_VECTOR for t in gp.initializer):
        return True
    return any(_has_long_vector(g) for n in gp.node for a in n.attribute
               for g in ([a.g] if a.type == AttributeProto.GRAPH else a.graphs))


def _convert_graph(gp: onnx.GraphProto, opsets: dict[str, int], outer: dict[str, Value] | None = None,
                   weights: dict[str, np.ndarray] | None = None) -> Graph:
    """The IR of ``gp``; ``weights`` holds the initializers taken out of it by _detach_weights."""
    scope: dict[str, Value] = dict(outer or {})
    types = {vi.name: convert_type(vi.type) for vi in [*gp.value_info, *gp.input, *gp.output]}

    def value(name: str) -> Value:
        if name not in scope:
            scope[name] = Value(name, types.get(name))
        return scope[name]

    inits = []
    for t in gp.initializer:
        v = Value(t.name, const=weights.pop(t.name) if weights and t.name in weights else _tensor(t))
        scope[t.name] = v
        inits.append(v)
    if len(gp.sparse_initializer):
        raise AclError(ErrorCode.PARSE_MODEL, f"graph '{gp.name}': sparse initializers are not supported")
    init_names = {v.name for v in inits}
    inputs = [value(vi.name) for vi in gp.input if vi.name not in init_names]
    nodes = []
    for i, n in enumerate(gp.node):
        ins = [value(x) if x else None for x in n.input]
        outs = []
        for x in n.output:
            v = Value(x, types.get(x)) if x else Value("")
            if x:
                scope[x] = v
            outs.append(v)
        attrs = {a.name: _attr(a, opsets, scope, n) for a in n.attribute}
        nodes.append(Node(n.op_type, ins, outs, attrs, name=n.name or f"{n.op_type}_{i}", domain=_domain(n.domain)))
    outputs = [value(vi.name) for vi in gp.output]
    return Graph(inputs=inputs, outputs=outputs, nodes=nodes, initializers=inits,
                 name=gp.name or "graph", opsets=dict(opsets))


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _tensor(t: onnx.TensorProto) -> np.ndarray:
    if t.data_location == onnx.TensorProto.EXTERNAL:  # still external: never read relative to the working dir
        raise AclError(ErrorCode.PARSE_MODEL, f"tensor '{t.name}': external data was not loaded "
                       "(only a model file's own folder holds external data)")
    try:
        arr = numpy_helper.to_array(t)
    except Exception as exc:
        raise AclError(ErrorCode.PARSE_MODEL, f"tensor '{t.name}' is malformed: {exc}") from None
    if t.data_type == onnx.TensorProto.STRING:
        arr = np.vectorize(lambda b: b.decode("utf-8", "surrogateescape") if isinstance(b, bytes) else b,
                           otypes=[object])(arr) if arr.size else arr.astype(object)
    want = dtypes.from_onnx(t.data_type)
    return arr if arr.dtype == want else arr.astype(want)


def convert_type(tp: onnx.TypeProto) -> ValueType | None:
    kind = tp.WhichOneof("value")
    if kind == "tensor_type":
        tt = tp.tensor_type
        if not tt.elem_type:
            return None
        shape = None
        if tt.HasField("shape"):
            shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
        return TensorType(dtypes.from_onnx(tt.elem_type), shape)
    if kind == "sequence_type":
        return SequenceType(convert_type(tp.sequence_type.elem_type))
    if kind == "optional_type":
        return OptionalType(convert_type(tp.optional_type.elem_type))
    return None


def _attr(a: AttributeProto, opsets: dict[str, int], scope: dict[str, Value], node) -> Any:
    if a.ref_attr_name:
        raise AclError(ErrorCode.PARSE_MODEL, f"node '{node.name}': attribute reference outside a function")
    t = a.type
    if t == AttributeProto.GRAPH:
        return _convert_graph(a.g, opsets, scope)
    if t == AttributeProto.GRAPHS:
        return [_convert_graph(g, opsets, scope) for g in a.graphs]
    if t == AttributeProto.TENSOR:
        return _tensor(a.t)
    if t == AttributeProto.TENSORS:
        return [_tensor(x) for x in a.tensors]
    if t == AttributeProto.TYPE_PROTO:
        return convert_type(a.tp)
    if t == AttributeProto.TYPE_PROTOS:
        return [convert_type(x) for x in a.type_protos]
    if t == AttributeProto.SPARSE_TENSOR:
        return _sparse_to_dense(a.sparse_tensor)
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if t == AttributeProto.STRINGS:
        return [v.decode("utf-8", "surrogateescape") for v in value]
    return list(value) if isinstance(value, (list, tuple)) else value


def _sparse_to_dense(sp: onnx.SparseTensorProto) -> np.ndarray:
    values = _tensor(sp.values)
    idx = _tensor(sp.indices)
    dims = tuple(sp.dims)
    what = f"sparse tensor '{sp.values.name}'"
    if (any(d < 0 for d in dims) or idx.dtype.kind not in "iu" or idx.ndim not in (1, 2) or len(idx) != values.size
            or (idx.ndim == 2 and idx.shape[1] != len(dims))):
        raise AclError(ErrorCode.PARSE_MODEL, f"{what}: {values.size} values with {idx.dtype} indices of shape "
                       f"{list(idx.shape)} do not fit shape {list(dims)}")
    idx = idx.astype(np.int64)
    if idx.ndim == 2 and idx.size and ((idx < 0) | (idx >= np.array(dims, dtype=np.int64))).any():
        raise AclError(ErrorCode.PARSE_MODEL, f"{what}: index out of range of shape {list(dims)}")
    try:
        dense = np.zeros(math.prod(dims), dtype=values.dtype)
        flat = idx if idx.ndim == 1 else np.ravel_multi_index(idx.T, dims)
        if flat.size and (flat.min() < 0 or flat.max() >= dense.size):
            raise AclError(ErrorCode.PARSE_MODEL, f"{what}: index out of range of shape {list(dims)}")
        dense[flat] = values.reshape(-1)
        return dense.reshape(dims)
    except (ValueError, MemoryError) as exc:
        raise AclError(ErrorCode.PARSE_MODEL, f"{what} of shape {list(dims)} cannot be made dense: {exc}") from None
