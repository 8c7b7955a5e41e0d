"""Gradient patterns the TensorFlow importer rewrites: a weight shared across a batch (``x @ w``, ``w`` 2-D) gets
its gradient as one Gemm over the flattened rows instead of a stack of products and a Sum; a Softmax's gradient is
one ``opencann::SoftmaxGrad``; a Sum over no axes is no copy. The values are TensorFlow's."""
import numpy as np

from tests.tf.harness import oc, tf

RNG = np.random.default_rng(3)


def run_both(fn, *args):
    """(TensorFlow's outputs, opencann's outputs, the op types of opencann's compiled graph)."""
    expected = [t.numpy() for t in fn(*args)]
    adapter = oc.enable()
    try:
        got = [t.numpy() for t in fn(*args)]
    finally:
        oc.disable()
    ops = [n.op for p in adapter.programs.values() for n in p.executor.plan.graph.nodes]
    return expected, got, ops


def gradients(x, w, w3):
    with tf.GradientTape() as tape:
        tape.watch([x, w, w3])
        y = tf.matmul(x, w)  # BatchMatMulV2 of a 4-D x and a 2-D w: the Sum over both batch axes becomes a Gemm
        z = tf.matmul(x, w3)  # a 3-D w3 broadcast along the first axis only: stays a product and a Sum
        loss = tf.reduce_sum(tf.tanh(y) * tf.range(1.0, 6.0)) + tf.reduce_sum(z * z)
    return tape.gradient(loss, [x, w, w3])


def test_batched_weight_gradient_is_one_gemm_and_matches_tensorflow():
    x = tf.constant(RNG.standard_normal((2, 3, 7, 4)).astype(np.float32))
    w = tf.constant(RNG.standard_normal((4, 5)).astype(np.float32))
    w3 = tf.constant(RNG.standard_normal((3, 4, 5)).astype(np.float32))
    expected, got, ops = run_both(tf.function(gradients), x, w, w3)
    for e, g in zip(expected, got, strict=True):
        assert e.shape == g.shape
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)
    assert ops.count("Gemm") + ops.count("FusedGemm") == 1
    assert "ReduceSum" in ops and "MatMul" in ops  # w3's: a batch of products summed over the broadcast axis


def test_dynamic_batch_dimension():
    """Keras' short last batch traces the batch dimension as unknown: the rewrite still applies."""
    fn = tf.function(lambda x, w: tf.gradients(tf.reduce_sum(tf.matmul(x, w) ** 2), [w]),
                     input_signature=[tf.TensorSpec((None, 6, 4), tf.float32), tf.TensorSpec((4, 3), tf.float32)])
    x = tf.constant(RNG.standard_normal((5, 6, 4)).astype(np.float32))
    w = tf.constant(RNG.standard_normal((4, 3)).astype(np.float32))
    expected, got, ops = run_both(fn, x, w)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
    assert "Gemm" in ops and "ReduceSum" not in ops


def test_softmax_gradient_is_one_node_and_matches_tensorflow():
    @tf.function
    def f(x, g):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            last = tf.nn.softmax(x)
            first = tf.nn.softmax(x, axis=0)  # TensorFlow transposes around a last-axis Softmax
            loss = tf.reduce_sum(last * g) + tf.reduce_sum(tf.sin(first))
            y = tf.stop_gradient(last)
            near_miss = (g - tf.reduce_sum(g * y, 0, keepdims=True)) * y  # the pattern over another axis: not fused
        return [tape.gradient(loss, x), near_miss]

    x = tf.constant(RNG.standard_normal((3, 4, 6)).astype(np.float32) * 3)
    g = tf.constant(RNG.standard_normal((3, 4, 6)).astype(np.float32))
    expected, got, ops = run_both(f, x, g)
    for e, o in zip(expected, got, strict=True):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)
    assert ops.count("SoftmaxGrad") == 2


def test_a_sum_over_no_axes_is_its_input():
    @tf.function
    def f(x):
        return [tf.reduce_sum(x, []) * 2.0, tf.reduce_sum(x, [0, 1]), tf.reduce_sum(x, [-1], keepdims=True)]

    expected, got, ops = run_both(f, tf.constant(RNG.standard_normal((6, 5, 4)).astype(np.float32)))
    for e, o in zip(expected, got, strict=True):
        assert e.shape == o.shape
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-6)
    assert ops.count("ReduceSum") == 2
