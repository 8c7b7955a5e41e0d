"""``import_tensorflow`` (frozen GraphDefs, SavedModels, Keras models, functions) and ``atc --framework 3``:
the imported graphs compute what TensorFlow computes."""
import numpy as np
import pytest

from opencann.cli.main import main
from opencann.compiler import om
from opencann.compiler.pipeline import BuildOptions, compile_graph
from opencann.frontends.tensorflow import import_tensorflow
from opencann.runtime.executor import Executor
from tests.tf.harness import keras, oc, tf

X = np.random.default_rng(0).standard_normal((5, 20)).astype(np.float32)


def run(graph, *inputs):
    return Executor(compile_graph(graph, BuildOptions()).graph).run(list(inputs))


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((20,), name="features"), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(4, activation="softmax")])


@pytest.fixture(scope="module")
def frozen_pb(model, tmp_path_factory):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x, training=False), input_signature=[tf.TensorSpec([None, 20], name="x")])
    graph_def = convert_variables_to_constants_v2(fn.get_concrete_function()).graph.as_graph_def()
    directory = tmp_path_factory.mktemp("pb")
    tf.io.write_graph(graph_def, str(directory), "frozen.pb", as_text=False)
    return str(directory / "frozen.pb")


@pytest.fixture(scope="module")
def saved_model(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("saved") / "model"
    model.export(str(path), verbose=False)
    return str(path)


def test_keras_model_function_and_concrete_function(model):
    expected = model(X).numpy()
    graph = import_tensorflow(model)
    assert [v.name for v in graph.inputs] == ["features"] and [v.name for v in graph.outputs] == ["output_0"]
    assert not graph.inputs[1:] and graph.initializers  # weights became constants
    np.testing.assert_allclose(run(graph, X)[0], expected, rtol=1e-5, atol=1e-6)
    fn = tf.function(lambda x: {"probs": model(x, training=False)})
    graph = import_tensorflow(fn, inputs=[tf.TensorSpec([None, 20], tf.float32, name="x")])
    assert [v.name for v in graph.outputs] == ["probs"]
    np.testing.assert_allclose(run(graph, X)[0], expected, rtol=1e-5, atol=1e-6)
    concrete = fn.get_concrete_function(tf.TensorSpec([2, 20], tf.float32, name="x"))
    np.testing.assert_allclose(run(import_tensorflow(concrete), X[:2])[0], expected[:2], rtol=1e-5, atol=1e-6)


def test_saved_model_and_frozen_graph(model, saved_model, frozen_pb):
    expected = model(X).numpy()
    graph = import_tensorflow(saved_model)
    assert [v.name for v in graph.inputs] == ["features"]
    np.testing.assert_allclose(run(graph, X)[0], expected, rtol=1e-5, atol=1e-6)
    graph = import_tensorflow(frozen_pb)
    assert [v.name for v in graph.inputs] == ["x"] and [v.name for v in graph.outputs] == ["Identity:0"]
    np.testing.assert_allclose(run(graph, X)[0], expected, rtol=1e-5, atol=1e-6)


def test_tf1_graph_cut_at_named_tensors_and_variables_as_inputs():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 20], name="x")
        w = tf.compat.v1.get_variable("w", [20, 3])
        hidden = tf.matmul(x, w, name="hidden")
        tf.nn.softmax(tf.nn.relu(hidden), name="probs")
    ir = import_tensorflow(graph.as_graph_def(), inputs=["hidden"], outputs=["probs:0"])
    assert [v.name for v in ir.inputs] == ["hidden"]  # cut: x and w are not needed
    h = X[:, :3]
    np.testing.assert_allclose(run(ir, h)[0], tf.nn.softmax(tf.nn.relu(h)).numpy(), rtol=1e-5)
    ir = import_tensorflow(graph, outputs=["hidden"])
    assert [v.name for v in ir.inputs] == ["x", "w"]  # a variable of an unfrozen graph is fed
    w_value = np.ones((20, 3), np.float32)
    np.testing.assert_allclose(run(ir, X, w_value)[0], X @ w_value, rtol=1e-5)


def test_atc_framework_3_builds_om_from_pb_and_saved_model(model, frozen_pb, saved_model, tmp_path, capsys):
    expected = model(X[:2]).numpy()
    out = tmp_path / "frozen"
    assert main(["atc", "--model", frozen_pb, "--framework", "3", "--output", str(out), "--input_shape", "x:2,20",
                 "--out_nodes", "Identity:0"]) == 0
    assert "ATC run success" in capsys.readouterr().out
    compiled = om.load(f"{out}.om")
    assert compiled.graph.inputs[0].type.shape == (2, 20)
    np.testing.assert_allclose(Executor(compiled.graph).run([X[:2]])[0], expected, rtol=1e-5, atol=1e-6)
    out = tmp_path / "saved"
    assert main(["atc", "--model", saved_model, "--framework", "3", "--output", str(out)]) == 0
    np.testing.assert_allclose(Executor(om.load(f"{out}.om").graph).run([X[:2]])[0], expected, rtol=1e-5, atol=1e-6)


def test_unsupported_ops_and_stateful_functions_are_refused(tmp_path):
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [3], name="x")
        tf.identity(tf.math.lgamma(x) + tf.math.digamma(x), name="y")
    with pytest.raises(oc.AclError) as info:
        import_tensorflow(graph.as_graph_def())
    message = str(info.value)
    assert "Lgamma" in message and "Digamma" in message and "opencann migrate" in message
    assert "test_import.py" in import_error(graph)  # call sites when the graph is in memory
    v = tf.Variable(1.0)
    fn = tf.function(lambda: v.assign_add(1.0))
    with pytest.raises(oc.AclError, match="assigns variables"):
        import_tensorflow(fn)
    assert main(["atc", "--model", str(tmp_path / "missing.pb"), "--framework", "3", "--output",
                 str(tmp_path / "m")]) != 0


def import_error(graph) -> str:
    with pytest.raises(oc.AclError) as info:
        import_tensorflow(graph)
    return str(info.value)
