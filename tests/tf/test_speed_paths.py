"""Fast training paths of the TF adapter: Numba/BLAS gradient kernels against the reference kernels, and the
adapter's variable write-back (TensorFlow adopts fresh buffers, never one opencann or the caller still holds)."""

import numpy as np
import pytest

from opencann.ops import cpu_tf, tf_nn, tf_ops, tf_training

CONVS = [  # input NHWC, filter (kh, kw, C, M), strides, padding, dilations
    ((2, 9, 8, 3), (3, 3, 3, 4), (1, 1), "VALID", (1, 1)),
    ((2, 9, 8, 3), (3, 2, 3, 5), (2, 2), "SAME", (1, 1)),
    ((1, 10, 11, 2), (3, 3, 2, 3), (1, 2), "SAME", (2, 1)),
    ((3, 7, 7, 1), (5, 5, 1, 2), (3, 1), "EXPLICIT", (1, 1)),
]


def _nhwc_attrs(strides, padding, dilations, data_format="NHWC"):
    per_axis = (lambda s: (1, 1, *s)) if data_format == "NCHW" else (lambda s: (1, *s, 1))
    explicit = (0, 0, 1, 0, 1, 2, 0, 0) if data_format == "NHWC" else (0, 0, 0, 0, 1, 0, 1, 2)  # H (1, 0), W (1, 2)
    return dict(strides=per_axis(strides), padding=padding, dilations=per_axis(dilations), data_format=data_format,
                explicit_paddings=explicit if padding == "EXPLICIT" else ())


def _out_shape(x_shape, f_shape, attrs):
    import math

    out = []
    for axis in range(2):
        i, k = x_shape[1 + axis], f_shape[axis]
        s, d = attrs["strides"][1 + axis], attrs["dilations"][1 + axis]
        span = (k - 1) * d + 1
        if attrs["padding"] == "SAME":
            out.append(math.ceil(i / s))
        else:
            pad = sum(attrs["explicit_paddings"][2 + 2 * axis:4 + 2 * axis]) if attrs["padding"] == "EXPLICIT" else 0
            out.append((i + pad - span) // s + 1)
    return (x_shape[0], *out, f_shape[3])


@pytest.mark.parametrize("case", CONVS)
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_conv_gradients_match_reference(case, data_format):
    x_shape, f_shape, strides, padding, dilations = case
    rng = np.random.default_rng(0)
    attrs = _nhwc_attrs(strides, padding, dilations, data_format)
    x = rng.standard_normal(x_shape).astype(np.float32)
    w = rng.standard_normal(f_shape).astype(np.float32)
    dy = rng.standard_normal(_out_shape(x_shape, f_shape, _nhwc_attrs(strides, padding, dilations))).astype(np.float32)
    if data_format == "NCHW":
        x, dy = x.transpose(0, 3, 1, 2).copy(), dy.transpose(0, 3, 1, 2).copy()
    sizes = np.array(x.shape, np.int32)
    want = tf_nn.conv_backprop_input(sizes, w, dy, **attrs)
    got = cpu_tf.conv_backprop_input(sizes, w, dy, **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    want = tf_nn.conv_backprop_filter(x, np.array(f_shape), dy, **attrs)
    got = cpu_tf.conv_backprop_filter(x, np.array(f_shape), dy, **attrs)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert got.dtype == want.dtype == np.float32


@pytest.mark.parametrize("ksize,strides,padding", [((2, 2), (2, 2), "VALID"), ((3, 3), (2, 2), "SAME"),
                                                   ((3, 2), (1, 1), "SAME")])
def test_max_pool_grad_matches_reference_with_ties(ksize, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 7, 6, 3)).astype(np.float32)  # many ties: the first maximum must win
    attrs = dict(ksize=(1, *ksize, 1), strides=(1, *strides, 1), padding=padding)
    out_hw = [(-(-i // s) if padding == "SAME" else (i - k) // s + 1) for i, k, s in zip(x.shape[1:3], ksize, strides)]
    g = rng.standard_normal((2, *out_hw, 3)).astype(np.float32)
    want = tf_nn.max_pool_grad(x, None, g, **attrs)  # overlapping windows: sums in another order
    np.testing.assert_allclose(cpu_tf.max_pool_grad(x, None, g, **attrs), want, rtol=1e-6, atol=1e-6)
    nchw = dict(attrs, ksize=(1, 1, *ksize), strides=(1, 1, *strides), data_format="NCHW")
    got = cpu_tf.max_pool_grad(x.transpose(0, 3, 1, 2), None, g.transpose(0, 3, 1, 2), **nchw)
    np.testing.assert_allclose(got, want.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_relu_grad_matches_reference():
    rng = np.random.default_rng(2)
    g, f = rng.standard_normal((2, 5, 7)).astype(np.float32), rng.standard_normal((2, 5, 7)).astype(np.float32)
    f[0, 0, :3] = [0.0, np.nan, -0.0]
    np.testing.assert_array_equal(cpu_tf.relu_grad(g, f), tf_ops.relu_grad(g, f))
    np.testing.assert_array_equal(cpu_tf.relu_grad(g.astype(np.float64), f), tf_ops.relu_grad(g.astype(np.float64), f))


OPTIMIZERS = [  # name, slots, scalar hyper-parameters, use_nesterov (None: no such attribute)
    *(("apply_momentum", 1, [0.1, 0.9], n) for n in (0, 1)),
    *(("apply_keras_momentum", 1, [0.1, 0.9], n) for n in (0, 1)),
    *(("apply_adam", 2, [0.9 ** 3, 0.999 ** 3, 1e-3, 0.9, 0.999, 1e-7], n) for n in (0, 1)),
    ("apply_rms_prop", 2, [1e-3, 0.9, 0.5, 1e-7], None),
]


def _optimizer_args(slots, scalars, dtype=np.float32):
    rng = np.random.default_rng(3)
    state = [rng.standard_normal((5, 7)).astype(dtype) for _ in range(1 + slots)]
    state[1:] = [np.abs(s) for s in state[1:]]  # second moments are non-negative
    grad = rng.standard_normal((5, 7)).astype(dtype)
    return state, [np.asarray(s, dtype) for s in scalars], grad


@pytest.mark.parametrize("name,slots,scalars,nesterov", OPTIMIZERS)
def test_fused_optimizer_updates_match_reference(name, slots, scalars, nesterov):
    state, hyper, grad = _optimizer_args(slots, scalars)
    kwargs = {} if nesterov is None else {"use_nesterov": nesterov}
    if "momentum" in name:  # var, accum, lr, grad, momentum
        args = [*state, hyper[0], grad, hyper[1]]
    else:
        args = [*state, *hyper, grad]
    want = getattr(tf_training, name)(*args, **kwargs)
    got = getattr(cpu_tf, name)(*args, **kwargs)
    assert len(got) == len(want) == 1 + slots
    for g, w in zip(got, want):
        assert g.dtype == w.dtype == np.float32
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    wide = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]  # the reference's path
    for g, w in zip(getattr(cpu_tf, name)(*wide, **kwargs), getattr(tf_training, name)(*wide, **kwargs)):
        assert g.dtype == np.float64
        np.testing.assert_array_equal(g, w)


# --- the adapter's variable reads and write-back ------------------------------------------------------

def test_written_buffers_stay_private_to_tensorflow():
    """TF adopts fresh result buffers and may update them in place later: a graph constant, a value also
    returned, one assigned to two variables, an unchanged variable and a user's snapshot must not follow."""
    from tests.tf.harness import oc, tf

    a, b, c = (tf.Variable(np.zeros(4096, np.float32)) for _ in range(3))

    @tf.function
    def step(x):
        a.assign(tf.ones(4096))  # a graph constant
        y = x * 2.0
        b.assign(y)
        c.assign(y)  # the same fresh array twice, and returned below
        return y

    snapshot = a.value()
    oc.enable()
    y = step(tf.fill([4096], 3.0))
    oc.disable()
    np.testing.assert_array_equal(snapshot.numpy(), 0)
    for var in (a, b, c):
        var.assign_add(tf.fill([4096], 100.0))  # TensorFlow may write into a buffer it owns alone
    np.testing.assert_array_equal(y.numpy(), 6)
    np.testing.assert_array_equal(b.numpy(), 106)
    np.testing.assert_array_equal(c.numpy(), 106)
    oc.enable()
    step(tf.fill([4096], 1.0))
    np.testing.assert_array_equal(a.numpy(), 1)  # the constant was not changed by TF's update of ``a``
    np.testing.assert_array_equal(c.numpy(), 2)


def test_handoff_keeps_only_arrays_nothing_else_holds():
    from opencann.frontends.tensorflow.adapter import handoff

    f32 = np.dtype(np.float32)
    weight, twice, returned = np.ones(3, f32), np.ones(3, f32), np.ones(3, f32)
    shared = np.ones((2, 3), f32)
    values = [np.ones(3, f32), np.ones((1, 3), f32).reshape(3), weight, twice, twice, np.ones((2, 3), f32)[0],
              shared.reshape(6), np.ones(3, np.float64), returned]
    read_only = np.ones(3, f32)
    read_only.flags.writeable = False
    values.append(read_only)
    outputs = [returned]  # noqa: F841 - a function output still refers to it
    got = handoff(values, [f32] * len(values))
    assert got[0] is values[0] and got[1] is values[1]  # fresh, or the sole view of a fresh array: as is
    assert all(g is not v for g, v in zip(got[2:], values[2:]))  # everything else is a copy
    assert all(g.dtype == f32 and g.flags.writeable for g in got)


def test_handoff_keeps_split_views_only_while_nothing_else_views_their_block():
    """A merged chain's results (disjoint views of one block, tf_ops.split_views) go to TF as they are while
    only they hold the block; any other view of it (even after a sibling died) makes them copies."""
    from opencann.frontends.tensorflow.adapter import handoff
    from opencann.ops.tf_ops import split_views

    f32 = np.dtype(np.float32)

    def split():
        block = np.arange(12, dtype=f32).reshape(3, 4).copy()
        return list(split_views(block, [block[0], block[1], block[2]]))

    values = split()
    got = handoff(values, [f32] * 3)
    assert all(g is v for g, v in zip(got, values))
    values = split()
    other = values[1].reshape(2, 2)  # a view of the block no chain made
    got = handoff(values, [f32] * 3)
    assert all(g is not v for g, v in zip(got, values)) and np.array_equal(got[1], other.reshape(4))
    values = split()
    other = values.pop().reshape(2, 2)  # a sibling gone, another view in its place: the count must not match
    got = handoff(values, [f32] * 2)
    assert all(g is not v for g, v in zip(got, values))
    block = np.arange(12, dtype=f32).reshape(3, 4)  # not the owner of its data: not recorded
    values = list(split_views(block, [block[0], block[1], block[2]]))
    del block
    assert all(g is not v for g, v in zip(handoff(values, [f32] * 3), values))
    values = split()
    got = handoff([values[0], values[0]], [f32] * 2)  # listed twice
    assert got[0] is not values[0] and got[1] is not values[0]
    from opencann.ops import tf_ops

    before = len(tf_ops._SPLIT)
    del values, got, other
    assert len(tf_ops._SPLIT) < before  # a block's record goes with it


def test_gradient_ops_infer_static_shapes():
    """BiasAddGrad, the sparse cross entropy and the activation gradients give static shapes to what follows
    (an optimizer update of a static shape is chained; a dynamic one is not)."""
    from opencann.compiler.ir import Graph, Node, TensorType, Value
    from opencann.compiler.passes.shape_inference import infer_shapes

    f32 = np.dtype(np.float32)
    logits, labels = Value("logits", TensorType(f32, (4, 3))), Value("labels", TensorType(np.dtype(np.int64), (4,)))
    act, nchw = Value("act", TensorType(f32, (4, 3))), Value("nchw", TensorType(f32, (2, 5, 3, 3)))
    out = {n: Value(n) for n in ("loss", "grad", "relu", "bias", "bias_nchw", "tanh", "odd")}
    nodes = [Node("SparseSoftmaxCrossEntropyWithLogits", [logits, labels], [out["loss"], out["grad"]],
                  domain="opencann"),
             Node("ReluGrad", [out["grad"], act], [out["relu"]], domain="opencann"),
             Node("BiasAddGrad", [out["relu"]], [out["bias"]], domain="opencann"),
             Node("BiasAddGrad", [nchw], [out["bias_nchw"]], {"data_format": "NCHW"}, domain="opencann"),
             Node("TanhGrad", [act, out["relu"]], [out["tanh"]], domain="opencann"),
             Node("SigmoidGrad", [act, labels], [out["odd"]], domain="opencann")]
    infer_shapes(Graph(inputs=[logits, labels, act, nchw], outputs=list(out.values()), nodes=nodes,
                       opsets={"": 17, "opencann": 1}))
    assert {n: v.type for n, v in out.items()} == {
        "loss": TensorType(f32, (4,)), "grad": TensorType(f32, (4, 3)), "relu": TensorType(f32, (4, 3)),
        "bias": TensorType(f32, (3,)), "bias_nchw": TensorType(f32, (5,)), "tanh": TensorType(f32, (4, 3)),
        "odd": None}  # inputs of two types: not inferred


def test_reads_see_eager_writes_between_calls_and_are_read_only():
    from tests.tf.harness import oc, tf

    v = tf.Variable(np.arange(3, dtype=np.float32))

    @tf.function
    def bump():
        v.assign(v + 1.0)
        return v.read_value()

    adapter = oc.enable()
    np.testing.assert_array_equal(bump().numpy(), [1, 2, 3])
    v.assign([10.0, 20.0, 30.0])  # eager TF write between compiled calls
    np.testing.assert_array_equal(bump().numpy(), [11, 21, 31])
    (program,) = adapter.programs.values()
    (view,) = program.io.read([v.handle])
    assert not view.flags.writeable  # a view of TF's buffer: kernels cannot write into it
    np.testing.assert_array_equal(view, [11, 21, 31])


def test_grouped_writes_adopt_aligned_arrays_and_reads_are_views():
    """One call writes every variable (TF adopts a 64-byte aligned array without copying), one reads them."""
    from opencann.frontends.tensorflow.adapter import VariableIO
    from tests.tf.harness import tf

    variables = [tf.Variable(np.zeros(4096, np.float32)), tf.Variable(np.int64(0)), tf.Variable(np.zeros((2, 2))),
                 tf.Variable(np.zeros((2, 3), np.float32)), tf.Variable(np.zeros(3, np.float32))]
    handles = [v.handle for v in variables]
    dtypes = [v.dtype for v in variables]
    io = VariableIO((handles, dtypes), (handles[:2] + handles[3:], dtypes[:2] + dtypes[3:]))
    raw = np.empty(4096 * 4 + 64, np.uint8)
    new = raw[-raw.ctypes.data % 64:][:4096 * 4].view(np.float32)
    new[:] = np.arange(4096)
    small = [np.array(7, np.int64), np.arange(6, dtype=np.float32).reshape(2, 3), np.array([9, 8, 7], np.float32)]
    io.write(handles[:2] + handles[3:], [new, *small])
    np.testing.assert_array_equal(variables[0].numpy(), np.arange(4096))
    for var, value in zip(variables[1:2] + variables[3:], small):
        np.testing.assert_array_equal(var.numpy(), value)
        assert var.numpy().shape == value.shape
    read = io.read(handles)
    assert read[0].ctypes.data == new.ctypes.data  # adopted, then read back in place
    assert [r.dtype for r in read] == [np.float32, np.int64, np.float64, np.float32, np.float32]
    for value, want in zip(read, [np.arange(4096), 7, np.zeros((2, 2)), *small[1:]]):
        np.testing.assert_array_equal(value, want)
        assert value.shape == np.shape(want) and not value.flags.writeable


def test_merged_chain_results_are_aligned_and_adopted_by_tensorflow():
    """ElementwiseChains' results (pieces of odd sizes too) start 64-byte aligned in one block: handoff keeps
    them and TF adopts them without a copy; the values are the chain's."""
    from opencann.frontends.tensorflow.adapter import VariableIO, handoff
    from tests.tf.harness import tf

    run = tf_ops._bind_chains(ops=["Mul", "Add"], operands=[0, 1, 2, 0], results=[3], shared=[1], pieces=3,
                              n_inputs=2)
    inputs = [np.full((4, 16), 2, np.float32), np.full(5, 3, np.float32), np.full(7, 4, np.float32), np.float32(0.5)]
    results = list(run(*inputs))
    assert [r.shape for r in results] == [(4, 16), (5,), (7,)]
    addresses = [r.ctypes.data for r in results]
    assert all(a % 64 == 0 for a in addresses)
    variables = [tf.Variable(np.zeros(r.shape, np.float32)) for r in results]
    handles = [v.handle for v in variables]
    io = VariableIO((handles, [tf.float32] * 3), (handles, [tf.float32] * 3))
    values = handoff(results, [np.dtype(np.float32)] * 3)
    assert all(v is r for v, r in zip(values, results))
    del results
    io.write(handles, values)
    del values
    assert [r.ctypes.data for r in io.read(handles)] == addresses
    for var, want in zip(variables, (3.0, 4.5, 6.0)):
        np.testing.assert_array_equal(var.numpy(), np.full(var.shape, want, np.float32))


def test_variable_io_runs_on_the_calling_thread():
    """inline_call runs a traced function's body on the caller's thread (calling the function itself hands it
    to TF's inter-op pool): the body's ops see this thread, and it computes what TF's own call does."""
    import threading

    from opencann.frontends.tensorflow.adapter import inline_call
    from tests.tf.harness import tf

    threads = []
    v = tf.Variable(np.arange(3, dtype=np.float32))

    @tf.function(autograph=False)
    def body(handle, x):
        seen = tf.numpy_function(lambda a: threads.append(threading.get_ident()) or a, [x], tf.float32)
        tf.raw_ops.AssignVariableOp(resource=handle, value=seen * 2.0)
        return tf.raw_ops.ReadVariableOp(resource=handle, dtype=tf.float32) + 1.0

    cf = body.get_concrete_function(v.handle, tf.TensorSpec([3], tf.float32))
    (out,) = inline_call(cf)([v.handle, tf.constant([1.0, 2.0, 3.0])], 1)
    np.testing.assert_array_equal(out.numpy(), [3, 5, 7])
    np.testing.assert_array_equal(v.numpy(), [2, 4, 6])
    np.testing.assert_array_equal(cf(v.handle, tf.constant([0.5, 1.0, 1.5])).numpy(), [2, 3, 4])  # TF's own call
    assert threads[0] == threading.get_ident()


def test_blas_threads_during_a_step(monkeypatch):
    from threadpoolctl import threadpool_info

    from opencann.frontends.tensorflow import adapter as adapter_module
    from opencann.ops import blas
    from tests.tf.harness import oc, tf

    def counts():  # every BLAS pool threadpoolctl sees, and MKL's (loaded by opencann, maybe after enable())
        mkl = blas.library()
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} | (
            {mkl.MKL_Get_Max_Threads()} if mkl is not None else set())

    seen = []
    run = adapter_module.Executor.run
    monkeypatch.setattr(adapter_module.Executor, "run", lambda self, feeds: seen.append(counts()) or run(self, feeds))
    before = {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}
    oc.enable(threads=1)
    np.testing.assert_allclose(tf.function(lambda x: x @ x)(tf.eye(3)).numpy(), np.eye(3))
    assert seen == [{1}]
    assert {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"} == before
    with pytest.raises(oc.AclError, match="threads"):
        oc.enable(threads=-1)


def test_two_step_threads_are_opencanns_workers_and_the_libraries_run_one():
    """A 2-thread step splits opencann's kernels over two workers; MKL, Numba and OpenBLAS run one thread (their
    barriers wait for descheduled workers and their idle workers spin); all are restored after the step."""
    import numba
    from threadpoolctl import threadpool_info

    from opencann.frontends.tensorflow.adapter import StepThreads
    from opencann.ops import blas
    from opencann.runtime import workers

    def pools():
        return [i["num_threads"] for i in threadpool_info() if i["internal_api"] == "openblas"], \
            numba.get_num_threads(), workers.size()

    before = pools()
    with StepThreads(2):
        openblas, numba_threads, size = pools()
        mkl = blas.library()
        assert set(openblas) <= {1} and numba_threads == 1 and size == 2
        assert mkl is None or mkl.MKL_Get_Max_Threads() == 1
    assert pools() == before



def test_step_threads_set_only_the_counts_not_at_one_and_restore_them():
    """A step reads each library's count and sets only those not already 1, back to their value after it."""
    from opencann.frontends.tensorflow.adapter import StepThreads

    threads = StepThreads(1)
    with threads:  # the first step adds Numba's calls
        pass
    counts, calls = {"one": 1, "three": 3}, []

    def setter(key):
        return lambda n: calls.append((key, n)) or counts.__setitem__(key, n)

    threads.counts = [(lambda key=key: counts[key], setter(key)) for key in counts]
    with threads:
        assert counts == {"one": 1, "three": 1}
    assert calls == [("three", 1), ("three", 3)] and counts == {"one": 1, "three": 3}


def test_step_threads_call_the_libraries_own_counts():
    """The C calls StepThreads uses read and set the counts Numba and threadpoolctl report."""
    import numba
    from threadpoolctl import ThreadpoolController

    from opencann.frontends.tensorflow.adapter import _library_counts, _numba_counts

    get, set_count = _numba_counts()
    before = numba.get_num_threads()
    assert get() == before
    set_count(1)
    try:
        assert numba.get_num_threads() == 1
    finally:
        set_count(before)
    assert numba.get_num_threads() == before
    for lib in ThreadpoolController().select(internal_api="openblas").lib_controllers:
        get, set_count = _library_counts(lib)
        before = lib.num_threads
        assert get() == before
        set_count(1)
        try:
            assert lib.num_threads == 1
        finally:
            set_count(before)
        assert lib.num_threads == before


def test_bound_elementwise_chain_is_numpys_ufuncs():
    """The executor's bound ElementwiseChain (ufuncs looked up once) gives NumPy's values, inf and nan included,
    without warnings; one result comes back bare, several as a tuple."""
    import warnings

    x, y = np.array([1.0, -2.0, 0.0, 9.0], np.float32), np.array([0.0, 4.0, 0.0, -1.0], np.float32)
    attrs = dict(ops=["Div", "Sqrt", "Sub"], operands=[0, 1, 1, -1, 3, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diff, quotient = tf_ops._bind_chain(**attrs, results=[4, 2])(x, y)
        single = tf_ops._bind_chain(**attrs, results=[2])(x, y)
    with np.errstate(all="ignore"):
        np.testing.assert_array_equal(quotient, x / y)
        np.testing.assert_array_equal(diff, np.sqrt(y) - x)
    assert diff.dtype == np.float32 and isinstance(single, np.ndarray)
    np.testing.assert_array_equal(single, quotient)
    assert tf_ops.elementwise_chain.bind_attrs is tf_ops._bind_chain
    np.testing.assert_array_equal(tf_ops.elementwise_chain(x, y, **attrs, results=[4]), diff)

def test_fast_kernels_are_the_cpu_kernels():
    from opencann.ops import registry

    for name in ("ConvBackpropFilter", "ConvBackpropInput", "MaxPoolGrad", "ReluGrad", "ApplyAdam", "ApplyMomentum",
                 "ApplyKerasMomentum", "ApplyRMSProp"):
        fn = registry.lookup(name, 1, "opencann").kernel_for("cpu")
        assert fn.__module__ == "opencann.ops.cpu_tf", name


def _slot_update_run(init: np.ndarray, grad: np.ndarray, on_opencann: bool, rate: float | None = None):
    """Two steps of a Keras-style slot and weight update (one fused group; ``rate``: its step size as a rank-0
    argument, like Adam's): (w, m, the data addresses of the second step's results on opencann, the adapter)."""
    from tests.tf.harness import oc, tf

    w, m = tf.Variable(init[0]), tf.Variable(init[1])

    @tf.function
    def step(g, lr):
        m.assign(m * 0.9 + g * 0.1)
        w.assign_sub(m * lr / (tf.sqrt(tf.abs(m)) + 1e-7))
        return tf.reduce_sum(g)

    lr = 0.01 if rate is None else tf.constant(rate)  # a Python float is a constant of the trace

    adapter = oc.enable() if on_opencann else None
    step(tf.constant(grad), lr)
    produced = []
    if adapter is not None:  # record where the second step's results live
        (program,) = adapter.programs.values()
        run = program.executor.run
        program.executor.run = lambda feeds: (lambda out: produced.extend(o.ctypes.data for o in out) or out)(
            run(feeds))
    step(tf.constant(grad * 0.5), lr)
    oc.disable()
    return w, m, produced, adapter


@pytest.mark.parametrize("rate", [None, 0.01])
def test_large_variable_updates_are_aligned_and_adopted(rate):
    """A fused group computing new variable values becomes FusedUpdate: its results start on 64-byte
    boundaries (also with a rank-0 input, widened to [1]), handoff passes them as they are, TF adopts them,
    and the values are TensorFlow's."""
    from opencann.frontends.tensorflow.adapter import handoff
    from opencann.ops.tf_ops import aligned_empty

    rng = np.random.default_rng(0)
    init = rng.standard_normal((2, 128, 160)).astype(np.float32)
    grad = rng.standard_normal((128, 160)).astype(np.float32)
    w_tf, m_tf, _, _ = _slot_update_run(init, grad, False, rate)
    w, m, produced, adapter = _slot_update_run(init, grad, True, rate)
    np.testing.assert_allclose(w.numpy(), w_tf.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(m.numpy(), m_tf.numpy(), rtol=1e-6, atol=1e-6)
    (program,) = adapter.programs.values()
    assert "FusedUpdate" in [n.op for n in program.executor.plan.graph.nodes]
    reads = program.io.read([w.handle, m.handle])
    assert {r.ctypes.data for r in reads} <= set(produced)  # TF adopted them, no copy
    (kept,) = handoff([aligned_empty((3, 5), np.float32)], [np.dtype(np.float32)])
    assert kept.ctypes.data % 64 == 0 and kept.base.dtype == np.uint8  # as it was, not a copy


def test_list_zeros_like_shares_one_read_only_zeros_per_shape():
    from opencann.ops.tf_control import tensor_list_zeros_like

    items = [np.ones((2, 3), np.float32), None, np.full((2, 3), 5, np.float32), np.ones(4, np.int32)]
    out = tensor_list_zeros_like(items)
    assert out[1] is None and out[0] is out[2] and not out[0].flags.writeable
    for x, z in zip(items[::2] + items[3:], out[::2] + out[3:]):
        assert z.shape == x.shape and z.dtype == x.dtype and not z.any()
    assert items[0].all()  # the input is untouched



def test_div_no_nan_and_sparse_cross_entropy_match_tensorflow():
    """DivNoNan (a division only where the divisor is not 0) and SparseSoftmaxCrossEntropyWithLogits against TF."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 4)).astype(np.float32)
    x[0, 0] = np.nan
    for y in (np.array([0, 2, 0, -1], np.float32), np.float32(0), np.float32(3)):
        out = tf_ops.div_no_nan(x, np.asarray(y))
        np.testing.assert_array_equal(out, tf.math.divide_no_nan(x, y).numpy())
        assert out.dtype == np.float32 and out.shape == (3, 4)
    assert tf_ops.div_no_nan(np.float32(2), np.ones((2, 1), np.float32)).shape == (2, 1)
    for a, b in ((3, 0), (np.nan, 0), (1, np.nan), (-1, -0.0), (0, 0), (1, 3), (-2, 7)):  # two scalars
        a, b = np.array(a, np.float32), np.array(b, np.float32)
        out = tf_ops.div_no_nan(a, b)
        assert out.dtype == np.float32 and out.shape == ()
        np.testing.assert_array_equal(out, tf.math.divide_no_nan(a, b).numpy())
        assert np.signbit(out) == np.signbit(tf.math.divide_no_nan(a, b).numpy())
    logits, labels = 4 * rng.standard_normal((9, 6)).astype(np.float32), rng.integers(0, 6, 9).astype(np.int32)
    loss, grad = tf_ops.sparse_softmax_cross_entropy(logits, labels)
    tf_loss, tf_grad = tf.raw_ops.SparseSoftmaxCrossEntropyWithLogits(features=logits, labels=labels)
    np.testing.assert_allclose(loss, tf_loss.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(grad, tf_grad.numpy(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(32, 10), (7, 1000)])
def test_sparse_cross_entropy_rounds_once_from_float64(shape):
    """The compiled float32 path against float64 math: within one rounding (TF's float32 arithmetic is not);
    a NaN logit makes its row NaN; float64 logits take NumPy's path; out-of-range labels are errors."""
    from opencann.errors import AclError
    from opencann.ops import cpu_tf

    rng = np.random.default_rng(6)
    logits, labels = 6 * rng.standard_normal(shape).astype(np.float32), rng.integers(0, shape[1], shape[0])
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    want_grad = np.exp(logp)
    want_grad[np.arange(shape[0]), labels] -= 1
    for dtype, rtol in ((np.float32, 1e-7), (np.float64, 1e-12)):
        loss, grad = cpu_tf.sparse_softmax_cross_entropy(logits.astype(dtype), labels.astype(np.int32))
        assert loss.dtype == grad.dtype == dtype
        np.testing.assert_allclose(loss, -logp[np.arange(shape[0]), labels], rtol=rtol, atol=rtol)
        np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol)
    logits[1, 3] = np.nan
    loss, grad = cpu_tf.sparse_softmax_cross_entropy(logits, labels)
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all() and not np.isnan(loss[[0, 2]]).any()
    for bad in (-1, shape[1]):
        labels[2] = bad
        for dtype in (np.float32, np.float64):
            with pytest.raises(AclError, match=f"label {bad} is outside"):
                cpu_tf.sparse_softmax_cross_entropy(logits.astype(dtype), labels)


def test_update_pool_hands_out_only_buffers_nothing_else_holds():
    from opencann.ops.tf_ops import UpdatePool, pooled

    pool, f32 = UpdatePool(4), np.dtype(np.float32)
    a = pool.empty((4, 5), f32)
    assert a.ctypes.data % 64 == 0 and pooled(a) and not pooled(a.copy())
    b = pool.empty((4, 5), f32)
    assert b.ctypes.data != a.ctypes.data  # ``a`` is held
    address = a.ctypes.data
    del a
    c = pool.empty((4, 5), f32)
    assert c.ctypes.data == address  # nothing but the pool held it: reused
    view = c.reshape(-1)[2:]  # a view holds the buffer's memory
    del c
    assert pool.empty((4, 5), f32).ctypes.data not in (address, b.ctypes.data)
    assert pool.empty((5, 4), f32).shape == (5, 4) and view.size == 18



def _held_steps(init: np.ndarray, grads: list, on_opencann: bool) -> list[np.ndarray]:
    """Steps of a fused slot and weight update; after each, the user reads w and m (TF tensors, kept) and checks
    at the end that every kept read still has its value: returns copies of those reads."""
    from tests.tf.harness import oc, tf

    w, m = tf.Variable(init), tf.Variable(init * 0.5)

    @tf.function
    def step(g):
        m.assign(m * 0.9 + g * 0.1)
        w.assign_sub(m * 0.01 / (tf.sqrt(tf.abs(m)) + 1e-7))
        return tf.reduce_sum(g)

    adapter = oc.enable() if on_opencann else None
    held = []
    try:
        for g in grads:
            step(tf.constant(g))
            held.append((w.read_value(), w.numpy().copy(), m.value(), m.numpy().copy()))
    finally:
        oc.disable()
    if adapter is not None:
        (program,) = adapter.programs.values()
        assert "FusedUpdate" in [n.op for n in program.executor.plan.graph.nodes]
    for w_held, w_copy, m_held, m_copy in held:
        np.testing.assert_array_equal(w_held.numpy(), w_copy)
        np.testing.assert_array_equal(m_held.numpy(), m_copy)
    return [c for h in held for c in (h[1], h[3])]


def test_pooled_updates_never_touch_values_tensorflow_or_the_user_still_hold():
    """Steps on opencann reuse a FusedUpdate's buffers once TF dropped them: values read between steps keep
    theirs, and the variables follow TensorFlow's own steps."""
    rng = np.random.default_rng(1)
    init = rng.standard_normal((128, 160)).astype(np.float32)
    grads = [rng.standard_normal((128, 160)).astype(np.float32) for _ in range(5)]
    for ours, theirs in zip(_held_steps(init, grads, True), _held_steps(init, grads, False), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_update_pool_reuses_the_buffers_tensorflow_dropped():
    from tests.tf.harness import oc, tf

    w = tf.Variable(np.ones((128, 160), np.float32))

    @tf.function
    def step(g):
        w.assign(w * 0.5 + g)
        return tf.reduce_sum(g)

    adapter = oc.enable()
    addresses = []
    try:
        for k in range(6):
            step(tf.fill([128, 160], float(k)))
            (program,) = adapter.programs.values()
            addresses.append(program.io.read([w.handle])[0].ctypes.data)
    finally:
        oc.disable()
    from opencann.ops import tf_ops

    (node,) = [n for n in program.executor.plan.graph.nodes if n.op == "FusedUpdate"]
    kept = {b.ctypes.data for bufs in tf_ops._pools[id(node.attrs["body"])].kept.values() for b in bufs}
    assert set(addresses) <= kept and len(kept) < len(addresses)  # every step wrote into a pooled buffer
    np.testing.assert_array_equal(w.numpy(), 0.5 ** 6 + sum(k * 0.5 ** (5 - k) for k in range(6)))
