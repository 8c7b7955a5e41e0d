"""General math, array, gradient and random ops: each tf.function gives on opencann what it gives on
TensorFlow (random streams bit for bit)."""
import numpy as np
import pytest

from tests.tf.harness import oc, tf

RNG = np.random.default_rng(0)
X = tf.constant(RNG.standard_normal((4, 6, 5)).astype(np.float32))
W = tf.constant(RNG.standard_normal((5, 3, 2)).astype(np.float32))
POS = tf.constant(RNG.uniform(0.5, 2.0, (4, 6)).astype(np.float32))


def run_both(fn, *args):
    """(TensorFlow's outputs, opencann's outputs) of a tf.function, as lists of arrays."""
    expected = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    adapter = oc.enable()
    try:
        got = tf.nest.map_structure(lambda t: t.numpy(), fn(*args))
    finally:
        oc.disable()
    assert adapter.executions >= 1
    return tf.nest.flatten(expected), tf.nest.flatten(got)


def assert_same(fn, *args, rtol=1e-5, atol=1e-6, exact=False):
    expected, got = run_both(fn, *args)
    assert len(expected) == len(got)
    for i, (e, g) in enumerate(zip(expected, got)):
        assert e.shape == g.shape and e.dtype == g.dtype, f"output {i}: {g.shape} {g.dtype} vs {e.shape} {e.dtype}"
        if exact:
            np.testing.assert_array_equal(g, e, err_msg=f"output {i}")
        else:
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=f"output {i}")


def test_einsum_and_batch_matmul_with_gradients():
    @tf.function
    def f(x, w):
        with tf.GradientTape() as tape:
            tape.watch([x, w])
            proj = tf.einsum("btd,dhk->bthk", x, w)
            scores = tf.einsum("bqhk,bthk->bhqt", proj, proj)
            ell = tf.einsum("...d,dhk->...hk", x, w)
            mm = tf.matmul(x, x, transpose_b=True) + tf.linalg.matmul(x, x[0], adjoint_b=True)
            mm_t = tf.matmul(x, x, transpose_a=True)
            loss = tf.reduce_sum(tf.nn.softmax(scores)) + tf.reduce_sum(ell ** 2) + tf.reduce_mean(mm) + tf.reduce_max(
                mm_t)
        return [proj, scores, ell, mm, mm_t, *tape.gradient(loss, [x, w])]

    assert_same(f, X, W, rtol=1e-4, atol=1e-5)


def test_elementwise_math_and_its_gradients():
    @tf.function
    def f(x, p):
        with tf.GradientTape() as tape:
            tape.watch([x, p])
            outs = [tf.math.erfc(x), tf.math.rsqrt(p), tf.math.log1p(p), tf.math.expm1(x), tf.math.xlogy(x, p),
                    tf.math.xdivy(x, p), tf.math.multiply_no_nan(x, p), tf.math.squared_difference(x, p),
                    tf.tanh(x), tf.sigmoid(x), tf.sqrt(p), tf.math.reciprocal(p), tf.nn.softplus(x),
                    tf.nn.softsign(x), tf.nn.elu(x), tf.nn.selu(x), tf.nn.leaky_relu(x, 0.3), tf.nn.relu6(3 * x),
                    tf.nn.log_softmax(x), tf.clip_by_value(x, -0.5, p), tf.math.cumsum(x, axis=1, reverse=True),
                    tf.math.cumprod(x, axis=0, exclusive=True),
                    tf.math.atan(x), tf.math.sinh(x)]
            loss = tf.add_n([tf.reduce_sum(o * (i + 1.0)) for i, o in enumerate(outs)])
        return [*outs, *tape.gradient(loss, [x, p]), tf.math.is_finite(x / (x - x[0, 0])),
                tf.math.not_equal(x, x[0]), tf.math.argmax(x, axis=1), tf.math.argmin(x, output_type=tf.int32)]

    assert_same(f, X[:, :, 0], POS, rtol=1e-4, atol=1e-5)


def test_reductions_with_gradients_and_broadcasting():
    @tf.function
    def f(x, b):
        with tf.GradientTape() as tape:
            tape.watch([x, b])
            y = x * b + b  # broadcasting: BroadcastGradientArgs in the gradient
            outs = [tf.reduce_sum(y, axis=[0, 2]), tf.reduce_mean(y, axis=-1, keepdims=True), tf.reduce_max(y, 1),
                    tf.reduce_min(y), tf.reduce_prod(y[:2, :2], axis=0), tf.reduce_logsumexp(y, axis=1),
                    tf.math.reduce_variance(y, axis=0), tf.norm(y, axis=-1)]
            loss = tf.add_n([tf.reduce_sum(o) for o in outs])
        grads = tape.gradient(loss, [x, b])
        return [*outs, *grads, tf.reduce_all(y > -10.0, axis=1), tf.reduce_any(y > 2.0)]

    assert_same(f, X, tf.constant(RNG.standard_normal((6, 1)).astype(np.float32)), rtol=1e-4, atol=1e-5)


def test_array_ops_and_their_gradients():
    @tf.function
    def f(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            parts = tf.split(x, 3, axis=1) + tf.split(x, [1, -1, 2], axis=2) + tf.unstack(x, axis=2)
            outs = [x[1:, ::2, 0], x[..., tf.newaxis, -1], tf.slice(x, [1, 0, 2], [-1, 3, 2]),
                    tf.concat([x, 2 * x], axis=1), tf.stack(parts[-2:], axis=1),
                    tf.pad(x, [[0, 1], [2, 0], [1, 1]]), tf.pad(x, [[1, 1], [1, 1], [0, 0]], mode="REFLECT"),
                    tf.pad(x, [[0, 0], [2, 1], [0, 2]], mode="SYMMETRIC"),
                    tf.gather_nd(x, [[0, 1], [3, 5]]), tf.gather(x, [2, 0], axis=1), tf.tile(x[:1], [2, 1, 1]),
                    tf.transpose(x, [2, 0, 1]), *parts]
            loss = tf.add_n([tf.reduce_sum(o * o) for o in outs])
        return [*outs, tape.gradient(loss, x)]

    assert_same(f, X)


def test_selection_indexing_and_casts():
    @tf.function
    def f(x, labels):
        cond = x > 0
        ints = tf.cast(x * 10, tf.int32)
        return [tf.where(cond, x, -x), tf.compat.v1.where(cond[:, 0, 0], x, 2 * x), tf.where(cond[0]),
                tf.one_hot(labels, 4, on_value=2.0, off_value=-1.0), tf.one_hot(labels, 3, axis=0),
                tf.bitcast(x, tf.int32), tf.bitcast(x[0, 0], tf.uint8),
                tf.scatter_nd([[1], [3], [1]], x[:3, 0], [5, 5]),
                tf.dynamic_stitch([[0, 2], [1, 2]], [x[:2, 0], x[2:4, 1]]), ints // 3, ints % 3, tf.shape(x),
                tf.size(x), tf.rank(x)]

    assert_same(f, X, tf.constant([0, 3, -1, 2, 5]), exact=True)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64, tf.float16, tf.bfloat16])
def test_stateless_random_streams_match_tensorflow(dtype):
    @tf.function
    def f(seed):
        return [tf.random.stateless_uniform([3, 33], seed, dtype=dtype),
                tf.random.stateless_uniform([7], seed + 1, minval=-2.0, maxval=5.0, dtype=dtype),
                tf.random.stateless_uniform([2, 5], seed, minval=-9, maxval=40, dtype=tf.int32),
                tf.random.stateless_uniform([6], seed, minval=0, maxval=2**40, dtype=tf.int64)]

    assert_same(f, tf.constant([7, -3]), exact=True)
    for seed in ([0, 0], [12345, 2**31 - 1]):
        normal = tf.function(lambda s: [tf.random.stateless_normal([4, 9], s, dtype=dtype),
                                        tf.random.stateless_truncated_normal([4, 9], s, dtype=dtype)])
        assert_same(normal, tf.constant(seed), rtol=1e-6, atol=2e-7)


def test_sorting_segments_and_matrices():
    @tf.function
    def f(x):
        return [tf.math.top_k(x, 3).values, tf.math.top_k(x, 3).indices, tf.sort(x, direction="DESCENDING"),
                tf.argsort(x), tf.roll(x, [2, -1], axis=[1, 0]), tf.linalg.band_part(x, -1, 0),
                tf.linalg.band_part(x, 1, 2), tf.math.segment_sum(x, [0, 0, 1, 3]),
                tf.math.segment_mean(x, [0, 0, 1, 3]), tf.math.segment_max(x, [0, 1, 1, 1]),
                tf.math.unsorted_segment_max(x, [2, 0, 2, -1], 4), tf.math.unsorted_segment_prod(x, [1, 0, 1, 0], 3),
                tf.linalg.diag_part(x[:, :4]), tf.linalg.diag(x[0]), tf.eye(3, 4), tf.math.atan2(x, x + 1.5),
                tf.norm(x, axis=1, keepdims=True), tf.searchsorted(tf.sort(x), x[:, :2]),
                tf.searchsorted(tf.sort(x), x[:, :2], side="right"),
                tf.math.in_top_k(tf.constant([1, 3, 5, 0]), x, 2)]

    assert_same(f, X[:, :, 0])
