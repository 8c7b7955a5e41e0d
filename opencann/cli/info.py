"""``opencann info``: versions, devices, installed extras, operator library size."""
from __future__ import annotations

import importlib.metadata
import platform
import sys

EXTRAS = {"tf": "tensorflow-cpu", "torch": "torch", "cuda": "cupy-cuda13x", "dist": "mpi4py"}


def register(sub) -> None:
    p = sub.add_parser("info", help="show versions, devices and installed extras")
    p.set_defaults(handler=show_info)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def show_info(args) -> int:
    import opencann
    import opencann.acl as acl
    from opencann.ops import registry

    print(f"opencann {opencann.__version__} on Python {sys.version.split()[0]} ({platform.platform()})")
    print("  core: " + ", ".join(f"{d} {_version(d)}" for d in ("numpy", "onnx", "ml_dtypes", "numba", "libcst")))
    print("  extras: " + ", ".join(f"{extra} ({dist} {_version(dist) or 'not installed'})"
                                   for extra, dist in EXTRAS.items()))
    ops = registry.registered()
    print(f"  operators: {len(ops)} types, {sum(len(v) for v in ops.values())} versions, domains "
          + ", ".join(sorted({d or 'ai.onnx' for d, _ in ops})))
    acl.init()
    try:
        for i in range(acl.device_count()):
            p = acl.device_properties(i)
            print(f"  device {i}: {p.kind} '{p.name}', {p.cores} cores, {p.total_memory / 2**30:.1f} GiB")
    finally:
        acl.finalize()
    return 0
