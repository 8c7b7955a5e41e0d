"""The fast CPU Einsum (opencann/ops/cpu_einsum.py) against NumPy's einsum, and its fallbacks."""
import numpy as np
import pytest

from opencann.compiler.ir import Graph, Node, TensorType, Value
from opencann.compiler.passes.shape_inference import infer_shapes
from opencann.ops import blas, cpu_einsum, registry
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


MKL = pytest.mark.skipif(blas.library() is None, reason="needs MKL")


@pytest.fixture
def stack_calls(monkeypatch):
    """The number of MKL stack products the kernel ran (the Numba stack loop, counted)."""
    calls = []
    original = cpu_einsum._gemm_stack

    def counted(*args):
        calls.append(args[4:6])  # the transpose flags
        return original(*args)
    monkeypatch.setattr(cpu_einsum, "_gemm_stack", counted)
    return calls


@MKL
@pytest.mark.parametrize("equation,sa,sb", [("BTNH,BSNH->BNTS", (8, 32, 4, 16), (8, 24, 4, 16)),
                                            ("bij,bkj->bik", (16, 40, 24), (16, 30, 24)),
                                            ("ik,jk->ij", (96, 64), (80, 64))])
def test_transposed_second_operand_stacks_run_mkl(equation, sa, sb, stack_calls):
    fast, _ = kernels()
    a, b = randn(*sa), randn(*sb)
    want = np.einsum(equation, a.astype(np.float64), b.astype(np.float64))
    out = np.full(want.shape, np.nan, F32)
    assert fast(a, b, equation=equation, out=out) is out
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert stack_calls == [(False, True)]
    np.testing.assert_allclose(fast(np.asfortranarray(a), b, equation=equation), want, rtol=1e-5, atol=1e-5)
    a, b = a[tuple(slice(3) for _ in sa)], b[tuple(slice(3) for _ in sb)].copy()
    np.testing.assert_allclose(fast(a, b, equation=equation), np.einsum(equation, a, b), rtol=1e-5, atol=1e-5)
    assert len(stack_calls) == 1  # an operand of another layout and a small product: NumPy's matmul


@MKL
def test_stacked_products_into_a_transposed_result():
    a, b = randn(8, 64, 32), randn(8, 32, 48)  # y3 = a @ b, y3 a transposed view: y^T = b^T a^T reads a transposed
    y = np.full((8, 48, 64), np.nan, F32)
    y3 = y.transpose(0, 2, 1)
    b_first, args = cpu_einsum._stack_args(a, b, y3)
    assert b_first and args[:2] == (True, True)
    cpu_einsum._gemm_stack(blas.sgemm_address(), b.reshape(-1), a.reshape(-1), y.reshape(-1), *args)
    np.testing.assert_allclose(y3, np.matmul(a.astype(np.float64), b), rtol=1e-5, atol=1e-5)
    assert cpu_einsum._stack_args(a, b, np.empty((8, 64, 48), F32)) is None  # no transposed second: NumPy's matmul


def test_plans_are_kept_per_equation_and_shapes():
    fast, _ = kernels()
    cpu_einsum._plan.cache_clear()
    a, b = randn(2, 3, 4), randn(2, 5, 4)
    for _ in range(3):
        np.testing.assert_allclose(fast(a, b, equation="bij,bkj->bik"), np.einsum("bij,bkj->bik", a, b), rtol=1e-5,
                                   atol=1e-5)
    assert cpu_einsum._plan.cache_info().misses == 1
    assert cpu_einsum._plan("ij,jk->ik", (2, 3), (4, 5)) is None  # sizes that differ: the general path says why
    assert cpu_einsum._plan("ij,jk->ik", (2, 0), (0, 5)) is None
    assert cpu_einsum._plan("abc,cd->adb", (2, 3, 4), (4, 5)) is None  # the result is no view of the product
