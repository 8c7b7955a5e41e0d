"""Helpers for kernels written as Numba intrinsics of explicit LLVM vector code (:mod:`opencann.ops.cpu_depthwise`,
the direct stem convolution of :mod:`opencann.ops.cpu_conv`, :mod:`opencann.ops.cpu_inverted_residual`'s GEMM call):
LLVM vectorises Numba's own loops over 256-bit vectors with scalar remainders; these kernels state their 16-lane
(AVX-512; narrower machines split them) vectors themselves. :func:`copy_floats` and :func:`zero_floats` move runs
of floats at flat offsets as ``memcpy``/``memset`` (a Numba view per run costs a reference count each: the
channels-last im2col's runs, 1.5-3x faster).
"""
from __future__ import annotations

from llvmlite import ir as llir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


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


def _data(context, builder, signature, args, i):
    return context.make_array(signature.args[i])(context, builder, args[i]).data


@intrinsic
def copy_floats(typingctx, dst, dst_off, src, src_off, n):
    """For Numba code: ``dst.flat[dst_off:dst_off + n] = src.flat[src_off:src_off + n]`` (C-contiguous float32
    arrays, ranges inside them, not overlapping)."""
    if not dense_f32(dst, src):
        return None

    def codegen(context, builder, signature, args):
        d, s = _data(context, builder, signature, args, 0), _data(context, builder, signature, args, 2)
        cgutils.raw_memcpy(builder, builder.gep(d, [args[1]]), builder.gep(s, [args[3]]), args[4], 4, 4)
        return context.get_dummy_value()
    return types.void(dst, types.intp, src, types.intp, types.intp), codegen


@intrinsic
def zero_floats(typingctx, dst, dst_off, n):
    """For Numba code: ``dst.flat[dst_off:dst_off + n] = 0`` (a C-contiguous float32 array, a range inside it)."""
    if not dense_f32(dst):
        return None

    def codegen(context, builder, signature, args):
        d = _data(context, builder, signature, args, 0)
        cgutils.memset(builder, builder.gep(d, [args[1]]), builder.mul(args[2], args[2].type(4)), 0)
        return context.get_dummy_value()
    return types.void(dst, types.intp, types.intp), codegen
