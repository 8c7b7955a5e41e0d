"""Run generated TBE CUDA C on the CPU, for tests on machines without a GPU.

The source is compiled as C++20 by g++ with a small shim: ``__half`` is ``_Float16``, a launch runs the
grid's blocks one after another, and a block's threads either one after another or, for kernels that call
``__syncthreads()``, as real threads meeting at a ``std::barrier``; ``__shared__`` variables are static.
This checks the generator's index arithmetic, reduction trees and half conversions, not CUDA itself.
"""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np

SHIM = r"""
#include <barrier>
#include <cmath>
#include <cstring>
#include <thread>
#include <utility>
#include <vector>
struct tbe_dim3 { unsigned int x = 0, y = 0, z = 0; };
static thread_local tbe_dim3 threadIdx;
static tbe_dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* tbe_barrier = nullptr;
typedef _Float16 __half;
static inline float __half2float(__half h) { return (float)h; }
static inline __half __float2half(float f) { return (__half)f; }
static inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
static inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
static inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static
#define __syncthreads() tbe_barrier->arrive_and_wait()
"""

LAUNCH = r"""
template <typename... P, std::size_t... I>
static void tbe_call(void (*k)(P...), void** a, std::index_sequence<I...>) { k(static_cast<P>(a[I])...); }
template <typename... P>
static void tbe_launch(void (*k)(P...), void** a, unsigned grid, unsigned block, int threaded) {
    gridDim.x = grid; blockDim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx.x = b;
        if (!threaded) {
            for (unsigned t = 0; t < block; ++t) { threadIdx.x = t; tbe_call(k, a, std::index_sequence_for<P...>{}); }
            continue;
        }
        std::barrier<> bar(block);
        tbe_barrier = &bar;
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([&, t] { threadIdx.x = t; tbe_call(k, a, std::index_sequence_for<P...>{}); });
        for (auto& th : threads) th.join();
    }
}
"""


def available() -> bool:
    return shutil.which("g++") is not None


def combined(sources: list) -> str:
    """Several generated CUDA C modules as one translation unit (each in its own namespace, the includes
    hoisted above them)."""
    include = "#include <cuda_fp16.h>\n"
    return include + "".join(f"namespace tbe_case{k} {{\n{src.replace(include, '')}\n}}\n"
                             for k, src in enumerate(sources))


def compile_sources(sources: list, folder: Path) -> subprocess.Popen:
    """Start compiling the generated modules into ``folder/kernels.so`` (returns the g++ process)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cuda_fp16.h").write_text("")
    runners = "".join(f'extern "C" void run_{n}(void** a, unsigned g, unsigned b, int t) '
                      f'{{ tbe_launch(tbe_case{k}::{n}, a, g, b, t); }}\n'
                      for k, src in enumerate(sources) for n in re.findall(r'extern "C" __global__ void (\w+)\(', src))
    (folder / "kernels.cpp").write_text(SHIM + combined(sources) + LAUNCH + runners)
    cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-I", str(folder), str(folder / "kernels.cpp"),
           "-o", str(folder / "kernels.so")]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(kernel, folder: Path, arrays: list) -> list:
    """Launch every stage of a ``build(..., device="cuda", compile=False)`` kernel on ``arrays`` (NumPy)."""
    lib = ctypes.CDLL(str(folder / "kernels.so"))
    names = re.findall(r'extern "C" __global__ void (\w+)\(', kernel.source)
    sections = kernel.source.split('extern "C" __global__')[1:]
    outs = [np.zeros(shape, dtype) for shape, dtype in kernel.outputs]
    temps = [np.zeros(shape, dtype) for shape, dtype in kernel._launch.temps]
    buffers = [np.ascontiguousarray(a) for a in arrays] + outs + temps
    ptrs = (ctypes.c_void_p * len(buffers))(*[b.ctypes.data for b in buffers])
    for name, section, (grid, block) in zip(names, sections, kernel._launch.configs, strict=True):
        fn = getattr(lib, f"run_{name}")
        fn.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint, ctypes.c_int]
        fn(ctypes.cast(ptrs, ctypes.c_void_p), grid, block, int("__syncthreads" in section))
    return outs
