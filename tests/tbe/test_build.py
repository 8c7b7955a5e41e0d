"""TBE build(): the kernel cache (in-process and on disk across processes), OPENCANN_DUMP_KERNELS, the
generated CUDA C (compiled with the machine's nvcc, no GPU needed) and GPU launches (``cuda`` marker)."""
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from opencann import tbe
from opencann.errors import AclError, ErrorCode
from tests.tbe import cuda_emulator

ROOT = Path(__file__).resolve().parents[2]


def chain(shape=(5, 7), dtype="float32"):
    x = tbe.placeholder(shape, dtype, name="x")
    b = tbe.placeholder(shape[-1:], dtype, name="b")
    y = tbe.vtanh(tbe.vmuls(tbe.vrelu(tbe.vadd(x, b)), 0.5))
    return {"outputs": [y, tbe.reduce_sum(y, -1, keepdims=True)], "inputs": [x, b]}


def test_second_build_is_a_cache_hit():
    k1 = tbe.build(**chain(), name="first")
    k2 = tbe.build(**chain(), name="second")  # new Tensor objects, same structure: no recompilation
    assert k1.key == k2.key and k2._compiled is k1._compiled and k2.source == k1.source
    assert tbe.build(**chain((5, 8)), name="other").key != k1.key
    assert tbe.build(**chain(dtype="float64"), name="other").key != k1.key
    assert tbe.build(**chain(), name="cuda", device="cuda", compile=False).key != k1.key
    xn, bn = np.ones((5, 7), np.float32), np.arange(7, dtype=np.float32) - 3
    np.testing.assert_allclose(k2(xn, bn)[0], np.tanh(np.maximum(xn + bn, 0) * 0.5), rtol=1e-6)
    k1(xn, bn)
    assert len(k1._compiled.signatures) == 1  # one compilation serves both kernels


SCRIPT = textwrap.dedent("""
    import json, numpy as np
    from opencann import tbe
    x = tbe.placeholder((9, 11), "float32", name="x")
    y = tbe.vsigmoid(tbe.vadds(tbe.vmuls(x, 3.0), -0.25))
    k = tbe.build(y, name="procs")
    xn = np.linspace(-2, 2, 99, dtype=np.float32).reshape(9, 11)
    assert np.allclose(k(xn), 1 / (1 + np.exp(-(xn * np.float32(3) - np.float32(0.25)))), rtol=1e-6)
    stats = k._compiled.stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values())}))
""")


def test_disk_cache_is_shared_by_concurrent_processes(tmp_path):
    env = dict(os.environ, OPENCANN_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    run = lambda: subprocess.Popen([sys.executable, "-c", SCRIPT], env=env, cwd=ROOT, text=True,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    procs = [run() for _ in range(2)]  # build the same kernel at the same time
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    files = sorted(f.name for f in (tmp_path / "cache").iterdir())
    assert len([f for f in files if f.endswith(".py")]) == 1 and not [f for f in files if f.endswith(".tmp")]
    later = run()
    out, err = later.communicate(timeout=120)
    assert later.returncode == 0, err
    assert json.loads(out.splitlines()[-1]) == {"hits": 1, "misses": 0}  # loaded from disk, not recompiled


def test_unwritable_cache_dir_falls_back_to_a_temporary_folder(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("OPENCANN_CACHE_DIR", str(blocker / "kernels"))  # cannot be created under a file
    x = tbe.placeholder((3, 17), "float32", name="x")
    kernel = tbe.build(tbe.vrec(tbe.vadds(x, 2.0)), name="fallback")
    np.testing.assert_allclose(kernel(np.ones((3, 17), np.float32)), np.full((3, 17), 1 / 3, np.float32))


def test_dump_env_writes_readable_sources(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENCANN_DUMP_KERNELS", str(tmp_path))
    tbe.build(**chain(), name="dumped/../kernel")
    tbe.cuda_source(**chain(), name="dumped")
    py, cu = sorted(tmp_path.glob("*.py")), sorted(tmp_path.glob("*.cu"))
    assert len(py) == 1 and len(cu) == 1 and py[0].name.startswith("dumped_.._kernel_")
    for text in (py[0].read_text(), cu[0].read_text()):
        assert "vtanh(vmuls(vrelu(vadd(in0, in1)), 0.5))" in text and "reduce_sum(" in text


def cuda_cases():
    """Representative kernels: every primitive and dtype family, broadcasting, reductions, odd shapes."""
    a, b = tbe.placeholder((3, 1, 5), "float16"), tbe.placeholder((4, 5), "float16")
    half = [tbe.vpow(tbe.vabs(a), b), tbe.verf(tbe.vsigmoid(a)), tbe.vrsqrt(tbe.vexp(b)), tbe.vlog(tbe.vrec(a)),
            tbe.vsel(tbe.vcmp(a, b, "le"), tbe.vsqrt(a), tbe.vtanh(b)), tbe.reduce_mean(b, 0),
            tbe.cast_to(tbe.cast_to(a, "float16"), "int8")]
    i, j = tbe.placeholder((2, 3, 4), "int32"), tbe.placeholder((3, 1), "int32")
    ints = [tbe.vmax(tbe.vadd(i, j), tbe.vmul(i, j)), tbe.vmin(tbe.vabs(i), tbe.vneg(j)), tbe.vrelu(tbe.vsub(i, j)),
            tbe.reduce_prod(i, [0, 2]), tbe.reduce_min(i, None), tbe.reduce_max(i, 1, keepdims=True),
            tbe.cast_to(tbe.vcmp(i, 3, "ne"), "uint8"), tbe.cast_to(i, "int64")]
    x, s = tbe.placeholder((6, 33), "float64"), tbe.placeholder((), "float32")
    e = tbe.vexp(tbe.vsub(x, tbe.reduce_max(x, 1, keepdims=True)))
    floats = [tbe.vdiv(e, tbe.reduce_sum(e, 1, keepdims=True)), tbe.vmaxs(tbe.vmins(s, 1.0), -1.0),
              tbe.const(float("inf"), "float64"), tbe.const(float("nan"), "float32"), tbe.vdivs(s, 3.0)]
    z = tbe.placeholder((0, 5), "float32")
    w, n = tbe.placeholder((4, 300), "float16"), tbe.placeholder((2, 400, 3), "int32")
    ew = tbe.vexp(tbe.vsub(w, tbe.reduce_max(w, 1, keepdims=True)))
    long = [tbe.vdiv(ew, tbe.reduce_sum(ew, 1, keepdims=True)), tbe.reduce_prod(w), tbe.reduce_min(n, 1),
            tbe.reduce_mean(tbe.cast_to(n, "float64"), [0, 1])]  # block-per-output reductions
    return {"half": half, "ints": ints, "floats": floats, "empty": [tbe.vexp(z), tbe.reduce_sum(z, 0)], "long": long}


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_generated_cuda_compiles_with_nvcc(tmp_path):
    sources = [tbe.cuda_source(outs, name=name) for name, outs in cuda_cases().items()]
    (tmp_path / "all.cu").write_text(cuda_emulator.combined(sources))
    done = subprocess.run(["nvcc", "--ptx", "-arch=sm_90", str(tmp_path / "all.cu"), "-o", str(tmp_path / "all.ptx")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    entries = (tmp_path / "all.ptx").read_text().count(".entry tbe_")
    assert entries == sum(src.count('extern "C" __global__') for src in sources)


@pytest.mark.skipif(not cuda_emulator.available(), reason="g++ is not installed")
def test_generated_cuda_computes_what_the_cpu_kernels_compute(tmp_path):
    """The CUDA C, compiled for the CPU by tests/tbe/cuda_emulator.py, against the Numba kernels."""
    rng = np.random.default_rng(0)
    cases = cuda_cases()
    kernels = {name: tbe.build(outs, name=name, device="cuda", compile=False) for name, outs in cases.items()}
    compiling = cuda_emulator.compile_sources([k.source for k in kernels.values()], tmp_path)
    results = {}
    for name, outs in cases.items():
        cpu = tbe.build(outs, name=name)  # compiles while g++ runs
        args = [rng.uniform(-2, 3, shape).astype(dtype) for shape, dtype in cpu.inputs]
        args = [(np.abs(a) + 0.5).astype(a.dtype) if name in ("half", "long") else a for a in args]  # for log, pow
        want = cpu(*args)
        results[name] = (args, want if isinstance(want, tuple) else (want,))
    out, _ = compiling.communicate(timeout=300)
    assert compiling.returncode == 0, out
    for name, (args, want) in results.items():
        got = cuda_emulator.run(kernels[name], tmp_path, args)
        for k, (w, g) in enumerate(zip(want, got, strict=True)):
            assert g.dtype == w.dtype and g.shape == w.shape, f"{name} output {k}"
            tol = 2e-3 if w.dtype == np.float16 else 1e-5
            np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol,
                                       err_msg=f"{name} output {k}")


def test_cuda_source_is_one_kernel_for_elementwise_chains():
    kernel = chain()
    src = tbe.cuda_source(kernel["outputs"][:1], name="one", inputs=kernel["inputs"])
    assert src.count('extern "C" __global__') == 1 and "gridDim.x * blockDim.x" in src


def test_cuda_device_without_cupy_is_a_device_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    with pytest.raises(AclError) as err:
        tbe.build(**chain(), device="cuda")
    assert err.value.code == ErrorCode.INVALID_DEVICE and "CuPy" in str(err.value)


@pytest.mark.cuda
def test_cuda_kernels_match_the_cpu_kernels():
    cupy = pytest.importorskip("cupy")
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            pytest.skip("no CUDA device")
    except cupy.cuda.runtime.CUDARuntimeError:
        pytest.skip("no CUDA device")
    rng = np.random.default_rng(0)
    for name, outs in cuda_cases().items():
        gpu, cpu = tbe.build(outs, name=name, device="cuda"), tbe.build(outs, name=name)
        args = [rng.uniform(0.5, 3, shape).astype(dtype) for shape, dtype in cpu.inputs]
        want = cpu(*args)
        bufs = [cupy.empty(shape, dtype) for shape, dtype in gpu.outputs]
        fresh = gpu(*[cupy.asarray(a) for a in args])
        written = gpu(*[cupy.asarray(a) for a in args], out=bufs)
        want, fresh, written = (r if isinstance(r, tuple) else (r,) for r in (want, fresh, written))
        assert all(w is b for w, b in zip(written, bufs, strict=True))
        for k, (w, g, b) in enumerate(zip(want, fresh, bufs, strict=True)):
            tol = 2e-3 if w.dtype == np.float16 else 1e-5
            for res in (g, b):
                np.testing.assert_allclose(cupy.asnumpy(res).astype(np.float64), w.astype(np.float64), rtol=tol,
                                           atol=tol, err_msg=f"{name} output {k}")
