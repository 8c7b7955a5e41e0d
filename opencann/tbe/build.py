"""``build()``: one fused kernel from TBE expressions, the callable ``Kernel`` and the kernel cache.

Cache: generated sources live under ``$OPENCANN_CACHE_DIR`` (default ``~/.cache/opencann/kernels``), named by
the SHA-256 of the kernel signature (``schedule.signature_key``), written through a temporary file and
``os.replace`` so concurrent processes never see a partial file; Numba's ``cache=True`` (CPU) and CuPy's
own cache (CUDA) keep the compiled code next to them. An in-process dict answers repeated builds at once.
``OPENCANN_DUMP_KERNELS=dir`` also writes every generated source to ``dir``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile
import threading
import uuid
from pathlib import Path

import numpy as np

from opencann.errors import AclError, ErrorCode
from opencann.tbe import codegen_cpu, codegen_cuda
from opencann.tbe.dsl import Tensor, topo_order
from opencann.tbe.schedule import make_plan, signature_key

_MEMORY: dict = {}  # (key) -> (source, compiled callable)
_LOCK = threading.Lock()


def cache_dir() -> Path:
    return Path(os.environ.get("OPENCANN_CACHE_DIR") or Path.home() / ".cache" / "opencann" / "kernels")


def write_atomic(path: Path, text: str):
    """Write ``text`` to ``path`` so that readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _dump(name: str, key: str, source: str, ext: str):
    folder = os.environ.get("OPENCANN_DUMP_KERNELS")
    if folder:
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64] or "kernel"
        write_atomic(Path(folder) / f"{stem}_{key[:12]}.{ext}", source)


def _cached_source(key: str, source: str, ext: str) -> Path:
    """The cache file holding ``source`` (a temporary folder's when the cache folder is not writable)."""
    for folder in (cache_dir(), Path(tempfile.gettempdir()) / f"opencann-kernels-{os.getuid()}"):
        path = folder / f"tbe_{key[:40]}.{ext}"
        try:
            if not path.exists() or path.read_text() != source:
                write_atomic(path, source)
            return path
        except OSError as exc:
            error = exc
    raise AclError(ErrorCode.WRITE_FILE, f"tbe: cannot write the kernel cache ({error})")


def _load_cpu(key: str, source: str):
    path = _cached_source(key, source, "py")
    name = f"opencann_tbe_{key[:40]}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Numba's cache re-imports the module by name when it loads a kernel
    spec.loader.exec_module(module)  # our own generated module, never user text
    return module.kernel


def _cupy():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as exc:  # ImportError, or CUDA runtime errors when no driver/GPU is present
        raise AclError(ErrorCode.INVALID_DEVICE, f"tbe.build(device='cuda') needs CuPy and an NVIDIA GPU: {exc}") \
            from exc
    return cupy


def _load_cuda(key: str, source: str, names: list):
    cupy = _cupy()
    _cached_source(key, source, "cu")
    module = cupy.RawModule(code=source, options=("--std=c++17",))
    return [module.get_function(n) for n in names]


class Kernel:
    """A built TBE kernel: call it with arrays (NumPy for "cpu", CuPy for "cuda") in ``inputs`` order."""

    def __init__(self, name: str, plan, device: str, key: str, source: str, compiled):
        self.name, self.device, self.key, self.source = name, device, key, source
        self.inputs = [(t.shape, t.dtype) for t in plan.inputs]
        self.outputs = [(t.shape, t.dtype) for t in plan.outputs]
        self._compiled, self._launch = compiled, (codegen_cuda.launches(plan, key) if device == "cuda" else None)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r}, device={self.device!r}, inputs={self.inputs}, outputs={self.outputs})"

    @property
    def launch(self):
        """The compiled CPU function itself, unchecked: call it on C-contiguous arrays (inputs, then outputs) in
        the dtypes the code computes in. The fast path for callers that validated their arrays once."""
        return self._compiled if self.device == "cpu" else None

    def __call__(self, *arrays, out=None):
        if self._compiled is None:
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"tbe kernel {self.name}: built with compile=False")
        if len(arrays) != len(self.inputs):
            raise AclError(ErrorCode.INVALID_PARAM,
                           f"tbe kernel {self.name}: takes {len(self.inputs)} inputs, got {len(arrays)}")
        if out is not None and len(out) != len(self.outputs):
            raise AclError(ErrorCode.INVALID_PARAM,
                           f"tbe kernel {self.name}: out= needs {len(self.outputs)} arrays, got {len(out)}")
        for k, (a, (shape, dtype)) in enumerate(zip(arrays, self.inputs, strict=True)):
            self._check(a, shape, dtype, f"input {k}")
        for k, a in enumerate(out or ()):
            self._check(a, *self.outputs[k], f"output {k}")
        run = self._run_cpu if self.device == "cpu" else self._run_cuda
        results = run(arrays, out)
        return results[0] if len(results) == 1 else tuple(results)

    def _check(self, a, shape, dtype, what):
        if tuple(getattr(a, "shape", ())) != shape or str(getattr(a, "dtype", "")) != dtype:
            raise AclError(ErrorCode.INVALID_PARAM, f"tbe kernel {self.name}: {what} must be {dtype}{list(shape)}, "
                           f"got {getattr(a, 'dtype', type(a).__name__)}{list(getattr(a, 'shape', ()))}")

    def _run_cpu(self, arrays, out):
        args = [np.ascontiguousarray(a, dtype=_compute(dtype)).reshape(shape or (1,))
                for a, (shape, dtype) in zip(arrays, self.inputs, strict=True)]
        bufs, direct = [], []
        for k, (shape, dtype) in enumerate(self.outputs):
            dest = out[k] if out is not None else None
            direct.append(dest is not None and dtype == _compute(dtype) and dest.flags.c_contiguous
                          and not any(np.may_share_memory(dest, a) for a in args))
            bufs.append(dest.reshape(shape or (1,)) if direct[-1] else np.empty(shape or (1,), _compute(dtype)))
        self._compiled(*args, *bufs)
        if out is None:
            return [b.reshape(shape).astype(dtype, copy=False) for b, (shape, dtype) in zip(bufs, self.outputs,
                                                                                              strict=True)]
        for dest, buf, written in zip(out, bufs, direct, strict=True):
            if not written:
                np.copyto(dest, buf.reshape(dest.shape), casting="unsafe")
        return list(out)

    def _run_cuda(self, arrays, out):
        cupy = _cupy()
        args = [cupy.ascontiguousarray(a) for a in arrays]
        bufs = []
        for k, (shape, dtype) in enumerate(self.outputs):
            dest = out[k] if out is not None else None
            direct = (dest is not None and dest.flags.c_contiguous
                      and not any(cupy.may_share_memory(dest, a) for a in args))
            bufs.append(dest if direct else cupy.empty(shape, dtype))
        temps = [cupy.empty(shape, dtype) for shape, dtype in self._launch.temps]
        for fn, (grid, block) in zip(self._compiled, self._launch.configs, strict=True):
            fn((grid,), (block,), tuple(args + bufs + temps))
        if out is not None:
            for dest, buf in zip(out, bufs, strict=True):
                if dest is not buf:
                    dest[...] = buf
            return list(out)
        return bufs


def _compute(dtype: str) -> str:
    """The dtype the CPU kernel sees: float16 is computed (and passed) as float32."""
    return "float32" if dtype == "float16" else dtype


def _prepare(outputs, inputs):
    outputs = list(outputs) if isinstance(outputs, list | tuple) else [outputs]
    if inputs is None:
        inputs = [n for n in topo_order([o for o in outputs if isinstance(o, Tensor)]) if n.op == "placeholder"]
    return make_plan(outputs, list(inputs))


def build(outputs, name: str = "tbe_kernel", inputs=None, device: str = "cpu", compile: bool = True) -> Kernel:
    """Fuse ``outputs`` (a Tensor or a list) into one kernel over ``inputs`` (default: placeholders in use order).

    ``device`` is "cpu" (Numba) or "cuda" (CUDA C through NVRTC/CuPy). With ``compile=False`` the kernel
    only carries its ``source``.
    """
    if device not in ("cpu", "cuda"):
        raise AclError(ErrorCode.INVALID_PARAM, f"tbe.build: device must be 'cpu' or 'cuda', got {device!r}")
    plan = _prepare(outputs, inputs)
    key = signature_key(plan, device)
    with _LOCK:
        hit = _MEMORY.get(key)
    if hit is None:
        gen = codegen_cpu if device == "cpu" else codegen_cuda
        source = gen.generate(plan, key)
        if not compile:
            _dump(str(name), key, source, "py" if device == "cpu" else "cu")
            return Kernel(str(name), plan, device, key, source, None)
        compiled = _load_cpu(key, source) if device == "cpu" else _load_cuda(key, source, gen.kernel_names(plan, key))
        with _LOCK:
            hit = _MEMORY.setdefault(key, (source, compiled))
    _dump(str(name), key, hit[0], "py" if device == "cpu" else "cu")
    return Kernel(str(name), plan, device, key, *hit)


def cuda_source(outputs, name: str = "tbe_kernel", inputs=None) -> str:
    """The CUDA C source ``build(..., device="cuda")`` would compile; needs neither CuPy nor a GPU."""
    return build(outputs, name=name, inputs=inputs, device="cuda", compile=False).source
