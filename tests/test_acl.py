"""The acl API against NumPy oracles: system, devices, contexts, streams/events, memory, models, single
operators and graphs. acl state is process-global, so every test runs between its own init and finalize."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import opencann.acl as acl
from opencann.acl import AclError, GraphBuilder, MemcpyKind
from opencann.acl.op import TensorDesc

H2H, H2D, D2H, D2D, DEFAULT = (MemcpyKind.HOST_TO_HOST, MemcpyKind.HOST_TO_DEVICE, MemcpyKind.DEVICE_TO_HOST,
                               MemcpyKind.DEVICE_TO_DEVICE, MemcpyKind.DEFAULT)
RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def code_of(fn, *args, **kwargs) -> int:
    """The AclError code ``fn(*args)`` raises (failing the test when it raises nothing)."""
    with pytest.raises(AclError) as info:
        fn(*args, **kwargs)
    return info.value.code


@pytest.fixture(autouse=True)
def acl_session():
    if acl.is_initialized():  # a test that failed half-way through init/finalize
        acl.finalize()
    acl.init()
    acl.set_device(0)
    yield
    if acl.is_initialized():
        acl.finalize()


@pytest.fixture
def gate():
    """A gate that holds a stream's work; opened at teardown (before finalize) even when the test fails."""
    event = threading.Event()
    yield event
    event.set()


def oracle(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)


def tiny(batch=2, name: str = "tiny") -> GraphBuilder:
    """relu(x @ W + B) with x of shape (batch, 4); ``batch=-1`` makes the batch dynamic."""
    g = GraphBuilder(name)
    x = g.input("x", np.float32, (batch, 4))
    g.output(g.op("Relu", g.op("Add", g.op("MatMul", x, g.constant(W, "W")), g.constant(B, "B"), name="add"),
                  name="relu"))
    return g


def host(x: np.ndarray) -> acl.Memory:
    mem = acl.malloc_host(x.nbytes)
    mem.numpy(x.dtype, x.shape)[...] = x
    return mem


def to_device(x: np.ndarray, size: int | None = None) -> acl.Memory:
    mem = acl.malloc(size or x.nbytes)
    acl.memcpy(mem, x, x.nbytes, H2D)
    return mem


def from_device(mem: acl.Memory, dtype, shape) -> np.ndarray:
    out = np.zeros(shape, dtype)
    h = acl.malloc_host(out.nbytes)
    acl.memcpy(h, mem, out.nbytes, D2H)
    out[...] = h.numpy(dtype, shape)
    h.free()
    return out


# ---------------------------------------------------------------- init / finalize


def test_repeat_init_is_an_error():
    assert acl.is_initialized()
    assert code_of(acl.init) == 100002
    assert acl.is_initialized()


def test_use_before_init_finalize_without_init_and_init_again():
    acl.finalize()
    assert not acl.is_initialized()
    for call in (acl.device_count, lambda: acl.set_device(0), acl.create_stream, lambda: acl.malloc(16),
                 lambda: acl.malloc_host(16), acl.get_mem_info, lambda: acl.load_from_mem(b"x"),
                 lambda: acl.op.run("Relu", np.ones(2, np.float32)), acl.current_context):
        assert code_of(call) == 100001
    assert code_of(acl.finalize) == 100037
    acl.init()
    acl.set_device(0)
    mem = acl.malloc(64)
    acl.memset(mem, 7, 64)
    assert (from_device(mem, np.uint8, (64,)) == 7).all()
    acl.finalize()
    assert code_of(acl.finalize) == 100037
    acl.init()


def test_init_config_file(tmp_path):
    acl.finalize()
    good = tmp_path / "acl.json"
    good.write_text('{"dump": {}}')
    acl.init(str(good))
    acl.finalize()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert code_of(acl.init, str(bad)) == 100003
    assert code_of(acl.init, str(tmp_path / "missing.json")) == 100003
    assert not acl.is_initialized()


def test_finalize_releases_models_contexts_and_streams():
    model = tiny().load()
    ctx = acl.create_context(0)
    stream = acl.create_stream()
    acl.finalize()
    assert not ctx.alive and not stream.alive
    acl.init()
    acl.set_device(0)
    assert code_of(model.run, np.ones((2, 4), np.float32)) == 100011


# ---------------------------------------------------------------- devices


def test_devices():
    n = acl.device_count()
    assert n >= 1
    acl.set_device(0)
    assert acl.get_device() == 0
    p = acl.device_properties(0)
    assert p.id == 0 and p.kind == "cpu"
    assert isinstance(p.name, str) and p.name
    assert p.total_memory > 0 and p.cores >= 1
    for bad in (-1, n, "0", 0.0, True, None):
        assert code_of(acl.set_device, bad) == 200002
        assert code_of(acl.device_properties, bad) == 200002
        assert code_of(acl.reset_device, bad) == 200002
    assert acl.get_device() == 0  # a failed set_device changes nothing


def test_reset_device():
    mem = acl.malloc(4096)
    mem.free()
    assert acl.allocator_stats(0).cached > 0
    acl.reset_device(0)
    assert code_of(acl.get_device) == 200002
    assert code_of(acl.current_context) == 200005
    assert code_of(acl.malloc, 16) == 200005
    acl.set_device(0)
    assert acl.allocator_stats().cached == 0
    assert acl.current_context().alive


# ---------------------------------------------------------------- contexts


def test_contexts_are_per_thread():
    default = acl.current_context()
    ctx = acl.create_context(0)
    assert acl.current_context() is ctx and ctx is not default and ctx.device_id == 0
    seen = {}

    def other() -> None:
        try:
            seen["before"] = code_of(acl.current_context)
            seen["device_before"] = code_of(acl.get_device)
            acl.set_context(ctx)
            seen["after"] = acl.current_context()
            seen["device_after"] = acl.get_device()
        except BaseException as exc:  # reported by the main thread
            seen["error"] = exc

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert "error" not in seen, seen.get("error")
    assert seen["before"] == 200005 and seen["device_before"] == 200002
    assert seen["after"] is ctx and seen["device_after"] == 0
    assert acl.current_context() is ctx  # the other thread did not change this one's
    acl.set_context(default)
    assert acl.current_context() is default
    acl.set_context(ctx)
    stream = acl.create_stream()
    assert stream.context is ctx
    acl.destroy_context(ctx)
    assert not ctx.alive and not stream.alive
    assert code_of(acl.current_context) == 200005
    assert code_of(acl.set_context, ctx) == 200005
    assert code_of(acl.destroy_context, ctx) == 200005
    assert code_of(acl.set_context, "ctx") == 100000
    assert code_of(stream.synchronize) == 200005
    acl.set_device(0)
    assert acl.current_context() is default


# ---------------------------------------------------------------- streams and events


def test_stream_create_synchronize_destroy():
    stream = acl.create_stream()
    mem = acl.malloc(256)
    acl.memset_async(mem, 3, 256, stream)
    stream.synchronize()
    assert (from_device(mem, np.uint8, (256,)) == 3).all()
    stream.destroy()
    stream.destroy()  # destroying twice is harmless
    assert code_of(stream.synchronize) == 200005
    assert code_of(acl.memset_async, mem, 1, 1, stream) == 200005
    assert code_of(acl.create_event().record, stream) == 200005


def test_event_record_on_destroyed_stream_leaves_the_event_usable():
    stream = acl.create_stream()
    stream.destroy()
    event = acl.create_event()
    with pytest.raises(AclError):
        event.record(stream)
    assert event.query()
    event.synchronize()  # must not hang


def test_wait_event_across_streams(gate):
    s1, s2 = acl.create_stream(), acl.create_stream()
    mem = acl.malloc(4)
    acl.memset(mem, 0, 4)
    s1.enqueue(gate.wait)
    acl.memset_async(mem, 9, 4, s1)
    done = acl.create_event()
    done.record(s1)
    s2.wait_event(done)
    seen = acl.malloc_host(4)
    acl.memcpy_async(seen, mem, 4, D2H, s2)
    assert not done.query()
    gate.set()
    s2.synchronize()
    assert done.query()
    assert (seen.numpy() == 9).all()  # s2 copied only after s1's memset
    s1.synchronize()


def test_a_thousand_async_copies_and_ops_complete_in_order():
    stream = acl.create_stream()
    desc = TensorDesc(np.float32, (1,))
    slot, one = acl.malloc(4), to_device(np.ones(1, np.float32))
    sources = [np.array([i], np.float32) for i in range(1000)]
    logs = [acl.malloc_host(4) for _ in range(1000)]
    for src, log in zip(sources, logs):
        acl.memcpy_async(slot, src, 4, H2D, stream)
        acl.op.execute("Add", [(desc, slot), (desc, one)], [(desc, slot)], stream=stream)
        acl.memcpy_async(log, slot, 4, D2H, stream)
    stream.synchronize()
    got = np.array([log.numpy(np.float32)[0] for log in logs])
    np.testing.assert_array_equal(got, np.arange(1000, dtype=np.float32) + 1)


def test_events_query_synchronize_and_elapsed_time(gate):
    stream = acl.create_stream()
    start, end = acl.create_event(), acl.create_event()
    assert start.query()  # never recorded: nothing to wait for
    assert code_of(acl.elapsed_time, start, end) == 100000
    stream.enqueue(gate.wait)
    start.record(stream)
    stream.enqueue(lambda: time.sleep(0.05))
    end.record(stream)
    assert not start.query() and not end.query()
    assert code_of(acl.elapsed_time, start, end) == 100000  # not complete yet
    gate.set()
    end.synchronize()
    assert start.query() and end.query()
    assert acl.elapsed_time(start, end) >= 45.0
    # recording again: elapsed_time must not read the previous (stale) timestamps
    gate.clear()
    stream.enqueue(gate.wait)
    end.record(stream)
    assert code_of(acl.elapsed_time, start, end) == 100000
    gate.set()
    stream.synchronize()
    assert acl.elapsed_time(start, end) >= 45.0
    end.destroy()


def test_stream_reports_the_first_error_at_synchronize():
    stream = acl.create_stream()
    desc, bad = TensorDesc(np.float32, (2,)), TensorDesc(np.float32, (3,))
    x, y = to_device(np.ones(2, np.float32)), acl.malloc(16)
    acl.op.execute("Relu", [(desc, x)], [(bad, y)], stream=stream)
    event = acl.create_event()
    event.record(stream)  # after the failure: the event still completes
    assert code_of(stream.synchronize) == 100022
    stream.synchronize()  # the error was reported once
    assert event.query()
    event.synchronize()
    other = acl.create_stream()
    other.wait_event(event)
    other.synchronize()


# ---------------------------------------------------------------- memory


def test_malloc_policies_and_sizes():
    for policy in acl.MallocPolicy:
        mem = acl.malloc(1000, policy)
        assert mem.size == 1000 and mem.on_device and mem.ptr % 64 == 0
        mem.free()
        assert mem.freed
    assert acl.malloc(8, int(acl.MallocPolicy.NORMAL_ONLY)).size == 8
    assert code_of(acl.malloc, 16, 99) == 100000
    for size in (0, -1, 1.5, True, "16"):
        assert code_of(acl.malloc, size) == 100000
        assert code_of(acl.malloc_host, size) == 100000


def test_host_memory_numpy_views():
    mem = acl.malloc_host(24)
    assert not mem.on_device
    view = mem.numpy(np.float32, (2, 3))
    view[...] = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(mem.numpy(np.float32), np.arange(6, dtype=np.float32))
    assert mem.numpy().nbytes == 24
    with pytest.raises(AclError):
        mem.numpy(np.float32, (7,))
    acl.free_host(mem)
    assert code_of(mem.numpy) == 100000


def test_memcpy_every_kind_round_trip():
    x = np.arange(64, dtype=np.int32)
    h1, h2 = acl.malloc_host(x.nbytes), acl.malloc_host(x.nbytes)
    d1, d2 = acl.malloc(x.nbytes), acl.malloc(x.nbytes)
    acl.memcpy(h1, x, x.nbytes, H2H)  # numpy -> host memory
    acl.memcpy(h2, h1, x.nbytes, H2H)
    acl.memcpy(d1, h2, x.nbytes, H2D)
    acl.memcpy(d2, d1, x.nbytes, D2D)
    acl.memset(h1, 0, x.nbytes)
    acl.memcpy(h1, d2, x.nbytes, D2H)
    np.testing.assert_array_equal(h1.numpy(np.int32), x)
    # DEFAULT: any direction
    y = x[::-1].copy()
    acl.memcpy(d1, y.tobytes(), y.nbytes, DEFAULT)
    acl.memcpy(d2, d1, y.nbytes, DEFAULT)
    acl.memcpy(h2, d2, y.nbytes, DEFAULT)
    acl.memcpy(h1, h2, y.nbytes, DEFAULT)
    np.testing.assert_array_equal(h1.numpy(np.int32), y)
    # a partial copy leaves the rest alone
    acl.memcpy(h1, x, 8, DEFAULT)
    np.testing.assert_array_equal(h1.numpy(np.int32)[:2], x[:2])
    np.testing.assert_array_equal(h1.numpy(np.int32)[2:], y[2:])


@pytest.mark.parametrize("kind", list(MemcpyKind))
def test_memcpy_checks_destination_size(kind):
    src_dev = kind in (D2H, D2D)
    dst_dev = kind in (H2D, D2D)
    src = acl.malloc(256) if src_dev else acl.malloc_host(256)
    dst = acl.malloc(100) if dst_dev else acl.malloc_host(100)
    acl.memcpy(dst, src, 100, kind)
    assert code_of(acl.memcpy, dst, src, 101, kind) == 100000
    assert code_of(acl.memcpy, dst, src, 256, kind) == 100000
    stream = acl.create_stream()
    assert code_of(acl.memcpy_async, dst, src, 101, kind, stream) == 100000
    assert code_of(acl.memcpy, dst, np.zeros(10, np.uint8), 11, kind if not src_dev else DEFAULT) == 100000
    assert code_of(acl.memcpy, dst, src, -1, kind) == 100000
    stream.synchronize()


def test_memcpy_kind_mismatch():
    h, d = acl.malloc_host(16), acl.malloc(16)
    arr = np.zeros(16, np.uint8)
    wrong = [(h, d, H2H), (d, h, H2H), (d, d, H2H),
             (h, h, H2D), (h, arr, H2D), (d, d, H2D), (h, d, H2D),
             (h, h, D2H), (h, arr, D2H), (d, d, D2H), (d, h, D2H),
             (d, h, D2D), (h, d, D2D), (d, arr, D2D), (h, h, D2D)]
    for dst, src, kind in wrong:
        assert code_of(acl.memcpy, dst, src, 16, kind) == 100000, (dst, src, kind)
    assert code_of(acl.memcpy, d, h, 16, 7) == 100000
    assert code_of(acl.memcpy, arr, h, 16, DEFAULT) == 100000  # the destination must be acl memory
    assert code_of(acl.memcpy, d, [1, 2], 2, DEFAULT) == 100000


def test_memcpy_async_and_memset_async_on_a_stream():
    stream = acl.create_stream()
    x = RNG.standard_normal(100).astype(np.float32)
    d, h = acl.malloc(x.nbytes), acl.malloc_host(x.nbytes)
    acl.memcpy_async(d, x, x.nbytes, H2D, stream)
    acl.memcpy_async(h, d, x.nbytes, D2H, stream)
    stream.synchronize()
    np.testing.assert_array_equal(h.numpy(np.float32), x)
    acl.memset_async(d, 0xFF, 40, stream)
    acl.memcpy_async(h, d, x.nbytes, D2H, stream)
    stream.synchronize()
    assert (h.numpy()[:40] == 0xFF).all()
    np.testing.assert_array_equal(h.numpy(np.float32)[10:], x[10:])


def test_memset():
    mem = acl.malloc(100)
    acl.memset(mem, 0, 100)
    acl.memset(mem, 0xAB, 50)
    got = from_device(mem, np.uint8, (100,))
    assert (got[:50] == 0xAB).all() and (got[50:] == 0).all()
    for value, count in ((256, 1), (-1, 1), (1.0, 1), (1, 101), (1, -1)):
        assert code_of(acl.memset, mem, value, count) == 100000
        assert code_of(acl.memset_async, mem, value, count, acl.create_stream()) == 100000


def test_get_mem_info_and_allocator_stats():
    free0, total = acl.get_mem_info()
    assert total == acl.device_properties(0).total_memory and 0 < free0 <= total
    before = acl.allocator_stats().in_use
    mem = acl.malloc(1 << 20)
    free1, total1 = acl.get_mem_info()
    assert total1 == total and free1 <= free0 - (1 << 20)
    assert acl.allocator_stats().in_use - before >= 1 << 20
    mem.free()
    assert acl.get_mem_info()[0] == free0
    assert acl.allocator_stats().in_use == before


def test_double_free_and_use_after_free():
    d, h = acl.malloc(32), acl.malloc_host(32)
    acl.free(d)
    assert code_of(acl.free, d) == 100000
    assert code_of(d.free) == 100000
    assert code_of(acl.memcpy, d, h, 8, H2D) == 100000
    assert code_of(acl.memcpy, h, d, 8, D2H) == 100000
    assert code_of(acl.memset, d, 0, 8) == 100000
    assert code_of(lambda: d.ptr) == 100000
    acl.free_host(h)
    assert code_of(acl.free_host, h) == 100000
    assert code_of(acl.free, "not memory") == 100000


# ---------------------------------------------------------------- models


def test_model_save_load_from_file_and_mem(tmp_path):
    path = tiny().save(str(tmp_path / "tiny"))
    assert path.endswith("tiny.om")
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    from_file = acl.load_from_file(path)
    with open(path, "rb") as f:
        from_mem = acl.load_from_mem(f.read())
    assert from_file.id != from_mem.id
    for model in (from_file, from_mem):
        (y,) = model.run(x)
        np.testing.assert_allclose(y, oracle(x), rtol=1e-6, atol=1e-6)
    from_file.unload()
    np.testing.assert_allclose(from_mem.run(x)[0], oracle(x), rtol=1e-6, atol=1e-6)
    assert code_of(acl.load_from_file, tmp_path / "missing.om") == 100003
    assert code_of(acl.load_from_mem, b"not an om file at all, long enough to parse") == 100013
    data = bytearray(open(path, "rb").read())
    data[-1] ^= 0xFF
    assert code_of(acl.load_from_mem, bytes(data)) == 100013


def test_model_built_from_onnx():
    from opencann.compiler import om
    from opencann.compiler.pipeline import compile_graph
    from opencann.frontends.onnx import import_onnx

    w = RNG.standard_normal((4, 5)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w"], ["h"], name="gemm", transB=0),
         helper.make_node("Sigmoid", ["h"], ["y"], name="sigmoid")],
        "onnx_tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])], [numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model = acl.load_from_mem(om.dumps(compile_graph(import_onnx(proto.SerializeToString()))))
    assert [d.name for d in model.desc.inputs] == ["x"] and [d.name for d in model.desc.outputs] == ["y"]
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(model.run(x)[0], 1 / (1 + np.exp(-(x @ w))), rtol=1e-5, atol=1e-6)


def test_model_description():
    model = tiny().load()
    desc = model.desc
    assert desc.num_inputs == 1 and desc.num_outputs == 1
    (i,), (o,) = desc.inputs, desc.outputs
    assert (i.name, i.dtype, i.shape, i.format) == ("x", np.dtype(np.float32), (2, 4), "ND")
    assert o.name == "relu:0" and o.dtype == np.float32 and o.shape == (2, 3) and o.format == "ND"
    assert desc.input_size(0) == 32 and desc.output_size(0) == 24
    assert desc.input_index("x") == 0 and desc.dynamic_batch_sizes == []
    assert code_of(desc.input_index, "nope") == 100000
    assert code_of(desc.input_size, 1) == 100000
    assert code_of(desc.output_size, -1) == 100000
    # 4-D tensors carry the input format; other ranks are ND
    for fmt in ("NCHW", "NHWC"):
        g = GraphBuilder("image")
        img = g.input("image", np.float16, (1, 2, 3, 3))
        g.output(g.op("Relu", img, name="act"), g.op("ReduceMean", img, g.constant(np.array([2, 3])), name="m",
                                                      keepdims=0))
        m = g.load(input_format=fmt)
        assert [(d.dtype, d.shape, d.format) for d in m.desc.inputs] == [(np.float16, (1, 2, 3, 3), fmt)]
        assert [(d.shape, d.format) for d in m.desc.outputs] == [((1, 2, 3, 3), fmt), ((1, 2), "ND")]
        assert m.desc.input_size(0) == 36 and m.desc.output_size(1) == 4
        x = RNG.standard_normal((1, 2, 3, 3)).astype(np.float16)
        y, mean = m.run(x)
        np.testing.assert_array_equal(y, np.maximum(x, 0))
        np.testing.assert_allclose(mean, x.astype(np.float32).mean(axis=(2, 3)), rtol=1e-2, atol=1e-3)


def _datasets(model, x: np.ndarray):
    inp = acl.Dataset([acl.DataBuffer(to_device(x, model.desc.input_size(0)))])
    out = acl.Dataset().add(acl.DataBuffer(acl.malloc(model.desc.output_size(0))))
    return inp, out


def test_execute_and_execute_async_on_datasets():
    model = tiny().load()
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    inp, out = _datasets(model, x)
    assert len(inp) == 1 and inp[0].size == 32
    model.execute(inp, out)
    np.testing.assert_allclose(from_device(out[0].mem, np.float32, (2, 3)), oracle(x), rtol=1e-6, atol=1e-6)
    assert model.current_output_dims(0) == (2, 3)
    stream = acl.create_stream()
    x2 = RNG.standard_normal((2, 4)).astype(np.float32)
    acl.memcpy_async(inp[0].mem, x2, x2.nbytes, H2D, stream)
    model.execute_async(inp, out, stream)
    result = acl.malloc_host(24)
    acl.memcpy_async(result, out[0].mem, 24, D2H, stream)
    stream.synchronize()
    np.testing.assert_allclose(result.numpy(np.float32, (2, 3)), oracle(x2), rtol=1e-6, atol=1e-6)
    # errors of an asynchronous execution surface at synchronize
    model.execute_async(acl.Dataset(), out, stream)
    assert code_of(stream.synchronize) == 100017


def test_model_input_and_output_buffer_checks():
    model = tiny().load()
    x = np.ones((2, 4), np.float32)
    inp, out = _datasets(model, x)
    small_in = acl.Dataset([acl.DataBuffer(acl.malloc(32), 31)])
    assert code_of(model.execute, small_in, out) == 100017
    assert code_of(model.execute, acl.Dataset([acl.DataBuffer(acl.malloc(16))]), out) == 100017
    assert code_of(model.execute, acl.Dataset(), out) == 100017
    assert code_of(model.execute, [inp[0]], out) == 100017
    assert code_of(model.execute, inp, acl.Dataset([acl.DataBuffer(acl.malloc(23))])) == 100018
    assert code_of(model.execute, inp, acl.Dataset()) == 100018
    assert code_of(model.run, x.astype(np.float64)) == 100017
    assert code_of(model.run, np.ones((3, 4), np.float32)) == 100017
    assert code_of(model.run) == 100017
    assert code_of(acl.DataBuffer, acl.malloc(8), 9) == 100000
    assert code_of(acl.DataBuffer, np.zeros(8)) == 100000
    assert code_of(acl.Dataset().add, "buffer") == 100000
    assert code_of(acl.Dataset().set_dims, 0, (1,)) == 100000


def test_wrong_model_id():
    model = tiny().load()
    assert code_of(acl.unload, 12345) == 100011
    assert code_of(acl.unload, "1") == 100011
    model_id = model.id
    acl.unload(model)
    assert code_of(acl.unload, model_id) == 100011
    assert code_of(model.unload) == 100011
    assert code_of(model.run, np.ones((2, 4), np.float32)) == 100011
    inp, out = _datasets(tiny().load(), np.ones((2, 4), np.float32))
    assert code_of(model.execute, inp, out) == 100011


def test_model_built_for_another_device_kind():
    data = tiny().to_bytes(soc_version="cuda")
    assert code_of(acl.load_from_mem, data) == 200004
    assert code_of(tiny().compile, soc_version="npu") == 100000


def test_dynamic_batch():
    model = tiny(batch=-1).load(dynamic_batch_size=[1, 2, 4])
    desc = model.desc
    assert desc.dynamic_batch_sizes == [1, 2, 4]
    assert desc.inputs[0].shape == (-1, 4) and desc.outputs[0].shape == (-1, 3)
    assert desc.input_size(0) == 4 * 4 * 4 and desc.output_size(0) == 4 * 3 * 4
    x = RNG.standard_normal((4, 4)).astype(np.float32)
    inp, out = _datasets(model, x)
    assert code_of(model.execute, inp, out) == 100017  # batch not chosen yet
    for batch in (1, 2, 4):
        model.set_dynamic_batch_size(inp, 0, batch)
        model.execute(inp, out)
        assert model.current_output_dims(0) == (batch, 3)
        got = from_device(out[0].mem, np.float32, (batch, 3))
        np.testing.assert_allclose(got, oracle(x[:batch]), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(model.run(x[:batch])[0], oracle(x[:batch]), rtol=1e-6, atol=1e-6)
    assert code_of(model.set_dynamic_batch_size, inp, 0, 3) == 100000
    assert code_of(model.run, x[:3]) == 100017
    static = tiny().load()
    assert code_of(static.set_dynamic_batch_size, inp, 0, 2) == 100019
    # the same builder compiles again with a static batch: compiling does not change the builder's graph
    g = tiny(batch=2)
    g.load(dynamic_batch_size=[1, 2])
    assert g.load().desc.inputs[0].shape == (2, 4)


def test_dynamic_shapes_with_set_dims():
    g = GraphBuilder("dyn")
    x = g.input("x", np.float32, (2, 3))
    g.output(g.op("Mul", g.op("Relu", x), g.constant(np.float32(2))))
    model = g.load(input_shape={"x": [2, -1]})
    assert model.desc.inputs[0].shape == (2, -1) and model.desc.input_size(0) == 0
    assert model.desc.outputs[0].shape == (2, -1)
    mem_in, mem_out = acl.malloc(2 * 10 * 4), acl.malloc(2 * 10 * 4)
    inp, out = acl.Dataset([acl.DataBuffer(mem_in)]), acl.Dataset([acl.DataBuffer(mem_out)])
    assert code_of(model.execute, inp, out) == 100017  # dims not set
    for n in (1, 5, 10):
        x = RNG.standard_normal((2, n)).astype(np.float32)
        acl.memcpy(mem_in, x, x.nbytes, H2D)
        inp.set_dims(0, (2, n))
        model.execute(inp, out)
        assert model.current_output_dims(0) == (2, n)
        np.testing.assert_array_equal(from_device(mem_out, np.float32, (2, n)), 2 * np.maximum(x, 0))
    inp.set_dims(0, (2, 11))
    assert code_of(model.execute, inp, out) == 100017  # 88 bytes wanted, 80 in the buffer
    inp.set_dims(0, (3, 2))
    assert code_of(model.execute, inp, out) == 100017  # the static dimension is checked


# ---------------------------------------------------------------- concurrency and resources


def test_eight_threads_share_one_model():
    model = tiny().load()
    errors: list[str] = []

    def worker(seed: int) -> None:
        try:
            acl.set_device(0)
            rng = np.random.default_rng(seed)
            inp, out = _datasets(model, np.zeros((2, 4), np.float32))
            for i in range(200):
                x = rng.standard_normal((2, 4)).astype(np.float32)
                if i % 2:
                    (y,) = model.run(x)
                else:
                    acl.memcpy(inp[0].mem, x, x.nbytes, H2D)
                    model.execute(inp, out)
                    y = from_device(out[0].mem, np.float32, (2, 3))
                if not np.allclose(y, oracle(x), rtol=1e-6, atol=1e-6):
                    errors.append(f"thread {seed} run {i}")
        except BaseException as exc:
            errors.append(f"thread {seed}: {exc!r}")

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert model.loaded.executions == 8 * 200


def test_threads_unloading_one_model_release_it_once(monkeypatch):
    from opencann.acl.state import STATE

    lookup = STATE.models.get

    def slow_get(model_id):  # widen the window between finding the model and removing it
        model = lookup(model_id)
        time.sleep(0.002)
        return model

    monkeypatch.setattr(STATE.models, "get", slow_get)
    stats = acl.allocator_stats()
    base = stats.in_use
    for _ in range(5):
        model, barrier, codes = tiny().load(), threading.Barrier(8), []

        def unload(model: acl.Model, barrier: threading.Barrier, codes: list[int]) -> None:
            barrier.wait()
            try:
                model.unload()
                codes.append(0)
            except AclError as exc:
                codes.append(exc.code)

        threads = [threading.Thread(target=unload, args=(model, barrier, codes)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [0] + [100011] * 7
        assert stats.in_use == base


def test_load_unload_cycles_do_not_grow_memory():
    data = tiny().to_bytes()
    stats = acl.allocator_stats()
    base_in_use = stats.in_use
    acl.load_from_mem(data).unload()
    after_one = (stats.reserved, stats.allocations)
    assert stats.in_use == base_in_use
    for _ in range(999):
        model = acl.load_from_mem(data)
        model.unload()
    assert (stats.reserved, stats.allocations) == after_one
    assert stats.in_use == base_in_use
    assert acl.load_from_mem(data).run(np.ones((2, 4), np.float32))[0].shape == (2, 3)


# ---------------------------------------------------------------- single operators


def test_op_execute_on_device_memory():
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = RNG.standard_normal((3, 4)).astype(np.float32)
    desc = TensorDesc(np.float32, (3, 4))
    da, db, dc = to_device(a), to_device(b), acl.malloc(a.nbytes)
    acl.op.execute("Add", [(desc, da), (desc, db)], [(desc, dc)])
    np.testing.assert_array_equal(from_device(dc, np.float32, (3, 4)), a + b)
    size = acl.op.cache_size()
    b2 = RNG.standard_normal((3, 4)).astype(np.float32)
    acl.memcpy(db, b2, b2.nbytes, H2D)
    stream = acl.create_stream()
    acl.op.execute("Add", [(desc, da), (desc, db)], [(desc, dc)], stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(from_device(dc, np.float32, (3, 4)), a + b2)
    assert acl.op.cache_size() == size  # same signature: the cached compilation
    # attributes are part of the signature
    out = TensorDesc(np.float32, (3, 1))
    dm = acl.malloc(12)
    acl.op.execute("ReduceMax", [(desc, da)], [(out, dm)], attrs={"axes": [1]}, opset=13)
    np.testing.assert_allclose(from_device(dm, np.float32, (3, 1)), a.max(axis=1, keepdims=True))
    assert acl.op.cache_size() == size + 1
    assert code_of(acl.op.execute, "Add", [(desc, da), (desc, dm)], [(desc, dc)]) == 100000  # 48 B described
    assert code_of(acl.op.execute, "Add", [da, db], [(desc, dc)]) == 100000
    assert code_of(acl.op.execute, "Relu", [(desc, da)], [(out, dm)]) == 100022


def test_op_run_and_cache():
    x = RNG.standard_normal((5, 7)).astype(np.float32)
    (y,) = acl.op.run("Relu", x)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    size = acl.op.cache_size()
    (y2,) = acl.op.run("Relu", -x)
    np.testing.assert_array_equal(y2, np.maximum(-x, 0))
    assert acl.op.cache_size() == size
    acl.op.run("Relu", x[:2])
    assert acl.op.cache_size() == size + 1  # a new shape is a new signature
    values, indices = acl.op.run("TopK", x, np.array([2]), n_outputs=2, axis=1)
    np.testing.assert_array_equal(values, -np.sort(-x, axis=1)[:, :2])
    np.testing.assert_array_equal(indices, np.argsort(-x, axis=1, kind="stable")[:, :2])


def test_unknown_op():
    x = np.ones(3, np.float32)
    assert code_of(acl.op.run, "NoSuchOp", x) == 100024
    desc = TensorDesc(np.float32, (3,))
    mem = to_device(x)
    assert code_of(acl.op.execute, "NoSuchOp", [(desc, mem)], [(desc, acl.malloc(12))]) == 100024


# ---------------------------------------------------------------- graphs


def test_graph_compile_to_memory_and_om(tmp_path):
    g = tiny()
    compiled = g.compile()
    assert compiled.target == "cpu" and compiled.build_options["precision_mode"] == "force_fp32"
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    in_memory = acl.load_from_mem(g.to_bytes())
    on_disk = acl.load_from_file(g.save(str(tmp_path / "g.om")))
    loaded = g.load()
    for model in (in_memory, on_disk, loaded):
        np.testing.assert_allclose(model.run(x)[0], oracle(x), rtol=1e-6, atol=1e-6)
    empty = GraphBuilder("empty")
    empty.input("x", np.float32, (1,))
    assert code_of(empty.compile) == 100000
    assert code_of(g.op, "Relu", "x") == 100000


def _softmax_mlp() -> tuple[GraphBuilder, callable]:
    w1 = RNG.standard_normal((8, 16)).astype(np.float32) / 3
    w2 = RNG.standard_normal((16, 5)).astype(np.float32) / 3
    g = GraphBuilder("mlp")
    x = g.input("x", np.float32, (4, 8))
    h = g.op("Relu", g.op("MatMul", x, g.constant(w1)))
    g.output(g.op("Softmax", g.op("MatMul", h, g.constant(w2)), axis=-1))

    def ref(x):
        z = np.maximum(x @ w1, 0) @ w2
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    return g, ref


@pytest.mark.parametrize("mode", ["force_fp16", "allow_mix_precision"])
def test_precision_modes(mode):
    g, ref = _softmax_mlp()
    x = RNG.standard_normal((4, 8)).astype(np.float32)
    fp32 = g.load().run(x)[0]
    np.testing.assert_allclose(fp32, ref(x), rtol=1e-5, atol=1e-6)
    low = g.load(precision_mode=mode)
    assert low.desc.inputs[0].dtype == np.float32 and low.desc.outputs[0].dtype == np.float32
    y = low.run(x)[0]
    assert y.dtype == np.float32
    assert np.linalg.norm(y - fp32) <= 1e-2 * np.linalg.norm(fp32)
    assert not np.array_equal(y, fp32)  # it really ran in lower precision
    # compiling in a low precision leaves the builder's graph float32
    np.testing.assert_array_equal(g.load().run(x)[0], fp32)


def test_unknown_precision_mode_and_build_option():
    g = tiny()
    assert code_of(g.compile, precision_mode="fp8_everything") == 100000
    assert code_of(g.load, precision_mode="") == 100000
    assert code_of(g.compile, precison_mode="force_fp16") == 100000
