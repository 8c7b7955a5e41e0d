"""Device backends, one module each behind the :class:`~opencann.devices.base.Device` interface.

``cpu.py`` runs everywhere; ``cuda.py`` (CuPy) joins on machines with an NVIDIA GPU.
"""
from __future__ import annotations

from functools import cache

from opencann.devices.cpu import CpuDevice


@cache
def default_device() -> CpuDevice:
    """The device work runs on when none is named: the host CPU."""
    return CpuDevice(0)
