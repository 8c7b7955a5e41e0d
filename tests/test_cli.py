"""The ``opencann`` command line, in-process through ``main()`` (and once as a subprocess), on a tiny ONNX
model made with onnx.helper; every output is checked against NumPy."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import opencann.acl as acl
from opencann.cli.main import main

RNG = np.random.default_rng(1)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)


def oracle(x: np.ndarray) -> np.ndarray:
    return np.maximum(x @ W + B, 0)


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> str:
    """relu(x @ W + B): nodes mm, add, relu; x of shape [N, 4]."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["mm"], name="mm"),
         helper.make_node("Add", ["mm", "B"], ["add"], name="add"),
         helper.make_node("Relu", ["add"], ["y"], name="relu")],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")])
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return str(path)


@pytest.fixture(scope="module")
def om_path(onnx_path, tmp_path_factory) -> str:
    """The tiny model built for a batch of 2."""
    out = tmp_path_factory.mktemp("om") / "tiny"
    assert main(["atc", "--model", onnx_path, "--framework", "5", "--output", str(out),
                 "--input_shape", "x:2,4"]) == 0
    return f"{out}.om"


@pytest.fixture(autouse=True)
def acl_released():
    """The commands init and finalize acl themselves: it must be off before and after each."""
    assert not acl.is_initialized()
    yield
    assert not acl.is_initialized()


def error_line(capsys) -> str:
    """The one line a failing command printed on stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def run_model(om: str, x: np.ndarray, tmp_path, *flags: str) -> list[np.ndarray]:
    """``opencann run`` on ``x`` (saved as .npy) with --output-dir; returns the saved outputs."""
    inp, out = tmp_path / "x.npy", tmp_path / "out"
    np.save(inp, x)
    assert main(["run", om, "--input", str(inp), "--output-dir", str(out), *flags]) == 0
    files = sorted(os.listdir(out))
    return [np.load(out / f) for f in files]


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("opencann ")
    assert "operators: " in out and "device 0: cpu" in out


def test_atc_build_and_run(om_path, tmp_path, capsys):
    assert os.path.getsize(om_path) > 0
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    (y,) = run_model(om_path, x, tmp_path, "--loop", "3")
    np.testing.assert_allclose(y, oracle(x), rtol=1e-6, atol=1e-6)
    out = capsys.readouterr().out
    assert "input  x: float32 [2, 4]" in out and "latency over 3 runs" in out and "outputs saved in" in out


def test_run_random_inputs(om_path, capsys):
    assert main(["run", om_path, "--loop", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "input  x: float32 [2, 4] (random)" in out and "output y: float32 [2, 3]" in out
    assert "latency over 1 runs" in out


def test_atc_out_nodes(onnx_path, tmp_path, capsys):
    out = tmp_path / "mm"
    assert main(["atc", "--model", onnx_path, "--output", str(out), "--input_shape", "x:3,4",
                 "--out_nodes", "mm:0"]) == 0
    assert "ATC run success" in capsys.readouterr().out
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    (y,) = run_model(f"{out}.om", x, tmp_path)
    np.testing.assert_allclose(y, x @ W, rtol=1e-6, atol=1e-6)
    assert main(["atc", "--model", onnx_path, "--output", str(out), "--out_nodes", "nosuch:0"]) == 1
    assert "--out_nodes" in error_line(capsys)


@pytest.mark.parametrize("mode", ["force_fp16", "allow_mix_precision"])
def test_atc_precision_mode(onnx_path, tmp_path, mode):
    out = tmp_path / mode
    assert main(["atc", "--model", onnx_path, "--output", str(out), "--input_shape", "x:2,4",
                 "--precision_mode", mode]) == 0
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    (y,) = run_model(f"{out}.om", x, tmp_path)
    assert y.dtype == np.float32
    assert np.linalg.norm(y - oracle(x)) <= 1e-2 * np.linalg.norm(oracle(x))


def test_atc_dynamic_batch(onnx_path, tmp_path, capsys):
    out = tmp_path / "dyn"
    assert main(["atc", "--model", onnx_path, "--output", str(out), "--input_shape", "x:-1,4",
                 "--dynamic_batch_size", "2,4"]) == 0
    capsys.readouterr()
    assert main(["atc", "--mode", "6", "--om", f"{out}.om"]) == 0
    info = capsys.readouterr().out
    assert "input 0: x float32 [-1,4]" in info and '"dynamic_batch_size": [2, 4]' in info
    for batch in (2, 4):
        x = RNG.standard_normal((batch, 4)).astype(np.float32)
        (y,) = run_model(f"{out}.om", x, tmp_path)
        np.testing.assert_allclose(y, oracle(x), rtol=1e-6, atol=1e-6)
    # random inputs take a batch size the model allows
    assert main(["run", f"{out}.om", "--loop", "1"]) == 0
    assert "input  x: float32 [2, 4] (random)" in capsys.readouterr().out
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.save(tmp_path / "b3.npy", x)
    assert main(["run", f"{out}.om", "--input", str(tmp_path / "b3.npy")]) == 1
    assert "100017" in error_line(capsys)


def test_atc_dump_passes(onnx_path, tmp_path):
    passes = tmp_path / "passes"
    assert main(["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--input_shape", "x:2,4",
                 "--dump-passes", str(passes)]) == 0
    from opencann.compiler.pipeline import PIPELINE

    names = sorted(os.listdir(passes))
    assert names == [f"{i:02d}_{name}.txt" for i, (name, _) in enumerate(PIPELINE, 1)]
    assert any(n.endswith("_fold_batchnorm.txt") for n in names)
    assert "FusedGemm" not in (passes / names[0]).read_text()
    last = (passes / names[-1]).read_text()
    assert "FusedGemm(%x, %W" in last and "activation='relu'" in last


def test_atc_mode_6(om_path, capsys):
    assert main(["atc", "--mode", "6", "--om", om_path]) == 0
    out = capsys.readouterr().out
    assert f"model: {om_path}" in out and "target: cpu" in out
    assert "input 0: x float32 [2,4]" in out and "output 0: y float32 [2,3]" in out
    assert "FusedGemm×1" in out and '"precision_mode": "force_fp32"' in out


def test_atc_mode_1_json(om_path, onnx_path, tmp_path, capsys):
    out = tmp_path / "sub" / "model.json"
    assert main(["atc", "--mode", "1", "--om", om_path, "--json", str(out)]) == 0
    assert "ATC run success" in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["target"] == "cpu" and doc["graph"]["inputs"] == ["x"] and doc["graph"]["outputs"] == ["y"]
    assert [n["op"] for n in doc["graph"]["nodes"]] == ["FusedGemm"]  # MatMul+Add -> Gemm -> Gemm+Relu epilogue
    assert {t["dtype"] for t in doc["tensors"]} == {"float32"} and "data_sha256" not in doc
    from_onnx = tmp_path / "onnx.json"
    assert main(["atc", "--mode", "1", "--model", onnx_path, "--json", str(from_onnx)]) == 0
    assert json.loads(from_onnx.read_text())["graph"]["types"]["x"]["shape"] == ["N", 4]


def test_error_paths_exit_1_with_one_line(onnx_path, om_path, tmp_path, capsys):
    missing = str(tmp_path / "missing.onnx")
    cases = [
        (["atc", "--model", missing, "--output", str(tmp_path / "m")], "100003"),
        (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--input_shape", "x:2,a"], "--input_shape"),
        (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--input_shape", "y:2,4"], "--input_shape"),
        (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--input_shape", "x:2,4,1"], "rank"),
        (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--dynamic_batch_size", "1,x"],
         "--dynamic_batch_size"),
        (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--soc_version", "npu"], "--soc_version"),
        (["atc", "--model", onnx_path], "--output"),
        (["atc", "--output", str(tmp_path / "m")], "--model"),
        (["atc", "--mode", "6"], "--om"),
        (["atc", "--mode", "6", "--om", str(tmp_path / "missing.om")], "100003"),
        (["atc", "--mode", "1", "--om", om_path], "--json"),
        (["run", str(tmp_path / "missing.om")], "100003"),
        (["run", om_path, "--loop", "0"], "--loop"),
        (["run", om_path, "--input", str(tmp_path / "missing.npy")], "100003"),
        (["run", onnx_path], "100013"),  # not an .om file
    ]
    for argv, needle in cases:
        assert main(argv) == 1, argv
        line = error_line(capsys)
        assert line.startswith(f"opencann {argv[0]}: error") and needle in line, (argv, line)
    assert not (tmp_path / "m.om").exists()
    # wrong number, dtype and shape of inputs
    np.save(tmp_path / "f64.npy", np.ones((2, 4)))
    np.save(tmp_path / "b3.npy", np.ones((3, 4), np.float32))
    b3, f64 = str(tmp_path / "b3.npy"), str(tmp_path / "f64.npy")
    for inputs in ([b3, b3], [f64], [b3]):
        assert main(["run", om_path, "--input", *inputs]) == 1
        assert "100017" in error_line(capsys)
    # an output folder that cannot be made: still one line, exit 1
    (tmp_path / "afile").write_text("")
    assert main(["run", om_path, "--loop", "1", "--output-dir", str(tmp_path / "afile" / "out")]) == 1
    assert "afile" in error_line(capsys)


def test_usage_errors_exit_2(onnx_path, tmp_path, capsys):
    for argv in (["atc", "--model", onnx_path, "--output", str(tmp_path / "m"), "--precision_mode", "fp8"],
                 ["atc", "--mode", "3"], ["run"], ["nosuch"], []):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err


def test_demo(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "ATC run success" in out and "8 images" in out and "top-1 matches the file name for 8/8" in out


def test_subprocess(om_path, tmp_path):
    def cli(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "opencann.cli.main", *argv], capture_output=True, text=True,
                              timeout=120)

    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    ok = cli("run", om_path, "--input", str(tmp_path / "x.npy"), "--loop", "2", "--output-dir", str(tmp_path / "o"))
    assert ok.returncode == 0, ok.stderr
    assert "latency over 2 runs" in ok.stdout
    np.testing.assert_allclose(np.load(tmp_path / "o" / "output_0.npy"), oracle(x), rtol=1e-6, atol=1e-6)
    bad = cli("atc", "--model", str(tmp_path / "missing.onnx"), "--output", str(tmp_path / "m"))
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "100003" in bad.stderr
    usage = cli("atc", "--precision_mode", "nope")
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
