"""Imports every operator module of this package, each of which registers its operators."""
import importlib
import pkgutil

import opencann.ops as _ops

for _m in sorted(pkgutil.iter_modules(_ops.__path__), key=lambda m: m.name):
    if _m.name not in ("registry", "library", "common"):
        importlib.import_module(f"opencann.ops.{_m.name}")
importlib.import_module("opencann.tbe.fusion")  # registers opencann::FusedElementwise
