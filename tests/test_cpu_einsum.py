"""The fast CPU Einsum (opencann/ops/cpu_einsum.py) against NumPy's einsum, and its fallbacks."""
import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.ops import registry
from opencann.ops.cpu_einsum import contraction
from opencann.runtime import Executor
from tests.test_cpu_nn import randn

F32 = np.float32


def kernels():
    d = registry.lookup("Einsum", 21)
    assert d.kernel_for("cpu") is not d.reference
    return d.kernel_for("cpu"), d.reference


# Keras' MultiHeadAttention (scores, context and their gradients), plain and batched products, the second operand's
# letters first in the result (a swapped product), an outer product, a result that is no view of the product.
EQUATIONS = [("BTNH,BSNH->BNTS", (3, 5, 2, 4), (3, 6, 2, 4)), ("BNTS,BSNH->BTNH", (3, 2, 5, 6), (3, 6, 2, 4)),
             ("BTNH,BNTS->BSNH", (3, 5, 2, 4), (3, 2, 5, 6)), ("BNTS,BTNH->BSNH", (3, 2, 5, 6), (3, 5, 2, 4)),
             ("abc,cde->abde", (2, 3, 4), (4, 5, 6)), ("ij,jk->ik", (7, 3), (3, 5)),
             ("bij,bkj->bik", (2, 4, 3), (2, 5, 3)), ("ik,jk->ji", (4, 3), (5, 3)), ("i,j->ij", (4,), (5,)),
             ("abc,cd->adb", (2, 3, 4), (4, 5)), ("bi,bi->b", (3, 4), (3, 4))]


@pytest.mark.parametrize("equation,sa,sb", EQUATIONS)
def test_einsum_matches_numpy(equation, sa, sb):
    fast, ref = kernels()
    a, b = randn(*sa), randn(*sb)
    want = np.einsum(equation, a.astype(np.float64), b.astype(np.float64))
    got = fast(a, b, equation=equation)
    assert got.dtype == F32 and got.shape == want.shape and got.flags.c_contiguous
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    out = np.full(want.shape, np.nan, F32)
    assert fast(a, b, equation=equation, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    strided = np.asfortranarray(a)  # operands of any layout
    np.testing.assert_allclose(fast(strided, b, equation=equation), want, rtol=1e-5, atol=1e-5)


def test_out_aliasing_an_operand_is_not_written_while_read():
    fast, _ = kernels()
    a, b = randn(6, 6), randn(6, 6)
    want = a @ b
    np.testing.assert_allclose(fast(a, b, equation="ij,jk->ik", out=a), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("equation,shapes", [("...ij->...ji", [(2, 3, 4)]), ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 5)]),
                                             ("ij,jk->i", [(2, 3), (3, 4)]), ("ii->i", [(3, 3)]),
                                             ("...i,...i->...", [(2, 3), (2, 3)]), ("iij,jk->ik", [(2, 2, 3), (3, 4)])])
def test_other_equations_run_the_reference(equation, shapes):
    fast, _ = kernels()
    assert len(shapes) != 2 or contraction(equation) is None
    ops = [randn(*s) for s in shapes]
    np.testing.assert_allclose(fast(*ops, equation=equation), np.einsum(equation, *ops), rtol=1e-5, atol=1e-5)


def test_other_dtypes_empty_operands_and_bad_sizes():
    fast, _ = kernels()
    a, b = np.arange(6.0).reshape(2, 3), np.arange(12.0).reshape(3, 4)
    got = fast(a, b, equation="ij,jk->ik")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, a @ b)
    np.testing.assert_array_equal(fast(randn(2, 0), randn(0, 4), equation="ij,jk->ik"), np.zeros((2, 4), F32))
    with pytest.raises(ValueError):
        fast(randn(2, 3), randn(4, 5), equation="ij,jk->ik")


def test_einsum_node_in_a_plan_writes_its_planned_buffer():
    q, k, y = Value("q", TensorType(F32, (2, 3, 2, 4))), Value("k", TensorType(F32, (2, 5, 2, 4))), Value("y")
    graph = infer_shapes(Graph(inputs=[q, k], outputs=[y], opsets={"": 21},
                               nodes=[Node("Einsum", [q, k], [y], {"equation": "BTNH,BSNH->BNTS"})]))
    a, b = randn(2, 3, 2, 4), randn(2, 5, 2, 4)
    for _ in range(2):
        got = Executor(graph).run([a, b])[0]
        np.testing.assert_allclose(got, np.einsum("BTNH,BSNH->BNTS", a, b), rtol=1e-5, atol=1e-5)
