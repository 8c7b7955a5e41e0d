"""TF1 graphs through ``oc.Session``: training matches a plain ``tf.compat.v1.Session`` step by step."""
import collections
import inspect

import numpy as np
import pytest

from tests.tf.harness import oc, tf

v1 = tf.compat.v1
OPTIMIZERS = {
    "adam": lambda: v1.train.AdamOptimizer(0.01),
    "gradient_descent": lambda: v1.train.GradientDescentOptimizer(0.1),
    "momentum": lambda: v1.train.MomentumOptimizer(0.05, 0.9),
    "nesterov": lambda: v1.train.MomentumOptimizer(0.05, 0.9, use_nesterov=True),
    "rmsprop": lambda: v1.train.RMSPropOptimizer(0.01, momentum=0.5, centered=True),
    "adagrad": lambda: v1.train.AdagradOptimizer(0.1),
}
Model = collections.namedtuple("Model", "graph x y loss train init params step")


def data(n=160, d=20, classes=4):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)).astype(np.float32), rng.integers(0, classes, n)


def tf1_model(optimizer: str, use_resource: bool = True, seed: int = 0, dropout: float = 0.0) -> Model:
    """The tf1_session_adam scenario: placeholders, get_variable, matmul + bias, sparse softmax CE
    (and, with ``dropout``, TF1 dropout and an exponentially decaying learning rate)."""
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(seed)
        x = v1.placeholder(tf.float32, [None, 20], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        w = v1.get_variable("w", [20, 16], use_resource=use_resource)  # glorot_uniform: RandomUniform
        b = v1.get_variable("b", [16], initializer=v1.zeros_initializer(), use_resource=use_resource)
        w2 = v1.get_variable("w2", [16, 4], initializer=v1.truncated_normal_initializer(stddev=0.1),
                             use_resource=use_resource)
        hidden = tf.nn.relu(tf.matmul(x, w) + b)
        logits = tf.matmul(v1.nn.dropout(hidden, rate=dropout) if dropout else hidden, w2)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        step = v1.train.get_or_create_global_step()
        opt = v1.train.AdamOptimizer(v1.train.exponential_decay(0.01, step, 10, 0.5)) if dropout \
            else OPTIMIZERS[optimizer]()
        train = opt.minimize(loss, global_step=step)
        init = v1.global_variables_initializer()
    return Model(graph, x, y, loss, train, init, [w, b, w2], step)


def train(session_class, model: Model, epochs: int = 3, batch: int = 16):
    """(initial weights, per-step losses, final weights, global step, full-data loss, programs compiled)."""
    x, y = data()
    with session_class(graph=model.graph) as sess:
        sess.run(model.init)
        initial = sess.run(model.params)
        losses = [sess.run([model.train, model.loss], {model.x: x[i:i + batch], model.y: y[i:i + batch]})[1]
                  for _ in range(epochs) for i in range(0, len(x), batch)]
        final, step = sess.run([model.params, model.step])
        full = sess.run(model.loss, feed_dict={"x:0": x, "y:0": y})
        compiled = len(getattr(sess, "programs", ()))
    return initial, losses, final, step, full, compiled


@pytest.mark.parametrize("optimizer,use_resource", [("adam", True), ("adam", False), ("gradient_descent", True),
                                                    ("momentum", True), ("momentum", False), ("nesterov", True),
                                                    ("rmsprop", True), ("adagrad", False)])
def test_training_matches_tensorflow_session(optimizer, use_resource):
    model = tf1_model(optimizer, use_resource)
    tf_init, tf_losses, tf_final, tf_step, tf_full, _ = train(v1.Session, model)
    oc_init, oc_losses, oc_final, oc_step, oc_full, compiled = train(oc.Session, model)
    for a, b in zip(tf_init, oc_init, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-6)  # initializers (random uniform, truncated normal) ran here
    assert len(oc_losses) == len(tf_losses) >= 20
    np.testing.assert_allclose(oc_losses, tf_losses, rtol=1e-4)
    for a, b in zip(tf_final, oc_final, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    assert oc_step == tf_step == len(tf_losses)
    np.testing.assert_allclose(oc_full, tf_full, rtol=1e-4)
    assert isinstance(oc_full, np.float32)
    assert compiled == 5  # init; weights; train step + loss; weights + step; loss: each compiled once


def test_dropout_and_learning_rate_decay_match_tensorflow():
    """TF1 dropout draws its masks with a stateful RandomUniform: opencann reproduces TF's stream."""
    model = tf1_model("adam", dropout=0.3)
    _, tf_losses, tf_final, *_ = train(v1.Session, model)
    _, oc_losses, oc_final, *_ = train(oc.Session, model)
    np.testing.assert_allclose(oc_losses, tf_losses, rtol=1e-4)
    for a, b in zip(tf_final, oc_final, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_fetch_structures_names_eval_and_feeding_intermediates():
    model = tf1_model("gradient_descent")
    x, y = data(8)
    logits = model.graph.get_tensor_by_name("MatMul_1:0")
    with oc.Session(graph=model.graph) as sess:
        sess.run(model.init)
        out = sess.run({"loss": model.loss.name, "pair": (model.step, model.params[0]), "op": model.train.name},
                       {model.x: x, model.y: y})
        assert set(out) == {"loss", "pair", "op"} and out["op"] is None and out["pair"][0] == 0
        assert out["pair"][1].shape == (20, 16) and np.isfinite(out["loss"])
        with sess.as_default():
            np.testing.assert_allclose(model.params[1].eval(), sess.run(model.params[1]))
            assert model.step.eval() == 1
        zeros = np.zeros((8, 4), np.float32)
        np.testing.assert_allclose(sess.run(model.loss, {logits: zeros, model.y: y}), np.log(4), rtol=1e-6)
        callable_loss = sess.make_callable(model.loss, [model.x, model.y])
        np.testing.assert_allclose(callable_loss(x, y), sess.run(model.loss, {model.x: x, model.y: y}))


def test_errors_uninitialized_unfed_bad_shape():
    model = tf1_model("adam")
    x, y = data(8)
    with oc.Session(graph=model.graph) as sess:
        with pytest.raises(oc.AclError, match="uninitialized value w"):
            sess.run(model.loss, {model.x: x, model.y: y})
        sess.run(model.init)
        with pytest.raises(oc.AclError, match="must feed a value for placeholder tensor 'y:0'"):
            sess.run(model.loss, {model.x: x})
        with pytest.raises(ValueError, match="Cannot feed value of shape"):
            sess.run(model.loss, {model.x: x[:, :3], model.y: y})
        is_init = v1.is_variable_initialized(model.params[0])
        assert sess.run(is_init)


def test_unsupported_ops_are_listed_with_call_sites():
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [3])
        z = tf.math.lgamma(x) + tf.math.digamma(x)
    with oc.Session(graph=graph) as sess, pytest.raises(oc.AclError) as info:
        sess.run(z, {x: np.ones(3, np.float32)})
    message = str(info.value)
    assert "Lgamma" in message and "Digamma" in message and "test_tf1.py" in message
    assert "opencann migrate" in message


def test_stateful_random_ops_follow_tensorflow_streams():
    graph = tf.Graph()
    with graph.as_default():
        v1.set_random_seed(7)
        ops = [tf.random.uniform([5, 3]), v1.random_normal([7], dtype=tf.float64), v1.truncated_normal([9]),
               tf.random.uniform([6], 0, 100, dtype=tf.int64)]
    with v1.Session(graph=graph) as sess:
        expected = [sess.run(ops), sess.run(ops)]  # the second run continues each op's stream
    with oc.Session(graph=graph) as sess:
        got = [sess.run(ops), sess.run(ops)]
    for want, have in zip(expected, got):
        for a, b in zip(want, have, strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)


UPDATES = {  # TF op -> (number of variable/slot inputs, hyper-parameters, attributes)
    "ResourceApplyGradientDescent": (1, {"alpha": 0.1}, {}),
    "ResourceApplyMomentum": (2, {"lr": 0.1, "momentum": 0.9}, {"use_nesterov": True}),
    "ResourceApplyKerasMomentum": (2, {"lr": 0.1, "momentum": 0.9}, {"use_nesterov": True}),
    "ResourceApplyAdam": (3, {"beta1_power": 0.81, "beta2_power": 0.99, "lr": 0.01, "beta1": 0.9, "beta2": 0.999,
                              "epsilon": 1e-7}, {"use_nesterov": True}),
    "ResourceApplyRMSProp": (3, {"lr": 0.01, "rho": 0.9, "momentum": 0.5, "epsilon": 1e-7}, {}),
    "ResourceApplyCenteredRMSProp": (4, {"lr": 0.01, "rho": 0.9, "momentum": 0.5, "epsilon": 1e-7}, {}),
    "ResourceApplyAdagrad": (2, {"lr": 0.1}, {"update_slots": True}),
    "ResourceApplyAdagradV2": (2, {"lr": 0.1, "epsilon": 1e-3}, {"update_slots": False}),
    "ResourceApplyAdadelta": (3, {"lr": 0.5, "rho": 0.9, "epsilon": 1e-3}, {}),
}


@pytest.mark.parametrize("op_type", sorted(UPDATES))
def test_update_kernels_match_tensorflow(op_type):
    """Each optimizer update, converted and run on opencann, against TF's kernel on the same values."""
    n, hyper, attrs = UPDATES[op_type]
    rng = np.random.default_rng(1)
    initial = [rng.random((3, 4)).astype(np.float32) * 0.1 + 0.5 for _ in range(n)]
    grad = rng.standard_normal((3, 4)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        variables = [v1.get_variable(f"s{i}", initializer=value, use_resource=True) for i, value in enumerate(initial)]
        handles = dict(zip(_slot_names(op_type, n), (v.handle for v in variables)))
        handles["delta" if op_type.endswith("GradientDescent") else "grad"] = grad
        update = getattr(tf.raw_ops, op_type)(**handles, **{k: np.float32(x) for k, x in hyper.items()}, **attrs)
        init = v1.global_variables_initializer()
    results = []
    for session_class in (v1.Session, oc.Session):
        with session_class(graph=graph) as sess:
            sess.run(init)
            sess.run(update)
            results.append(sess.run(variables))
    for want, got in zip(*results, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def _slot_names(op_type: str, n: int) -> list[str]:
    """The names of the variable and slot arguments of a raw update op, in order."""
    params = list(inspect.signature(getattr(tf.raw_ops, op_type)).parameters)
    return params[:n]
