"""Property-based fuzzing of the two model readers: the ``.om`` reader and the ONNX loader.

The property: for any input, ``om.loads`` / ``acl.load_from_mem`` and ``import_onnx`` (then building an
``Executor`` from its graph) either succeed or raise :class:`opencann.errors.AclError`. Any other
exception fails, and so do a crash and a hang (a per-example hypothesis ``deadline``, and a watchdog
that interrupts an example that runs far longer).

Inputs are valid seed models, mutated: truncated, bit-flipped, overwritten, with oversized header
lengths; ``.om`` headers edited as JSON (wrong offsets, byte counts, dtypes and shapes in the tensor
table, unknown operators, deep nesting, huge dimensions, wrong JSON types, non-UTF-8 text) and re-packed
with a valid CRC-32 and data SHA-256, so that the checks behind the checksums are reached; ONNX protobufs
edited field by field (unknown operators, bad opsets, initializers whose raw data has the wrong size,
missing inputs, external data naming missing files or ``../../etc/passwd``, huge dimensions, deep
nesting) or byte by byte.

CI runs every test derandomized (the same examples each run): ``DEFAULT_EXAMPLES`` (400) examples for each
of the six property tests, 2,400 cases in all, in about 15 s. ``OPENCANN_FUZZ_EXAMPLES`` sets the number of
examples per test for the longer run, which draws new random examples each time (a failure prints the
``@reproduce_failure`` blob that replays it); 10,000 a test (60,000 cases) takes about 8 minutes::

    OPENCANN_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/test_fuzz.py -q --hypothesis-show-statistics
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import signal
import struct
import threading
import zlib
from datetime import timedelta

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import AttributeProto, TensorProto, helper, numpy_helper

import opencann.acl as acl
from opencann.compiler import om
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.errors import AclError
from opencann.frontends.onnx import import_onnx
from opencann.ops import registry
from opencann.runtime import Executor

DEFAULT_EXAMPLES = 400
_ENV_EXAMPLES = os.environ.get("OPENCANN_FUZZ_EXAMPLES")
EXAMPLES = int(_ENV_EXAMPLES) if _ENV_EXAMPLES else DEFAULT_EXAMPLES
HANG_SECONDS = 20  # the watchdog: an example still running after this long is a hang

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=2),
    derandomize=_ENV_EXAMPLES is None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


class Hang(Exception):
    """An example ran past the watchdog."""


@contextlib.contextmanager
def watchdog(seconds: float = HANG_SECONDS):
    """Interrupt the example with :class:`Hang` after ``seconds`` (main thread, POSIX only)."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum, frame):
        raise Hang(f"example still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def accepts_or_acl_error(fn, *args):
    """Run ``fn``: success and AclError pass; any other exception propagates (and fails the example)."""
    name = getattr(fn, "__name__", type(fn).__name__)
    with watchdog():
        try:
            result = fn(*args)
        except AclError as exc:
            assert str(exc).startswith("["), "AclError messages carry their code"
            event(f"{name}: {str(exc).split(']')[0][1:]}")  # --hypothesis-show-statistics: how deep inputs got
            return None
    event(f"{name}: accepted")
    return result


# ---------------------------------------------------------------- seed models


def _seed_onnx_models() -> list[bytes]:
    f32 = TensorProto.FLOAT
    # 1: initializer, attributes (int, tensor), an If with two subgraphs reading the outer scope
    then_g = helper.make_graph([helper.make_node("Relu", ["t"], ["tb"])], "then", [],
                               [helper.make_tensor_value_info("tb", f32, None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["t"], ["eb"])], "else", [],
                               [helper.make_tensor_value_info("eb", f32, None)])
    g1 = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["t"]),
         helper.make_node("ReduceSum", ["t"], ["s"], keepdims=0),
         helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0, np.float32))),
         helper.make_node("Greater", ["s", "zero"], ["c"]),
         helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)],
        "seed_if", [helper.make_tensor_value_info("x", f32, ["N", 4])],
        [helper.make_tensor_value_info("y", f32, ["N", 4])],
        [numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")])
    m1 = helper.make_model(g1, opset_imports=[helper.make_opsetid("", 17)])

    # 2: a model-local function, string and int64 initializers, a sparse constant, float and string attributes
    fn = helper.make_function("local", "Scale", ["a"], ["b"],
                              [helper.make_node("Mul", ["a", "a"], ["b"])], [helper.make_opsetid("", 17)])
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5, 2.5], np.float32), "v"),
                                       numpy_helper.from_array(np.array([0, 3], np.int64), "i"), [4])
    g2 = helper.make_graph(
        [helper.make_node("Scale", ["x"], ["sq"], domain="local"),
         helper.make_node("Constant", [], ["sp"], sparse_value=sparse),
         helper.make_node("LeakyRelu", ["sq"], ["lr"], alpha=0.25),
         helper.make_node("Add", ["lr", "sp"], ["a"]),
         helper.make_node("Reshape", ["a", "shape"], ["y"]),
         helper.make_node("Identity", ["labels"], ["labels_out"])],
        "seed_fn", [helper.make_tensor_value_info("x", f32, [4])],
        [helper.make_tensor_value_info("y", f32, [2, 2]),
         helper.make_tensor_value_info("labels_out", TensorProto.STRING, [2])],
        [numpy_helper.from_array(np.array([2, 2], np.int64), "shape"),
         helper.make_tensor("labels", TensorProto.STRING, [2], [b"cat", "d\u00f6g".encode()])])
    m2 = helper.make_model(g2, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                           functions=[fn])

    # 3: sequences and a Loop
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["acc_in", "one"], ["acc_out"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("acc_in", f32, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", f32, [2])])
    g3 = helper.make_graph(
        [helper.make_node("Loop", ["n", "", "x"], ["acc"], body=body),
         helper.make_node("SequenceConstruct", ["acc", "x"], ["seq"]),
         helper.make_node("SequenceAt", ["seq", "n0"], ["y"])],
        "seed_loop", [helper.make_tensor_value_info("x", f32, [2])],
        [helper.make_tensor_value_info("y", f32, [2])],
        [numpy_helper.from_array(np.array(3, np.int64), "n"), numpy_helper.from_array(np.array(0, np.int64), "n0"),
         numpy_helper.from_array(np.ones(2, np.float32), "one")])
    m3 = helper.make_model(g3, opset_imports=[helper.make_opsetid("", 17)])
    for m in (m1, m2, m3):
        onnx.checker.check_model(m)
    return [m.SerializeToString() for m in (m1, m2, m3)]


ONNX_SEEDS = _seed_onnx_models()
OM_SEEDS = [om.dumps(compile_graph(import_onnx(ONNX_SEEDS[0]))),
            om.dumps(compile_graph(import_onnx(ONNX_SEEDS[1]))),
            om.dumps(compile_graph(import_onnx(ONNX_SEEDS[2]))),
            om.dumps(compile_graph(import_onnx(ONNX_SEEDS[0]), BuildOptions(dynamic_batch_size=[1, 2])))]
OP_NAMES = sorted({name for _, name in registry.registered()})
DTYPE_NAMES = sorted(om._DTYPES)


def _split_om(data: bytes) -> tuple[dict, bytes]:
    """The header (as JSON) and data section of valid ``.om`` bytes."""
    head_len = struct.unpack_from("<Q", data, 16)[0]
    start = 32 + head_len
    start += -start % om.ALIGN
    return json.loads(data[32:32 + head_len]), data[start:]


def pack_om(head: bytes, payload: bytes) -> bytes:
    """``.om`` bytes around any header text, with the header's right length and CRC-32."""
    preamble = struct.pack("<8sIIQII", om.MAGIC, om.FORMAT_VERSION, 0, len(head), zlib.crc32(head), 0)
    return preamble + head + b"\0" * (-(len(preamble) + len(head)) % om.ALIGN) + payload


OM_PARTS = [_split_om(d) for d in OM_SEEDS]


@pytest.fixture(scope="module", autouse=True)
def acl_runtime():
    """acl initialised with device 0 for load_from_mem; the seeds load (and warm every lazy import)."""
    if acl.is_initialized():
        acl.finalize()
    acl.init()
    acl.set_device(0)
    for data in OM_SEEDS:
        acl.load_from_mem(data).unload()
    for data in ONNX_SEEDS:
        Executor(import_onnx(data))
    yield
    acl.finalize()


def check_om(data: bytes) -> None:
    accepts_or_acl_error(om.loads, data)
    model = accepts_or_acl_error(acl.load_from_mem, data)
    if model is not None:
        model.unload()


def check_onnx(data: bytes) -> None:
    graph = accepts_or_acl_error(import_onnx, data)
    if graph is not None:
        accepts_or_acl_error(Executor, graph)


# ---------------------------------------------------------------- shared strategies

HUGE = [2**31 - 1, 2**31, 2**32, 2**40 - 1, 2**40, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30]
nasty_ints = st.one_of(st.integers(-70, 300), st.sampled_from(HUGE + [-h for h in HUGE]),
                       st.integers(-(2**70), 2**70))
nasty_text = st.one_of(st.text(max_size=12), st.sampled_from(
    ["", "\udcff", "\x00", "../../etc/passwd", "/etc/passwd", "nan", "inf", "-inf", "N", "x", "w", "t", "y"]
    + DTYPE_NAMES + ["float128", "object", "V8", "<f4", "S3", "U1", "float4_e2m1fn"]
    + OP_NAMES[:40] + ["Frobnicate", "If", "Loop", "Scan"]))
scalars = st.one_of(st.none(), st.booleans(), nasty_ints, st.floats(allow_nan=True, allow_infinity=True),
                    nasty_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(nasty_text, inner, max_size=4)), max_leaves=10)
dims = st.one_of(st.integers(0, 8), st.sampled_from([0, 1, 2**20, 2**31, 2**39, 2**40 - 1, 2**40, 2**63]),
                 st.integers(-3, -1), st.sampled_from([None, "N", True, 1.5]))


@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """``data`` after 1 to 4 of: truncation, bit flip, overwrite, insertion, deletion, a u32/u64 field set."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "field"]))
        pos = draw(st.integers(0, max(len(buf), 1)))
        if kind == "truncate":
            del buf[pos:]
        elif kind == "flip" and pos < len(buf):
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            buf[pos:pos + len(chunk)] = chunk
        elif kind == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del buf[pos:pos + draw(st.integers(1, 64))]
        elif kind == "field":  # little-endian u32/u64 anywhere, header-length slot most often
            where = draw(st.one_of(st.just(16), st.sampled_from([8, 12, 24, 28]), st.just(pos)))
            width = draw(st.sampled_from([4, 8]))
            value = draw(st.one_of(st.sampled_from([0, 1, len(buf), len(buf) - 31, len(buf) + 1, 2**31, 2**32 - 1,
                                                    om.MAX_HEADER, om.MAX_HEADER + 1]),
                                   st.integers(0, 2 ** (8 * width) - 1)))
            value &= 2 ** (8 * width) - 1
            buf[where:where + width] = value.to_bytes(width, "little")
    return bytes(buf)


# ---------------------------------------------------------------- .om: raw bytes


@FUZZ
@given(st.data())
def test_om_byte_mutations(data):
    seed = data.draw(st.sampled_from(OM_SEEDS), label="seed")
    check_om(data.draw(byte_mutations(seed), label="mutated"))


# ---------------------------------------------------------------- .om: headers edited with valid checksums


def _paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, (*prefix, i))


def _parent(root, path):
    for k in path[:-1]:
        root = root[k]
    return root


DEEP_MARK = "\u0001deep\u0001"


def _deep(kind: str, depth: int) -> str:
    """JSON text nested ``depth`` levels deep: a type, an attribute list, or plain arrays/objects."""
    if kind == "type":
        return '{"sequence":' * depth + '{"dtype":"float32","shape":[2]}' + "}" * depth
    if kind == "optional":
        return '{"optional":' * depth + '{"dtype":"float32"}' + "}" * depth
    if kind == "list":
        return '{"list":[' * depth + "1" + "]}" * depth
    if kind == "graph":
        g = '{"name":"g","inputs":[],"outputs":[],"nodes":[]}'
        for _ in range(depth):
            g = ('{"name":"g","outputs":["o"],"nodes":[{"op":"If","inputs":["c"],"outputs":["o"],'
                 '"attrs":{"then_branch":{"graph":' + g + '},"else_branch":{"graph":' + g + "}}}]}")
            if len(g) > 1 << 20:  # two branches double the text: keep it bounded
                break
        return g
    return "[" * depth + "]" * depth


@st.composite
def tensor_entries(draw, payload_len: int):
    """A tensor-table entry that is often self-consistent (bytes match dtype x shape), so deeper checks run."""
    dtype = draw(st.one_of(st.sampled_from(DTYPE_NAMES), nasty_text, scalars))
    shape = draw(st.one_of(st.lists(st.integers(0, 6), max_size=3), st.lists(dims, max_size=4), scalars))
    entry = {"dtype": dtype, "shape": shape}
    count = None
    if isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        count = int(np.prod(shape, dtype=object)) if shape else 1
    if dtype == "string":
        n = count if count is not None and count <= 8 else draw(st.integers(0, 4))
        entry["strings"] = draw(st.one_of(st.lists(st.text(max_size=4), min_size=n, max_size=n), json_values))
        return entry
    nbytes = None
    if count is not None and dtype in om._DTYPES:
        nbytes = count * om._np_dtype(dtype, "").itemsize
    entry["nbytes"] = draw(st.one_of(st.just(nbytes), nasty_ints)) if nbytes is not None else draw(nasty_ints)
    aligned = st.integers(-2, payload_len // om.ALIGN + 2).map(lambda k: k * om.ALIGN)
    entry["offset"] = draw(st.one_of(aligned, nasty_ints, scalars))
    return entry


@st.composite
def om_header_edits(draw) -> bytes:
    header, payload = copy.deepcopy(draw(st.sampled_from(OM_PARTS)))
    deep = None
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "replace", "delete", "grow", "tensor", "tensor", "op", "opset",
                                     "options", "deep", "payload"]))
        paths = [p for p in _paths(header) if p and p[0] != "data_sha256"]
        if kind == "tensor" and header.get("tensors") and isinstance(header["tensors"], list):
            i = draw(st.integers(0, len(header["tensors"]) - 1))
            if draw(st.booleans()):
                header["tensors"][i] = draw(tensor_entries(len(payload)))
            elif isinstance(header["tensors"][i], dict):
                field = draw(st.sampled_from(["offset", "nbytes", "dtype", "shape", "strings"]))
                header["tensors"][i][field] = draw(st.one_of(nasty_ints, st.lists(dims, max_size=4), scalars))
        elif kind == "op":
            nodes = [p for p in paths if len(p) >= 2 and p[-2] == "nodes"]
            if nodes:
                node = _parent(header, (*draw(st.sampled_from(nodes)), None))
                if isinstance(node, dict):
                    field = draw(st.sampled_from(["op", "domain", "inputs", "outputs", "attrs", "name"]))
                    node[field] = draw(st.one_of(st.sampled_from(OP_NAMES + ["Frobnicate", ""]),
                                                 st.sampled_from([["x"], ["nowhere"], [None], ["", ""], []]),
                                                 st.dictionaries(nasty_text, json_values, max_size=2),
                                                 json_values))
        elif kind == "opset":
            graphs = [p for p in paths if p[-1] == "opsets"]
            if graphs:
                _parent(header, draw(st.sampled_from(graphs)))["opsets"] = draw(st.one_of(
                    st.dictionaries(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "ai.onnx.preview.training",
                                                     "opencann", "x"]), nasty_ints, max_size=3),
                    json_values))
        elif kind == "options":  # the build options and extras that loading reads
            section = draw(st.sampled_from(["extra", "build_options"]))
            if not isinstance(header.get(section), dict):
                header[section] = {}
            key = draw(st.sampled_from(["dynamic_batch_size", "input_format", "input_shape", "soc_version"]))
            header[section][key] = draw(st.one_of(st.lists(nasty_ints, max_size=3), json_values))
        elif kind == "deep" and deep is None and paths:
            path = draw(st.sampled_from(paths))
            deep = _deep(draw(st.sampled_from(["type", "optional", "list", "graph", "array"])),
                         draw(st.one_of(st.integers(1, 40), st.integers(800, 1100), st.integers(1, 3000))))
            _parent(header, path)[path[-1]] = DEEP_MARK
        elif kind == "payload":
            payload = draw(byte_mutations(payload)) if payload else draw(st.binary(max_size=128))
        elif paths:
            path = draw(st.sampled_from(paths))
            parent = _parent(header, path)
            if kind == "delete":
                del parent[path[-1]]
            elif kind == "grow" and isinstance(parent[path[-1]], list):
                parent[path[-1]].append(draw(json_values))
            elif kind == "grow" and isinstance(parent[path[-1]], dict):
                parent[path[-1]][draw(nasty_text)] = draw(json_values)
            else:
                parent[path[-1]] = draw(json_values)
    if draw(st.integers(0, 9)):  # mostly the right data checksum, so the checks behind it run
        header["data_sha256"] = hashlib.sha256(payload).hexdigest()
    text = json.dumps(header, separators=(",", ":"))
    if deep is not None:
        text = text.replace(json.dumps(DEEP_MARK), deep)
    return pack_om(text.encode("utf-8", "surrogatepass"), payload)


@FUZZ
@given(om_header_edits())
def test_om_header_edits_with_valid_checksums(data):
    check_om(data)


@st.composite
def om_raw_headers(draw) -> bytes:
    """Headers that are not what the writer produces: any bytes, non-UTF-8, any JSON document."""
    payload = draw(st.sampled_from([b"", OM_PARTS[0][1]]))
    kind = draw(st.sampled_from(["bytes", "json", "nonutf8", "deep"]))
    if kind == "bytes":
        head = draw(st.binary(max_size=256))
    elif kind == "json":
        doc = draw(st.one_of(json_values, st.fixed_dictionaries(
            {"data_sha256": st.just(hashlib.sha256(payload).hexdigest())},
            optional={"tensors": json_values, "graph": json_values, "build_options": json_values,
                      "extra": json_values, "target": json_values})))
        head = json.dumps(doc).encode("utf-8", "surrogatepass")
    elif kind == "nonutf8":
        text = json.dumps({"data_sha256": hashlib.sha256(payload).hexdigest(), "graph": {"name": "@"}})
        head = text.replace("@", "").encode()
        pos = draw(st.integers(0, len(head)))
        head = head[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\0"])) + head[pos:]
    else:
        head = _deep(draw(st.sampled_from(["array", "type", "list"])), draw(st.integers(1, 5000))).encode()
    return pack_om(head, payload)


@FUZZ
@given(om_raw_headers())
def test_om_arbitrary_headers(data):
    check_om(data)


# ---------------------------------------------------------------- ONNX: protobuf bytes


@FUZZ
@given(st.data())
def test_onnx_byte_mutations(data):
    seed = data.draw(st.sampled_from(ONNX_SEEDS), label="seed")
    check_onnx(data.draw(byte_mutations(seed), label="mutated"))


# ---------------------------------------------------------------- ONNX: protobufs edited field by field


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(num: int, payload: bytes) -> bytes:
    return _varint(num << 3 | 2) + _varint(len(payload)) + payload


def _deep_onnx(kind: str, depth: int) -> bytes:
    """A ModelProto nesting If subgraphs or sequence types ``depth`` deep, encoded by hand (no depth limit)."""
    if kind == "graph":
        out_vi = _field(1, b"o")
        g = _field(1, _field(2, b"c") + _field(2, b"o") + _field(4, b"Identity")) + _field(2, b"g") + \
            _field(12, out_vi)
        for _ in range(depth):
            attr = _field(1, b"then_branch") + _varint(20 << 3) + _varint(AttributeProto.GRAPH) + _field(6, g)
            attr2 = _field(1, b"else_branch") + _varint(20 << 3) + _varint(AttributeProto.GRAPH) + _field(6, g[:0])
            g = _field(1, _field(1, b"c") + _field(2, b"o") + _field(4, b"If") + _field(5, attr) +
                       _field(5, attr2)) + _field(2, b"g") + _field(12, out_vi)
        vi_c = _field(1, b"c") + _field(2, _field(1, _varint(1 << 3) + _varint(TensorProto.BOOL)))
        graph = g + _field(11, vi_c)
    else:
        tp = _field(1, _varint(1 << 3) + _varint(TensorProto.FLOAT))
        for _ in range(depth):
            tp = _field(4, _field(1, tp))
        vi = _field(1, b"x") + _field(2, tp)
        graph = _field(1, _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")) + _field(2, b"g") + \
            _field(11, vi) + _field(12, _field(1, b"y"))
    opset = _field(1, b"") + _varint(2 << 3) + _varint(17)
    return _varint(1 << 3) + _varint(8) + _field(8, opset) + _field(7, graph)


EXTERNAL_LOCATIONS = ["missing.bin", "../../etc/passwd", "/etc/passwd", "../" * 12 + "etc/passwd", "pyproject.toml",
                      "", ".", "/", "\x00", "a" * 300, "subdir/../../x.bin"]


def _graphs(g: onnx.GraphProto) -> list[onnx.GraphProto]:
    """``g`` and every subgraph inside it."""
    out = [g]
    for node in g.node:
        for a in node.attribute:
            for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs)):
                out.extend(_graphs(sub))
    return out


def _tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    out = []
    for g in _graphs(model.graph):
        out.extend(g.initializer)
        for node in g.node:
            out.extend(a.t for a in node.attribute if a.type == AttributeProto.TENSOR)
            out.extend(a.sparse_tensor.values for a in node.attribute if a.type == AttributeProto.SPARSE_TENSOR)
    return out


@st.composite
def onnx_edits(draw) -> bytes:
    kind0 = draw(st.sampled_from(["edit"] * 9 + ["deep"]))
    if kind0 == "deep":
        return _deep_onnx(draw(st.sampled_from(["graph", "type"])),
                          draw(st.one_of(st.integers(1, 40), st.integers(1, 200))))
    model = onnx.ModelProto.FromString(draw(st.sampled_from(ONNX_SEEDS)))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["op", "opset", "raw_data", "dims", "data_type", "missing_input",
                                     "drop_graph_input", "external", "attribute", "sparse", "value_info",
                                     "ir_version", "function"]))
        g = draw(st.sampled_from(_graphs(model.graph)))
        nodes = list(g.node)
        if kind == "op" and nodes:
            node = draw(st.sampled_from(nodes))
            if draw(st.booleans()):
                node.op_type = draw(st.sampled_from(OP_NAMES + ["Frobnicate", "", "Scale"]))
            else:
                node.domain = draw(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "local", "com.microsoft", "??"]))
        elif kind == "opset":
            if draw(st.booleans()) or not model.opset_import:
                model.opset_import.append(helper.make_opsetid(
                    draw(st.sampled_from(["", "ai.onnx", "ai.onnx.ml", "local", "com.microsoft"])), 1))
            op = draw(st.sampled_from(list(model.opset_import)))
            op.version = draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 1, 7, 17, 28, 29, 2**31, 2**40]))
        elif kind in ("raw_data", "dims", "data_type", "external") and _tensors(model):
            t = draw(st.sampled_from(_tensors(model)))
            if kind == "raw_data":
                t.ClearField("float_data")
                t.ClearField("int64_data")
                t.raw_data = draw(st.binary(max_size=40))
            elif kind == "dims":
                t.ClearField("dims")
                t.dims.extend(draw(st.lists(st.integers(-3, 6) | st.sampled_from([2**31, 2**40, 2**62, 2**63 - 1]),
                                            max_size=4)))
            elif kind == "data_type":
                t.data_type = draw(st.integers(0, 30))
            else:
                t.data_location = TensorProto.EXTERNAL
                if draw(st.booleans()):
                    t.raw_data = b""
                entries = {"location": draw(st.sampled_from(EXTERNAL_LOCATIONS) | st.text(max_size=8))}
                for key in ("offset", "length"):
                    if draw(st.booleans()):
                        entries[key] = draw(st.sampled_from(["0", "16", "-1", "x", "99999999999999999999"]))
                for key, value in entries.items():
                    e = t.external_data.add()
                    e.key, e.value = key, value
        elif kind == "missing_input" and nodes:
            node = draw(st.sampled_from(nodes))
            if node.input and draw(st.booleans()):
                node.input[draw(st.integers(0, len(node.input) - 1))] = draw(st.sampled_from(["nowhere", "", "y"]))
            else:
                node.input.append(draw(st.sampled_from(["nowhere", "", "x"])))
        elif kind == "drop_graph_input" and len(g.input):
            del g.input[draw(st.integers(0, len(g.input) - 1))]
        elif kind == "attribute" and nodes:
            node = draw(st.sampled_from(nodes))
            if node.attribute and draw(st.booleans()):
                a = draw(st.sampled_from(list(node.attribute)))
                a.type = draw(st.sampled_from(AttributeProto.AttributeType.values()))
                if draw(st.booleans()):
                    a.ref_attr_name = "r"
            else:
                node.attribute.append(helper.make_attribute(
                    draw(st.sampled_from(["foo", "axis", "value", "then_branch", "body", "alpha"])),
                    draw(st.one_of(st.integers(-5, 5), st.floats(allow_nan=False, width=32), st.text(max_size=5),
                                   st.lists(st.integers(-5, 5), min_size=1, max_size=3)))))
        elif kind == "sparse" and nodes:
            n_vals = draw(st.integers(0, 3))
            idx_shape = draw(st.sampled_from([(n_vals,), (n_vals, 2), (n_vals, 3)]))
            idx = np.array(draw(st.lists(st.integers(-5, 10), min_size=int(np.prod(idx_shape)),
                                         max_size=int(np.prod(idx_shape)))), np.int64).reshape(idx_shape)
            sp = helper.make_sparse_tensor(
                numpy_helper.from_array(np.arange(n_vals, dtype=np.float32), "v"),
                numpy_helper.from_array(idx, "i"),
                draw(st.lists(st.integers(-2, 4) | st.sampled_from([2**31, 2**40, 2**62]), max_size=3)))
            node = draw(st.sampled_from(nodes))
            node.attribute.append(helper.make_attribute("sparse_value", sp))
        elif kind == "value_info":
            vis = [*g.input, *g.output, *g.value_info]
            if vis:
                tt = draw(st.sampled_from(vis)).type.tensor_type
                if draw(st.booleans()):
                    tt.elem_type = draw(st.integers(0, 30))
                else:
                    tt.shape.ClearField("dim")
                    for d in draw(st.lists(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 2**40]),
                                           max_size=4)):
                        tt.shape.dim.add().dim_value = d
        elif kind == "ir_version":
            model.ir_version = draw(st.integers(-(2**63), 2**63 - 1) | st.sampled_from([0, 3, 8, 11, 99]))
        elif kind == "function":
            model.functions.append(helper.make_function(
                draw(st.sampled_from(["local", ""])), draw(st.sampled_from(["Scale", "Relu", "F"])), ["a"], ["b"],
                [helper.make_node(draw(st.sampled_from(["Frobnicate", "Relu", "Scale"])), ["a"], ["b"])],
                [helper.make_opsetid("", draw(st.sampled_from([17, 0, 2**40])))]))
    return model.SerializeToString()


@FUZZ
@given(onnx_edits())
def test_onnx_field_edits(data):
    check_onnx(data)


# ---------------------------------------------------------------- ONNX files with external data


@FUZZ
@given(location=st.sampled_from(EXTERNAL_LOCATIONS) | st.text(max_size=10), with_raw=st.booleans(),
       extra=st.dictionaries(st.sampled_from(["offset", "length", "checksum"]),
                             st.sampled_from(["0", "4", "16", "-1", "x", "99999999999999999999"]), max_size=2))
def test_onnx_file_external_data(tmp_path_factory, location, with_raw, extra):
    """A model file whose initializer names external data: missing, outside the model's folder, or odd."""
    folder = tmp_path_factory.mktemp("ext")
    (folder / "weights.bin").write_bytes(np.arange(4, dtype=np.float32).tobytes())
    model = onnx.ModelProto.FromString(ONNX_SEEDS[0])
    t = model.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    if not with_raw:
        t.raw_data = b""
    for key, value in {"location": location, **extra}.items():
        e = t.external_data.add()
        e.key, e.value = key, value
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    graph = accepts_or_acl_error(import_onnx, path)
    if graph is not None:
        read = os.path.normpath(os.path.join(folder, location))
        assert os.path.commonpath([read, folder]) == str(folder), f"read data outside the model folder: {location!r}"
        accepts_or_acl_error(Executor, graph)
    accepts_or_acl_error(import_onnx, model.SerializeToString())  # the same model as bytes never reads files


def test_onnx_bytes_never_read_files():
    """External data in a model given as bytes is refused, not read from the working directory."""
    model = onnx.ModelProto.FromString(ONNX_SEEDS[0])
    t = model.graph.initializer[0]
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "pyproject.toml"), ("offset", "0"), ("length", "16")):
        e = t.external_data.add()
        e.key, e.value = key, value
    with pytest.raises(AclError, match="external data"):
        import_onnx(model.SerializeToString())


def test_onnx_data_propagation_skips_long_vectors(monkeypatch):
    """ONNX's data propagation takes memory linear in a 1-D float tensor's length (a 2**40-long one exhausts
    it): such models are inferred without it. Found by this fuzzer."""
    data_prop = []
    real = onnx.shape_inference.infer_shapes

    def spy(model, *args, **kwargs):
        data_prop.append(kwargs.get("data_prop", False))
        if data_prop[-1] and model.graph.name in ("declared", "reshaped"):  # fail the test, not the machine
            raise RuntimeError("data propagation on a 2**40-long vector")
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    f32, n = TensorProto.FLOAT, 2**40
    declared = helper.make_graph([helper.make_node("Mul", ["x", "x"], ["y"])], "declared",
                                 [helper.make_tensor_value_info("x", f32, [n])],
                                 [helper.make_tensor_value_info("y", f32, None)])
    reshaped = helper.make_graph([helper.make_node("Reshape", ["x", "flat"], ["r"]),
                                  helper.make_node("Mul", ["r", "r"], ["y"])], "reshaped",
                                 [helper.make_tensor_value_info("x", f32, [2**20, 2**20])],
                                 [helper.make_tensor_value_info("y", f32, None)],
                                 [numpy_helper.from_array(np.array([-1], np.int64), "flat")])
    for g in (declared, reshaped):
        data_prop.clear()
        graph = import_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString())
        assert data_prop == [False], g.name
        assert graph.outputs[0].type.shape == (n,)
    import_onnx(ONNX_SEEDS[0])
    assert data_prop[-1] is True, "models without long vectors keep data propagation"

