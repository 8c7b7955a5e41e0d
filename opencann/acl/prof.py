"""Profiling in CANN's shape (pyACL's ``acl.prof``): record model executions and their operators' times.

    acl.prof.init("prof_out")
    config = acl.prof.create_config([0], 0, 0, acl.prof.ACL_PROF_ACL_API | acl.prof.ACL_PROF_TASK_TIME)
    acl.prof.start(config)
    model.execute(inputs, outputs)          # every model execution on device 0 is recorded
    path = acl.prof.stop(config)            # prof_out/opencann_prof_<pid>_<n>.json
    acl.prof.destroy_config(config); acl.prof.finalize()

``ACL_PROF_ACL_API`` records each execution's time per model; ``ACL_PROF_TASK_TIME`` (or ``_L0``) also
each operator's (see :mod:`opencann.runtime.profiler` for what is timed). Other data types (AI Core
metrics, L2 cache, ...) have no CPU counterpart: they are accepted and not collected. Errors are
:class:`AclError`: ``INVALID_PROFILING_CONFIG`` for a bad configuration, ``PROFILING_FAILURE`` for a call
out of order (start twice, stop without start), ``UNINITIALIZE`` before ``init``.
"""
from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from opencann.acl.state import STATE, initialized
from opencann.errors import AclError, ErrorCode
from opencann.fileio import write_text
from opencann.runtime import profiler

ACL_PROF_ACL_API = 0x0001
ACL_PROF_TASK_TIME = 0x0002
ACL_PROF_AICORE_METRICS = 0x0004
ACL_PROF_AICPU = 0x0008
ACL_PROF_TASK_TIME_L0 = 0x0800
ACL_AICORE_NONE = 0xFF
_RECORDED = ACL_PROF_ACL_API | ACL_PROF_TASK_TIME | ACL_PROF_TASK_TIME_L0
_PER_OP = ACL_PROF_TASK_TIME | ACL_PROF_TASK_TIME_L0


@dataclass(eq=False)
class ProfConfig:
    """What to collect, on which devices (pyACL's ``aclprofConfig``)."""

    device_ids: tuple[int, ...]
    aicore_metrics: int
    data_type_config: int
    destroyed: bool = False


class _Prof:
    def __init__(self):
        self.lock = threading.Lock()
        self.path: str | None = None
        self.config: ProfConfig | None = None
        self.written = 0


_PROF = _Prof()


def _int(value, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, f"acl.prof.create_config: {what} {value!r} is not an "
                       f"int in [{low}, {high:#x}]")
    return value


@initialized
def create_config(device_list: Sequence[int], aicore_metrics: int = ACL_AICORE_NONE, aicore_events: int = 0,
                  data_type_config: int = ACL_PROF_ACL_API | ACL_PROF_TASK_TIME) -> ProfConfig:
    """A configuration: the devices to profile and ``ACL_PROF_*`` data types OR-ed together."""
    if not isinstance(device_list, (list, tuple)) or not device_list:
        raise AclError(ErrorCode.INVALID_PROFILING_CONFIG,
                       f"acl.prof.create_config: device_list must be a non-empty list of ids, got {device_list!r}")
    for d in device_list:
        if not isinstance(d, int) or isinstance(d, bool) or not 0 <= d < len(STATE.devices):
            raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, f"acl.prof.create_config: device {d!r} does not "
                           f"exist ({len(STATE.devices)} device(s))")
    _int(aicore_metrics, "aicore_metrics", 0, 0xFF)
    if aicore_events not in (0, None):
        raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, "acl.prof.create_config: aicore_events must be 0 (NULL)")
    types = _int(data_type_config, "data_type_config", 0, 2**64 - 1)
    if not types & _RECORDED:
        raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, f"acl.prof.create_config: data_type_config {types:#x} "
                       "asks for nothing opencann collects (include ACL_PROF_ACL_API or ACL_PROF_TASK_TIME)")
    return ProfConfig(tuple(sorted(set(device_list))), aicore_metrics, types)


def destroy_config(config: ProfConfig) -> None:
    _check_config(config, "destroy_config")
    config.destroyed = True


@initialized
def init(path: str | os.PathLike) -> None:
    """Set the folder the results are written to (created if missing)."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise AclError(ErrorCode.INVALID_PARAM, f"acl.prof.init: the result path must be a folder name, got {path!r}")
    path = os.path.abspath(os.fspath(path))
    with _PROF.lock:
        if _PROF.path is not None:
            raise AclError(ErrorCode.REPEAT_INITIALIZE, f"acl.prof.init: profiling already writes to {_PROF.path}")
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise AclError(ErrorCode.INVALID_FILE, f"acl.prof.init: cannot use '{path}' as a folder: {exc}") from None
        if not os.access(path, os.W_OK | os.X_OK):
            raise AclError(ErrorCode.INVALID_FILE, f"acl.prof.init: folder '{path}' is not writable")
        _PROF.path = path


def start(config: ProfConfig) -> None:
    """Start recording the model executions on the configuration's devices."""
    _check_config(config, "start")
    with _PROF.lock:
        _need_init("start")
        if _PROF.config is not None:
            raise AclError(ErrorCode.PROFILING_FAILURE, "acl.prof.start: profiling is already started (stop it first)")
        _PROF.config = config
        profiler.SESSION = profiler.Session(config.device_ids, bool(config.data_type_config & _PER_OP))


def stop(config: ProfConfig) -> str:
    """Stop recording and write the results; returns the JSON file's path."""
    _check_config(config, "stop")
    with _PROF.lock:
        _need_init("stop")
        if _PROF.config is None:
            raise AclError(ErrorCode.PROFILING_FAILURE, "acl.prof.stop: profiling is not started")
        if config is not _PROF.config:
            raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, "acl.prof.stop: not the configuration started")
        return _stop()


def finalize() -> None:
    """End profiling (stopping a started collection first, its results written)."""
    with _PROF.lock:
        _need_init("finalize")
        try:
            if _PROF.config is not None:
                _stop()
        finally:
            _PROF.path = None


def release() -> None:
    """End profiling if it was initialised (``acl.finalize`` calls this)."""
    if _PROF.path is not None:
        finalize()


def _stop() -> str:
    session, profiler.SESSION, _PROF.config = profiler.SESSION, None, None
    data = session.close()
    _PROF.written += 1
    target = os.path.join(_PROF.path, f"opencann_prof_{os.getpid()}_{_PROF.written}.json")
    try:
        write_text(target, json.dumps(data, indent=1))
    except OSError as exc:
        raise AclError(ErrorCode.WRITE_FILE, f"acl.prof.stop: cannot write {target}: {exc}") from None
    return target


def _need_init(what: str) -> None:
    if _PROF.path is None:
        raise AclError(ErrorCode.UNINITIALIZE, f"acl.prof.{what}: call acl.prof.init(path) first")


def _check_config(config, what: str) -> None:
    if not isinstance(config, ProfConfig) or config.destroyed:
        raise AclError(ErrorCode.INVALID_PROFILING_CONFIG, f"acl.prof.{what}: {config!r} is not a live "
                       "configuration from acl.prof.create_config")
