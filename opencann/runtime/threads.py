"""How many threads opencann's kernels use: the BLAS pools (MKL and OpenBLAS: GEMM, convolutions), Numba's pool
and opencann's own workers (:mod:`opencann.runtime.workers`, kernels that split their work into pieces).

``set_num_threads(n)`` applies at once to the whole process, independently of any model's build options;
``OPENCANN_NUM_THREADS=n`` in the environment does the same when opencann's runtime is first imported.
Numba's pool cannot grow past its size at start-up (``NUMBA_NUM_THREADS``, the CPU count by default):
larger requests are clamped there.
"""
from __future__ import annotations

import os
import warnings

from opencann.errors import AclError, ErrorCode

ENV_VAR = "OPENCANN_NUM_THREADS"
_limits = None  # the threadpoolctl limiter in force (kept so that the setting persists)
_requested = None  # the last count set (MKL, loaded at first use, applies it then)


def set_num_threads(n: int) -> None:
    """Use ``n`` threads (>= 1) in BLAS, Numba and opencann's split kernels from now on."""
    global _limits, _requested
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise AclError(ErrorCode.INVALID_PARAM, f"set_num_threads: want a positive int, got {n!r}")
    import numba
    from threadpoolctl import threadpool_limits

    from opencann.ops import blas
    from opencann.runtime import workers

    _requested = n
    workers.set_size(n)
    _limits = threadpool_limits(limits=n, user_api="blas")
    blas.set_num_threads(n)
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def requested() -> int | None:
    """The thread count last passed to :func:`set_num_threads` (None before any)."""
    return _requested


def get_num_threads() -> dict[str, int]:
    """Threads in force: ``{"blas": ..., "numba": ...}`` (the BLAS figure is the smallest of its pools)."""
    import numba
    from threadpoolctl import threadpool_info

    blas = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"blas": min(blas) if blas else 1, "numba": numba.get_num_threads()}


def apply_env() -> None:
    """Apply ``OPENCANN_NUM_THREADS`` when it is set (a value that is not a positive int is ignored, with a
    warning: importing opencann must not fail on it)."""
    value = os.environ.get(ENV_VAR, "").strip()
    if not value:
        return
    if not value.isdigit() or int(value) < 1:
        warnings.warn(f"{ENV_VAR}={value!r} is not a positive thread count: ignored", stacklevel=2)
        return
    set_num_threads(int(value))
