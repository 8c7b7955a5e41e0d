"""Custom operators from ``@tbe.register_op``: single-op execution, ONNX graphs with a custom domain, atc ->
.om -> load -> run, the TensorFlow importer through ``tf_op``, shape inference, and re-registration."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import opencann.acl as acl
from opencann import tbe
from opencann.acl.op import TensorDesc
from opencann.cli.main import main
from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.errors import AclError
from opencann.frontends.onnx import import_onnx
from opencann.runtime.executor import Executor

DOMAIN = "opencann.test"
RNG = np.random.default_rng(0)


@tbe.register_op("LeakyReluX", domain=DOMAIN, attrs={"alpha": 0.01})
def leaky_relu_x(x, *, alpha):
    return tbe.vsel(tbe.vcmp(x, 0, "gt"), x, tbe.vmuls(x, alpha))


@tbe.register_op("ScaleAndSum", domain=DOMAIN, attrs={"scale": 2.0})
def scale_and_sum(x, b, *, scale):
    y = tbe.vmuls(tbe.vadd(x, b), scale)
    return y, tbe.reduce_sum(y, axis=[-1], keepdims=True)


def leaky(x, alpha):
    return np.where(x > 0, x, x * np.float32(alpha)).astype(x.dtype)


@pytest.fixture
def device():
    if acl.is_initialized():
        acl.finalize()
    acl.init()
    acl.set_device(0)
    yield
    acl.finalize()


def custom_model(alpha: float = 0.2, batch=None) -> bytes:
    nodes = [helper.make_node("Exp", ["x"], ["e"]),
             helper.make_node("LeakyReluX", ["x"], ["l"], domain=DOMAIN, alpha=alpha),
             helper.make_node("Sub", ["l", "e"], ["y"])]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(DOMAIN, 1)])
    return model.SerializeToString()


def test_single_op_run_and_execute(device):
    x = RNG.standard_normal((3, 5)).astype(np.float32)
    (y,) = acl.op.run("LeakyReluX", x, domain=DOMAIN, alpha=0.3)
    np.testing.assert_array_equal(y, leaky(x, 0.3))
    (y,) = acl.op.run("LeakyReluX", x, domain=DOMAIN)  # the registered default
    np.testing.assert_allclose(y, leaky(x, 0.01), rtol=1e-6)
    b = RNG.standard_normal(5).astype(np.float32)
    y, s = acl.op.run("ScaleAndSum", x, b, domain=DOMAIN, n_outputs=2, scale=0.5)
    np.testing.assert_allclose(y, (x + b) * 0.5, rtol=1e-6)
    np.testing.assert_allclose(s, ((x + b) * 0.5).sum(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    desc = TensorDesc(np.float32, x.shape)
    src, dst = acl.malloc(desc.size), acl.malloc(desc.size)
    src.numpy(np.float32, x.shape)[...] = x
    acl.op.execute("LeakyReluX", [(desc, src)], [(desc, dst)], {"alpha": 0.3}, domain=DOMAIN)
    np.testing.assert_array_equal(dst.numpy(np.float32, x.shape), leaky(x, 0.3))


def test_onnx_graph_with_custom_domain():
    graph = import_onnx(custom_model(0.2, batch="N"))
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    (y,) = Executor(graph).run({"x": x})
    np.testing.assert_allclose(y, leaky(x, 0.2) - np.exp(x), rtol=1e-6, atol=1e-6)
    node = next(n for n in infer_shapes(graph).nodes if n.op == "LeakyReluX")
    assert node.outputs[0].type == TensorType(np.float32, ("N", 6))  # shape inference kept the symbolic dim


def test_shape_inference_builds_the_expression():
    x, b = Value("x", TensorType(np.float16, ("B", 3, 1))), Value("b", TensorType(np.float16, (4,)))
    y, s = Value("y"), Value("s")
    g = Graph(inputs=[x, b], outputs=[y, s], opsets={"": 17, DOMAIN: 1},
              nodes=[Node("ScaleAndSum", [x, b], [y, s], domain=DOMAIN)])
    infer_shapes(g)
    assert y.type == TensorType(np.float16, ("B", 3, 4)) and s.type == TensorType(np.float16, ("B", 3, 1))


def test_atc_om_load_run(tmp_path, device):
    path = tmp_path / "custom.onnx"
    path.write_bytes(custom_model(0.1))
    out = tmp_path / "custom"
    assert main(["atc", "--model", str(path), "--framework", "5", "--output", str(out),
                 "--input_shape", "x:2,6"]) == 0
    model = acl.load_from_file(str(out) + ".om")
    x = RNG.standard_normal((2, 6)).astype(np.float32)
    (y,) = model.run(x)
    np.testing.assert_allclose(y, leaky(x, 0.1) - np.exp(x), rtol=1e-6, atol=1e-6)
    model.unload()


def test_tensorflow_op_mapped_to_custom_op():
    tf = pytest.importorskip("tensorflow")
    import opencann.frontends.tensorflow.ops  # noqa: F401  (the built-in converters, before saving them)
    from opencann.frontends.tensorflow import import_tensorflow
    from opencann.frontends.tensorflow.importer import CONVERTERS

    saved = dict(CONVERTERS)
    try:
        @tbe.register_op("Xlog1pyX", domain=DOMAIN, tf_op="Xlog1py")
        def xlog1py(x, y):
            return tbe.vsel(tbe.vcmp(x, 0, "eq"), 0.0, tbe.vmul(x, tbe.vlog(tbe.vadds(y, 1.0))))

        fn = tf.function(lambda x, y: tf.raw_ops.Xlog1py(x=x, y=y) * 2.0)
        spec = [tf.TensorSpec([None, 4], tf.float32, name="x"), tf.TensorSpec([None, 4], tf.float32, name="y")]
        graph = import_tensorflow(fn, inputs=spec)
        assert any(n.op == "Xlog1pyX" and n.domain == DOMAIN for n in graph.nodes)
        x = RNG.standard_normal((3, 4)).astype(np.float32)
        x[0, :2] = 0
        y = RNG.uniform(-0.5, 2, (3, 4)).astype(np.float32)
        y[0, 0] = -1  # log1p(-1) = -inf, but x == 0 there: 0
        expected = fn(x, y).numpy()
        np.testing.assert_allclose(Executor(graph).run([x, y])[0], expected, rtol=1e-5, atol=1e-6)
        import opencann.tf as oc

        adapter = oc.enable()  # the TF adapter runs the function on opencann, the custom kernel included
        try:
            np.testing.assert_allclose(fn(tf.constant(x), tf.constant(y)).numpy(), expected, rtol=1e-5, atol=1e-6)
            assert adapter.executions == 1
        finally:
            oc.disable()
    finally:
        CONVERTERS.clear()
        CONVERTERS.update(saved)


def test_reregistration_replaces_and_builtin_names_are_refused():
    @tbe.register_op("Twice", domain=DOMAIN)
    def twice(x):
        return tbe.vmuls(x, 2.0)

    x = np.arange(4, dtype=np.float32)
    graph = import_onnx(_one_node_model("Twice"))
    np.testing.assert_array_equal(Executor(graph).run({"x": x})[0], x * 2)

    @tbe.register_op("Twice", domain=DOMAIN, attrs={"k": 3.0})
    def thrice(x, *, k):
        return tbe.vmuls(x, k)

    np.testing.assert_array_equal(Executor(graph).run({"x": x})[0], x * 3)
    with pytest.raises(AclError, match="built-in operator"):
        tbe.register_op("Relu", domain="")(twice)
    with pytest.raises(AclError, match="keyword-only"):
        tbe.register_op("Bad", domain=DOMAIN, attrs={"alpha": 1.0})(twice)
    with pytest.raises(AclError, match="unknown attribute"):
        Executor(import_onnx(_one_node_model("Twice", k=2.0, bogus=1))).run({"x": x})


def _one_node_model(op: str, **attrs) -> bytes:
    node = helper.make_node(op, ["x"], ["y"], domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid(DOMAIN, 1)]).SerializeToString()
