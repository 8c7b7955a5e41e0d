"""Numba intrinsics for the generated CPU kernels (imported by the generated modules only: importing it loads Numba).

``fma32(a, b, c)`` is ``a * b + c`` rounded once (LLVM's ``llvm.fma.f32``): the float32 math helpers of
:mod:`opencann.tbe.codegen_cpu` evaluate their polynomials with it, half the instructions of a multiply and an add,
and vectorized like them. Only there: elsewhere kernels keep NumPy's separately rounded operations.
"""
from __future__ import annotations

from llvmlite import ir as llir
from numba import types
from numba.extending import intrinsic

_F32 = llir.FloatType()


@intrinsic
def fma32(typingctx, a, b, c):
    """For Numba code: ``a * b + c`` with one rounding, on float32 values."""
    if not all(t == types.float32 for t in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        try:
            fn = builder.module.get_global("llvm.fma.f32")
        except KeyError:
            fn = llir.Function(builder.module, llir.FunctionType(_F32, [_F32] * 3), name="llvm.fma.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen
