"""The offline model file (``.om``): a compiled model as data — no pickle, no code.

Layout (little-endian)::

    0   8  magic b"OCANNOM\\0"
    8   4  format version (u32)
    12  4  flags (u32, zero)
    16  8  header length in bytes (u64)
    24  4  CRC-32 of the header (u32)
    28  4  reserved (zero)
    32     header: UTF-8 JSON (graph, input/output descriptions, build options, target, tensor table,
           SHA-256 of the data section)
    ...    zero padding to a multiple of 64
    ...    data section: every tensor's raw little-endian bytes, each 64-byte aligned

The reader checks every size, offset, dtype, shape, checksum and operator name before anything is
used, and reports the first problem as an :class:`AclError`.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

from opencann import __version__
from opencann.compiler.ir import Graph, Node, OptionalType, SequenceType, TensorType, Value, ValueType
from opencann.errors import AclError, ErrorCode

MAGIC = b"OCANNOM\0"
FORMAT_VERSION = 1
ALIGN = 64
_PREAMBLE = struct.Struct("<8sIIQII")
MAX_HEADER = 256 << 20
MAX_DEPTH = 16
_DTYPES = {"float32", "float16", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "uint16",
           "uint32", "uint64", "bool", "complex64", "complex128", "float8_e4m3fn", "float8_e4m3fnuz",
           "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4", "string"}
_ML_DTYPES = {"bfloat16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2", "float8_e5m2fnuz", "int4", "uint4"}


@dataclass
class CompiledModel:
    """What an ``.om`` file holds: the optimized graph and how it was built."""

    graph: Graph
    build_options: dict[str, Any] = field(default_factory=dict)
    target: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. dynamic batch sizes, AIPP, memory plan


# ---------------------------------------------------------------- writing


def encode(model: CompiledModel) -> tuple[dict[str, Any], bytes]:
    """The header (a JSON-ready dict) and data section of a compiled model."""
    blobs: list[bytes] = []
    offset = 0
    tensors: list[dict[str, Any]] = []

    def add_tensor(arr: np.ndarray) -> int:
        nonlocal offset
        if arr.dtype == object:
            tensors.append({"dtype": "string", "shape": list(arr.shape), "strings": [str(s) for s in arr.reshape(-1)]})
            return len(tensors) - 1
        raw = np.ascontiguousarray(arr).tobytes()
        pad = -len(raw) % ALIGN
        tensors.append({"dtype": _dtype_name(arr.dtype), "shape": list(arr.shape), "offset": offset,
                        "nbytes": len(raw)})
        blobs.append(raw + b"\0" * pad)
        offset += len(raw) + pad
        return len(tensors) - 1

    graph = _graph_to_json(model.graph, add_tensor)
    data = b"".join(blobs)
    header = {"producer": f"opencann {__version__}", "target": model.target, "build_options": model.build_options,
              "extra": model.extra, "graph": graph, "tensors": tensors, "data_sha256": hashlib.sha256(data).hexdigest()}
    return header, data


def dumps(model: CompiledModel) -> bytes:
    """The ``.om`` bytes of a compiled model."""
    header, data = encode(model)
    head = json.dumps(header, separators=(",", ":")).encode()
    preamble = _PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(head), zlib.crc32(head), 0)
    pad = -(len(preamble) + len(head)) % ALIGN
    return preamble + head + b"\0" * pad + data


def save(model: CompiledModel, path: str | os.PathLike) -> str:
    """Write ``path`` (``.om`` appended when missing) atomically: a temporary file, then a rename."""
    path = os.fspath(path)
    if not path.endswith(".om"):
        path += ".om"
    data = dumps(model)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".om-", dir=directory)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise AclError(ErrorCode.WRITE_FILE, f"cannot write '{path}': {exc}") from None
    return path


def _dtype_name(dt: np.dtype) -> str:
    name = "string" if dt == np.dtype(object) else np.dtype(dt).name
    if name not in _DTYPES:
        raise AclError(ErrorCode.UNSUPPORTED_DATA_TYPE, f"dtype {name} cannot be stored in an .om file")
    return name


def _type_to_json(t: ValueType | None) -> Any:
    if t is None:
        return None
    if isinstance(t, SequenceType):
        return {"sequence": _type_to_json(t.elem)}
    if isinstance(t, OptionalType):
        return {"optional": _type_to_json(t.elem)}
    return {"dtype": _dtype_name(t.dtype), "shape": None if t.shape is None else list(t.shape)}


def _attr_to_json(v: Any, add_tensor) -> Any:
    if isinstance(v, Graph):
        return {"graph": _graph_to_json(v, add_tensor)}
    if isinstance(v, np.ndarray):
        return {"tensor": add_tensor(v)}
    if isinstance(v, (TensorType, SequenceType, OptionalType)):
        return {"type": _type_to_json(v)}
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if isinstance(v, list):
        return {"list": [_attr_to_json(x, add_tensor) for x in v]}
    if isinstance(v, (bool, int, float, str)):
        return v
    raise AclError(ErrorCode.INVALID_PARAM, f"attribute value {type(v).__name__} cannot be stored")


def _graph_to_json(g: Graph, add_tensor) -> dict[str, Any]:
    types: dict[str, Any] = {}
    for v in g.values():
        if v.name and v.type is not None:
            types[v.name] = _type_to_json(v.type)
    return {
        "name": g.name, "opsets": g.opsets, "types": types,
        "inputs": [v.name for v in g.inputs], "outputs": [v.name for v in g.outputs],
        "initializers": {v.name: add_tensor(v.const) for v in g.initializers},
        "nodes": [{"op": n.op, "domain": n.domain, "name": n.name,
                   "inputs": [v.name if v is not None else None for v in n.inputs],
                   "outputs": [v.name for v in n.outputs],
                   "attrs": {k: _attr_to_json(a, add_tensor) for k, a in n.attrs.items()}} for n in g.nodes],
    }


# ---------------------------------------------------------------- reading


def _bad(what: str) -> AclError:
    return AclError(ErrorCode.PARSE_MODEL, f"invalid .om model: {what}")


def loads(data: bytes) -> CompiledModel:
    """Parse and validate ``.om`` bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise AclError(ErrorCode.INVALID_PARAM, "model data must be bytes")
    data = bytes(data)
    if len(data) < _PREAMBLE.size:
        raise AclError(ErrorCode.INVALID_FILE_SIZE, f"invalid .om model: {len(data)} bytes is too short")
    magic, version, flags, head_len, crc, _ = _PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _bad("wrong magic bytes (not an opencann offline model)")
    if version != FORMAT_VERSION:
        raise _bad(f"format version {version} is not supported (this opencann reads {FORMAT_VERSION})")
    if flags:
        raise _bad(f"unknown flags {flags:#x}")
    if head_len > min(MAX_HEADER, len(data) - _PREAMBLE.size):
        raise AclError(ErrorCode.INVALID_FILE_SIZE, f"invalid .om model: header length {head_len} exceeds the file")
    head = data[_PREAMBLE.size:_PREAMBLE.size + head_len]
    if zlib.crc32(head) != crc:
        raise _bad("header checksum mismatch (file corrupted)")
    start = _PREAMBLE.size + head_len
    start += -start % ALIGN
    payload = data[start:]
    try:
        header = json.loads(head.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _bad(f"header is not valid JSON: {exc}") from None
    _expect(header, dict, "header")
    if hashlib.sha256(payload).hexdigest() != header.get("data_sha256"):
        raise _bad("data checksum mismatch (file corrupted or truncated)")
    tensors = _read_tensors(_expect(header.get("tensors"), list, "tensors"), payload)
    graph = _graph_from_json(_expect(header.get("graph"), dict, "graph"), tensors, {}, 0)
    graph.validate()
    _check_ops(graph)
    extra = _expect(header.get("extra", {}), dict, "extra")
    batches = _expect(extra.get("dynamic_batch_size", []), list, "extra dynamic_batch_size")
    if not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in batches):
        raise _bad("extra dynamic_batch_size must list positive batch sizes")
    return CompiledModel(graph, _expect(header.get("build_options", {}), dict, "build_options"),
                         _expect(header.get("target", "cpu"), str, "target"), extra)


def load(path: str | os.PathLike) -> CompiledModel:
    """Read and validate an ``.om`` file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise AclError(ErrorCode.INVALID_FILE, f"no such model file: {path}") from None
    except OSError as exc:
        raise AclError(ErrorCode.READ_MODEL_FAILURE, f"cannot read '{path}': {exc}") from None
    return loads(data)


def _expect(v: Any, kind: type | tuple, what: str) -> Any:
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise _bad(f"{what} has the wrong type ({type(v).__name__})")
    return v


def _np_dtype(name: Any, what: str) -> np.dtype:
    if not isinstance(name, str) or name not in _DTYPES:
        raise _bad(f"{what}: unknown dtype {name!r}")
    if name == "string":
        return np.dtype(object)
    return np.dtype(getattr(ml_dtypes, name) if name in _ML_DTYPES else name)


def _shape(v: Any, what: str, symbolic: bool = False) -> tuple:
    _expect(v, list, what)
    for d in v:
        ok = (isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40) or \
            (symbolic and (d is None or isinstance(d, str)))
        if not ok:
            raise _bad(f"{what}: bad dimension {d!r}")
    return tuple(v)


def _read_tensors(table: list, payload: bytes) -> list[np.ndarray]:
    out = []
    for i, t in enumerate(table):
        what = f"tensor {i}"
        _expect(t, dict, what)
        dt = _np_dtype(t.get("dtype"), what)
        shape = _shape(t.get("shape"), what)
        count = math.prod(shape)
        if dt == np.dtype(object):
            strings = _expect(t.get("strings"), list, what)
            if len(strings) != count or not all(isinstance(s, str) for s in strings):
                raise _bad(f"{what}: string count does not match its shape")
            out.append(np.array(strings, dtype=object).reshape(shape))
            continue
        offset, nbytes = _expect(t.get("offset"), int, what), _expect(t.get("nbytes"), int, what)
        if nbytes != count * dt.itemsize:
            raise _bad(f"{what}: {nbytes} bytes do not hold {shape} of {dt.name}")
        if offset < 0 or offset % ALIGN or offset + nbytes > len(payload):
            raise _bad(f"{what}: offset {offset} + {nbytes} bytes lies outside the data section")
        out.append(np.frombuffer(payload, dtype=dt, count=count, offset=offset).reshape(shape).copy())
    return out


def _type_from_json(v: Any, what: str) -> ValueType | None:
    if v is None:
        return None
    _expect(v, dict, what)
    if "sequence" in v:
        return SequenceType(_type_from_json(v["sequence"], what))
    if "optional" in v:
        return OptionalType(_type_from_json(v["optional"], what))
    shape = v.get("shape")
    return TensorType(_np_dtype(v.get("dtype"), what), None if shape is None else _shape(shape, what, True))


def _tensor_ref(idx: Any, tensors: list[np.ndarray], what: str) -> np.ndarray:
    if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < len(tensors):
        raise _bad(f"{what}: tensor index {idx!r} out of range")
    return tensors[idx]


def _attr_from_json(v: Any, tensors: list, scope: dict, depth: int, what: str) -> Any:
    if isinstance(v, dict):
        if "graph" in v:
            return _graph_from_json(_expect(v["graph"], dict, what), tensors, scope, depth + 1)
        if "tensor" in v:
            return _tensor_ref(v["tensor"], tensors, what)
        if "type" in v:
            return _type_from_json(v["type"], what)
        if "float" in v and v["float"] in ("inf", "-inf", "nan"):
            return float(v["float"])
        if "list" in v:
            return [_attr_from_json(x, tensors, scope, depth, what) for x in _expect(v["list"], list, what)]
        raise _bad(f"{what}: unknown attribute encoding")
    if isinstance(v, (bool, int, float, str)):
        return v
    raise _bad(f"{what}: attribute of type {type(v).__name__}")


def _graph_from_json(j: dict, tensors: list, outer: dict[str, Value], depth: int) -> Graph:
    if depth > MAX_DEPTH:
        raise _bad("subgraphs nested too deeply")
    name = _expect(j.get("name", "graph"), str, "graph name")
    types = _expect(j.get("types", {}), dict, f"graph '{name}' types")
    scope = dict(outer)

    def value(n: Any, what: str) -> Value:
        _expect(n, str, what)
        if n not in scope:
            scope[n] = Value(n, _type_from_json(types.get(n), what))
        return scope[n]

    inits = []
    for n, idx in _expect(j.get("initializers", {}), dict, "initializers").items():
        v = Value(n, const=_tensor_ref(idx, tensors, f"initializer '{n}'"))
        scope[n] = v
        inits.append(v)
    inputs = [value(n, "graph input") for n in _expect(j.get("inputs", []), list, "inputs")]
    nodes = []
    for k, nj in enumerate(_expect(j.get("nodes", []), list, "nodes")):
        what = f"node {k}"
        _expect(nj, dict, what)
        op, domain = _expect(nj.get("op"), str, what), _expect(nj.get("domain", ""), str, what)
        ins = [None if x is None else value(x, what) for x in _expect(nj.get("inputs", []), list, what)]
        outs = []
        for x in _expect(nj.get("outputs", []), list, what):
            _expect(x, str, what)
            v = Value(x, _type_from_json(types.get(x), what))
            if x:
                scope[x] = v
            outs.append(v)
        attrs = {_expect(a, str, what): _attr_from_json(av, tensors, scope, depth, what)
                 for a, av in _expect(nj.get("attrs", {}), dict, what).items()}
        nodes.append(Node(op, ins, outs, attrs, name=_expect(nj.get("name", ""), str, what), domain=domain))
    outputs = [value(n, "graph output") for n in _expect(j.get("outputs", []), list, "outputs")]
    opsets = _expect(j.get("opsets", {"": 17}), dict, "opsets")
    for k, o in opsets.items():
        if not isinstance(o, int) or isinstance(o, bool) or not 0 <= o < 1 << 31:
            raise _bad(f"graph '{name}': opset {o!r} of domain '{k}' is not a version number (0 to 2**31-1)")
    return Graph(inputs=inputs, outputs=outputs, nodes=nodes, initializers=inits, name=name, opsets=opsets)


def _check_ops(graph: Graph) -> None:
    from opencann.ops import registry

    for n in graph.nodes:
        if registry.lookup(n.op, graph.opsets.get(n.domain, 1), n.domain) is None:
            raise AclError(ErrorCode.OP_NOT_FOUND, f"invalid .om model: node {n.label} uses unknown operator "
                           f"{n.domain + '::' if n.domain else ''}{n.op}")
        for sub in n.subgraphs.values():
            _check_ops(sub)
