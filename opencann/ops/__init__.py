"""Seed layer 2, compute service: the NN and BLAS operator library.

One registry (:mod:`opencann.ops.registry`); each module here registers a family of operators, each
with its schema, shape inference and NumPy reference kernel. Devices add faster kernels for the same
operators.
"""
from opencann.ops.registry import OpDef, kernel, lookup, op, registered

__all__ = ["OpDef", "kernel", "lookup", "op", "registered"]
