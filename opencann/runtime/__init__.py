"""Seed layer 4, execution engine: executor, allocator, model manager, transfers, AIPP, DVPP, HCCL."""
from opencann.runtime.executor import Executor

__all__ = ["Executor"]
