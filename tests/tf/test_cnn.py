"""CNNs on opencann: Keras conv/pool/batch-norm models train like TensorFlow, and each conv, pooling and
fused batch-norm op (forward and gradients; NHWC and NCHW; SAME/VALID/EXPLICIT; strides; dilations)
matches TensorFlow."""
import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.fuse_elementwise import fuse_elementwise
from opencann.ops import cpu_tf, tf_nn
from opencann.runtime.executor import Executor
from opencann.tbe import fusion
from tests.tf.harness import assert_losses_match, assert_weights_match, fit_both, keras, oc, tf

RNG = np.random.default_rng(0)


def cnn_bn_sgdm():
    """The reference scenario: Conv2D, BatchNormalization, MaxPooling2D, DepthwiseConv2D,
    GlobalAveragePooling2D, Dropout, softmax Dense; SGD with momentum; categorical cross-entropy."""
    m = keras.Sequential([
        keras.Input((12, 12, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.MaxPooling2D(),
        keras.layers.DepthwiseConv2D(3, padding="same", activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dropout(0.25),  # opencann draws TF's masks bit for bit (Philox), so steps still match
        keras.layers.Dense(4, activation="softmax"),
    ])
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="categorical_crossentropy",
              metrics=["accuracy"])
    return m


def conv1d_net():
    m = keras.Sequential([
        keras.Input((16, 3)),
        keras.layers.Conv1D(6, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv1D(5, 3, dilation_rate=2, activation="relu"),
        keras.layers.AveragePooling1D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def transpose_net():
    m = keras.Sequential([
        keras.Input((8, 8, 2)),
        keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same", activation="relu"),
        keras.layers.AveragePooling2D(2),
        keras.layers.Conv2D(4, 2, padding="valid", groups=2),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def images(shape, n=160, classes=4):
    return RNG.random((n, *shape)).astype(np.float32), RNG.integers(0, classes, n)


def test_cnn_bn_sgdm_fit_evaluate_predict_match_tensorflow():
    x, labels = images((12, 12, 3))
    y = keras.utils.to_categorical(labels, 4)
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(cnn_bn_sgdm, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)  # kernels, BN gamma/beta and moving statistics
    assert adapter.executions >= len(oc_losses)  # every train step (and metric reads) ran on opencann
    expected = tf_model.evaluate(x[:48], y[:48], batch_size=16, verbose=0)
    reference = tf_model.predict(x[:40], batch_size=16, verbose=0)
    adapter = oc.enable()
    got = oc_model.evaluate(x[:48], y[:48], batch_size=16, verbose=0)
    predicted = oc_model.predict(x[:40], batch_size=16, verbose=0)
    assert adapter.executions > 0
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    np.testing.assert_allclose(predicted, reference, rtol=1e-4, atol=1e-6)


def benchmark_cnn():
    """``benchmarks/tf_train.py``'s CNN: its kernels split their work into pieces (groups of images, rows)."""
    from benchmarks.tf_train import cnn

    return cnn(keras)[0]


def test_benchmark_cnn_on_two_threads_trains_like_tensorflow():
    """The step's kernels split their work on two threads (``enable(threads=2)``); tests/test_cpu_tf.py checks
    each kernel's pieces against one thread bit for bit."""
    x, y = images((28, 28, 1), n=64, classes=10)
    runs = []
    for threads in (0, 2):  # 0: TensorFlow
        keras.utils.set_random_seed(0)
        model = benchmark_cnn()
        adapter = oc.enable(threads=threads) if threads else None
        try:
            history = model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
        finally:
            oc.disable()
        assert adapter is None or adapter.executions >= 2
        if adapter is not None:
            assert_gradients_planned(max(adapter.programs.values(), key=lambda p: p.calls).executor.plan)
        runs.append((history.history["loss"], model))
    (tf_loss, tf_model), (oc_loss, oc_model) = runs
    np.testing.assert_allclose(oc_loss, tf_loss, rtol=1e-4)
    assert_weights_match(tf_model, oc_model)


def assert_gradients_planned(plan):
    """The conv and pooling gradients have static output types (their sizes inputs converted to constants), so
    the large ones write into the step's arena instead of fresh memory."""
    steps = {s.node.op: s for s in plan.steps if s.node.op in ("ConvBackpropInput", "ConvBackpropFilter",
                                                               "MaxPoolGrad")}
    assert len(steps) == 3 and all(s.node.outputs[0].type.is_static for s in steps.values())
    assert steps["ConvBackpropInput"].arena >= 0 and steps["MaxPoolGrad"].arena >= 0


def test_benchmark_cnn_with_a_short_last_batch_trains_like_tensorflow():
    """The gradients' constant sizes come from each step program's own static batch: the short last batch (6 of
    38 images) runs a program of its own, with its own sizes."""
    x, y = images((28, 28, 1), n=38, classes=10)
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(benchmark_cnn, x, y, epochs=1, batch_size=16)
    assert len(adapter.programs) >= 2
    assert_losses_match(tf_losses, oc_losses, min_steps=3)
    assert_weights_match(tf_model, oc_model)


@pytest.mark.parametrize("make, shape", [(conv1d_net, (16, 3)), (transpose_net, (8, 8, 2))],
                         ids=["conv1d", "conv2d_transpose_avgpool_grouped"])
def test_conv_layers_train_like_tensorflow(make, shape):
    x, y = images(shape)
    tf_losses, oc_losses, tf_model, oc_model, _ = fit_both(make, x, y, epochs=2)
    assert_losses_match(tf_losses, oc_losses)
    assert_weights_match(tf_model, oc_model)


# --- single ops: forward and gradients against TensorFlow ------------------------------------------

def on_opencann(fn, *args):
    adapter = oc.enable()
    try:
        got = [t.numpy() for t in tf.nest.flatten(tf.function(fn)(*args))]
    finally:
        oc.disable()
    assert adapter.executions == 1
    return got


def run_both(fn, *args):
    """Outputs of ``tf.function(fn)`` on opencann, and TensorFlow's."""
    return on_opencann(fn, *args), [t.numpy() for t in tf.nest.flatten(tf.function(fn)(*args))]


def run_nchw(fn, x, *rest):
    """``fn(data_format)`` run NCHW on opencann, against TensorFlow NHWC (its CPU kernels lack NCHW); the
    first two outputs (the result and the input's gradient) are compared after moving channels last."""
    got = on_opencann(fn("NCHW"), np.ascontiguousarray(np.moveaxis(x, -1, 1)), *rest)
    _, expected = run_both(fn("NHWC"), x, *rest)
    return [*(np.moveaxis(g, 1, -1) for g in got[:2]), *got[2:]], expected


def assert_same(got, expected, rtol=1e-5):
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=rtol, atol=rtol * max(1.0, float(np.abs(e).max(initial=0))))


def loss_of(y):
    """A loss whose gradient is not linear in y (BN's input gradient would cancel out otherwise)."""
    return tf.reduce_sum(tf.sin(3 * y) * y)


def with_grads(forward, n_wrt):
    """``fn(*args) -> [y, d loss / d args[:n_wrt]...]``."""

    def fn(*args):
        with tf.GradientTape() as tape:
            tape.watch(args[:n_wrt])
            y = forward(*args)
            loss = loss_of(y)
        return [y, *tape.gradient(loss, args[:n_wrt])]

    return fn


CONV_CASES = {
    "same": dict(strides=1, padding="SAME"),
    "valid_stride2": dict(strides=2, padding="VALID"),
    "same_stride3": dict(strides=3, padding="SAME"),
    "same_dilated": dict(strides=1, padding="SAME", dilations=2),
    "explicit_stride2": dict(strides=2, padding=[[0, 0], [1, 2], [0, 1], [0, 0]]),
    "grouped": dict(strides=1, padding="SAME", groups=2),
}


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
def test_conv2d_and_gradients(case, data_format):
    spec = dict(CONV_CASES[case])
    groups = spec.pop("groups", 1)
    x = RNG.standard_normal((2, 9, 8, 4)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 4 // groups, 6)).astype(np.float32)

    def conv(fmt):
        pad = spec["padding"]
        if fmt == "NCHW" and isinstance(pad, list):
            pad = [pad[0], pad[3], pad[1], pad[2]]
        return with_grads(lambda x, w: tf.nn.conv2d(x, w, spec["strides"], pad, data_format=fmt,
                                                    dilations=spec.get("dilations")), 2)

    assert_same(*(run_both(conv("NHWC"), x, w) if data_format == "NHWC" else run_nchw(conv, x, w)))


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("channels", [1, 4])
def test_tf_conv_kernels_match_tensorflow(case, channels):
    """The opencann TFConv op (TF's NHWC Conv2D): reference and fast kernels against tf.nn.conv2d."""
    spec = dict(CONV_CASES[case])
    groups = spec.pop("groups", 1) if channels > 1 else 1
    x = RNG.standard_normal((2, 9, 8, channels)).astype(np.float32)
    w = RNG.standard_normal((3, 3, channels // groups, 6)).astype(np.float32)
    s, d, pad = spec["strides"], spec.get("dilations", 1), spec["padding"]
    expected = tf.nn.conv2d(x, w, s, pad, dilations=d).numpy()
    attrs = dict(strides=[1, s, s, 1], dilations=[1, d, d, 1], padding=pad if isinstance(pad, str) else "EXPLICIT",
                 explicit_paddings=[] if isinstance(pad, str) else sum(pad, []))
    assert_same([tf_nn.tf_conv(x, w, **attrs), cpu_tf.tf_conv(x, w, **attrs)], [expected, expected])


POOL_CASES = [(2, 2, "VALID"), (3, 2, "SAME"), (3, 1, "SAME"), (2, 3, "SAME"), (3, 2, "VALID")]


@pytest.mark.parametrize("ksize, strides, padding", POOL_CASES)
def test_tf_max_pool_kernels_match_tensorflow(ksize, strides, padding):
    x = RNG.standard_normal((2, 9, 8, 3)).astype(np.float32)
    expected = tf.nn.max_pool2d(x, ksize, strides, padding).numpy()
    attrs = dict(ksize=[1, ksize, ksize, 1], strides=[1, strides, strides, 1], padding=padding)
    assert_same([tf_nn.tf_max_pool(x, **attrs), cpu_tf.tf_max_pool(x, **attrs)], [expected, expected])


def test_tf_conv3d_and_max_pool3d_kernels_match_tensorflow():
    x = RNG.standard_normal((2, 5, 6, 5, 3)).astype(np.float32)
    w = RNG.standard_normal((2, 3, 3, 3, 4)).astype(np.float32)
    conv = dict(strides=[1, 1, 2, 2, 1], padding="SAME")
    pool = dict(ksize=[1, 2, 3, 3, 1], strides=[1, 1, 2, 2, 1], padding="SAME")
    assert_same([cpu_tf.tf_conv(x, w, **conv), cpu_tf.tf_max_pool(x, **pool)],
                [tf.nn.conv3d(x, w, **conv).numpy(), tf.nn.max_pool3d(x, **pool).numpy()])


@pytest.mark.parametrize("strides, padding, dilations", [(1, "SAME", 1), (2, "SAME", 1), (2, "VALID", 1),
                                                         (1, "SAME", 2), (1, "VALID", 3)])
def test_depthwise_conv2d_and_gradients(strides, padding, dilations):
    x = RNG.standard_normal((2, 9, 8, 3)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 3, 2)).astype(np.float32)
    fn = with_grads(lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, strides, strides, 1], padding,
                                                        dilations=[dilations] * 2 if dilations > 1 else None), 2)
    assert_same(*run_both(fn, x, w))  # dilations go through SpaceToBatchND / BatchToSpaceND


def test_depthwise_nchw():
    x = RNG.standard_normal((2, 7, 6, 3)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 3, 2)).astype(np.float32)

    def fn(fmt):
        strides = [1, 2, 2, 1] if fmt == "NHWC" else [1, 1, 2, 2]
        return with_grads(lambda x, w: tf.raw_ops.DepthwiseConv2dNative(input=x, filter=w, strides=strides,
                                                                        padding="SAME", data_format=fmt), 2)

    assert_same(*run_nchw(fn, x, w))


def test_conv3d_and_gradients():
    x = RNG.standard_normal((2, 5, 6, 5, 3)).astype(np.float32)
    w = RNG.standard_normal((2, 3, 3, 3, 4)).astype(np.float32)
    fn = with_grads(lambda x, w: tf.nn.conv3d(x, w, [1, 1, 2, 2, 1], "SAME"), 2)
    assert_same(*run_both(fn, x, w))


def test_conv2d_transpose_and_gradients():
    x = RNG.standard_normal((2, 4, 5, 3)).astype(np.float32)
    w = RNG.standard_normal((3, 3, 2, 3)).astype(np.float32)
    fn = with_grads(lambda x, w: tf.nn.conv2d_transpose(x, w, [2, 8, 10, 2], 2, "SAME"), 2)
    assert_same(*run_both(fn, x, w))


@pytest.mark.parametrize("ksize, strides, padding", POOL_CASES)
@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool2d_and_gradients(kind, ksize, strides, padding):
    x = RNG.standard_normal((2, 9, 8, 3)).astype(np.float32)
    pool = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d
    assert_same(*run_both(with_grads(lambda x: pool(x, ksize, strides, padding), 1), x))


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_nchw_and_3d(kind):
    x = RNG.standard_normal((2, 7, 6, 3)).astype(np.float32)
    pool = tf.nn.max_pool2d if kind == "max" else tf.nn.avg_pool2d

    def fn(fmt):
        return with_grads(lambda x: pool(x, 3, 2, "SAME", data_format=fmt), 1)

    assert_same(*run_nchw(fn, x))
    pool3 = tf.nn.max_pool3d if kind == "max" else tf.nn.avg_pool3d
    x3 = RNG.standard_normal((2, 5, 6, 5, 2)).astype(np.float32)
    assert_same(*run_both(with_grads(lambda x: pool3(x, [2, 3, 3], [1, 2, 2], "SAME"), 1), x3))


def test_max_pool_explicit_padding():
    x = RNG.standard_normal((2, 7, 6, 3)).astype(np.float32)
    padding = [[0, 0], [1, 2], [2, 0], [0, 0]]
    assert_same(*run_both(with_grads(lambda x: tf.nn.max_pool2d(x, 3, 2, padding), 1), x))


@pytest.mark.parametrize("ksize, strides, padding", [(2, 2, "VALID"), (3, 2, "SAME")])
def test_relu_gradient_after_max_pool_gradient_is_fused(ksize, strides, padding):
    x = np.round(RNG.standard_normal((2, 8, 8, 3)), 1).astype(np.float32)  # ties and zeros
    pooled = with_grads(lambda x: tf.nn.max_pool2d(tf.nn.relu(x), ksize, strides, padding), 1)
    adapter = oc.enable()
    try:
        got = [t.numpy() for t in tf.function(pooled)(x)]
        graph = str(next(iter(adapter.programs.values())).executor.plan.graph)
    finally:
        oc.disable()
    assert "relu=1" in graph and "ReluGrad" not in graph and graph.count("MaxPoolGrad(") == 1
    assert_same(got, [t.numpy() for t in tf.function(pooled)(x)])


@pytest.mark.parametrize("c, m", [(16, 32), (1, 16), (3, 5)], ids=["direct", "direct_one_channel", "gemm"])
def test_bias_gradient_of_a_conv_fuses_into_its_filter_gradient(c, m):
    """A conv's BiasAddGrad is summed by its filter gradient's pass over the same output gradient (``bias_grad=1``,
    one node: ``fuse_tf_conv.fuse_bias_grads``), with TensorFlow's values; NCHW too."""
    x = RNG.standard_normal((2, 9, 10, c)).astype(np.float32)
    w = (RNG.standard_normal((3, 3, c, m)) / np.sqrt(9 * c)).astype(np.float32)  # outputs ~1: loss_of is tame
    b = RNG.standard_normal(m).astype(np.float32)

    def conv(fmt):
        return with_grads(lambda x, w, b: tf.nn.bias_add(tf.nn.conv2d(x, w, 1, "SAME", data_format=fmt), b,
                                                         data_format=fmt), 3)
    adapter = oc.enable()
    try:
        got = [t.numpy() for t in tf.function(conv("NHWC"))(x, w, b)]
        graph = str(next(iter(adapter.programs.values())).executor.plan.graph)
    finally:
        oc.disable()
    assert "bias_grad=1" in graph and "BiasAddGrad(" not in graph and graph.count("ConvBackpropFilter(") == 1
    assert_same(got, [t.numpy() for t in tf.function(conv("NHWC"))(x, w, b)])
    assert_same(*run_nchw(conv, x, w, b))


def test_max_pool_gradient_ties_go_to_the_first_maximum():
    x = np.maximum(np.round(RNG.standard_normal((2, 8, 8, 3)), 0), 0).astype(np.float32)  # many equal values
    assert_same(*run_both(with_grads(lambda x: tf.nn.max_pool2d(x, 3, 2, "SAME"), 1), x))


@pytest.mark.parametrize("data_format", ["NHWC", "NCHW"])
@pytest.mark.parametrize("mode", ["training", "inference", "running_average"])
def test_fused_batch_norm_and_gradients(mode, data_format):
    x = (RNG.standard_normal((4, 5, 6, 3)) * 2 + 1).astype(np.float32)
    scale, offset, mean = (RNG.standard_normal(3).astype(np.float32) for _ in range(3))
    var = RNG.random(3).astype(np.float32) + 0.5

    def bn(fmt):
        def fn(x, scale, offset, mean, var):
            with tf.GradientTape() as tape:
                tape.watch([x, scale, offset])
                y, batch_mean, batch_var, *_ = tf.raw_ops.FusedBatchNormV3(
                    x=x, scale=scale, offset=offset, mean=mean, variance=var, epsilon=1e-3, data_format=fmt,
                    exponential_avg_factor=0.3 if mode == "running_average" else 1.0, is_training=mode != "inference")
                loss = loss_of(y)
            return [y, *tape.gradient(loss, [x, scale, offset]), batch_mean, batch_var]

        return fn

    args = (x, scale, offset, mean, var)
    assert_same(*(run_both(bn("NHWC"), *args) if data_format == "NHWC" else run_nchw(bn, *args)))


def mean_gradient_graph(reps):
    """A global-average-pool gradient as TF writes it, ``Tile(dy [N,1,1,C], reps) / count``, then ReluGrad, the
    batch-norm gradient's sums and a product."""
    t = TensorType(np.float32, (4, 5, 6, 3))
    dy, f = Value("dy", TensorType(np.float32, (4, 1, 1, 3) if reps[1] > 1 else (4, 5, 6, 3))), Value("f", t)
    tiled, mean, rg, s, m = (Value(n, t) for n in ("tiled", "mean", "rg", "s", "m"))
    s.type = TensorType(np.float32, (1, 1, 1, 3))
    consts = [Value("reps", const=np.array(reps, np.int64)), Value("count", const=np.array(30.0, np.float32)),
              Value("axes", const=np.array([0, 1, 2], np.int64))]
    nodes = [Node("Tile", [dy, consts[0]], [tiled]), Node("Div", [tiled, consts[1]], [mean]),
             Node("ReluGrad", [mean, f], [rg], domain="opencann"),
             Node("ReduceSum", [rg, consts[2]], [s], {"keepdims": 1}), Node("Mul", [rg, f], [m])]
    return Graph(inputs=[dy, f], outputs=[s, m], nodes=nodes, initializers=consts, opsets={"": 18, "opencann": 1})


@pytest.mark.parametrize("reps", [[1, 5, 6, 1], [1, 1, 1, 1]])
def test_mean_gradient_tile_and_relu_grad_fuse_as_a_broadcast(reps):
    """A Tile repeating only size-1 axes is a broadcast, ReluGrad a select: both join one fused kernel, whose
    results match the unfused graph and NumPy; a Tile that copies data stays a Tile."""
    feeds = {"dy": RNG.standard_normal(mean_gradient_graph(reps).inputs[0].type.shape).astype(np.float32),
             "f": np.round(RNG.standard_normal((4, 5, 6, 3)), 1).astype(np.float32)}  # zeros: ReluGrad's edge
    want = Executor(mean_gradient_graph(reps)).run(feeds)
    fused = fuse_elementwise(mean_gradient_graph(reps), min_elements=1)
    assert [n.op for n in fused.nodes] == [fusion.OP]
    assert [n.op for n in fused.nodes[0].attrs["body"].nodes] == ["Tile", "Div", "ReluGrad", "ReduceSum", "Mul"]
    got = Executor(fused).run(feeds)
    rg = np.where(feeds["f"] > 0, np.tile(feeds["dy"], reps) / np.float32(30.0), 0)
    for g, w, n in zip(got, want, [rg.sum((0, 1, 2), keepdims=True), rg * feeds["f"]]):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-6)
    copying = mean_gradient_graph(reps)
    copying.nodes[0].inputs[1] = Value("reps2", const=np.array([2, 1, 1, 1], np.int64))
    copying.nodes[0].outputs[0].type = TensorType(np.float32, (8, *copying.nodes[0].outputs[0].type.shape[1:]))
    assert not fusion.fusible(copying.nodes[0])


def test_benchmark_cnn_with_bias_and_relu_in_the_conv_trains_like_tensorflow():
    """fuse_tf_conv: the stem conv takes its bias and Relu, the second its bias (out of its batch-norm statistics'
    group); losses and weights match TensorFlow's."""
    x, y = images((28, 28, 1), n=64, classes=10)
    tf_losses, oc_losses, tf_model, oc_model, adapter = fit_both(benchmark_cnn, x, y, epochs=1, batch_size=32)
    convs = [n for n in max(adapter.programs.values(), key=lambda p: p.calls).executor.plan.graph.nodes
             if n.op == "TFConv"]
    assert [(len(n.inputs), n.attrs.get("relu")) for n in convs] == [(3, 1), (3, 0)]
    np.testing.assert_allclose(oc_losses[-1], tf_losses[-1], rtol=1e-4)  # the epoch's loss
    assert_weights_match(tf_model, oc_model)
