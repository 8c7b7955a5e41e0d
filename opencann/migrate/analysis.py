"""Support analysis: every TensorFlow/Keras API a script references, classified by the API database.

The database (:mod:`opencann.migrate.database`, measured by ``tools/gen_api_db.py``) answers for the
names it lists. A name it does not list inherits the category of its nearest listed parent when that
parent is ``removed``, ``manual`` or ``harmless`` (``tensorflow.contrib.slim.arg_scope`` is removed
because ``tensorflow.contrib`` is); otherwise it is ``unknown`` — reported, never dropped.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from opencann.migrate.resolve import module_of

INHERITED = ("removed", "manual", "harmless")


@dataclass(frozen=True)
class Verdict:
    category: str
    note: str
    suggestion: str = ""
    listed_as: str = ""  # the database entry it came from


Lookup = Callable[[str], object]


def default_lookup() -> Lookup:
    from opencann.migrate.database import lookup

    return lookup


class Classifier:
    """Categories of canonical API names, cached per name."""

    def __init__(self, lookup: Lookup | None = None):
        self.lookup = lookup or default_lookup()
        self._cache: dict[str, Verdict] = {}

    def known(self, api: str) -> bool:
        return self.lookup(api) is not None

    def classify(self, api: str) -> Verdict:
        if api not in self._cache:
            self._cache[api] = self._classify(api)
        return self._cache[api]

    def _classify(self, api: str) -> Verdict:
        info = self.lookup(api)
        if info is not None:
            return Verdict(info.category, info.note, info.suggestion or "", api)
        if api.startswith("tensorflow.compat.v1."):  # same function as the TF2 name unless listed apart
            twin = "tensorflow." + api.removeprefix("tensorflow.compat.v1.")
            info = self.lookup(twin)
            if info is not None and info.category != "removed":
                return Verdict(info.category, info.note, info.suggestion or "", twin)
        parent = module_of(api)
        while parent:
            info = self.lookup(parent)
            if info is not None:
                if info.category in INHERITED:
                    return Verdict(info.category, info.note, info.suggestion or "", parent)
                break
            parent = module_of(parent)
        return Verdict("unknown", "not in opencann's API database")
