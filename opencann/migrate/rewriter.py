"""Apply the rule table (:mod:`opencann.migrate.rules`) to one parsed file.

Every rule application is an :class:`~opencann.migrate.edits.EditGroup`: exact span edits of the
original text plus the finding that describes them. Groups that collide with a larger one are dropped
(commenting out a statement supersedes edits inside it); the accepted edits are applied to the original
text, so everything outside them stays byte for byte. The same pass classifies every API reference with
the API database (:mod:`opencann.migrate.analysis`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import libcst as cst

from opencann.migrate.analysis import Classifier
from opencann.migrate.edits import EditGroup, SpanEdit, Text, accept, apply, line_end
from opencann.migrate.resolve import canonical, dotted, is_tf, module_of
from opencann.migrate.rules import BY_ID, CATEGORY_RULE, RULES, Rule
from opencann.migrate.scan import Facts, Meta, Ref

PRECISION_MODES = {"mixed_float16": "allow_mix_precision", "mixed_bfloat16": "allow_mix_precision_bf16",
                   "float32": "force_fp32"}
POLICY_CLASSES = ("keras.mixed_precision.Policy", "keras.mixed_precision.experimental.Policy")
DATASET_FACTORIES = ("keras.utils.image_dataset_from_directory", "keras.utils.text_dataset_from_directory",
                     "keras.utils.timeseries_dataset_from_array", "keras.utils.audio_dataset_from_directory",
                     "keras.preprocessing.image_dataset_from_directory",
                     "keras.preprocessing.text_dataset_from_directory")
DATASET_METHODS = frozenset({
    "map", "filter", "shuffle", "repeat", "prefetch", "cache", "take", "skip", "batch", "unbatch", "padded_batch",
    "interleave", "flat_map", "apply", "with_options", "shard", "enumerate", "concatenate", "rebatch",
    "ignore_errors", "take_while", "window", "zip", "from_tensor_slices", "from_tensors", "from_generator",
    "range", "list_files", "bucket_by_sequence_length", "ragged_batch", "sparse_batch", "unique", "scan",
})
FIXED_BATCH_INPUTS = ("keras.Input", "keras.layers.Input", "keras.layers.InputLayer")
FIXED_SHAPE_SPECS = {"tensorflow.TensorSpec": 0, "tensorflow.compat.v1.placeholder": 1, "tensorflow.placeholder": 1}
SHORT = 60


@dataclass
class Context:
    """What the rewriter needs to know about the project around the file."""

    classifier: Classifier
    entry: bool = False  # this file gets oc.enable(...)
    precision_mode: str = "force_fp32"
    distributed: str | None = None


@dataclass
class Outcome:
    text: str
    edits: list[SpanEdit]
    findings: list[tuple[int, int, str, str, str]] = field(default_factory=list)  # line, col, level, rule, msg
    uses: list[tuple[int, int, str, str, str, str]] = field(default_factory=list)  # line, col, module, api, cat, note


def _rules_by_api() -> dict[str, list[Rule]]:
    table: dict[str, list[Rule]] = {}
    for rule in RULES:
        for api in rule.apis:
            if not api.startswith("*"):
                table.setdefault(api, []).append(rule)
    return table


RULES_BY_API = _rules_by_api()


def string_value(node: cst.CSTNode | None) -> str | None:
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        return value if isinstance(value, str) else None
    return None


def argument(call: cst.Call, position: int | None, keyword: str) -> cst.Arg | None:
    """The argument passed as ``keyword=`` or at ``position`` (None: keyword only); None when absent or
    hidden in ``*args``/``**kwargs``."""
    positional = 0
    for arg in call.args:
        if arg.keyword is not None:
            if arg.keyword.value == keyword:
                return arg
        elif arg.star:
            return None
        else:
            if positional == position:
                return arg
            positional += 1
    return None


def has_star_args(call: cst.Call) -> bool:
    return any(arg.star for arg in call.args)


class Rewriter:
    def __init__(self, text: str, meta: Meta, facts: Facts, ctx: Context):
        self.src, self.meta, self.facts, self.ctx = Text(text), meta, facts, ctx
        self.eol = line_end(text)
        self.groups: list[EditGroup] = []
        self.notes: list[tuple[int, int, str, str, str]] = []  # findings without edits
        self.covered: set[int] = set()  # ids of reference nodes a rule reported on
        self.uses_oc: set[int] = set()  # ids of groups whose text refers to the opencann alias
        self.neutralised: list[tuple[Rule, Ref, cst.SimpleStatementLine]] = []
        self.by_node = {id(ref.node): ref for ref in facts.refs}
        self.alias = facts.opencann_alias or _fresh_alias(facts.taken)

    # ---- driver
    def run(self) -> Outcome:
        self._imports()
        for ref in self.facts.refs:
            self._apply(ref)
        self._method_rules()
        self._neutralise_all()
        accepted = accept(self.groups, self.src)
        accepted += self._insertions(any(id(g) in self.uses_oc for g in accepted))
        edits = [e for g in accepted for e in g.edits]
        outcome = Outcome(apply(self.src, edits), edits)
        outcome.uses = self._analysis()
        outcome.findings = [(g.line, g.col + 1, g.level, g.rule, g.message) for g in accepted] + self.notes
        outcome.findings.sort(key=lambda f: (f[0], f[1], f[3]))
        return outcome

    def _group(self, rule: Rule, node: cst.CSTNode, edits: list[SpanEdit], message: str, uses_oc=False) -> None:
        line, col = self.meta.start(node)
        group = EditGroup(rule.id, edits, line, col, message, rule.level)
        self.groups.append(group)
        if uses_oc:
            self.uses_oc.add(id(group))

    def _note(self, rule: Rule, pos: tuple[int, int], message: str) -> None:
        self.notes.append((pos[0], pos[1] + 1, rule.level, rule.id, message))

    # ---- imports: star imports, horovod, removed modules
    def _imports(self) -> None:
        for pos, name in self.facts.cuda_env:
            self._note(BY_ID["OC029"], pos, f"os.environ[{name!r}]: " + BY_ID["OC029"].message)
        for imp in self.facts.imports:
            if imp.star and is_tf(imp.star):
                self._note(BY_ID["OC050"], imp.start, BY_ID["OC050"].message.format(module=imp.star))
            for name, _ in imp.names:
                if name.startswith("horovod"):
                    self._note(BY_ID["OC040"], imp.start, f"import of {name}: " + self._distributed("OC040"))

    def _distributed(self, rule_id: str) -> str:
        message = BY_ID[rule_id].message
        if self.ctx.distributed:
            message = f"--distributed {self.ctx.distributed} was requested, but " + message[0].lower() + message[1:]
        return message

    # ---- references
    def _apply(self, ref: Ref) -> None:
        if ref.api.startswith("horovod."):
            self.covered.add(id(ref.node))
            self._note(BY_ID["OC040"], ref.start, f"{ref.api}: " + self._distributed("OC040"))
            return
        if ref.rebound:
            rule = BY_ID["OC051"]
            self._note(rule, ref.start, rule.message.format(name=ref.rebound, api=ref.api))
            return
        rules = RULES_BY_API.get(ref.api, [])
        if rules:
            self.covered.add(id(ref.node))
        for rule in rules:
            self._apply_rule(rule, ref)

    def _apply_rule(self, rule: Rule, ref: Ref) -> None:
        if rule.action == "report":
            self._report(rule, ref)
        elif ref.call is None:
            if rule.action != "keyword" and not isinstance(self.meta.parent(ref.node), cst.Decorator):
                self._note(BY_ID["OC052"], ref.start, BY_ID["OC052"].message.format(api=ref.api))
        elif rule.action == "rename":
            new = rule.new.format(oc=self.alias)
            message = f"`{self._short(ref.node)}` -> `{new}`: {rule.message}"
            self._group(rule, ref.node, [SpanEdit(ref.start, ref.end, new, rule.id)], message, uses_oc=True)
        elif rule.action == "replace":
            self._replace(rule, ref)
        elif rule.action == "neutralise":
            self._neutralise(rule, ref)
        elif rule.action == "keyword":
            self._keyword(rule, ref.call)

    def _report(self, rule: Rule, ref: Ref) -> None:
        if rule.keyword:
            arg = argument(ref.call, None, rule.keyword) if ref.call is not None else None
            if arg is None or isinstance(arg.value, cst.Name) and arg.value.value == "None":
                return
        message = self._distributed(rule.id) if rule.id == "OC041" else rule.message
        self._note(rule, ref.start, f"{ref.api}: {message}")

    # ---- replace: GPU queries and device strings
    def _replace(self, rule: Rule, ref: Ref) -> None:
        call = ref.call
        target: cst.CSTNode = call
        if rule.gpu_argument:
            arg = argument(call, 0, rule.gpu_argument)
            if arg is None:
                return
            value = string_value(arg.value)
            if value is None:
                self._note(BY_ID["OC053"], self.meta.start(arg.value), BY_ID["OC053"].message.format(api=ref.api))
                return
            if "gpu" not in value.lower():
                return
            if rule.target == "argument":
                target = arg.value
        new = rule.new
        if isinstance(target, cst.SimpleString) and target.quote == "'":
            new = new.replace('"', "'")
        old = self._short(target)
        edit = SpanEdit(self.meta.start(target), self.meta.end(target), new, rule.id)
        message = f"`{old}` -> `{new}`: {rule.message}"
        self._group(rule, call, [self._comment_above(call, rule, f"was {old}"), edit], message)

    def _comment_above(self, node: cst.CSTNode, rule: Rule, text: str) -> SpanEdit:
        line = self._anchor_line(node)
        indent = self.src.indent(line)
        return SpanEdit((line, 0), (line, 0), f"{indent}# opencann {rule.id} ({rule.name}): {text}{self.eol}", rule.id)

    def _anchor_line(self, node: cst.CSTNode) -> int:
        for parent in self.meta.ancestors(node):
            if isinstance(parent, (cst.SimpleStatementLine, cst.Decorator, cst.BaseCompoundStatement)):
                return self.meta.start(parent)[0]
        return self.meta.start(node)[0]

    # ---- neutralise: comment a statement out under a note
    def _neutralise(self, rule: Rule, ref: Ref) -> None:
        if rule.id == "OC003" and self._policy_mode(ref.call) is None:
            self._note(BY_ID["OC053"], ref.start, "the mixed-precision policy is not a literal opencann knows: "
                       "set oc.enable(precision_mode=...) by hand and remove this call")
            return
        expr = self.meta.parent(ref.call)
        line = self.meta.parent(expr) if isinstance(expr, cst.Expr) and expr.value is ref.call else None
        if isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1:
            self.neutralised.append((rule, ref, line))
            return
        old = self._short(ref.call)
        edit = SpanEdit(self.meta.start(ref.call), self.meta.end(ref.call), "None", rule.id)
        self._group(rule, ref.call, [self._comment_above(ref.call, rule, f"was {old}"), edit],
                    f"`{old}` -> `None`: {rule.message}")

    def _neutralise_all(self) -> None:
        lines = {id(line) for _, _, line in self.neutralised}
        for rule, ref, line in self.neutralised:
            block = self.meta.parent(line)
            body = list(getattr(block, "body", ()))
            needs_pass = not isinstance(block, cst.Module) and all(id(s) in lines for s in body) and body[-1] is line
            first, last = self.meta.start(line)[0], self.meta.end(line)[0]
            indent = self.src.indent(first)
            out = [f"{indent}# opencann {rule.id} ({rule.name}): disabled, see the migration report{self.eol}"]
            for n in range(first, last + 1):
                text = self.src.line(n)
                body_text = text.rstrip("\r\n")
                ending = text[len(body_text):] or self.eol
                stripped = body_text[len(indent):] if body_text.startswith(indent) else body_text.lstrip()
                out.append(f"{indent}# {stripped}".rstrip() + ending)
            if needs_pass:
                out.append(f"{indent}pass{self.eol}")
            end = (last + 1, 0)
            if not self.src.line(last).endswith(("\n", "\r")):  # the last line of a file without a final newline
                out[-1] = out[-1].rstrip("\r\n")
                end = (last, len(self.src.line(last)))
            edit = SpanEdit((first, 0), end, "".join(out), rule.id)
            message = f"`{self._short(ref.call)}` commented out: {rule.message}"
            self._group(rule, line, [edit], message)

    def _policy_mode(self, call: cst.Call) -> str | None:
        arg = argument(call, 0, "policy")
        return PRECISION_MODES.get(policy_name(arg.value if arg else None, self.facts, self.by_node) or "")

    # ---- keywords: XLA flags, jit scopes, static batches
    def _method_rules(self) -> None:
        reason = None
        for call in self.facts.calls:
            func = call.func
            if not isinstance(func, cst.Attribute) or id(func) in self.by_node:
                continue
            name = func.attr.value
            if name == "compile":
                self._keyword(BY_ID["OC025"], call)
            elif name in ("batch", "padded_batch") and self._is_dataset(func.value, set()):
                reason = reason if reason is not None else self._static_shape_reason()
                if reason:
                    self._static_batch(call, name, reason)

    def _keyword(self, rule: Rule, call: cst.Call) -> None:
        arg = argument(call, rule.position, rule.keyword)
        if arg is not None:
            current = self.meta.code(arg.value)
            if current == rule.new or rule.when and current != rule.when:
                return
            edit = SpanEdit(self.meta.start(arg.value), self.meta.end(arg.value), rule.new, rule.id)
            message = f"`{self._short(arg)}` -> `{rule.keyword}={rule.new}`: {rule.message}"
            self._group(rule, arg, [edit], message)
        elif not rule.when:
            self._add_keyword(rule, call, rule.message)

    def _add_keyword(self, rule: Rule, call: cst.Call, reason: str) -> None:
        new_arg = cst.Arg(value=cst.parse_expression(rule.new), keyword=cst.Name(rule.keyword),
                          equal=cst.AssignEqual(whitespace_before=cst.SimpleWhitespace(""),
                                                whitespace_after=cst.SimpleWhitespace("")))
        args = list(call.args)
        if args:
            last = args[-1]
            sep = call.whitespace_before_args if "\n" in self.meta.code(call.whitespace_before_args) else \
                cst.SimpleWhitespace(" ")
            new_arg = new_arg.with_changes(comma=last.comma)
            args[-1] = last.with_changes(comma=cst.Comma(whitespace_after=sep))
        new_call = call.with_changes(args=[*args, new_arg])
        func_code = self.meta.code(call.func)
        text = self.meta.code(new_call)[len(func_code):]
        start = self.meta.end(call.func)
        edit = SpanEdit(start, self.meta.end(call), text, rule.id)
        old = self.src.slice(start, self.meta.end(call))
        message = f"`{self._shorten(old)}` -> `{self._shorten(text)}`: {reason}"
        self._group(rule, call, [edit], message)

    def _static_batch(self, call: cst.Call, name: str, reason: str) -> None:
        rule = BY_ID["OC030"]
        arg = argument(call, 1 if name == "batch" else 3, "drop_remainder")
        if arg is None and has_star_args(call):
            self._note(BY_ID["OC031"], self.meta.start(call), BY_ID["OC031"].message.format(reason=reason))
        elif arg is None:
            self._add_keyword(rule, call, rule.message.format(reason=reason))
        elif self.meta.code(arg.value) != "True":
            edit = SpanEdit(self.meta.start(arg.value), self.meta.end(arg.value), "True", rule.id)
            message = f"`{self._short(arg)}` -> `drop_remainder=True`: {rule.message.format(reason=reason)}"
            self._group(rule, arg, [edit], message)

    def _is_dataset(self, node: cst.CSTNode, visiting: set[str]) -> bool:
        """Whether an expression is a tf.data dataset: a tf.data call, a dataset method of a dataset, or a
        name every assignment of which (in the file) is one (``ds = ds.batch(2)`` keeps ``ds`` a dataset)."""
        if isinstance(node, cst.Call):
            ref = self.by_node.get(id(node.func))
            if ref is not None:
                return ref.api.startswith("tensorflow.data.") or ref.api in DATASET_FACTORIES
            func = node.func
            return isinstance(func, cst.Attribute) and func.attr.value in DATASET_METHODS and \
                self._is_dataset(func.value, visiting)
        if isinstance(node, cst.Name):
            if node.value in visiting:
                return True
            values = self.facts.assigns.get(node.value, [])
            inner = visiting | {node.value}
            return bool(values) and all(self._is_dataset(v, inner) for v in values)
        return False

    def _static_shape_reason(self) -> str:
        """Why the file needs static batch shapes ("" when it does not): the first fixed batch dimension."""
        for ref in self.facts.refs:
            call = ref.call
            if call is None:
                continue
            if ref.api in FIXED_BATCH_INPUTS:
                fixed = _not_none(argument(call, None, "batch_size")) or _first_dim(argument(call, None, "batch_shape"))
                if fixed:
                    return self._evidence(call, ref.api)
            if ref.api in FIXED_SHAPE_SPECS:
                shape = argument(call, FIXED_SHAPE_SPECS[ref.api], "shape")
                if _first_dim(shape):
                    return self._evidence(call, ref.api)
        for call in self.facts.calls:
            if _first_dim(argument(call, None, "batch_input_shape")) or _first_dim(argument(call, None, "batch_shape")):
                return self._evidence(call, dotted(call.func) or "a layer")
            stateful = argument(call, None, "stateful")
            if stateful is not None and self.meta.code(stateful.value) == "True":
                return self._evidence(call, "a stateful layer")
        return ""

    def _evidence(self, call: cst.Call, api: str) -> str:
        line = self.meta.start(call)[0]
        return f"line {line} fixes the batch dimension (`{self._short(call) if self._fits(call) else api}`)"

    # ---- the opencann import and oc.enable(...)
    def _insertions(self, needs_alias: bool) -> list[EditGroup]:
        enable = self.ctx.entry and uses_tensorflow(self.facts) and not self.facts.enables
        if not (enable or needs_alias):
            return []
        body = list(self.facts.module.body)
        work = next((i for i, s in enumerate(body) if self._is_work(s)), None)
        point = self._import_point(body, work)
        lines = []
        if self.facts.opencann_alias is None:
            statement = f"import opencann.tf as {self.alias}" if self.alias != "opencann" else "import opencann.tf"
            lines.append(("OC001", statement, f"inserted `{statement}`"))
        call = f"{self.alias}.enable(precision_mode=\"{self.ctx.precision_mode}\")"
        guard = next((s for s in body if _is_main_guard(s)), None) if work is None else None
        inside = guard is not None and isinstance(guard.body, cst.IndentedBlock)
        if enable and not inside:
            lines.append(("OC002", call, f"inserted `{call}` after the imports, before the first TensorFlow work"))
        groups = self._insert_lines(point, lines)
        if enable and inside:
            first = self.meta.start(guard.body.body[0])[0]
            where = "first in `if __name__ == \"__main__\":`"
            line = ("OC002", self.src.indent(first) + call, f"inserted `{call}` {where}")
            groups += self._insert_lines((first, 0), [line])
        return groups

    def _insert_lines(self, point: tuple[int, int], lines: list[tuple[str, str, str]]) -> list[EditGroup]:
        """One group per inserted line (rule, text, message); at the end of a file without a final line end,
        the first line starts with one."""
        groups = []
        prefix = ""
        if self.src.offset(point) == len(self.src.text) and self.src.text and not self.src.text.endswith(("\n", "\r")):
            prefix = self.eol
        for rule, text, message in lines:
            edit = SpanEdit(point, point, prefix + text + self.eol, rule)
            groups.append(EditGroup(rule, [edit], point[0], 0, message))
            prefix = ""
        return groups

    def _import_point(self, body: list[cst.CSTNode], work: int | None) -> tuple[int, int]:
        """After the last top-level import before the first TensorFlow work (or in the file); before the
        first statement past the docstring when no import precedes it."""
        stop = len(body) if work is None else work
        last = next((i for i in range(stop - 1, -1, -1) if _is_import(body[i])), None)
        if last is not None:
            return self.meta.end(body[last])[0] + 1, 0
        first = 1 if body and _is_docstring(body[0]) else 0
        while first < len(body) and _is_future(body[first]):
            first += 1
        if first < len(body):
            return self.meta.start(body[first])[0], 0
        return (self.meta.end(body[-1])[0] + 1, 0) if body else (len(self.src.lines) + 1, 0)

    def _is_work(self, statement: cst.CSTNode) -> bool:
        """Whether a top-level statement runs TensorFlow code (imports, defs and the main guard do not)."""
        if _is_import(statement) or _is_main_guard(statement) or _is_docstring(statement):
            return False
        if isinstance(statement, (cst.FunctionDef, cst.ClassDef)):
            return False
        first, last = self.meta.start(statement)[0], self.meta.end(statement)[0]
        return any(first <= ref.start[0] <= last for ref in self.facts.refs)

    # ---- support analysis
    def _analysis(self) -> list[tuple[int, int, str, str, str, str]]:
        uses = []
        for ref in self.facts.refs:
            if ref.rebound:
                continue
            verdict = self.ctx.classifier.classify(ref.api)
            note = verdict.note + (f" Suggestion: {verdict.suggestion}" if verdict.suggestion else "")
            if ref.via_star:
                note = f"(resolved through `from {ref.via_star} import *`) {note}"
            uses.append((ref.start[0], ref.start[1] + 1, module_of(ref.api), ref.api, verdict.category, note.strip()))
            if id(ref.node) in self.covered or verdict.category == "supported":
                continue
            rule = BY_ID[CATEGORY_RULE.get(verdict.category, "OC105")]
            self._finding_for(rule, ref, note)
        for imp in self.facts.imports:
            for name, _ in imp.names:
                name = canonical(name)
                verdict = self.ctx.classifier.classify(name) if is_tf(name) else None
                if verdict and verdict.category in ("removed", "manual") and not name.startswith("horovod"):
                    uses.append((imp.start[0], imp.start[1] + 1, module_of(name), name, verdict.category, verdict.note))
                    self._finding_for(BY_ID[CATEGORY_RULE[verdict.category]], None, verdict.note, imp.start, name)
        return uses

    def _finding_for(self, rule: Rule, ref: Ref | None, note: str, pos=None, api: str = "") -> None:
        self._note(rule, ref.start if ref else pos, f"{ref.api if ref else api}: " + rule.message.format(note=note))

    # ---- text helpers
    def _fits(self, node: cst.CSTNode) -> bool:
        code = self.meta.code(node)
        return "\n" not in code and len(code) <= SHORT

    def _short(self, node: cst.CSTNode) -> str:
        return self._shorten(self.meta.code(node))

    @staticmethod
    def _shorten(code: str) -> str:
        code = " ".join(code.split())
        return code if len(code) <= SHORT else code[:SHORT - 3] + "..."


def policy_name(node: cst.CSTNode | None, facts: Facts, by_node: dict[int, Ref], depth: int = 0) -> str | None:
    """The policy a mixed-precision call sets: a literal, ``Policy("...")`` or a name bound once to one."""
    if node is None or depth > 2:
        return None
    if isinstance(node, cst.SimpleString):
        return string_value(node)
    if isinstance(node, cst.Call):
        ref = by_node.get(id(node.func))
        arg = argument(node, 0, "name")
        if ref is not None and ref.api in POLICY_CLASSES and arg is not None:
            return string_value(arg.value)
    if isinstance(node, cst.Name):
        values = facts.assigns.get(node.value, [])
        return policy_name(values[0], facts, by_node, depth + 1) if len(values) == 1 else None
    return None


def precision_modes(facts: Facts) -> list[str]:
    """The opencann precision modes the file's mixed-precision policies ask for."""
    by_node = {id(ref.node): ref for ref in facts.refs}
    modes = []
    for ref in facts.refs:
        if ref.call is not None and ref.api in BY_ID["OC003"].apis:
            arg = argument(ref.call, 0, "policy")
            mode = PRECISION_MODES.get(policy_name(arg.value if arg else None, facts, by_node) or "")
            if mode:
                modes.append(mode)
    return modes


def uses_tensorflow(facts: Facts) -> bool:
    return bool(facts.refs) or any(is_tf(n) for i in facts.imports for n, _ in i.names)


def has_entry_shape(meta: Meta, facts: Facts) -> bool:
    """Whether the file looks like a program rather than a library: a main guard or top-level TF calls."""
    if any(_is_main_guard(s) for s in facts.module.body):
        return True
    scopes = (cst.FunctionDef, cst.ClassDef, cst.Lambda)
    return any(ref.call is not None and not any(isinstance(a, scopes) for a in meta.ancestors(ref.node))
               for ref in facts.refs)


def _fresh_alias(taken: set[str]) -> str:
    for alias in ("oc", "oc_tf", "opencann_tf"):
        if alias not in taken:
            return alias
    return "opencann"


def _not_none(arg: cst.Arg | None) -> bool:
    return arg is not None and not (isinstance(arg.value, cst.Name) and arg.value.value == "None")


def _first_dim(arg: cst.Arg | None) -> bool:
    """Whether a shape argument's first dimension is fixed (an int, or a name other than None)."""
    if arg is None or not isinstance(arg.value, (cst.List, cst.Tuple)) or not arg.value.elements:
        return False
    first = arg.value.elements[0].value
    if isinstance(first, cst.Integer):
        return True
    if isinstance(first, cst.UnaryOperation):  # -1
        return False
    return isinstance(first, cst.Name) and first.value != "None"


def _is_import(statement: cst.CSTNode) -> bool:
    if isinstance(statement, cst.SimpleStatementLine):
        return all(isinstance(s, (cst.Import, cst.ImportFrom)) for s in statement.body)
    if isinstance(statement, cst.Try):  # try: import x / except ImportError: ...
        return all(_is_import(s) for s in statement.body.body)
    return False


def _is_future(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and any(
        isinstance(s, cst.ImportFrom) and dotted(s.module) == "__future__" for s in statement.body)


def _is_docstring(statement: cst.CSTNode) -> bool:
    return isinstance(statement, cst.SimpleStatementLine) and len(statement.body) == 1 and \
        isinstance(statement.body[0], cst.Expr) and \
        isinstance(statement.body[0].value, (cst.SimpleString, cst.ConcatenatedString))


def _is_main_guard(statement: cst.CSTNode) -> bool:
    if not isinstance(statement, cst.If) or not isinstance(statement.test, cst.Comparison):
        return False
    test = statement.test
    if len(test.comparisons) != 1 or not isinstance(test.comparisons[0].operator, cst.Equal):
        return False
    sides = [test.left, test.comparisons[0].comparator]
    names = [s.value for s in sides if isinstance(s, cst.Name)]
    strings = [string_value(s) for s in sides if isinstance(s, cst.SimpleString)]
    return names == ["__name__"] and strings == ["__main__"]


def migrate_text(text: str, meta: Meta, facts: Facts, ctx: Context) -> Outcome:
    return Rewriter(text, meta, facts, ctx).run()
