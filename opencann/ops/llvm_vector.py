"""Helpers for kernels written as Numba intrinsics of explicit LLVM vector code (:mod:`opencann.ops.cpu_depthwise`,
the direct stem convolution of :mod:`opencann.ops.cpu_conv`, :mod:`opencann.ops.cpu_inverted_residual`'s GEMM call):
LLVM vectorises Numba's own loops over 256-bit vectors with scalar remainders; these kernels state their 16-lane
(AVX-512; narrower machines split them) vectors themselves.
"""
from __future__ import annotations

from llvmlite import ir as llir
from numba import types


def dense_f32(*arrays) -> bool:
    """Whether the Numba types are all C-contiguous float32 arrays (what vector code over flat offsets reads)."""
    return all(isinstance(t, types.Array) and t.layout == "C" and t.dtype == types.float32 for t in arrays)


def splat(builder, value, vec):
    """``value`` in every lane of a ``vec``."""
    one = builder.insert_element(llir.Constant(vec, llir.Undefined), value, llir.Constant(llir.IntType(32), 0))
    mask = llir.Constant(llir.VectorType(llir.IntType(32), vec.count), [0] * vec.count)
    return builder.shuffle_vector(one, llir.Constant(vec, llir.Undefined), mask)


def fma_of(module, vec):
    """LLVM's fused multiply-add intrinsic over ``vec`` (declared in ``module`` once)."""
    name = f"llvm.fma.v{vec.count}f32"
    try:
        return module.get_global(name)
    except KeyError:
        return llir.Function(module, llir.FunctionType(vec, [vec, vec, vec]), name=name)
