"""Parse a file once with LibCST and collect what the rules need: every reference to a
TensorFlow/Keras name (resolved through the imports), the calls, the imports and the module layout.

Parsing is all that happens to a user script: nothing is imported or executed.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import (
    MetadataWrapper,
    ParentNodeProvider,
    PositionProvider,
    QualifiedNameProvider,
    QualifiedNameSource,
    ScopeProvider,
)

from opencann.migrate.resolve import canonical, dotted, is_tf

Pos = tuple[int, int]


@dataclass
class Ref:
    """A maximal ``a.b.c`` chain (or a bare name) that names a TensorFlow/Keras API."""

    node: cst.BaseExpression
    api: str  # canonical qualified name
    start: Pos
    end: Pos
    call: cst.Call | None  # the call this reference is the callee of
    rebound: str = ""  # the local name, when the file also binds it to something else
    via_star: str = ""  # the star-imported module it was resolved through


@dataclass
class Import:
    node: cst.CSTNode  # the Import/ImportFrom statement
    names: list[tuple[str, str]]  # (imported qualified name, bound name)
    start: Pos
    star: str = ""  # module of a star import


@dataclass
class Facts:
    module: cst.Module
    refs: list[Ref] = field(default_factory=list)
    calls: list[cst.Call] = field(default_factory=list)
    imports: list[Import] = field(default_factory=list)
    assigns: dict[str, list[cst.BaseExpression]] = field(default_factory=dict)  # file-wide, by target name
    opencann_alias: str | None = None  # the name `opencann.tf` is imported as at module level
    enables: bool = False  # whether the file already calls opencann.tf.enable
    taken: set[str] = field(default_factory=set)  # names bound at module level
    cuda_env: list[tuple[Pos, str]] = field(default_factory=list)  # os.environ["CUDA_..."] = ...: (where, name)


class Meta:
    """Resolved metadata of one module (LibCST computes some values lazily)."""

    def __init__(self, wrapper: MetadataWrapper):
        self.module = wrapper.module
        resolved = wrapper.resolve_many([PositionProvider, QualifiedNameProvider, ParentNodeProvider, ScopeProvider])
        self._pos = resolved[PositionProvider]
        self._names = resolved[QualifiedNameProvider]
        self._parents = resolved[ParentNodeProvider]
        self._scopes = resolved[ScopeProvider]

    @staticmethod
    def _value(v):
        return v() if type(v).__name__ == "LazyValue" else v

    def start(self, node: cst.CSTNode) -> Pos:
        p = self._pos[node].start
        return p.line, p.column

    def end(self, node: cst.CSTNode) -> Pos:
        p = self._pos[node].end
        return p.line, p.column

    def names(self, node: cst.CSTNode) -> set:
        return self._value(self._names.get(node)) or set()

    def parent(self, node: cst.CSTNode) -> cst.CSTNode | None:
        return self._value(self._parents.get(node))

    def scope(self, node: cst.CSTNode):
        return self._value(self._scopes.get(node))

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def ancestors(self, node: cst.CSTNode):
        node = self.parent(node)
        while node is not None:
            yield node
            node = self.parent(node)


def parse(text: str, known: Callable[[str], bool]) -> tuple[Meta, Facts]:
    """Parse ``text`` (raises ``libcst.ParserSyntaxError``) and collect its facts; ``known(api)`` says
    whether the API database lists a name (names that only a star import can bind are resolved by it)."""
    wrapper = MetadataWrapper(cst.parse_module(text), unsafe_skip_copy=True)
    meta = Meta(wrapper)
    facts = Facts(wrapper.module)
    _Collector(meta, facts, known).collect()
    return meta, facts


class _Collector:
    def __init__(self, meta: Meta, facts: Facts, known: Callable[[str], bool]):
        self.meta, self.facts, self.known = meta, facts, known
        self.star_modules: list[str] = []

    def collect(self) -> None:
        module = self.meta.module
        for node in _walk(module):
            if isinstance(node, (cst.Import, cst.ImportFrom)):
                self._import(node)
            elif isinstance(node, cst.Call):
                self.facts.calls.append(node)
            elif isinstance(node, cst.Assign):
                for target in node.targets:
                    if isinstance(target.target, cst.Name):
                        self.facts.assigns.setdefault(target.target.value, []).append(node.value)
                    elif isinstance(target.target, cst.Subscript):
                        self._environment(target.target)
        scope = self.meta.scope(module.body[0]) if module.body else None
        if scope is not None:
            self.facts.taken = {a.name for a in scope.assignments}
        self.star_modules = [i.star for i in self.facts.imports if i.star and is_tf(i.star)]
        for node in _walk(module):
            if isinstance(node, (cst.Name, cst.Attribute)) and self._maximal(node):
                self._reference(node)

    def _environment(self, target: cst.Subscript) -> None:
        """Record ``os.environ["CUDA_..."] = ...`` (GPU settings that do nothing on opencann)."""
        if not any(n.name == "os.environ" for n in self.meta.names(target.value)) or len(target.slice) != 1:
            return
        key = target.slice[0].slice
        value = key.value.evaluated_value if isinstance(key, cst.Index) and isinstance(key.value, cst.SimpleString) \
            else None
        if isinstance(value, str) and value.startswith("CUDA_"):
            self.facts.cuda_env.append((self.meta.start(target), value))

    def _import(self, node: cst.Import | cst.ImportFrom) -> None:
        start = self.meta.start(node)
        if isinstance(node, cst.ImportFrom):
            base = "." * len(node.relative) + (dotted(node.module) or "")
            if isinstance(node.names, cst.ImportStar):
                self.facts.imports.append(Import(node, [], start, star=base))
                return
            names = [(f"{base}.{a.name.value}" if base else a.name.value, _bound(a)) for a in node.names]
        else:
            names = [(dotted(a.name), _bound(a)) for a in node.names]
        self.facts.imports.append(Import(node, names, start))
        top_level = isinstance(self.meta.parent(self.meta.parent(node)), cst.Module)
        for name, bound in names:
            if name == "opencann.tf" and top_level and bound != "opencann":
                self.facts.opencann_alias = bound

    def _maximal(self, node: cst.CSTNode) -> bool:
        parent = self.meta.parent(node)
        if isinstance(parent, cst.Attribute) and (parent.value is node or parent.attr is node):
            return False
        if isinstance(parent, (cst.Arg, cst.Param)) and getattr(parent, "keyword", None) is node:
            return False
        return not isinstance(parent, (cst.ImportAlias, cst.Import, cst.ImportFrom))

    def _reference(self, node: cst.BaseExpression) -> None:
        if dotted(node) is None:  # `f(x).attr`: an attribute of a result, not a name
            return
        names = self.meta.names(node)
        imported = {n for n in names if is_tf(n.name) and n.source == QualifiedNameSource.IMPORT}
        tf_names = {canonical(n.name) for n in imported}
        if any(n.name == "opencann.tf.enable" for n in names):
            self.facts.enables = True
        via_star = ""
        if not names and self.star_modules:
            tf_names, via_star = self._star(node)
        if not tf_names:
            return
        parent = self.meta.parent(node)
        call = parent if isinstance(parent, cst.Call) and parent.func is node else None
        rebound = ""
        if len(names) > len(imported) or len(tf_names) > 1:
            rebound = _root_name(node)
        api = sorted(tf_names)[0]
        self.facts.refs.append(Ref(node, api, self.meta.start(node), self.meta.end(node), call, rebound, via_star))

    def _star(self, node: cst.BaseExpression) -> tuple[set[str], str]:
        """Resolve a name that no import binds through the star imports, as far as the database knows it."""
        text = dotted(node)
        if text is None or _root_name(node) in self.facts.taken:
            return set(), ""
        for module in self.star_modules:
            candidate = canonical(f"{module}.{text}")
            root = canonical(f"{module}.{_root_name(node)}")
            if self.known(candidate) or self.known(root):
                return {candidate}, module
        return set(), ""


def _walk(node: cst.CSTNode):
    """Every node below ``node``, parents first, in source order."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(reversed(current.children))


def _bound(alias: cst.ImportAlias) -> str:
    if alias.asname is not None:
        return alias.asname.name.value
    return dotted(alias.name).split(".")[0]


def _root_name(node: cst.BaseExpression) -> str:
    while isinstance(node, cst.Attribute):
        node = node.value
    return node.value if isinstance(node, cst.Name) else ""
