"""``opencann run MODEL.om``: execute an offline model through the acl API and report latency.

    opencann run resnet.om --input image.npy --loop 100 --output-dir out/
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time

import numpy as np

from opencann.errors import AclError, ErrorCode


def register(sub) -> None:
    p = sub.add_parser("run", help="execute an .om model and report outputs and latency", description=__doc__)
    p.add_argument("model", help="the .om file")
    p.add_argument("--input", nargs="*", default=[], help=".npy files, one per model input (random if omitted)")
    p.add_argument("--loop", type=int, default=10, help="timed executions (default 10)")
    p.add_argument("--output-dir", dest="output_dir", help="save the outputs as output_<i>.npy")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    p.set_defaults(handler=run_model)


def random_input(desc, rng: np.random.Generator, batch: int = 1) -> np.ndarray:
    """A random tensor for one model input; a dynamic batch dimension becomes ``batch``, others 1."""
    shape = tuple(d if d >= 0 else (batch if i == 0 else 1) for i, d in enumerate(desc.shape))
    if desc.dtype.kind == "f" or desc.dtype.kind == "V":
        return rng.standard_normal(shape).astype(desc.dtype)
    if desc.dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    return rng.integers(0, 10, shape).astype(desc.dtype)


def load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise AclError(ErrorCode.INVALID_FILE, f"cannot read input '{path}': {exc}") from None


def save_npy(path: str, arr: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".npy", dir=os.path.dirname(os.path.abspath(path)))
    with os.fdopen(fd, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    os.replace(tmp, path)


def summary(arr: np.ndarray) -> str:
    flat = arr.reshape(-1)
    head = np.array2string(flat[:5], precision=4, separator=", ")
    if arr.dtype.kind in "fiub" and arr.size:
        wide = flat.astype(np.float64)
        return f"min {wide.min():.4g} max {wide.max():.4g} mean {wide.mean():.4g} first {head}"
    return f"first {head}"


def run_model(args) -> int:
    import opencann.acl as acl

    if args.loop < 1:
        raise AclError(ErrorCode.INVALID_PARAM, "--loop must be at least 1")
    acl.init()
    try:
        acl.set_device(0)
        model = acl.load_from_file(args.model)
        descs = model.desc.inputs
        if args.input and len(args.input) != len(descs):
            raise AclError(ErrorCode.MODEL_INPUT_NOT_MATCH, f"the model has {len(descs)} inputs, "
                           f"{len(args.input)} --input files were given")
        rng = np.random.default_rng(args.seed)
        batch = min(model.desc.dynamic_batch_sizes, default=1)  # the smallest size a dynamic batch allows
        inputs = [load_npy(p) for p in args.input] or [random_input(d, rng, batch) for d in descs]
        for d, x in zip(descs, inputs):
            print(f"input  {d.name}: {x.dtype} {list(x.shape)}{'' if args.input else ' (random)'}")
        outputs = model.run(*inputs)
        times = []
        for _ in range(args.loop):
            t0 = time.perf_counter()
            model.run(*inputs)
            times.append((time.perf_counter() - t0) * 1e3)
        for d, y in zip(model.desc.outputs, outputs):
            print(f"output {d.name}: {y.dtype} {list(y.shape)} {summary(y)}")
        p99 = sorted(times)[min(len(times) - 1, int(round(0.99 * (len(times) - 1))))]
        print(f"latency over {args.loop} runs: min {min(times):.3f} ms, median {statistics.median(times):.3f} ms, "
              f"p99 {p99:.3f} ms")
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            for i, y in enumerate(outputs):
                save_npy(os.path.join(args.output_dir, f"output_{i}.npy"), y)
            print(f"outputs saved in {args.output_dir}")
        model.unload()
    finally:
        acl.finalize()
    return 0
