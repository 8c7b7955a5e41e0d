"""What ``tools/gen_api_db.py`` measures: a probe per TensorFlow/Keras API, and the hand-written table of what
a probe cannot decide.

A probe is a tiny program using one API on small seeded inputs: :func:`op` (a function of tensors inside
``tf.function``, differentiated when ``grad``), :func:`layer` (a Keras layer called and differentiated in a
``tf.function``), :func:`optimizer`, :func:`metric`, :func:`dataset` (a ``tf.data`` pipeline feeding a
``tf.function``), :func:`program` (any TF2 code: Keras ``fit``, checkpoints ...) and :func:`graph` (a
``tf.compat.v1`` graph run in a session). ``PROBES`` maps API names to probes (``name:variant`` for the same
API with other arguments); ``TABLE`` maps API names and families to ``(category, note, suggestion)``;
``SUGGESTIONS`` says what to do when a measured API fails, by name prefix.
"""
from __future__ import annotations

import importlib
import inspect
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("AUTOGRAPH_VERBOSITY", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import opencann.tf as oc  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Arg:
    """A random input array, drawn from the probe's seeded generator."""

    shape: tuple = ()
    lo: float = -1.0
    hi: float = 1.0
    dtype: str = "float32"

    def value(self, rng: np.random.Generator) -> np.ndarray:
        if self.dtype == "bool":
            return rng.random(self.shape) > 0.5
        if np.dtype(self.dtype).kind in "iu":
            return rng.integers(int(self.lo), int(self.hi), self.shape).astype(self.dtype)
        return rng.uniform(self.lo, self.hi, self.shape).astype(self.dtype)


def F(*shape: int, lo: float = -1.0, hi: float = 1.0, dtype: str = "float32") -> Arg:
    return Arg(shape, lo, hi, dtype)


def I(*shape: int, lo: int = 0, hi: int = 4, dtype: str = "int32") -> Arg:  # noqa: E743
    return Arg(shape, lo, hi, dtype)


def B(*shape: int) -> Arg:
    return Arg(shape, dtype="bool")


POS = {"lo": 0.5, "hi": 2.0}  # domain of log, sqrt, ...
UNIT = {"lo": -0.9, "hi": 0.9}  # domain of asin, atanh, ...

Step = Callable[[bool], Any]  # step(on_opencann) -> results (TF2 steps ignore the flag: oc.enable() is on)


@dataclass(frozen=True)
class Probe:
    """How to exercise one API. ``make(with_grad)`` builds fresh objects and returns the step to run."""

    make: Callable[[bool], Step]
    kind: str = "tf2"  # "tf2": tf.functions under oc.enable(); "tf1": a graph run by oc.Session
    grad: bool = False  # make(True) differentiates too
    random: bool = False  # values are random draws: shapes and dtypes must match, values may differ
    isolated: bool = False  # changes process-wide state: measured in a fresh process
    note: str = ""  # added to the note when it runs


def _materialise(args: tuple, rng: np.random.Generator) -> list:
    return [tf.constant(a.value(rng)) if isinstance(a, Arg) else a for a in args]


def _is_float(t: Any) -> bool:
    return isinstance(t, (tf.Tensor, tf.Variable)) and t.dtype.is_floating


def _loss(out: Any) -> Any:
    """A scalar depending on every floating output, to differentiate."""
    terms = [tf.reduce_sum(tf.square(tf.cast(t, tf.float32))) for t in tf.nest.flatten(out) if _is_float(t)]
    return tf.add_n(terms) if terms else None


def _with_tape(compute: Callable[[], Any], sources: list) -> Any:
    """``compute()`` and the gradient of :func:`_loss` of its result with respect to ``sources``."""
    with tf.GradientTape() as tape:
        tape.watch([s for s in sources if isinstance(s, tf.Tensor)])
        out = compute()
        loss = _loss(out)
    if loss is None or not sources:
        return out
    return out, tape.gradient(loss, sources, unconnected_gradients=tf.UnconnectedGradients.ZERO)


def op(fn: Callable, *args: Any, grad: bool = True, random: bool = False) -> Probe:
    """``fn(*args)`` inside a tf.function; ``Arg`` arguments become tensor inputs, others stay constants."""

    def make(with_grad: bool) -> Step:
        values = _materialise(args, np.random.default_rng(0))
        tensors = [v for v in values if isinstance(v, tf.Tensor)]

        def call(*xs):
            it = iter(xs)
            return fn(*[next(it) if isinstance(v, tf.Tensor) else v for v in values])

        @tf.function(autograph=False)
        def step(*xs):
            if not with_grad:
                return call(*xs)
            return _with_tape(lambda: call(*xs), [x for x in xs if _is_float(x)])

        return lambda on_opencann: step(*tensors)

    return Probe(make, grad=grad, random=random)


def layer(ctor: Callable, *inputs: Arg, training: bool | None = None, grad: bool = True, random: bool = False,
          separate: bool = False, **call_kwargs: Any) -> Probe:
    """A Keras layer built on ``inputs`` (a list when several, separate arguments when ``separate``), called in
    a tf.function."""

    def make(with_grad: bool) -> Step:
        values = _materialise(inputs, np.random.default_rng(0))
        lay = ctor()
        kwargs = dict(call_kwargs)
        if "training" in inspect.signature(lay.call).parameters:
            kwargs["training"] = True if training is None else training
        def call(xs):
            if separate:
                return lay(*xs, **kwargs)
            return lay(list(xs) if len(xs) > 1 else xs[0], **kwargs)

        call(values)  # build the variables eagerly

        @tf.function(autograph=False)
        def step(*xs):
            compute = lambda: call(xs)
            if not with_grad:
                return compute()
            return _with_tape(compute, [x for x in xs if _is_float(x)] + list(lay.trainable_variables))

        return lambda on_opencann: step(*values)

    return Probe(make, grad=grad, random=random)


def optimizer(ctor: Callable, steps: int = 3) -> Probe:
    """A Keras optimizer minimising a quadratic for a few steps in a tf.function."""

    def make(with_grad: bool) -> Step:
        rng = np.random.default_rng(0)
        var = tf.Variable(rng.uniform(-1, 1, (4, 3)).astype("float32"))
        target = tf.constant(rng.uniform(-1, 1, (4, 3)).astype("float32"))
        opt = ctor()
        opt.build([var])

        @tf.function(autograph=False)
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(tf.square(var - target))
            opt.apply_gradients([(tape.gradient(loss, var), var)])
            return loss

        return lambda on_opencann: [step() for _ in range(steps)] + [var.numpy()]

    return Probe(make)


def metric(ctor: Callable, *args: Arg) -> Probe:
    """A Keras metric updated twice and read, in tf.functions."""

    def make(with_grad: bool) -> Step:
        values = _materialise(args, np.random.default_rng(0))
        m = ctor()

        @tf.function(autograph=False)
        def step(*xs):
            m.update_state(*xs)
            return m.result()

        return lambda on_opencann: [step(*values), step(*values)]

    return Probe(make)


def dataset(build: Callable[[], Any], batches: int = 3, note: str = "") -> Probe:
    """A tf.data pipeline (run by TensorFlow on the host) whose batches a tf.function consumes."""

    def make(with_grad: bool) -> Step:
        it = iter(build())

        @tf.function(autograph=False)
        def step(iterator):
            return tf.nest.map_structure(lambda t: t * 2 if t.dtype.is_floating else t, next(iterator))

        return lambda on_opencann: [step(it) for _ in range(batches)]

    return Probe(make, note=note or "the pipeline runs on the host under TensorFlow and feeds opencann")


def program(build: Callable[[], Callable[[], Any]], random: bool = False, isolated: bool = False) -> Probe:
    """Arbitrary TF2 code (Keras fit, checkpoints, ...): ``build()`` returns the step."""
    return Probe(lambda with_grad: (lambda step: lambda on_opencann: step())(build()), random=random,
                 isolated=isolated)


def graph(build: Callable[[Any], dict], random: bool = False, isolated: bool = False) -> Probe:
    """A tf.compat.v1 graph: ``build(v1)`` returns ``{"init": [...], "fetch": ..., "feed": {...},
    "steps": n, "final": ...}``; the session runs ``init`` once, ``fetch`` ``steps`` times, then ``final``."""

    def make(with_grad: bool) -> Step:
        def step(on_opencann: bool):
            g = tf.Graph()
            with g.as_default():
                tf.compat.v1.set_random_seed(0)
                spec = build(tf.compat.v1)
            session = oc.Session if on_opencann else tf.compat.v1.Session
            with session(graph=g) as sess:
                if spec.get("init"):
                    sess.run(spec["init"])
                out = [sess.run(spec["fetch"], spec.get("feed")) for _ in range(spec.get("steps", 1))]
                return out + ([sess.run(spec["final"])] if "final" in spec else [])

        return step

    return Probe(make, kind="tf1", random=random, isolated=isolated)


def ftensor(*shape: int, lo: float = -1.0, hi: float = 1.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(lo, hi, shape).astype("float32")


PROBES: dict[str, Probe] = {}


def probe(name: str, p: Probe) -> None:
    if name in PROBES:
        raise ValueError(f"probe {name} defined twice")
    PROBES[name] = p


def resolve(qualname: str) -> Any:
    """The object a dotted public name refers to (importing its top-level package)."""
    parts = qualname.split(".")
    obj = importlib.import_module(parts[0])
    for part in parts[1:]:
        obj = getattr(obj, part)
    return obj


def by_name(name: str, *args: Any, grad: bool = True, random: bool = False, **kwargs: Any) -> Probe:
    """``op`` calling the API ``name`` with ``args`` and keyword arguments."""
    return op(lambda *xs: resolve(name)(*xs, **kwargs), *args, grad=grad, random=random)


# ------------------------------------------------------------------------------------- tf.math and core
UNARY = {
    "abs": {}, "acos": UNIT, "acosh": {"lo": 1.1, "hi": 3.0}, "asin": UNIT, "asinh": {}, "atan": {}, "atanh": UNIT,
    "bessel_i0e": {}, "bessel_i1e": {}, "ceil": {}, "cos": {}, "cosh": {}, "digamma": POS, "erf": {}, "erfc": {},
    "erfinv": UNIT, "exp": {}, "expm1": {}, "floor": {}, "is_finite": {}, "is_inf": {}, "is_nan": {},
    "lgamma": POS, "log": POS, "log1p": POS, "log_sigmoid": {}, "negative": {}, "reciprocal": POS,
    "reciprocal_no_nan": POS, "rint": {}, "round": {}, "rsqrt": POS, "sigmoid": {}, "sign": {}, "sin": {},
    "sinh": {}, "softplus": {}, "softsign": {}, "sqrt": POS, "square": {}, "tan": UNIT, "tanh": {},
}
for _name, _domain in UNARY.items():
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", F(2, 5, **_domain)))

BINARY = {
    "add": {}, "subtract": {}, "multiply": {}, "divide": POS, "truediv": POS, "floordiv": POS, "floormod": POS,
    "pow": POS, "maximum": {}, "minimum": {}, "squared_difference": {}, "atan2": {}, "divide_no_nan": {},
    "multiply_no_nan": {}, "xdivy": POS, "xlogy": POS, "xlog1py": POS, "equal": {}, "not_equal": {},
    "greater": {}, "greater_equal": {}, "less": {}, "less_equal": {}, "igamma": POS, "zeta": {"lo": 1.5, "hi": 3},
}
for _name, _domain in BINARY.items():
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", F(2, 5, **_domain), F(2, 5, **_domain)))
for _name in ("logical_and", "logical_or", "logical_xor"):
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", B(2, 5), B(2, 5)))
probe("tensorflow.math.logical_not", by_name("tensorflow.math.logical_not", B(2, 5)))
probe("tensorflow.truncatediv", by_name("tensorflow.truncatediv", I(2, 5, lo=-9, hi=9), I(2, 5, lo=1, hi=4)))
probe("tensorflow.truncatemod", by_name("tensorflow.truncatemod", I(2, 5, lo=-9, hi=9), I(2, 5, lo=1, hi=4)))
for _name in ("bitwise_and", "bitwise_or", "bitwise_xor"):
    probe(f"tensorflow.bitwise.{_name}", by_name(f"tensorflow.bitwise.{_name}", I(2, 5, hi=64), I(2, 5, hi=64)))
probe("tensorflow.bitwise.invert", by_name("tensorflow.bitwise.invert", I(2, 5, hi=64)))
probe("tensorflow.bitwise.left_shift", by_name("tensorflow.bitwise.left_shift", I(2, 5, hi=64), I(2, 5, hi=3)))
probe("tensorflow.bitwise.right_shift", by_name("tensorflow.bitwise.right_shift", I(2, 5, hi=64), I(2, 5, hi=3)))

for _name in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_logsumexp",
              "reduce_std", "reduce_variance", "reduce_euclidean_norm"):
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", F(3, 4, 5), axis=1))
for _name in ("reduce_all", "reduce_any"):
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", B(3, 5), axis=1))
for _name in ("argmax", "argmin"):
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", F(3, 5), axis=1))
for _name in ("cumsum", "cumprod", "cumulative_logsumexp"):
    probe(f"tensorflow.math.{_name}", by_name(f"tensorflow.math.{_name}", F(3, 5), axis=1))
probe("tensorflow.math.count_nonzero", by_name("tensorflow.math.count_nonzero", I(3, 5, hi=2), axis=1))
probe("tensorflow.math.top_k", op(lambda x: tf.math.top_k(x, k=2), F(3, 5)))
probe("tensorflow.math.in_top_k", op(lambda p, t: tf.math.in_top_k(t, p, k=2), F(3, 5), I(3, hi=5)))
probe("tensorflow.math.l2_normalize", by_name("tensorflow.math.l2_normalize", F(3, 5), axis=1))
probe("tensorflow.math.add_n", op(lambda a, b, c: tf.math.add_n([a, b, c]), F(2, 3), F(2, 3), F(2, 3)))
probe("tensorflow.math.scalar_mul", op(lambda x: tf.math.scalar_mul(3.0, x), F(2, 3)))
probe("tensorflow.math.polyval", op(lambda x: tf.math.polyval([1.0, -2.0, 0.5], x), F(2, 3)))
probe("tensorflow.math.confusion_matrix", op(lambda a, b: tf.math.confusion_matrix(a, b, num_classes=4),
                                             I(8), I(8)))
probe("tensorflow.math.bincount", op(lambda a: tf.math.bincount(a, minlength=5), I(8, hi=5)))
probe("tensorflow.math.nextafter", by_name("tensorflow.math.nextafter", F(3), F(3)))
for _name in ("segment_sum", "segment_mean", "segment_max", "segment_min", "segment_prod"):
    probe(f"tensorflow.math.{_name}",
          op(lambda x, n=_name: getattr(tf.math, n)(x, tf.constant([0, 0, 1, 2, 2])), F(5, 3)))
for _name in ("unsorted_segment_sum", "unsorted_segment_mean", "unsorted_segment_max", "unsorted_segment_min",
              "unsorted_segment_prod", "unsorted_segment_sqrt_n"):
    probe(f"tensorflow.math.{_name}",
          op(lambda x, n=_name: getattr(tf.math, n)(x, tf.constant([2, 0, 1, 0, 2]), num_segments=3), F(5, 3)))

probe("tensorflow.linalg.matmul", by_name("tensorflow.linalg.matmul", F(2, 3, 4), F(2, 4, 5)))
probe("tensorflow.linalg.matvec", by_name("tensorflow.linalg.matvec", F(3, 4), F(4)))
probe("tensorflow.linalg.einsum", op(lambda a, b: tf.linalg.einsum("bij,bjk->bik", a, b), F(2, 3, 4), F(2, 4, 5)))
probe("tensorflow.linalg.tensordot", op(lambda a, b: tf.linalg.tensordot(a, b, axes=1), F(3, 4), F(4, 5)))
probe("tensorflow.linalg.norm", by_name("tensorflow.linalg.norm", F(3, 4), axis=1))
probe("tensorflow.linalg.trace", by_name("tensorflow.linalg.trace", F(3, 4, 4)))
probe("tensorflow.linalg.diag", by_name("tensorflow.linalg.diag", F(2, 4)))
probe("tensorflow.linalg.diag_part", by_name("tensorflow.linalg.diag_part", F(2, 4, 4)))
probe("tensorflow.linalg.band_part", by_name("tensorflow.linalg.band_part", F(4, 4), -1, 0))
probe("tensorflow.linalg.matrix_transpose", by_name("tensorflow.linalg.matrix_transpose", F(2, 3, 4)))
probe("tensorflow.linalg.cross", by_name("tensorflow.linalg.cross", F(4, 3), F(4, 3)))
probe("tensorflow.linalg.l2_normalize", by_name("tensorflow.linalg.l2_normalize", F(3, 4), axis=-1))
_SPD = op(lambda a: tf.linalg.cholesky(tf.matmul(a, a, transpose_b=True) + 4.0 * tf.eye(4)), F(4, 4))
probe("tensorflow.linalg.cholesky", _SPD)
for _name in ("inv", "det", "slogdet", "logdet", "pinv", "expm", "sqrtm"):
    probe(f"tensorflow.linalg.{_name}",
          op(lambda a, n=_name: getattr(tf.linalg, n)(tf.matmul(a, a, transpose_b=True) + 4.0 * tf.eye(4)), F(4, 4)))
probe("tensorflow.linalg.qr", by_name("tensorflow.linalg.qr", F(4, 3)))
probe("tensorflow.linalg.svd", by_name("tensorflow.linalg.svd", F(4, 3), grad=False))
probe("tensorflow.linalg.eigh", op(lambda a: tf.linalg.eigh(a + tf.transpose(a)), F(4, 4), grad=False))
probe("tensorflow.linalg.solve", op(lambda a, b: tf.linalg.solve(a + 4.0 * tf.eye(4), b), F(4, 4), F(4, 2)))
probe("tensorflow.linalg.triangular_solve",
      op(lambda a, b: tf.linalg.triangular_solve(tf.linalg.band_part(a, -1, 0) + 4.0 * tf.eye(4), b),
         F(4, 4), F(4, 2)))
probe("tensorflow.linalg.lstsq", op(lambda a, b: tf.linalg.lstsq(a, b), F(5, 3), F(5, 2)))
probe("tensorflow.linalg.eye", op(lambda: tf.linalg.eye(3, 4)))

# ------------------------------------------------------------------------------------ array manipulation
probe("tensorflow.reshape", op(lambda x: tf.reshape(x, (3, -1)), F(2, 3, 2)))
probe("tensorflow.transpose", op(lambda x: tf.transpose(x, (2, 0, 1)), F(2, 3, 4)))
probe("tensorflow.concat", op(lambda a, b: tf.concat([a, b], axis=1), F(2, 3), F(2, 2)))
probe("tensorflow.stack", op(lambda a, b: tf.stack([a, b], axis=1), F(2, 3), F(2, 3)))
probe("tensorflow.unstack", op(lambda x: tf.unstack(x, axis=1), F(2, 3)))
probe("tensorflow.split", op(lambda x: tf.split(x, [1, 2], axis=1), F(2, 3)))
probe("tensorflow.squeeze", op(lambda x: tf.squeeze(x, axis=1), F(2, 1, 3)))
probe("tensorflow.expand_dims", op(lambda x: tf.expand_dims(x, 1), F(2, 3)))
probe("tensorflow.tile", op(lambda x: tf.tile(x, (2, 3)), F(2, 3)))
probe("tensorflow.pad", op(lambda x: tf.pad(x, [[1, 0], [2, 1]]), F(2, 3)))
probe("tensorflow.pad:REFLECT", op(lambda x: tf.pad(x, [[1, 1], [1, 1]], mode="REFLECT"), F(3, 3)))
probe("tensorflow.gather", op(lambda x: tf.gather(x, [2, 0, 1, 2], axis=1), F(2, 3)))
probe("tensorflow.gather_nd", op(lambda x: tf.gather_nd(x, [[0, 1], [1, 2]]), F(2, 3)))
probe("tensorflow.scatter_nd", op(lambda u: tf.scatter_nd([[0], [2]], u, (4, 3)), F(2, 3)))
for _name in ("tensor_scatter_nd_update", "tensor_scatter_nd_add", "tensor_scatter_nd_sub",
              "tensor_scatter_nd_max", "tensor_scatter_nd_min"):
    probe(f"tensorflow.{_name}", op(lambda x, u, n=_name: getattr(tf, n)(x, [[0], [2]], u), F(4, 3), F(2, 3)))
probe("tensorflow.slice", op(lambda x: tf.slice(x, [0, 1], [2, 2]), F(3, 4)))
probe("tensorflow.strided_slice", op(lambda x: tf.strided_slice(x, [0, 1], [3, 4], [2, 1]), F(3, 4)))
probe("tensorflow.Tensor.__getitem__", op(lambda x: x[1:, ::2, tf.newaxis, -1], F(3, 4, 2)))
probe("tensorflow.reverse", op(lambda x: tf.reverse(x, [1]), F(2, 3)))
probe("tensorflow.roll", op(lambda x: tf.roll(x, 1, axis=1), F(2, 3)))
probe("tensorflow.where", op(lambda c, a, b: tf.where(c, a, b), B(2, 3), F(2, 3), F(2, 3)))
probe("tensorflow.where:indices", op(lambda c: tf.where(c), B(2, 3)))
probe("tensorflow.boolean_mask", op(lambda x, m: tf.boolean_mask(x, m), F(4, 3), B(4)))
probe("tensorflow.one_hot", op(lambda i: tf.one_hot(i, 5), I(4, hi=5)))
probe("tensorflow.range", op(lambda: tf.range(1, 10, 2)))
probe("tensorflow.linspace", op(lambda: tf.linspace(0.0, 1.0, 5)))
probe("tensorflow.zeros", op(lambda: tf.zeros((2, 3))))
probe("tensorflow.ones", op(lambda: tf.ones((2, 3))))
probe("tensorflow.fill", op(lambda: tf.fill((2, 3), 7.0)))
probe("tensorflow.eye", op(lambda: tf.eye(3)))
probe("tensorflow.zeros_like", by_name("tensorflow.zeros_like", F(2, 3)))
probe("tensorflow.ones_like", by_name("tensorflow.ones_like", F(2, 3)))
probe("tensorflow.identity", by_name("tensorflow.identity", F(2, 3)))
probe("tensorflow.shape", op(lambda x: tf.cast(tf.shape(x), tf.float32) * tf.reduce_sum(x), F(2, 3)))
probe("tensorflow.size", op(lambda x: tf.size(x), F(2, 3)))
probe("tensorflow.rank", op(lambda x: tf.rank(x), F(2, 3)))
probe("tensorflow.cast", op(lambda x: tf.cast(x * 4, tf.int32), F(2, 3)))
probe("tensorflow.saturate_cast", op(lambda x: tf.saturate_cast(x * 400, tf.int8), F(2, 3)))
probe("tensorflow.bitcast", op(lambda x: tf.bitcast(x, tf.int32), F(2, 3)))
probe("tensorflow.broadcast_to", op(lambda x: tf.broadcast_to(x, (4, 3)), F(1, 3)))
probe("tensorflow.stop_gradient", by_name("tensorflow.stop_gradient", F(2, 3)))
probe("tensorflow.sort", op(lambda x: tf.sort(x, axis=1), F(3, 5)))
probe("tensorflow.argsort", op(lambda x: tf.argsort(x, axis=1), F(3, 5)))
probe("tensorflow.unique", op(lambda x: tf.unique(x), I(8, hi=4)))
probe("tensorflow.searchsorted", op(lambda x: tf.searchsorted([[0.0, 0.3, 0.6, 0.9]], x), F(1, 5, lo=0, hi=1)))
probe("tensorflow.repeat", op(lambda x: tf.repeat(x, 2, axis=1), F(2, 3)))
probe("tensorflow.sequence_mask", op(lambda n: tf.sequence_mask(n, 5), I(3, lo=1, hi=5)))
probe("tensorflow.meshgrid", op(lambda a, b: tf.meshgrid(a, b), F(3), F(4)))
probe("tensorflow.ensure_shape", op(lambda x: tf.ensure_shape(x, (2, 3)), F(2, 3)))
probe("tensorflow.reverse_sequence", op(lambda x: tf.reverse_sequence(x, [2, 3], seq_axis=1), F(2, 4)))
probe("tensorflow.unravel_index", op(lambda i: tf.unravel_index(i, (3, 4)), I(5, hi=12)))
probe("tensorflow.dynamic_partition", op(lambda x: tf.dynamic_partition(x, [0, 1, 0, 1], 2), F(4, 3)))
probe("tensorflow.dynamic_stitch", op(lambda a, b: tf.dynamic_stitch([[0, 2], [1, 3]], [a, b]), F(2, 3), F(2, 3)))
probe("tensorflow.histogram_fixed_width", op(lambda x: tf.histogram_fixed_width(x, [-1.0, 1.0], 5), F(20)))
probe("tensorflow.space_to_batch_nd", op(lambda x: tf.space_to_batch_nd(x, [2, 2], [[0, 0], [0, 0]]), F(1, 4, 4, 2)))
probe("tensorflow.batch_to_space", op(lambda x: tf.batch_to_space(x, [2, 2], [[0, 0], [0, 0]]), F(4, 2, 2, 2)))
probe("tensorflow.clip_by_value", op(lambda x: tf.clip_by_value(x, -0.5, 0.5), F(2, 3)))
probe("tensorflow.clip_by_norm", op(lambda x: tf.clip_by_norm(x, 0.5), F(2, 3)))
probe("tensorflow.clip_by_global_norm", op(lambda a, b: tf.clip_by_global_norm([a, b], 0.5)[0], F(2, 3), F(3)))
probe("tensorflow.norm", by_name("tensorflow.norm", F(3, 4)))
probe("tensorflow.constant", op(lambda x: x + tf.constant([1.0, 2.0, 3.0]), F(2, 3)))
probe("tensorflow.convert_to_tensor", op(lambda x: x * tf.convert_to_tensor(np.float32(2)), F(2, 3)))
probe("tensorflow.guarantee_const", by_name("tensorflow.guarantee_const", F(2, 3), grad=False))
probe("tensorflow.math.cumsum:exclusive", op(lambda x: tf.math.cumsum(x, axis=1, exclusive=True, reverse=True),
                                               F(2, 3)))

# ---------------------------------------------------------------------------------------------- tf.nn
for _name in ("relu", "relu6", "elu", "selu", "gelu", "leaky_relu", "silu", "swish", "sigmoid", "tanh", "softplus",
              "softsign", "crelu"):
    probe(f"tensorflow.nn.{_name}", by_name(f"tensorflow.nn.{_name}", F(2, 5)))
for _name in ("softmax", "log_softmax"):
    probe(f"tensorflow.nn.{_name}", by_name(f"tensorflow.nn.{_name}", F(2, 5), axis=-1))
probe("tensorflow.nn.bias_add", by_name("tensorflow.nn.bias_add", F(2, 3, 4), F(4)))
probe("tensorflow.nn.l2_loss", by_name("tensorflow.nn.l2_loss", F(2, 3)))
probe("tensorflow.nn.l2_normalize", by_name("tensorflow.nn.l2_normalize", F(2, 3), axis=1))
probe("tensorflow.nn.moments", op(lambda x: tf.nn.moments(x, axes=[0, 1]), F(2, 3, 4)))
probe("tensorflow.nn.normalize_moments", op(lambda c, m, v: tf.nn.normalize_moments(c, m, v, None),
                                           F(), F(4), F(4, **POS)))
probe("tensorflow.nn.batch_normalization",
      op(lambda x, m, v: tf.nn.batch_normalization(x, m, v, 0.1, 1.2, 1e-3), F(2, 4), F(4), F(4, **POS)))
probe("tensorflow.nn.fused_batch_norm",
      op(lambda x, s, o: tf.compat.v1.nn.fused_batch_norm(x, s, o)[0], F(2, 3, 3, 4), F(4), F(4)))
probe("tensorflow.nn.dropout", op(lambda x: tf.nn.dropout(x, 0.5, seed=1), F(4, 6), random=True))
probe("tensorflow.nn.conv1d", op(lambda x, w: tf.nn.conv1d(x, w, 1, "SAME"), F(2, 8, 3), F(3, 3, 4)))
probe("tensorflow.nn.conv2d", op(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME"), F(2, 6, 6, 3), F(3, 3, 3, 4)))
probe("tensorflow.nn.conv2d:strided_valid", op(lambda x, w: tf.nn.conv2d(x, w, 2, "VALID"), F(2, 7, 7, 3),
                                               F(3, 3, 3, 4)))
probe("tensorflow.nn.conv2d:dilated", op(lambda x, w: tf.nn.conv2d(x, w, 1, "SAME", dilations=2), F(1, 7, 7, 2),
                                         F(3, 3, 2, 2)))
probe("tensorflow.nn.conv3d", op(lambda x, w: tf.nn.conv3d(x, w, [1] * 5, "SAME"), F(1, 4, 4, 4, 2), F(2, 2, 2, 2, 3)))
probe("tensorflow.nn.conv2d_transpose",
      op(lambda x, w: tf.nn.conv2d_transpose(x, w, (2, 8, 8, 3), 2, "SAME"), F(2, 4, 4, 4), F(3, 3, 3, 4)))
probe("tensorflow.nn.conv1d_transpose",
      op(lambda x, w: tf.nn.conv1d_transpose(x, w, (2, 8, 3), 2, "SAME"), F(2, 4, 4), F(3, 3, 4)))
probe("tensorflow.nn.conv3d_transpose",
      op(lambda x, w: tf.nn.conv3d_transpose(x, w, (1, 4, 4, 4, 2), 2, "SAME"), F(1, 2, 2, 2, 3), F(2, 2, 2, 2, 3)))
probe("tensorflow.nn.depthwise_conv2d",
      op(lambda x, w: tf.nn.depthwise_conv2d(x, w, [1, 1, 1, 1], "SAME"), F(2, 5, 5, 3), F(3, 3, 3, 2)))
probe("tensorflow.nn.separable_conv2d",
      op(lambda x, d, p: tf.nn.separable_conv2d(x, d, p, [1, 1, 1, 1], "SAME"), F(2, 5, 5, 3), F(3, 3, 3, 2),
         F(1, 1, 6, 4)))
probe("tensorflow.nn.atrous_conv2d", op(lambda x, w: tf.nn.atrous_conv2d(x, w, 2, "SAME"), F(1, 7, 7, 2),
                                        F(3, 3, 2, 2)))
for _name in ("max_pool2d", "avg_pool2d"):
    probe(f"tensorflow.nn.{_name}", by_name(f"tensorflow.nn.{_name}", F(2, 6, 6, 3), 2, 2, "VALID"))
for _name in ("max_pool1d", "avg_pool1d"):
    probe(f"tensorflow.nn.{_name}", by_name(f"tensorflow.nn.{_name}", F(2, 6, 3), 2, 2, "VALID"))
for _name in ("max_pool3d", "avg_pool3d"):
    probe(f"tensorflow.nn.{_name}", by_name(f"tensorflow.nn.{_name}", F(1, 4, 4, 4, 2), 2, 2, "VALID"))
probe("tensorflow.nn.max_pool", by_name("tensorflow.nn.max_pool", F(2, 6, 6, 3), 3, 2, "SAME"))
probe("tensorflow.nn.avg_pool", by_name("tensorflow.nn.avg_pool", F(2, 6, 6, 3), 3, 2, "SAME"))
probe("tensorflow.nn.max_pool_with_argmax",
      op(lambda x: tf.nn.max_pool_with_argmax(x, 2, 2, "VALID")[0], F(2, 4, 4, 3)))
probe("tensorflow.nn.fractional_max_pool",
      op(lambda x: tf.nn.fractional_max_pool(x, [1.0, 1.5, 1.5, 1.0], seed=1)[0], F(1, 6, 6, 1), random=True))
probe("tensorflow.nn.local_response_normalization", by_name("tensorflow.nn.local_response_normalization",
                                                            F(1, 3, 3, 6), depth_radius=2))
probe("tensorflow.nn.softmax_cross_entropy_with_logits",
      op(lambda y, x: tf.nn.softmax_cross_entropy_with_logits(tf.nn.softmax(y), x), F(4, 5), F(4, 5)))
probe("tensorflow.nn.sparse_softmax_cross_entropy_with_logits",
      op(lambda y, x: tf.nn.sparse_softmax_cross_entropy_with_logits(y, x), I(4, hi=5), F(4, 5)))
probe("tensorflow.nn.sigmoid_cross_entropy_with_logits",
      op(lambda y, x: tf.nn.sigmoid_cross_entropy_with_logits(y, x), F(4, 5, lo=0), F(4, 5)))
probe("tensorflow.nn.weighted_cross_entropy_with_logits",
      op(lambda y, x: tf.nn.weighted_cross_entropy_with_logits(y, x, 2.0), F(4, 5, lo=0), F(4, 5)))
probe("tensorflow.nn.log_poisson_loss", op(lambda y, x: tf.nn.log_poisson_loss(y, x), F(4, **POS), F(4)))
probe("tensorflow.nn.compute_average_loss", op(lambda x: tf.nn.compute_average_loss(x, global_batch_size=8), F(4)))
probe("tensorflow.nn.scale_regularization_loss", op(lambda x: tf.nn.scale_regularization_loss(x), F()))
probe("tensorflow.nn.embedding_lookup", op(lambda p, i: tf.nn.embedding_lookup(p, i), F(6, 3), I(4, hi=6)))
probe("tensorflow.nn.safe_embedding_lookup_sparse",
      op(lambda p: tf.nn.safe_embedding_lookup_sparse(
          p, tf.sparse.SparseTensor([[0, 0], [1, 0], [1, 1]], tf.constant([1, 3, 5], tf.int64), [2, 2])), F(6, 3)))
probe("tensorflow.nn.ctc_loss",
      op(lambda lg: tf.nn.ctc_loss(tf.constant([[1, 2], [2, 1]]), lg, tf.constant([2, 2]), tf.constant([5, 5]),
                                   logits_time_major=False, blank_index=0), F(2, 5, 4)))
probe("tensorflow.nn.space_to_depth", by_name("tensorflow.nn.space_to_depth", F(1, 4, 4, 2), 2))
probe("tensorflow.nn.depth_to_space", by_name("tensorflow.nn.depth_to_space", F(1, 2, 2, 8), 2))
probe("tensorflow.nn.top_k", op(lambda x: tf.nn.top_k(x, 2), F(3, 5)))
probe("tensorflow.nn.sampled_softmax_loss",
      op(lambda w, b, x: tf.nn.sampled_softmax_loss(w, b, tf.constant([[1], [3]], tf.int64), x, 2, 6, seed=1),
         F(6, 3), F(6), F(2, 3), random=True))
probe("tensorflow.nn.nce_loss",
      op(lambda w, b, x: tf.nn.nce_loss(w, b, tf.constant([[1], [3]], tf.int64), x, 2, 6),
         F(6, 3), F(6), F(2, 3), random=True))

# -------------------------------------------------------------------------------------------- tf.image
_IMG = F(2, 8, 8, 3, lo=0.0, hi=1.0)
probe("tensorflow.image.resize", op(lambda x: tf.image.resize(x, (12, 12)), _IMG))
probe("tensorflow.image.resize:nearest", op(lambda x: tf.image.resize(x, (12, 12), method="nearest"), _IMG))
probe("tensorflow.image.resize:bicubic", op(lambda x: tf.image.resize(x, (12, 12), method="bicubic"), _IMG))
probe("tensorflow.image.resize_with_pad", op(lambda x: tf.image.resize_with_pad(x, 10, 12), _IMG))
probe("tensorflow.image.resize_with_crop_or_pad", op(lambda x: tf.image.resize_with_crop_or_pad(x, 6, 10), _IMG))
probe("tensorflow.image.crop_to_bounding_box", op(lambda x: tf.image.crop_to_bounding_box(x, 1, 2, 4, 5), _IMG))
probe("tensorflow.image.pad_to_bounding_box", op(lambda x: tf.image.pad_to_bounding_box(x, 1, 2, 10, 11), _IMG))
probe("tensorflow.image.central_crop", op(lambda x: tf.image.central_crop(x, 0.5), _IMG))
probe("tensorflow.image.crop_and_resize",
      op(lambda x: tf.image.crop_and_resize(x, [[0.1, 0.1, 0.8, 0.9]], [1], (4, 4)), _IMG))
for _name in ("flip_left_right", "flip_up_down", "transpose", "rgb_to_grayscale", "rgb_to_hsv", "hsv_to_rgb",
              "rgb_to_yuv", "per_image_standardization", "image_gradients", "total_variation", "sobel_edges"):
    probe(f"tensorflow.image.{_name}", by_name(f"tensorflow.image.{_name}", _IMG))
probe("tensorflow.image.rot90", op(lambda x: tf.image.rot90(x, 1), _IMG))
probe("tensorflow.image.grayscale_to_rgb", by_name("tensorflow.image.grayscale_to_rgb", F(2, 4, 4, 1, lo=0.0)))
probe("tensorflow.image.adjust_brightness", op(lambda x: tf.image.adjust_brightness(x, 0.2), _IMG))
probe("tensorflow.image.adjust_contrast", op(lambda x: tf.image.adjust_contrast(x, 1.5), _IMG, grad=False))
probe("tensorflow.image.adjust_saturation", op(lambda x: tf.image.adjust_saturation(x, 1.5), _IMG, grad=False))
probe("tensorflow.image.adjust_hue", op(lambda x: tf.image.adjust_hue(x, 0.1), _IMG, grad=False))
probe("tensorflow.image.adjust_gamma", op(lambda x: tf.image.adjust_gamma(x, 1.5), _IMG))
probe("tensorflow.image.convert_image_dtype", op(lambda x: tf.image.convert_image_dtype(x, tf.uint8), _IMG))
probe("tensorflow.image.extract_patches",
      op(lambda x: tf.image.extract_patches(x, [1, 2, 2, 1], [1, 2, 2, 1], [1, 1, 1, 1], "VALID"), _IMG))
probe("tensorflow.image.psnr", op(lambda a, b: tf.image.psnr(a, b, 1.0), _IMG, _IMG))
probe("tensorflow.image.ssim", op(lambda a, b: tf.image.ssim(a, b, 1.0, filter_size=3), _IMG, _IMG))
probe("tensorflow.image.non_max_suppression",
      op(lambda s: tf.image.non_max_suppression(
          tf.constant([[0, 0, 1, 1], [0, 0.1, 1, 1.1], [0, 2, 1, 3]], tf.float32), s, 2), F(3, lo=0.0)))
probe("tensorflow.image.random_flip_left_right",
      op(lambda x: tf.image.random_flip_left_right(x, seed=1), _IMG, random=True))
probe("tensorflow.image.random_crop", op(lambda x: tf.image.random_crop(x, (2, 4, 4, 3), seed=1), _IMG, random=True))
probe("tensorflow.image.random_brightness", op(lambda x: tf.image.random_brightness(x, 0.2, seed=1), _IMG,
                                               random=True))
probe("tensorflow.image.stateless_random_flip_left_right",
      op(lambda x: tf.image.stateless_random_flip_left_right(x, seed=(1, 2)), _IMG, random=True))

# ------------------------------------------------------------------------------------------- tf.random
probe("tensorflow.random.normal", op(lambda: tf.random.normal((3, 4), seed=1), random=True))
probe("tensorflow.random.uniform", op(lambda: tf.random.uniform((3, 4), seed=1), random=True))
probe("tensorflow.random.uniform:int", op(lambda: tf.random.uniform((3, 4), 0, 10, tf.int32, seed=1), random=True))
probe("tensorflow.random.truncated_normal", op(lambda: tf.random.truncated_normal((3, 4), seed=1), random=True))
probe("tensorflow.random.categorical", op(lambda x: tf.random.categorical(x, 4, seed=1), F(2, 5), random=True))
probe("tensorflow.random.shuffle", op(lambda x: tf.random.shuffle(x, seed=1), F(6, 2), random=True))
probe("tensorflow.random.gamma", op(lambda: tf.random.gamma((3,), 2.0, seed=1), random=True))
probe("tensorflow.random.poisson", op(lambda: tf.random.poisson((3,), 2.0, seed=1), random=True))
for _name in ("stateless_normal", "stateless_uniform", "stateless_truncated_normal"):
    probe(f"tensorflow.random.{_name}", op(lambda n=_name: getattr(tf.random, n)((3, 4), seed=(1, 2)), random=True))
probe("tensorflow.random.stateless_categorical",
      op(lambda x: tf.random.stateless_categorical(x, 4, seed=(1, 2)), F(2, 5), random=True))
probe("tensorflow.random.Generator", program(lambda: (lambda g: tf.function(lambda: g.normal((3, 4))))(
    tf.random.Generator.from_seed(1)), random=True))
probe("tensorflow.random.set_seed", program(lambda: lambda: (tf.random.set_seed(3), tf.function(
    lambda: tf.random.uniform((2, 2)))())[1], random=True))

# -------------------------------------------------------------------- control flow, variables, functions
probe("tensorflow.cond", op(lambda x: tf.cond(tf.reduce_sum(x) > 0, lambda: x * 2, lambda: -x), F(2, 3)))
probe("tensorflow.case", op(lambda x: tf.case([(tf.reduce_sum(x) > 0, lambda: x * 2)], default=lambda: -x), F(2, 3)))
probe("tensorflow.switch_case", op(lambda x, i: tf.switch_case(i, [lambda: x, lambda: x * 2, lambda: -x]),
                                   F(2, 3), I(lo=0, hi=3)))
probe("tensorflow.while_loop", op(lambda x: tf.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a * 1.5),
                                                          (tf.constant(0), x))[1], F(2, 3)))
probe("tensorflow.map_fn", op(lambda x: tf.map_fn(lambda r: r * tf.reduce_sum(r), x), F(3, 4)))
probe("tensorflow.scan", op(lambda x: tf.scan(lambda a, r: a + r, x), F(3, 4)))
probe("tensorflow.foldl", op(lambda x: tf.foldl(lambda a, r: a * 0.5 + r, x), F(3, 4)))
probe("tensorflow.foldr", op(lambda x: tf.foldr(lambda a, r: a * 0.5 + r, x), F(3, 4)))
probe("tensorflow.vectorized_map", op(lambda x: tf.vectorized_map(lambda r: tf.tensordot(r, r, 1), x), F(3, 4)))
probe("tensorflow.TensorArray", op(lambda x: tf.TensorArray(tf.float32, 3).unstack(x).stack() * 2.0, F(3, 4)))
probe("tensorflow.range:autograph_loop", program(lambda: lambda: tf.function(_python_loop)(ftensor(3, 4))))
probe("tensorflow.py_function", op(lambda x: tf.py_function(lambda t: t * 2, [x], tf.float32), F(2, 3), grad=False))
probe("tensorflow.numpy_function", op(lambda x: tf.numpy_function(lambda t: t * 2, [x], tf.float32), F(2, 3),
                                      grad=False))
probe("tensorflow.custom_gradient", op(lambda x: _clip_grad(x), F(2, 3)))
probe("tensorflow.recompute_grad", op(lambda x: tf.recompute_grad(lambda t: tf.sin(t) * t)(x), F(2, 3)))
probe("tensorflow.GradientTape", op(lambda x: x * x, F(2, 3)))
probe("tensorflow.GradientTape.jacobian", op(lambda x: _jacobian(x), F(3), grad=False))
probe("tensorflow.function", op(lambda x: tf.function(lambda t: t * 3.0)(x), F(2, 3)))
probe("tensorflow.Variable", program(lambda: _variable_step(lambda v: v.assign(v * 0.5 + 1.0))))
probe("tensorflow.Variable.assign_add", program(lambda: _variable_step(lambda v: v.assign_add(tf.ones_like(v)))))
probe("tensorflow.Variable.assign_sub", program(lambda: _variable_step(lambda v: v.assign_sub(tf.ones_like(v)))))
probe("tensorflow.Variable.scatter_nd_update", program(lambda: _variable_step(
    lambda v: v.scatter_nd_update([[0]], tf.ones((1, 3))))))
probe("tensorflow.print", op(lambda x: (tf.print(x), x * 2)[1], F(2, 3), grad=False))
probe("tensorflow.debugging.assert_equal", op(lambda x: (tf.debugging.assert_equal(tf.shape(x)[0], 2), x * 2)[1],
                                              F(2, 3), grad=False))
probe("tensorflow.debugging.assert_all_finite", op(lambda x: tf.debugging.assert_all_finite(x, "bad"), F(2, 3),
                                                   grad=False))
probe("tensorflow.debugging.check_numerics", op(lambda x: tf.debugging.check_numerics(x, "bad"), F(2, 3), grad=False))
probe("tensorflow.debugging.assert_shapes", op(lambda x: (tf.debugging.assert_shapes([(x, ("N", 3))]), x * 2)[1],
                                               F(2, 3), grad=False))
probe("tensorflow.Assert", op(lambda x: (tf.Assert(tf.reduce_all(x < 2), [x]), x * 2)[1], F(2, 3), grad=False))
probe("tensorflow.control_dependencies", program(lambda: _control_dependencies()))
probe("tensorflow.distribute.get_strategy", program(lambda: _default_strategy()))

# ------------------------------------------------------------------------ strings, sparse, ragged, signal
probe("tensorflow.strings.as_string", op(lambda x: tf.strings.as_string(x), F(3), grad=False))
probe("tensorflow.strings.to_number", op(lambda: tf.strings.to_number(tf.constant(["1.5", "2"])), grad=False))
probe("tensorflow.strings.split", op(lambda: tf.strings.split(tf.constant(["a b", "c"])).to_tensor(), grad=False))
probe("tensorflow.strings.length", op(lambda: tf.strings.length(tf.constant(["ab", "c"])), grad=False))
probe("tensorflow.io.decode_raw", op(lambda: tf.io.decode_raw(tf.constant(b"\x01\x02"), tf.uint8), grad=False))
probe("tensorflow.sparse.SparseTensor", op(lambda x: tf.sparse.sparse_dense_matmul(
    tf.sparse.SparseTensor([[0, 1], [2, 0]], [1.0, 2.0], [3, 2]), x), F(2, 4)))
probe("tensorflow.sparse.to_dense", op(lambda x: tf.sparse.to_dense(tf.sparse.from_dense(x)), F(2, 3)))
probe("tensorflow.sparse.reduce_sum", op(lambda x: tf.sparse.reduce_sum(tf.sparse.from_dense(x), axis=1), F(2, 3)))
probe("tensorflow.ragged.constant", op(lambda: tf.ragged.constant([[1.0, 2.0], [3.0]]).to_tensor() * 2.0))
probe("tensorflow.RaggedTensor.from_row_lengths", op(lambda x: tf.reduce_sum(
    tf.RaggedTensor.from_row_lengths(x, [2, 1, 3]), axis=1), F(6)))
probe("tensorflow.signal.fft", op(lambda x: tf.math.real(tf.signal.fft(tf.complex(x, x))), F(8), grad=False))
probe("tensorflow.signal.rfft", op(lambda x: tf.math.abs(tf.signal.rfft(x)), F(8)))
probe("tensorflow.signal.stft", op(lambda x: tf.math.abs(tf.signal.stft(x, 8, 4)), F(2, 32)))
probe("tensorflow.signal.frame", op(lambda x: tf.signal.frame(x, 4, 2), F(2, 10)))
probe("tensorflow.signal.hann_window", op(lambda: tf.signal.hann_window(8)))
probe("tensorflow.math.real", op(lambda x: tf.math.real(tf.complex(x, x)), F(3)))


def _python_loop(x: Any) -> Any:
    for i in tf.range(3):
        x = x + tf.cast(i, tf.float32)
    return x


@tf.custom_gradient
def _clip_grad(x: Any) -> Any:
    return x * 2.0, lambda dy: tf.clip_by_value(dy, -0.1, 0.1)


def _jacobian(x: Any) -> Any:
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.sin(x) * x
    return tape.jacobian(y, x)


def _variable_step(update: Callable) -> Callable[[], Any]:
    var = tf.Variable(ftensor(2, 3))
    step = tf.function(lambda: update(var))
    return lambda: [step(), step(), var.numpy()]


def _control_dependencies() -> Callable[[], Any]:
    var = tf.Variable(ftensor(2, 3))

    @tf.function
    def step():
        with tf.control_dependencies([var.assign_add(tf.ones((2, 3)))]):
            return tf.identity(var.read_value()) * 2.0

    return lambda: [step(), var.numpy()]


def _default_strategy() -> Callable[[], Any]:
    with tf.distribute.get_strategy().scope():
        lay = keras.layers.Dense(3)
        lay(ftensor(2, 4))
    return lambda: tf.function(lambda x: lay(x))(ftensor(2, 4))

# ------------------------------------------------------------------------------------------ keras.layers
L = keras.layers
_SEQ, _IMG2, _VOL = F(2, 6, 3), F(2, 6, 6, 3), F(1, 4, 4, 4, 2)
_LAYERS: dict[str, tuple] = {  # name: (constructor, inputs, options)
    "Dense": (lambda: L.Dense(4, activation="relu"), [F(2, 3)], {}),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=4, bias_axes="c"), [F(2, 3)], {}),
    "Conv1D": (lambda: L.Conv1D(4, 3, padding="same"), [_SEQ], {}),
    "Conv2D": (lambda: L.Conv2D(4, 3, strides=2, padding="same", activation="relu"), [_IMG2], {}),
    "Conv3D": (lambda: L.Conv3D(3, 2), [_VOL], {}),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(4, 3, strides=2, padding="same"), [_SEQ], {}),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(4, 3, strides=2, padding="same"), [_IMG2], {}),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(3, 2, strides=2), [_VOL], {}),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(3, padding="same"), [_SEQ], {}),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3, padding="same"), [_IMG2], {}),
    "SeparableConv1D": (lambda: L.SeparableConv1D(4, 3, padding="same"), [_SEQ], {}),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3, padding="same"), [_IMG2], {}),
    "MaxPooling1D": (lambda: L.MaxPooling1D(2), [_SEQ], {}),
    "MaxPooling2D": (lambda: L.MaxPooling2D(2), [_IMG2], {}),
    "MaxPooling3D": (lambda: L.MaxPooling3D(2), [_VOL], {}),
    "AveragePooling1D": (lambda: L.AveragePooling1D(2), [_SEQ], {}),
    "AveragePooling2D": (lambda: L.AveragePooling2D(2), [_IMG2], {}),
    "AveragePooling3D": (lambda: L.AveragePooling3D(2), [_VOL], {}),
    "GlobalAveragePooling1D": (lambda: L.GlobalAveragePooling1D(), [_SEQ], {}),
    "GlobalAveragePooling2D": (lambda: L.GlobalAveragePooling2D(), [_IMG2], {}),
    "GlobalAveragePooling3D": (lambda: L.GlobalAveragePooling3D(), [_VOL], {}),
    "GlobalMaxPooling1D": (lambda: L.GlobalMaxPooling1D(), [_SEQ], {}),
    "GlobalMaxPooling2D": (lambda: L.GlobalMaxPooling2D(), [_IMG2], {}),
    "GlobalMaxPooling3D": (lambda: L.GlobalMaxPooling3D(), [_VOL], {}),
    "AdaptiveAveragePooling2D": (lambda: L.AdaptiveAveragePooling2D(3), [_IMG2], {}),
    "AdaptiveMaxPooling2D": (lambda: L.AdaptiveMaxPooling2D(3), [_IMG2], {}),
    "Flatten": (lambda: L.Flatten(), [_IMG2], {}),
    "Reshape": (lambda: L.Reshape((3, 6)), [_SEQ], {}),
    "Permute": (lambda: L.Permute((2, 1)), [_SEQ], {}),
    "RepeatVector": (lambda: L.RepeatVector(3), [F(2, 4)], {}),
    "Dropout": (lambda: L.Dropout(0.5, seed=1), [F(4, 6)], {"random": True}),
    "SpatialDropout1D": (lambda: L.SpatialDropout1D(0.5, seed=1), [_SEQ], {"random": True}),
    "SpatialDropout2D": (lambda: L.SpatialDropout2D(0.5, seed=1), [_IMG2], {"random": True}),
    "GaussianNoise": (lambda: L.GaussianNoise(0.1, seed=1), [F(4, 6)], {"random": True}),
    "GaussianDropout": (lambda: L.GaussianDropout(0.3, seed=1), [F(4, 6)], {"random": True}),
    "AlphaDropout": (lambda: L.AlphaDropout(0.3, seed=1), [F(4, 6)], {"random": True}),
    "Dropout:inference": (lambda: L.Dropout(0.5), [F(4, 6)], {"training": False}),
    "BatchNormalization": (lambda: L.BatchNormalization(), [_IMG2], {}),
    "BatchNormalization:inference": (lambda: L.BatchNormalization(), [_IMG2], {"training": False}),
    "LayerNormalization": (lambda: L.LayerNormalization(), [_SEQ], {}),
    "GroupNormalization": (lambda: L.GroupNormalization(groups=3), [F(2, 4, 4, 6)], {}),
    "RMSNormalization": (lambda: L.RMSNormalization(), [_SEQ], {}),
    "UnitNormalization": (lambda: L.UnitNormalization(), [_SEQ], {}),
    "SpectralNormalization": (lambda: L.SpectralNormalization(L.Dense(3)), [F(2, 4)], {}),
    "Normalization": (lambda: _adapted(L.Normalization(), ftensor(8, 3)), [F(2, 3)], {}),
    "Embedding": (lambda: L.Embedding(10, 4), [I(2, 5, hi=10)], {}),
    "SimpleRNN": (lambda: L.SimpleRNN(4), [_SEQ], {}),
    "LSTM": (lambda: L.LSTM(4, return_sequences=True), [_SEQ], {}),
    "GRU": (lambda: L.GRU(4), [_SEQ], {}),
    "Bidirectional": (lambda: L.Bidirectional(L.LSTM(3)), [_SEQ], {}),
    "ConvLSTM2D": (lambda: L.ConvLSTM2D(2, 3, padding="same"), [F(1, 3, 5, 5, 2)], {}),
    "TimeDistributed": (lambda: L.TimeDistributed(L.Dense(3)), [_SEQ], {}),
    "MultiHeadAttention": (lambda: L.MultiHeadAttention(2, 4), [_SEQ, _SEQ], {"pairs": True}),
    "Attention": (lambda: L.Attention(), [_SEQ, _SEQ], {}),
    "AdditiveAttention": (lambda: L.AdditiveAttention(), [_SEQ, _SEQ], {}),
    "GroupQueryAttention": (lambda: L.GroupQueryAttention(4, 2, 1), [_SEQ, _SEQ], {"pairs": True}),
    "Activation": (lambda: L.Activation("tanh"), [F(2, 5)], {}),
    "ReLU": (lambda: L.ReLU(max_value=0.5), [F(2, 5)], {}),
    "LeakyReLU": (lambda: L.LeakyReLU(0.2), [F(2, 5)], {}),
    "PReLU": (lambda: L.PReLU(), [F(2, 5)], {}),
    "ELU": (lambda: L.ELU(), [F(2, 5)], {}),
    "Softmax": (lambda: L.Softmax(), [F(2, 5)], {}),
    "Add": (lambda: L.Add(), [F(2, 3), F(2, 3)], {}),
    "Subtract": (lambda: L.Subtract(), [F(2, 3), F(2, 3)], {}),
    "Multiply": (lambda: L.Multiply(), [F(2, 3), F(2, 3)], {}),
    "Average": (lambda: L.Average(), [F(2, 3), F(2, 3)], {}),
    "Maximum": (lambda: L.Maximum(), [F(2, 3), F(2, 3)], {}),
    "Minimum": (lambda: L.Minimum(), [F(2, 3), F(2, 3)], {}),
    "Concatenate": (lambda: L.Concatenate(), [F(2, 3), F(2, 2)], {}),
    "Dot": (lambda: L.Dot(axes=1), [F(2, 3), F(2, 3)], {}),
    "ZeroPadding1D": (lambda: L.ZeroPadding1D(1), [_SEQ], {}),
    "ZeroPadding2D": (lambda: L.ZeroPadding2D(1), [_IMG2], {}),
    "ZeroPadding3D": (lambda: L.ZeroPadding3D(1), [_VOL], {}),
    "Cropping1D": (lambda: L.Cropping1D(1), [_SEQ], {}),
    "Cropping2D": (lambda: L.Cropping2D(1), [_IMG2], {}),
    "Cropping3D": (lambda: L.Cropping3D(1), [_VOL], {}),
    "UpSampling1D": (lambda: L.UpSampling1D(2), [_SEQ], {}),
    "UpSampling2D": (lambda: L.UpSampling2D(2), [_IMG2], {}),
    "UpSampling2D:bilinear": (lambda: L.UpSampling2D(2, interpolation="bilinear"), [_IMG2], {}),
    "UpSampling3D": (lambda: L.UpSampling3D(2), [_VOL], {}),
    "Lambda": (lambda: L.Lambda(lambda t: t * 2.0), [F(2, 3)], {}),
    "Masking": (lambda: L.Masking(0.0), [_SEQ], {}),
    "Identity": (lambda: L.Identity(), [F(2, 3)], {}),
    "ActivityRegularization": (lambda: L.ActivityRegularization(l2=0.01), [F(2, 3)], {}),
    "Rescaling": (lambda: L.Rescaling(1 / 255.0), [_IMG2], {}),
    "Resizing": (lambda: L.Resizing(4, 4), [_IMG2], {}),
    "CenterCrop": (lambda: L.CenterCrop(4, 4), [_IMG2], {}),
    "RandomFlip": (lambda: L.RandomFlip(seed=1), [_IMG2], {"random": True}),
    "RandomRotation": (lambda: L.RandomRotation(0.1, seed=1), [_IMG2], {"random": True}),
    "RandomZoom": (lambda: L.RandomZoom(0.1, seed=1), [_IMG2], {"random": True}),
    "RandomTranslation": (lambda: L.RandomTranslation(0.1, 0.1, seed=1), [_IMG2], {"random": True}),
    "RandomCrop": (lambda: L.RandomCrop(4, 4, seed=1), [_IMG2], {"random": True}),
    "RandomContrast": (lambda: L.RandomContrast(0.2, seed=1), [_IMG2], {"random": True}),
    "RandomBrightness": (lambda: L.RandomBrightness(0.2, seed=1), [_IMG2], {"random": True}),
    "CategoryEncoding": (lambda: L.CategoryEncoding(5, output_mode="one_hot"), [I(4, hi=5)], {}),
    "Hashing": (lambda: L.Hashing(8), [I(4, hi=100, dtype="int64")], {}),
    "Discretization": (lambda: L.Discretization([0.0, 0.5]), [F(2, 3)], {}),
    "IntegerLookup": (lambda: L.IntegerLookup(vocabulary=[1, 2, 3]), [I(4, hi=5, dtype="int64")], {}),
    "StringLookup": (lambda: L.StringLookup(vocabulary=["a", "b"]), [], {"strings": True}),
}


def _adapted(lay: Any, data: np.ndarray) -> Any:
    lay.adapt(data)
    return lay


def _string_layer(ctor: Callable) -> Probe:
    return op(lambda: tf.cast(ctor()(tf.constant([["a", "c"], ["b", "a"]])), tf.float32) * 2.0, grad=False)


for _name, (_ctor, _inputs, _opts) in _LAYERS.items():
    _base = _name.split(":")[0]
    if _opts.get("strings"):
        probe(f"keras.layers.{_name}", _string_layer(_ctor))
    elif _opts.get("pairs"):  # query, value as separate arguments
        probe(f"keras.layers.{_name}", layer(_ctor, *_inputs, separate=True))
    else:
        probe(f"keras.layers.{_name}", layer(_ctor, *_inputs, training=_opts.get("training"),
                                             random=_opts.get("random", False)))
probe("keras.layers.Input", program(lambda: _functional_predict()))
probe("keras.layers.InputLayer", program(lambda: _functional_predict()))

# --------------------------------------------------------------------------------------- activations
for _name in ("relu", "relu6", "sigmoid", "tanh", "softmax", "log_softmax", "softplus", "softsign", "selu", "elu",
              "gelu", "silu", "swish", "mish", "exponential", "hard_sigmoid", "hard_silu", "linear", "leaky_relu",
              "celu", "glu", "log_sigmoid", "hard_tanh", "squareplus", "sparsemax"):
    probe(f"keras.activations.{_name}", by_name(f"keras.activations.{_name}", F(2, 6)))

# ------------------------------------------------------------------------------------------------ losses
_PROB, _LOGIT = F(4, 5, lo=0.05, hi=0.95), F(4, 5)
_LOSSES = {  # class name: (function name or None, y_true, y_pred)
    "MeanSquaredError": ("mean_squared_error", _LOGIT, _LOGIT),
    "MeanAbsoluteError": ("mean_absolute_error", _LOGIT, _LOGIT),
    "MeanAbsolutePercentageError": ("mean_absolute_percentage_error", F(4, 5, **POS), _LOGIT),
    "MeanSquaredLogarithmicError": ("mean_squared_logarithmic_error", F(4, 5, **POS), F(4, 5, **POS)),
    "BinaryCrossentropy": ("binary_crossentropy", B(4, 5), _PROB),
    "BinaryFocalCrossentropy": ("binary_focal_crossentropy", B(4, 5), _PROB),
    "CategoricalCrossentropy": ("categorical_crossentropy", _PROB, _PROB),
    "CategoricalFocalCrossentropy": ("categorical_focal_crossentropy", _PROB, _PROB),
    "SparseCategoricalCrossentropy": ("sparse_categorical_crossentropy", I(4, hi=5), _PROB),
    "Hinge": ("hinge", B(4, 5), _LOGIT),
    "SquaredHinge": ("squared_hinge", B(4, 5), _LOGIT),
    "CategoricalHinge": ("categorical_hinge", _PROB, _LOGIT),
    "Huber": ("huber", _LOGIT, _LOGIT),
    "LogCosh": ("log_cosh", _LOGIT, _LOGIT),
    "KLDivergence": ("kl_divergence", _PROB, _PROB),
    "Poisson": ("poisson", F(4, 5, **POS), F(4, 5, **POS)),
    "CosineSimilarity": ("cosine_similarity", _LOGIT, _LOGIT),
    "Dice": ("dice", _PROB, _PROB),
    "Tversky": ("tversky", _PROB, _PROB),
}


def _loss_probe(fn: Callable, y_true: Arg, y_pred: Arg) -> Probe:
    cast = (lambda t: tf.cast(t, tf.float32)) if y_true.dtype == "bool" else (lambda t: t)
    return op(lambda t, p: fn(cast(t), p), y_true, y_pred)


for _cls, (_fn, _yt, _yp) in _LOSSES.items():
    probe(f"keras.losses.{_cls}", _loss_probe(lambda t, p, c=_cls: getattr(keras.losses, c)()(t, p), _yt, _yp))
    probe(f"keras.losses.{_fn}", _loss_probe(lambda t, p, f=_fn: getattr(keras.losses, f)(t, p), _yt, _yp))
probe("keras.losses.BinaryCrossentropy:from_logits",
      _loss_probe(lambda t, p: keras.losses.BinaryCrossentropy(from_logits=True)(t, p), B(4, 5), _LOGIT))
probe("keras.losses.SparseCategoricalCrossentropy:from_logits",
      _loss_probe(lambda t, p: keras.losses.SparseCategoricalCrossentropy(from_logits=True)(t, p), I(4, hi=5), _LOGIT))
probe("keras.losses.CategoricalCrossentropy:label_smoothing",
      _loss_probe(lambda t, p: keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(t, p), _PROB, _PROB))

# -------------------------------------------------------------------------------------------- optimizers
O = keras.optimizers
for _name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Ftrl", "Lion",
              "Adafactor", "Lamb"):
    probe(f"keras.optimizers.{_name}", optimizer(lambda n=_name: getattr(O, n)(learning_rate=0.1)))
probe("keras.optimizers.SGD:momentum", optimizer(lambda: O.SGD(0.1, momentum=0.9, nesterov=True)))
probe("keras.optimizers.Adam:amsgrad", optimizer(lambda: O.Adam(0.1, amsgrad=True)))
probe("keras.optimizers.RMSprop:centered", optimizer(lambda: O.RMSprop(0.1, momentum=0.5, centered=True)))
probe("keras.optimizers.SGD:clipnorm", optimizer(lambda: O.SGD(0.1, clipnorm=0.5)))
probe("keras.optimizers.Adam:global_clipnorm", optimizer(lambda: O.Adam(0.1, global_clipnorm=0.5)))
probe("keras.optimizers.LossScaleOptimizer", optimizer(lambda: O.LossScaleOptimizer(O.SGD(0.1))))
_SCHEDULES = {
    "ExponentialDecay": lambda: O.schedules.ExponentialDecay(0.1, 2, 0.5),
    "PiecewiseConstantDecay": lambda: O.schedules.PiecewiseConstantDecay([1], [0.1, 0.05]),
    "PolynomialDecay": lambda: O.schedules.PolynomialDecay(0.1, 3, 0.01),
    "InverseTimeDecay": lambda: O.schedules.InverseTimeDecay(0.1, 1, 0.5),
    "CosineDecay": lambda: O.schedules.CosineDecay(0.1, 3, warmup_target=0.2, warmup_steps=1),
    "CosineDecayRestarts": lambda: O.schedules.CosineDecayRestarts(0.1, 2),
}
for _name, _sched in _SCHEDULES.items():
    probe(f"keras.optimizers.schedules.{_name}", optimizer(lambda s=_sched: O.SGD(s())))

# ----------------------------------------------------------------------------------------------- metrics
_METRICS = {
    "Accuracy": (I(6, hi=3), I(6, hi=3)), "BinaryAccuracy": (B(6), F(6, lo=0)),
    "CategoricalAccuracy": (_PROB, _PROB), "SparseCategoricalAccuracy": (I(4, hi=5), _PROB),
    "TopKCategoricalAccuracy": (_PROB, _PROB), "SparseTopKCategoricalAccuracy": (I(4, hi=5), _PROB),
    "Mean": (F(6),), "Sum": (F(6),), "MeanSquaredError": (_LOGIT, _LOGIT), "MeanAbsoluteError": (_LOGIT, _LOGIT),
    "RootMeanSquaredError": (_LOGIT, _LOGIT), "AUC": (B(8), F(8, lo=0)), "Precision": (B(8), F(8, lo=0)),
    "Recall": (B(8), F(8, lo=0)), "TruePositives": (B(8), F(8, lo=0)), "FalsePositives": (B(8), F(8, lo=0)),
    "TrueNegatives": (B(8), F(8, lo=0)), "FalseNegatives": (B(8), F(8, lo=0)),
    "BinaryCrossentropy": (B(4, 5), _PROB), "CategoricalCrossentropy": (_PROB, _PROB),
    "SparseCategoricalCrossentropy": (I(4, hi=5), _PROB), "KLDivergence": (_PROB, _PROB),
    "CosineSimilarity": (_LOGIT, _LOGIT), "MeanIoU": (I(8, hi=3), I(8, hi=3)), "R2Score": (F(6, 2), F(6, 2)),
    "F1Score": (F(6, 3, lo=0), F(6, 3, lo=0)),
}


def _metric_ctor(name: str) -> Callable:
    kwargs = {"MeanIoU": {"num_classes": 3}}.get(name, {})
    return lambda: getattr(keras.metrics, name)(**kwargs)


for _name, _args in _METRICS.items():
    probe(f"keras.metrics.{_name}", metric(_metric_ctor(_name), *_args))

# ------------------------------------------------------------------------- initializers and regularizers
for _name in ("GlorotUniform", "GlorotNormal", "HeNormal", "HeUniform", "LecunNormal", "LecunUniform",
              "RandomNormal", "RandomUniform", "TruncatedNormal", "VarianceScaling", "Orthogonal"):
    probe(f"keras.initializers.{_name}",
          op(lambda n=_name: getattr(keras.initializers, n)(seed=1)((3, 4)), random=True))
for _name in ("Zeros", "Ones", "Identity"):
    probe(f"keras.initializers.{_name}", op(lambda n=_name: getattr(keras.initializers, n)()((3, 3))))
probe("keras.initializers.Constant", op(lambda: keras.initializers.Constant(0.5)((3, 3))))
for _name, _ctor in {"L1": lambda: keras.regularizers.L1(0.01), "L2": lambda: keras.regularizers.L2(0.01),
                     "L1L2": lambda: keras.regularizers.L1L2(0.01, 0.02),
                     "OrthogonalRegularizer": lambda: keras.regularizers.OrthogonalRegularizer(0.01)}.items():
    probe(f"keras.regularizers.{_name}", op(lambda x, c=_ctor: c()(x), F(3, 4)))

# ------------------------------------------------------------------------------- models, fit, callbacks
def _mlp(compile_kwargs: dict | None = None) -> Any:
    model = keras.Sequential([keras.Input((4,)), L.Dense(8, activation="relu"), L.Dense(1)])
    model.compile(**({"optimizer": O.SGD(0.05), "loss": "mse"} | (compile_kwargs or {})))
    return model


def _xy(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    x = ftensor(n, 4)
    return x, np.sin(x.sum(axis=1, keepdims=True))


def _fit(model_fn: Callable[[], Any] = _mlp, **kwargs: Any) -> Callable[[], Any]:
    model = model_fn()
    x, y = _xy()
    return lambda: model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0, **kwargs).history["loss"]


def _functional() -> Any:
    inp = keras.Input((4,))
    h = L.Dense(8, activation="tanh")(inp)
    model = keras.Model(inp, L.Dense(1)(L.Concatenate()([h, inp])))
    model.compile(optimizer=O.Adam(0.01), loss="mse", metrics=["mae"])
    return model


class _Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.hidden, self.out = L.Dense(8, activation="relu"), L.Dense(1)

    def call(self, x):
        return self.out(self.hidden(x))


class _CustomStep(keras.Model):
    """A model overriding train_step (the Keras 3 TF-backend way)."""

    def __init__(self):
        super().__init__(name="custom_step")
        self.dense = L.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(self(x, training=True) - y))
        grads = tape.gradient(loss, self.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
        return {"loss": loss}


def _compiled(cls: type) -> Callable[[], Any]:
    def build():
        model = cls()
        model.compile(optimizer=O.SGD(0.05), loss="mse")
        return model

    return build


def _functional_predict() -> Callable[[], Any]:
    model = _functional()
    return lambda: model.predict(ftensor(5, 4), verbose=0)


def _on_model(call: Callable[[Any, np.ndarray, np.ndarray], Any]) -> Callable[[], Any]:
    model = _mlp()
    x, y = _xy()
    return lambda: call(model, x, y)


def _in_tmp(call: Callable[[str], Any]) -> Callable[[], Any]:
    def run():
        with tempfile.TemporaryDirectory() as tmp:
            return call(tmp)

    return run


def _checkpointed(tmp: str) -> Any:
    model = _mlp()
    fit = _fit(lambda: model, callbacks=[keras.callbacks.ModelCheckpoint(os.path.join(tmp, "m.keras"))])()
    return fit, keras.models.load_model(os.path.join(tmp, "m.keras")).predict(ftensor(3, 4), verbose=0)


def _save_load(tmp: str, save: Callable, load: Callable) -> Any:
    model = _mlp()
    _fit(lambda: model)()
    save(model, tmp)
    return load(tmp).predict(ftensor(3, 4), verbose=0)


def _keras_save(model: Any, tmp: str) -> None:
    model.save(os.path.join(tmp, "m.keras"))


def _keras_load(tmp: str) -> Any:
    return keras.models.load_model(os.path.join(tmp, "m.keras"))


def _weights_roundtrip(tmp: str) -> Any:
    model = _mlp()
    _fit(lambda: model)()
    model.save_weights(os.path.join(tmp, "m.weights.h5"))
    clone = _mlp()
    clone.load_weights(os.path.join(tmp, "m.weights.h5"))
    return clone.predict(ftensor(3, 4), verbose=0)


def _checkpoint(tmp: str, managed: bool) -> Any:
    var = tf.Variable(ftensor(2, 3))
    ckpt = tf.train.Checkpoint(v=var)
    step = tf.function(lambda: var.assign(var * 2.0))
    step()
    path = tf.train.CheckpointManager(ckpt, tmp, 2).save() if managed else ckpt.write(os.path.join(tmp, "c"))
    step()
    ckpt.read(path)
    return var.numpy()


def _saved_model(tmp: str) -> Any:
    module = tf.Module()
    module.w = tf.Variable(ftensor(4, 2))
    module.f = tf.function(lambda x: tf.matmul(x, module.w), input_signature=[tf.TensorSpec((None, 4))])
    tf.saved_model.save(module, tmp)
    loaded = tf.saved_model.load(tmp)
    return loaded.f(ftensor(3, 4))


_CALLBACKS = {
    "EarlyStopping": lambda: keras.callbacks.EarlyStopping(monitor="loss", patience=1),
    "ReduceLROnPlateau": lambda: keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1),
    "LearningRateScheduler": lambda: keras.callbacks.LearningRateScheduler(lambda e, lr: lr * 0.5),
    "TerminateOnNaN": lambda: keras.callbacks.TerminateOnNaN(),
    "LambdaCallback": lambda: keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: None),
    "History": lambda: keras.callbacks.History(),
    "ProgbarLogger": lambda: keras.callbacks.ProgbarLogger(),
}
probe("keras.Sequential", program(lambda: _fit()))
probe("keras.Model", program(lambda: _fit(_functional)))
probe("keras.Model:subclassed", program(lambda: _fit(_compiled(_Subclassed))))
probe("keras.Model.train_step", program(lambda: _fit(_compiled(_CustomStep))))
probe("keras.Model.compile", program(lambda: _fit(lambda: _mlp({"optimizer": "adam", "metrics": ["mae"]}))))
probe("keras.Model.fit", program(lambda: _fit(validation_split=0.25)))
probe("keras.Model.evaluate", program(lambda: _on_model(lambda m, x, y: m.evaluate(x, y, verbose=0))))
probe("keras.Model.predict", program(lambda: _on_model(lambda m, x, y: m.predict(x, verbose=0))))
probe("keras.Model.train_on_batch", program(lambda: _on_model(lambda m, x, y: [m.train_on_batch(x, y)
                                                                                for _ in range(3)])))
probe("keras.Model.test_on_batch", program(lambda: _on_model(lambda m, x, y: m.test_on_batch(x, y))))
probe("keras.Model.predict_on_batch", program(lambda: _on_model(lambda m, x, y: m.predict_on_batch(x))))
probe("keras.Model.__call__", program(lambda: _on_model(lambda m, x, y: tf.function(lambda t: m(t))(x))))
probe("keras.Model.summary", program(lambda: _on_model(lambda m, x, y: m.summary(print_fn=lambda *a, **k: None))))
probe("keras.Model.save", program(lambda: _in_tmp(lambda d: _save_load(d, _keras_save, _keras_load))))
probe("keras.models.load_model", program(lambda: _in_tmp(lambda d: _save_load(d, _keras_save, _keras_load))))
probe("keras.Model.save_weights", program(lambda: _in_tmp(_weights_roundtrip)))
probe("keras.Model.load_weights", program(lambda: _in_tmp(_weights_roundtrip)))
probe("keras.callbacks.ModelCheckpoint", program(lambda: _in_tmp(_checkpointed)))
probe("keras.callbacks.CSVLogger",
      program(lambda: _in_tmp(lambda d: _fit(callbacks=[keras.callbacks.CSVLogger(os.path.join(d, "l.csv"))])())))
for _name, _cb in _CALLBACKS.items():
    probe(f"keras.callbacks.{_name}", program(lambda c=_cb: _fit(callbacks=[c()])))
probe("keras.utils.pad_sequences", program(lambda: lambda: keras.utils.pad_sequences([[1, 2], [3]], maxlen=3)))
probe("keras.utils.PyDataset", program(lambda: _fit_py_dataset()))
probe("keras.mixed_precision.global_policy", program(lambda: lambda: keras.mixed_precision.global_policy().name))
probe("keras.utils.set_random_seed", program(lambda: _fit()))
probe("keras.utils.to_categorical", program(lambda: lambda: keras.utils.to_categorical([0, 2, 1], 3)))
probe("keras.backend.clear_session", program(lambda: lambda: (keras.backend.clear_session(), _fit()())[1]))
probe("tensorflow.train.Checkpoint", program(lambda: _in_tmp(lambda d: _checkpoint(d, managed=False))))
probe("tensorflow.train.CheckpointManager", program(lambda: _in_tmp(lambda d: _checkpoint(d, managed=True))))
probe("tensorflow.saved_model.save", program(lambda: _in_tmp(_saved_model)))
probe("tensorflow.saved_model.load", program(lambda: _in_tmp(_saved_model)))
probe("tensorflow.Module", program(lambda: _in_tmp(_saved_model)))
probe("tensorflow.io.gfile.exists", program(lambda: lambda: tf.io.gfile.exists(str(ROOT))))
probe("tensorflow.io.gfile.GFile", program(lambda: _in_tmp(lambda d: _gfile_roundtrip(os.path.join(d, "f.txt")))))


class _Batches(keras.utils.PyDataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        x, y = _xy()
        return x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]


def _fit_py_dataset() -> Callable[[], Any]:
    model = _mlp()
    return lambda: model.fit(_Batches(), epochs=2, shuffle=False, verbose=0).history["loss"]


def _gfile_roundtrip(path: str) -> str:
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("opencann")
    with tf.io.gfile.GFile(path) as f:
        return f.read()


# ------------------------------------------------------------------------------------------------ keras.ops
for _name, _args in {"matmul": (F(2, 3), F(3, 4)), "add": (F(2, 3), F(2, 3)), "mean": (F(2, 3),),
                     "sum": (F(2, 3),), "max": (F(2, 3),), "exp": (F(2, 3),), "log": (F(2, 3, **POS),),
                     "sqrt": (F(2, 3, **POS),), "reshape": (F(2, 3), (3, 2)), "transpose": (F(2, 3),),
                     "concatenate": ([tf.ones((2, 2)), tf.zeros((1, 2))],), "stack": ([tf.ones(2), tf.zeros(2)],),
                     "softmax": (F(2, 3),), "relu": (F(2, 3),), "sigmoid": (F(2, 3),), "tanh": (F(2, 3),),
                     "einsum": ("ij,jk->ik", F(2, 3), F(3, 4)), "where": (B(2, 3), F(2, 3), F(2, 3)),
                     "clip": (F(2, 3), -0.5, 0.5), "one_hot": (I(4, hi=3), 3), "argmax": (F(2, 3),),
                     "take": (F(4, 3), I(2, hi=4)), "cast": (F(2, 3), "int32"), "square": (F(2, 3),),
                     "abs": (F(2, 3),), "norm": (F(2, 3),), "conv": (F(2, 6, 6, 3), F(3, 3, 3, 4)),
                     "convert_to_tensor": (F(2, 3),), "cond": (B(), lambda: tf.ones(2), lambda: tf.zeros(2)),
                     "scatter_update": (F(4, 3), [[0], [2]], F(2, 3)), "erf": (F(2, 3),), "rsqrt": (F(2, 3, **POS),),
                     "logsumexp": (F(2, 3),), "top_k": (F(2, 5), 2), "gelu": (F(2, 3),), "silu": (F(2, 3),),
                     "log_softmax": (F(2, 3),), "binary_crossentropy": (F(4, lo=0), F(4, lo=0.1, hi=0.9)),
                     "sparse_categorical_crossentropy": (I(4, hi=3), F(4, 3, lo=0.1, hi=0.9)),
                     "segment_sum": (F(4, 3), tf.constant([0, 0, 1, 1])), "image.resize": (_IMG, (4, 4))}.items():
    probe(f"keras.ops.{_name}", by_name(f"keras.ops.{_name}", *_args))

# ---------------------------------------------------------------------------------------------- tf.data
D = tf.data.Dataset


def _rows(n: int = 12) -> Any:
    return D.from_tensor_slices((ftensor(n, 3), np.arange(n, dtype="int32")))


def _records(tmp: str) -> Any:
    path = os.path.join(tmp, "r.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(6):
            feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=[i, i / 2]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    spec = {"x": tf.io.FixedLenFeature((2,), tf.float32)}
    return tf.data.TFRecordDataset(path).map(lambda r: tf.io.parse_single_example(r, spec)["x"]).batch(2)


def _lines(tmp: str) -> Any:
    path = os.path.join(tmp, "l.txt")
    Path(path).write_text("1.5,2\n3,4.5\n5,6\n7,8\n9,10\n11,12.5\n")
    return tf.data.TextLineDataset(path).map(lambda s: tf.strings.to_number(tf.strings.split(s, ","))).batch(2)


def _file_dataset(build: Callable[[str], Any]) -> Probe:
    """A dataset reading files written to a temporary directory (kept until the process ends)."""
    return dataset(lambda: build(tempfile.mkdtemp(prefix="gen_api_db_")))


_DATASETS = {
    "from_tensor_slices": lambda: _rows().batch(4),
    "from_tensors": lambda: D.from_tensors(ftensor(2, 3)).repeat(),
    "range": lambda: D.range(10).map(lambda i: tf.cast(i, tf.float32)).batch(3),
    "zip": lambda: D.zip((D.range(12), D.range(12).map(lambda i: tf.cast(i, tf.float32)))).batch(4),
    "batch": lambda: _rows(10).batch(4),
    "batch:drop_remainder": lambda: _rows(13).batch(4, drop_remainder=True),
    "padded_batch": lambda: D.range(1, 6).map(lambda n: tf.ones(n)).padded_batch(2),
    "map": lambda: _rows().map(lambda x, y: (x * 2.0, y + 1), num_parallel_calls=tf.data.AUTOTUNE).batch(4),
    "filter": lambda: _rows().filter(lambda x, y: y % 2 == 0).batch(2),
    "shuffle": lambda: _rows().shuffle(12, seed=1).batch(4),
    "repeat": lambda: _rows(3).repeat().batch(4),
    "prefetch": lambda: _rows().batch(4).prefetch(tf.data.AUTOTUNE),
    "cache": lambda: _rows().cache().batch(4),
    "take": lambda: _rows().take(10).batch(4),
    "skip": lambda: _rows().skip(2).batch(4),
    "interleave": lambda: D.range(2).interleave(lambda i: _rows(4), cycle_length=2).batch(3),
    "flat_map": lambda: D.range(2).flat_map(lambda i: _rows(4)).batch(3),
    "unbatch": lambda: _rows().batch(3).unbatch().batch(4),
    "shard": lambda: _rows().shard(2, 0).batch(2),
    "enumerate": lambda: _rows().enumerate().batch(4),
    "concatenate": lambda: _rows(4).concatenate(_rows(4)).batch(3),
    "window": lambda: D.range(10).window(3, 1, drop_remainder=True).flat_map(lambda w: w.batch(3)).batch(2),
    "rebatch": lambda: _rows().batch(6).rebatch(3),
    "apply": lambda: _rows().apply(lambda ds: ds.batch(4)),
    "with_options": lambda: _rows().with_options(tf.data.Options()).batch(4),
    "from_generator": lambda: D.from_generator(lambda: (ftensor(3, seed=i) for i in range(8)),
                                               output_signature=tf.TensorSpec((3,), tf.float32)).batch(3),
    "cardinality": lambda: D.from_tensors(tf.cast(_rows().batch(4).cardinality(), tf.float32)).repeat(),
    "bucket_by_sequence_length": lambda: D.range(1, 9).map(lambda n: tf.ones(n)).bucket_by_sequence_length(
        lambda t: tf.size(t), [4], [2, 2]),
}
_PARTIAL = ("the pipeline runs on the host under TensorFlow; opencann runs the partial last batch too "
            "(dynamic batch dimension), so drop_remainder=True is only needed where static shapes are")
for _name, _build in _DATASETS.items():
    probe(f"tensorflow.data.Dataset.{_name}", dataset(_build, note=_PARTIAL if _name == "batch" else ""))
probe("tensorflow.data.TFRecordDataset", _file_dataset(_records))
probe("tensorflow.io.parse_single_example", _file_dataset(_records))
probe("tensorflow.io.TFRecordWriter", _file_dataset(_records))
probe("tensorflow.data.TextLineDataset", _file_dataset(_lines))
probe("tensorflow.data.Options", dataset(_DATASETS["with_options"]))
probe("tensorflow.data.AUTOTUNE", dataset(_DATASETS["prefetch"]))
probe("tensorflow.data.experimental.AUTOTUNE", dataset(_DATASETS["prefetch"]))
probe("tensorflow.data.Iterator.get_next", dataset(_DATASETS["batch"]))
probe("tensorflow.data.Dataset",
      program(lambda: (lambda m: lambda: m.fit(D.from_tensor_slices(_xy()).batch(5), epochs=2, verbose=0)
                       .history["loss"])(_mlp())))
probe("tensorflow.data.Dataset:iterated_in_tf_function", program(lambda: _iterate_in_function()))


def _iterate_in_function() -> Callable[[], Any]:
    ds = _rows().batch(4)

    @tf.function
    def total():
        acc = tf.zeros(3)
        for x, _ in ds:
            acc += tf.reduce_sum(x, axis=0)
        return acc

    return total


# --------------------------------------------------------------------------------------- tf.compat.v1
def _v1_regression(v1: Any, make_opt: Callable | None = None, loss_fn: Callable | None = None) -> dict:
    """x -> dense layer made with get_variable -> loss; ``make_opt`` minimises it."""
    x = v1.placeholder(tf.float32, (None, 3), name="x")
    y = v1.placeholder(tf.float32, (None, 2), name="y")
    w = v1.get_variable("w", (3, 2), initializer=v1.glorot_uniform_initializer(seed=1))
    b = v1.get_variable("b", (2,), initializer=v1.zeros_initializer())
    pred = tf.matmul(x, w) + b
    loss = loss_fn(y, pred) if loss_fn else v1.reduce_mean(tf.square(pred - y))
    fetch = [loss] if make_opt is None else [loss, make_opt().minimize(loss)]
    return {"init": v1.global_variables_initializer(), "fetch": fetch,
            "feed": {x: ftensor(5, 3), y: ftensor(5, 2, seed=1)}, "steps": 3}


def _v1_expr(build: Callable[[Any, Any], Any], *shape: int) -> Callable[[Any], dict]:
    """A placeholder fed with a (shape) array and an expression ``build(v1, x)`` of it."""

    def spec(v1: Any) -> dict:
        x = v1.placeholder(tf.float32, shape, name="x")
        out = build(v1, x)
        return {"init": v1.global_variables_initializer(), "fetch": out, "feed": {x: ftensor(*shape)}}

    return spec


_V1_OPTIMIZERS = {
    "GradientDescentOptimizer": lambda v1: v1.train.GradientDescentOptimizer(0.1),
    "MomentumOptimizer": lambda v1: v1.train.MomentumOptimizer(0.1, 0.9),
    "AdamOptimizer": lambda v1: v1.train.AdamOptimizer(0.1),
    "RMSPropOptimizer": lambda v1: v1.train.RMSPropOptimizer(0.1),
    "AdagradOptimizer": lambda v1: v1.train.AdagradOptimizer(0.1),
    "AdadeltaOptimizer": lambda v1: v1.train.AdadeltaOptimizer(1.0),
    "FtrlOptimizer": lambda v1: v1.train.FtrlOptimizer(0.1),
    "ProximalGradientDescentOptimizer": lambda v1: v1.train.ProximalGradientDescentOptimizer(0.1),
}
for _name, _opt in _V1_OPTIMIZERS.items():
    probe(f"tensorflow.compat.v1.train.{_name}", graph(lambda v1, o=_opt: _v1_regression(v1, lambda: o(v1))))
probe("tensorflow.compat.v1.train.Optimizer.compute_gradients", graph(lambda v1: _v1_regression(
    v1, lambda: _ApplyComputed(v1.train.GradientDescentOptimizer(0.1)))))
probe("tensorflow.compat.v1.placeholder", graph(lambda v1: _v1_regression(v1)))
probe("tensorflow.compat.v1.get_variable", graph(lambda v1: _v1_regression(v1)))
probe("tensorflow.compat.v1.global_variables_initializer", graph(lambda v1: _v1_regression(v1)))
probe("tensorflow.compat.v1.glorot_uniform_initializer", graph(lambda v1: _v1_regression(v1)))
probe("tensorflow.compat.v1.zeros_initializer", graph(lambda v1: _v1_regression(v1)))
probe("tensorflow.compat.v1.Variable", graph(_v1_expr(lambda v1, x: _v1_ref_variable(v1, x), 2, 3)))
probe("tensorflow.compat.v1.variable_scope", graph(_v1_expr(lambda v1, x: _v1_scoped(v1, x), 2, 3)))
probe("tensorflow.compat.v1.local_variables_initializer", graph(_v1_expr(
    lambda v1, x: [x * 2.0, v1.local_variables_initializer()], 2, 3)))
probe("tensorflow.compat.v1.variables_initializer", graph(_v1_expr(lambda v1, x: _v1_initialised(v1, x), 2, 3)))
probe("tensorflow.compat.v1.assign", graph(_v1_expr(lambda v1, x: v1.assign(v1.get_variable("v", (2, 3)), x), 2, 3)))
probe("tensorflow.compat.v1.assign_add", graph(_v1_expr(
    lambda v1, x: v1.assign_add(v1.get_variable("v", (2, 3)), x), 2, 3)))
probe("tensorflow.compat.v1.gradients", graph(_v1_expr(lambda v1, x: v1.gradients(tf.reduce_sum(tf.sin(x) * x), x),
                                                       2, 3)))
probe("tensorflow.compat.v1.train.get_or_create_global_step", graph(lambda v1: _v1_global_step(v1, None)))
probe("tensorflow.compat.v1.train.exponential_decay", graph(lambda v1: _v1_global_step(
    v1, lambda s: v1.train.exponential_decay(0.1, s, 2, 0.5))))
probe("tensorflow.compat.v1.train.piecewise_constant", graph(lambda v1: _v1_global_step(
    v1, lambda s: v1.train.piecewise_constant(s, [1], [0.1, 0.01]))))
for _name in ("mean_squared_error", "absolute_difference", "huber_loss", "log_loss", "hinge_loss",
              "sigmoid_cross_entropy", "softmax_cross_entropy"):
    probe(f"tensorflow.compat.v1.losses.{_name}", graph(lambda v1, n=_name: _v1_regression(
        v1, lambda: v1.train.GradientDescentOptimizer(0.1),
        lambda y, p: getattr(v1.losses, n)(tf.sigmoid(y), p))))
probe("tensorflow.compat.v1.losses.sparse_softmax_cross_entropy", graph(lambda v1: _v1_regression(
    v1, lambda: v1.train.GradientDescentOptimizer(0.1),
    lambda y, p: v1.losses.sparse_softmax_cross_entropy(tf.cast(y[:, 0] > 0, tf.int32), p))))
probe("tensorflow.compat.v1.nn.softmax_cross_entropy_with_logits_v2", graph(lambda v1: _v1_regression(
    v1, None, lambda y, p: v1.reduce_mean(v1.nn.softmax_cross_entropy_with_logits_v2(labels=tf.nn.softmax(y),
                                                                                        logits=p)))))
probe("tensorflow.compat.v1.nn.dropout", graph(_v1_expr(lambda v1, x: v1.nn.dropout(x, keep_prob=0.5), 4, 6),
                                               random=True))
probe("tensorflow.compat.v1.random_normal", graph(_v1_expr(lambda v1, x: x + v1.random_normal((4, 6)), 4, 6)))
probe("tensorflow.compat.v1.random_uniform", graph(_v1_expr(lambda v1, x: x + v1.random_uniform((4, 6)), 4, 6)))
probe("tensorflow.compat.v1.truncated_normal", graph(_v1_expr(lambda v1, x: x + v1.truncated_normal((4, 6)), 4, 6)))
probe("tensorflow.compat.v1.cond", graph(_v1_expr(
    lambda v1, x: v1.cond(v1.reduce_sum(x) > 0, lambda: x * 2.0, lambda: -x), 2, 3)))
probe("tensorflow.compat.v1.while_loop", graph(_v1_expr(
    lambda v1, x: v1.while_loop(lambda i, a: i < 3, lambda i, a: (i + 1, a * 1.5), (tf.constant(0), x))[1], 2, 3)))
probe("tensorflow.compat.v1.data.make_one_shot_iterator", graph(lambda v1: {
    "fetch": v1.data.make_one_shot_iterator(_rows().batch(4)).get_next()[0] * 2.0, "steps": 2}))
probe("tensorflow.compat.v1.data.make_initializable_iterator", graph(lambda v1: _v1_initializable(v1)))
probe("tensorflow.compat.v1.train.Saver", graph(lambda v1: _v1_saver(v1)))
probe("tensorflow.compat.v1.Session.run", graph(lambda v1: _v1_regression(v1, lambda: v1.train.AdamOptimizer(0.1))))


probe("tensorflow.compat.v1.placeholder_with_default", graph(lambda v1: {
    "fetch": v1.placeholder_with_default(tf.constant(ftensor(2, 3)), (None, 3)) * 2.0}))
probe("tensorflow.compat.v1.nn.conv2d", graph(_v1_expr(
    lambda v1, x: v1.nn.conv2d(x, v1.get_variable("k", (3, 3, 3, 4)), [1, 1, 1, 1], "SAME"), 2, 6, 6, 3)))
probe("tensorflow.compat.v1.nn.max_pool", graph(_v1_expr(
    lambda v1, x: v1.nn.max_pool(x, [1, 2, 2, 1], [1, 2, 2, 1], "VALID"), 2, 6, 6, 3)))
probe("tensorflow.compat.v1.nn.avg_pool", graph(_v1_expr(
    lambda v1, x: v1.nn.avg_pool(x, [1, 2, 2, 1], [1, 2, 2, 1], "VALID"), 2, 6, 6, 3)))
probe("tensorflow.compat.v1.nn.softmax_cross_entropy_with_logits", graph(_v1_expr(
    lambda v1, x: v1.nn.softmax_cross_entropy_with_logits(labels=tf.nn.softmax(x * 2.0), logits=x), 4, 5)))
probe("tensorflow.compat.v1.nn.moments", graph(_v1_expr(lambda v1, x: v1.nn.moments(x, [0], keep_dims=True), 4, 5)))
for _name in ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod"):
    probe(f"tensorflow.compat.v1.{_name}", graph(_v1_expr(
        lambda v1, x, n=_name: getattr(v1, n)(x, axis=1, keep_dims=True), 4, 5)))
probe("tensorflow.compat.v1.argmax", graph(_v1_expr(lambda v1, x: v1.argmax(x, axis=1), 4, 5)))
probe("tensorflow.compat.v1.shape", graph(_v1_expr(lambda v1, x: v1.shape(x), 4, 5)))
probe("tensorflow.compat.v1.trainable_variables", graph(lambda v1: _v1_regression(
    v1, lambda: _ApplyComputed(v1.train.GradientDescentOptimizer(0.1), v1.trainable_variables))))
probe("tensorflow.compat.v1.train.Optimizer.apply_gradients", graph(lambda v1: _v1_regression(
    v1, lambda: _ApplyComputed(v1.train.AdamOptimizer(0.1)))))
probe("tensorflow.compat.v1.clip_by_global_norm", graph(lambda v1: _v1_regression(
    v1, lambda: _ApplyComputed(v1.train.GradientDescentOptimizer(0.1), clip=v1.clip_by_global_norm))))


probe("tensorflow.compat.v1.summary.scalar", graph(_v1_expr(lambda v1, x: v1.summary.scalar("s", v1.reduce_sum(x)),
                                                           2, 3)))
probe("tensorflow.compat.v1.summary.histogram", graph(_v1_expr(lambda v1, x: v1.summary.histogram("h", x), 2, 3)))
probe("tensorflow.compat.v1.summary.merge_all", graph(_v1_expr(
    lambda v1, x: (v1.summary.scalar("s", v1.reduce_sum(x)), v1.summary.merge_all())[1], 2, 3)))


class _ApplyComputed:
    """``minimize`` through ``compute_gradients`` + ``apply_gradients``, optionally over ``var_list()`` and with
    the gradients clipped by ``clip(grads, norm)``."""

    def __init__(self, opt: Any, var_list: Callable | None = None, clip: Callable | None = None):
        self.opt, self.var_list, self.clip = opt, var_list, clip

    def minimize(self, loss: Any) -> Any:
        pairs = self.opt.compute_gradients(loss, var_list=self.var_list() if self.var_list else None)
        if self.clip:
            grads, _ = self.clip([g for g, _ in pairs], 0.5)
            pairs = list(zip(grads, [v for _, v in pairs]))
        return self.opt.apply_gradients(pairs)


def _v1_ref_variable(v1: Any, x: Any) -> Any:
    v = v1.Variable(tf.ones((2, 3)), use_resource=False)
    return v1.assign(v, v * x + 1.0)


def _v1_scoped(v1: Any, x: Any) -> Any:
    with v1.variable_scope("block", initializer=v1.constant_initializer(0.5)):
        w = v1.get_variable("w", (3, 2))
    with v1.variable_scope("block", reuse=True):
        w2 = v1.get_variable("w", (3, 2))
    return tf.matmul(x, w) + tf.matmul(x, w2)


def _v1_initialised(v1: Any, x: Any) -> Any:
    v = v1.get_variable("v", (2, 3), initializer=v1.ones_initializer())
    with tf.control_dependencies([v1.variables_initializer([v])]):
        return x * v.read_value()


def _v1_global_step(v1: Any, schedule: Callable | None) -> dict:
    step = v1.train.get_or_create_global_step()
    w = v1.get_variable("w", (2,), initializer=v1.ones_initializer())
    rate = schedule(step) if schedule else 0.1
    train = v1.train.GradientDescentOptimizer(rate).minimize(tf.reduce_sum(w * w), global_step=step)
    return {"init": v1.global_variables_initializer(), "fetch": train, "steps": 3, "final": [step, w]}


def _v1_initializable(v1: Any) -> dict:
    it = v1.data.make_initializable_iterator(_rows().batch(4))
    return {"init": it.initializer, "fetch": it.get_next()[0] * 2.0, "steps": 2}


def _v1_saver(v1: Any) -> dict:
    spec = _v1_regression(v1)
    saver = v1.train.Saver()
    path = os.path.join(tempfile.mkdtemp(prefix="gen_api_db_"), "model")
    spec["fetch"] = [saver.saver_def.save_tensor_name]
    spec["feed"] = {saver.saver_def.filename_tensor_name: path}
    return spec


# ------------------------------------------------------------------------------------- mixed precision
def _mixed_fit() -> Callable[[], Any]:
    keras.mixed_precision.set_global_policy("mixed_float16")
    return _fit(lambda: _mlp({"optimizer": O.LossScaleOptimizer(O.SGD(0.05))}))


probe("keras.mixed_precision.set_global_policy", program(_mixed_fit, isolated=True))
probe("keras.mixed_precision.DTypePolicy", layer(lambda: L.Dense(3, dtype="mixed_float16"), F(2, 4)))
probe("keras.mixed_precision.LossScaleOptimizer", optimizer(lambda: keras.mixed_precision.LossScaleOptimizer(
    O.SGD(0.1))))
probe("tensorflow.compat.v1.disable_eager_execution",
      graph(lambda v1: (v1.disable_eager_execution(), _v1_regression(v1))[1], isolated=True))
probe("tensorflow.compat.v1.disable_v2_behavior",
      graph(lambda v1: (v1.disable_v2_behavior(), _v1_regression(v1))[1], isolated=True))

# ==================================================================================== hand-written table
_SESSION = ("`opencann migrate` renames it to `oc.Session` (opencann.tf.Session, rule OC010), a drop-in for "
            "tf.compat.v1.Session whose run() executes the fetched graph on opencann")
_GPU = ("GPU memory/visibility set-up with no meaning on opencann: `opencann migrate` neutralises the statement "
        "and notes it (rule OC020)")
_GPU_QUERY = ("GPU-only device query: `opencann migrate` replaces it by its no-GPU value so GPU-only branches are "
              "off (rule {rule})")
_MONITORED = ("`opencann migrate` renames it to `oc.{name}` (rule {rule}), which creates opencann's Session inside; "
              "hooks, scaffold and should_stop work as in TensorFlow (checkpoint_dir: see rule OC015)")
_PRECISION = ("`opencann migrate` turns the mixed-precision policy into opencann's precision mode (rule OC003): "
              "oc.enable(precision_mode='allow_mix_precision') for mixed_float16, 'allow_mix_precision_bf16' for "
              "mixed_bfloat16; the model stays float32 and opencann lowers it")
_XLA = ("XLA compilation request: opencann compiles every tf.function itself; `opencann migrate` turns it off "
        "(rule {rule})")
_COLLECTIVE = ("needs collective communication (all-reduce/broadcast across devices), which opencann does not "
               "provide yet: there is no multi-device collective API in opencann")
_COLLECTIVE_FIX = ("Train on one opencann device: drop the strategy/horovod calls (global batch = per-replica batch) "
                   "and run the plain single-device script; multi-device data parallelism waits for opencann's "
                   "collective API")
_EAGER_HOST = ("written on the host by TensorFlow when called eagerly (as Keras callbacks and most scripts do); "
               "inside a tf.function their ops would stop opencann")
_ESTIMATOR = ("Rewrite the model_fn as a keras.Model (or a tf.function training step with GradientTape) and "
              "train with Model.fit / a custom loop; input_fn becomes a tf.data.Dataset")
V1 = "tensorflow.compat.v1."
_TF1_ONLY = " (a TF 1.x spelling: under TF 2 write tf.compat.v1.{name})"


def _migrated(names: tuple[str, ...], note: str, tf1_spelling: bool = False) -> dict[str, tuple[str, str, str]]:
    """Entries for APIs the rewriter changes; with ``tf1_spelling``, also their bare TF 1.x spelling
    (``tensorflow.X`` for ``tensorflow.compat.v1.X``), which the rewriter handles the same way."""
    out = {}
    for name in names:
        out[name] = ("migrated", note.format(name=name.rpartition(".")[2]), "")
        if tf1_spelling and name.startswith(V1):
            short = name.removeprefix(V1)
            out["tensorflow." + short] = ("migrated", note.format(name=name.rpartition(".")[2])
                                          + _TF1_ONLY.format(name=short), "")
    return out


# qualname or family prefix -> (category, note, suggestion)
_CONTRIB = {  # tf.contrib module ("" = the package): (note after "... was removed in TF 2.0", suggestion)
    "": ("", "Use the TF 2 core API, Keras, or the community successor of the contrib module"),
    "layers": ("", "Use keras.layers"),
    "slim": ("", "Use keras.layers/keras.Model (or the tf_slim package under TF 1.x semantics)"),
    "rnn": ("", "Use keras.layers.LSTM/GRU/SimpleRNN/RNN"),
    "learn": ("", "Use Keras Model.fit"),
    "data": ("", "Use tf.data"),
    "opt": ("", "Use keras.optimizers"),
    "summary": ("", "Use tf.summary"),
    "metrics": ("", "Use keras.metrics"),
    "losses": ("", "Use keras.losses"),
    "framework": ("", "Use the core tf.* equivalents (e.g. tf.sort, tf.nest)"),
    "distribute": ("", "Use tf.distribute (itself a manual migration on opencann)"),
    "mixed_precision": ("", "Use keras.mixed_precision (migrated to an opencann precision mode)"),
    "seq2seq": ("", "Use Keras layers (keras_nlp / keras_hub for seq2seq building blocks)"),
    "cudnn_rnn": ("", "Use keras.layers.LSTM/GRU"),
    "tpu": ("", "Remove the TPU set-up"),
    "eager": (" (eager is the default)", "Use tf.* directly"),
    "keras": ("", "Use keras"),
    "image": ("", "Use tf.image or keras.layers preprocessing layers"),
    "training": ("", "Use tf.data and Keras training"),
    "quantize": ("", "Use the TensorFlow Model Optimization toolkit"),
    "lookup": ("", "Use tf.lookup"),
    "crf": ("", "Use keras_nlp/tensorflow_addons"),
}


TABLE: dict[str, tuple[str, str, str]] = {
    # --- migrated: the rewriter changes these (rule ids: opencann/migrate/rules.py, docs/migration.md)
    **_migrated((V1 + "Session", V1 + "InteractiveSession"), _SESSION, tf1_spelling=True),
    **_migrated((V1 + "ConfigProto", V1 + "GPUOptions"),
                "session options: kept, oc.Session accepts the ConfigProto and ignores it (rule OC014)",
                tf1_spelling=True),
    **_migrated((V1 + "train.MonitoredTrainingSession",), _MONITORED.replace("{rule}", "OC011"), tf1_spelling=True),
    **_migrated((V1 + "train.MonitoredSession",), _MONITORED.replace("{rule}", "OC012"), tf1_spelling=True),
    **_migrated((V1 + "train.SingularMonitoredSession",), _MONITORED.replace("{rule}", "OC013"), tf1_spelling=True),
    **_migrated(("tensorflow.config.experimental.set_memory_growth", "tensorflow.config.experimental.set_memory_limit",
                 "tensorflow.config.set_logical_device_configuration",
                 "tensorflow.config.experimental.set_virtual_device_configuration",
                 "tensorflow.config.set_visible_devices", "tensorflow.config.experimental.set_visible_devices"), _GPU),
    **_migrated(("tensorflow.device", V1 + "device"),
                "a GPU device string (`tf.device('/gpu:0')`) becomes '/cpu:0' (rule OC021): opencann runs every "
                "traced graph on its own device and TensorFlow's eager work stays on the CPU"),
    **_migrated(("tensorflow.config.list_physical_devices", "tensorflow.config.experimental.list_physical_devices",
                 "tensorflow.config.list_logical_devices", "tensorflow.config.experimental.list_logical_devices"),
                _GPU_QUERY.format(rule="OC022") + "; queries of other device types are kept"),
    **_migrated(("tensorflow.test.is_gpu_available", "tensorflow.test.is_built_with_cuda",
                 "tensorflow.test.is_built_with_gpu_support", V1 + "test.is_gpu_available"),
                _GPU_QUERY.format(rule="OC023")),
    **_migrated(("tensorflow.test.gpu_device_name",), _GPU_QUERY.format(rule="OC024")),
    **_migrated(("tensorflow.config.optimizer.set_jit",), _XLA.format(rule="OC027")),
    **_migrated(("tensorflow.xla.experimental.jit_scope", V1 + "xla.experimental.jit_scope"),
                _XLA.format(rule="OC028")),
    **_migrated(("keras.mixed_precision.set_global_policy", "keras.mixed_precision.experimental.set_policy",
                 "keras.mixed_precision.experimental.set_global_policy"), _PRECISION),
    "tensorflow.config.LogicalDeviceConfiguration": (
        "harmless", "a configuration record; it only matters to set_logical_device_configuration, which "
        "`opencann migrate` neutralises (rule OC020)", ""),
    "tensorflow.config.experimental.VirtualDeviceConfiguration": (
        "harmless", "a configuration record; it only matters to set_virtual_device_configuration, which "
        "`opencann migrate` neutralises (rule OC020)", ""),
    # --- manual: distributed training
    "horovod": ("manual", f"Horovod {_COLLECTIVE}", _COLLECTIVE_FIX),
    "tensorflow.distribute": ("manual", f"tf.distribute strategies {_COLLECTIVE}", _COLLECTIVE_FIX),
    "tensorflow.distribute.OneDeviceStrategy": (
        "manual", "a one-device strategy: opencann runs the model on its device without a strategy",
        "Remove the strategy and its scope(); oc.enable() already places the work on opencann"),
    "tensorflow.compat.v1.distribute": ("manual", f"tf.distribute strategies {_COLLECTIVE}", _COLLECTIVE_FIX),
    "tensorflow.compat.v1.train.replica_device_setter": ("manual", f"parameter-server placement {_COLLECTIVE}",
                                                         _COLLECTIVE_FIX),
    "tensorflow.compat.v1.train.SyncReplicasOptimizer": ("manual", f"synchronous replicas {_COLLECTIVE}",
                                                         _COLLECTIVE_FIX),
    "tensorflow.compat.v1.train.Server": ("manual", f"TF distributed runtime {_COLLECTIVE}", _COLLECTIVE_FIX),
    "tensorflow.compat.v1.train.ClusterSpec": ("manual", f"TF distributed runtime {_COLLECTIVE}", _COLLECTIVE_FIX),
    "tensorflow.tpu": ("manual", "TPU-specific API", "Remove the TPU set-up; train with the plain model on opencann"),
    "tensorflow.compat.v1.tpu": ("manual", "TPU-specific API", "Remove the TPU set-up; train with the plain model"),
    "tensorflow.debugging.enable_check_numerics": (
        "manual", "instruments every tf.function with CheckNumericsV2 ops, which opencann has no converter for",
        "Remove the call for opencann runs (debug NaNs under plain TensorFlow)"),
    "tensorflow.debugging.experimental.enable_dump_debug_info": (
        "manual", "instruments every tf.function with debug ops, which opencann has no converter for",
        "Remove the call for opencann runs (use opencann's --dump_graphs / oc.enable(dump_graphs=DIR))"),
    # --- harmless: host-side logging, summaries, profiling, configuration
    "tensorflow.summary": ("harmless", f"TensorBoard summaries are {_EAGER_HOST}",
                           "Keep summaries outside tf.function bodies (log the returned values eagerly)"),
    "tensorflow.compat.v1.summary": ("harmless", "TF1 summary writing (FileWriter, Summary protos) runs on the "
                                     "host; summary ops fetched in oc.Session are measured separately",
                                     "Fetch the values with sess.run and write them with tf.summary eagerly"),
    "tensorflow.layers": ("removed", "tf.layers (TF 1.x) is gone from TF 2, and tf.compat.v1.layers is not "
                          "available with Keras 3", "Use keras.layers (e.g. tf.layers.dense -> keras.layers.Dense)"),
    "tensorflow.nn.rnn_cell": ("removed", "tf.nn.rnn_cell (TF 1.x) is gone from TF 2 and not available with Keras 3",
                               "Use keras.layers.LSTMCell/GRUCell with keras.layers.RNN"),
    "keras.callbacks.TensorBoard": ("harmless", f"the TensorBoard callback's logs are {_EAGER_HOST}", ""),
    "tensorflow.profiler": ("harmless", "TensorFlow's profiler sees only host work on opencann", ""),
    "tensorflow.compat.v1.logging": ("harmless", "host logging", "Prefer absl.logging or tf.get_logger()"),
    "tensorflow.get_logger": ("harmless", "host logging", ""),
    "tensorflow.autograph.set_verbosity": ("harmless", "host logging", ""),
    "tensorflow.debugging.set_log_device_placement": ("harmless", "logs TensorFlow's placement; work run by "
                                                      "opencann does not appear", ""),
    "tensorflow.config.set_soft_device_placement": ("harmless", "TensorFlow placement option; no effect on "
                                                    "opencann", ""),
    "tensorflow.config.threading": ("harmless", "TensorFlow host thread pools; opencann's device is unaffected", ""),
    "tensorflow.config.experimental.enable_op_determinism": ("harmless", "affects TensorFlow kernels only; "
                                                             "opencann's kernels are deterministic", ""),
    "tensorflow.compat.v1.RunOptions": ("harmless", "oc.Session.run accepts and ignores options", ""),
    "tensorflow.compat.v1.RunMetadata": ("harmless", "oc.Session.run accepts and ignores run_metadata", ""),
    "keras.utils.plot_model": ("harmless", "draws the model on the host", ""),
    # --- removed or deprecated in TF 2.x / Keras 3
    "tensorflow.estimator": ("removed", "tf.estimator was removed in TF 2.16", _ESTIMATOR),
    "tensorflow.compat.v1.estimator": ("removed", "tf.compat.v1.estimator was removed in TF 2.16", _ESTIMATOR),
    "tensorflow_estimator": ("removed", "the tensorflow_estimator package is discontinued (TF 2.16)", _ESTIMATOR),
    "keras.estimator": ("removed", "tf.keras.estimator.model_to_estimator was removed", _ESTIMATOR),
    "tensorflow.compat.v1.layers": ("removed", "tf.compat.v1.layers is not available with Keras 3",
                                    "Use keras.layers (e.g. tf.compat.v1.layers.dense -> keras.layers.Dense)"),
    "tensorflow.compat.v1.nn.rnn_cell": ("removed", "tf.compat.v1.nn.rnn_cell is not available with Keras 3",
                                         "Use keras.layers.LSTMCell/GRUCell with keras.layers.RNN"),
    "tensorflow.feature_column": ("removed", "feature columns are deprecated (removed with Estimators)",
                                  "Use Keras preprocessing layers (Normalization, StringLookup, CategoryEncoding, "
                                  "Hashing, Discretization) in the tf.data pipeline"),
    "tensorflow.compat.v1.feature_column": ("removed", "feature columns are deprecated",
                                            "Use Keras preprocessing layers in the tf.data pipeline"),
    "keras.layers.DenseFeatures": ("removed", "DenseFeatures is not available with Keras 3",
                                   "Use Keras preprocessing layers"),
    "keras.layers.experimental": ("removed", "keras.layers.experimental is gone in Keras 3",
                                  "Use the same layers from keras.layers (e.g. keras.layers.Rescaling)"),
    "keras.layers.CuDNNLSTM": ("removed", "CuDNNLSTM is not in Keras 3", "Use keras.layers.LSTM"),
    "keras.layers.CuDNNGRU": ("removed", "CuDNNGRU is not in Keras 3", "Use keras.layers.GRU"),
    "keras.layers.ThresholdedReLU": ("removed", "ThresholdedReLU is not in Keras 3",
                                     "Use keras.layers.ReLU(threshold=...)"),
    "keras.optimizers.legacy": ("removed", "keras.optimizers.legacy is not supported in Keras 3",
                                "Use the keras.optimizers class of the same name"),
    "keras.preprocessing.image.ImageDataGenerator": ("removed", "ImageDataGenerator is not in Keras 3",
                                                     "Use keras.utils.image_dataset_from_directory and Keras "
                                                     "augmentation layers in the tf.data pipeline"),
    "keras.utils.multi_gpu_model": ("removed", "multi_gpu_model was removed", _COLLECTIVE_FIX),
    "keras.backend.get_session": ("removed", "Keras 3 has no TF1 session", "Use oc.Session directly for TF1 graphs"),
    "keras.backend.set_session": ("removed", "Keras 3 has no TF1 session", "Remove the call"),
    "keras.wrappers.scikit_learn": ("removed", "keras.wrappers.scikit_learn is gone in Keras 3",
                                    "Use keras.wrappers.SKLearnClassifier/SKLearnRegressor or scikeras"),
    "keras.mixed_precision.experimental": ("removed", "the experimental mixed-precision API was removed in TF 2.11",
                                           "Use keras.mixed_precision.set_global_policy"),
    "tensorflow.compat.v1.mixed_precision": ("removed", "the mixed-precision graph rewrite is deprecated",
                                             "Use keras.mixed_precision.set_global_policy (mapped to an opencann "
                                             "precision mode) or oc.enable(precision_mode='allow_mix_precision')"),
    "tensorflow.compat.v1.train.experimental": ("removed", "the mixed-precision graph rewrite is deprecated",
                                                "Use keras.mixed_precision.set_global_policy"),
    "tensorflow.train.experimental.enable_mixed_precision_graph_rewrite": (
        "removed", "the mixed-precision graph rewrite was removed", "Use keras.mixed_precision.set_global_policy"),
    "tensorflow.compat.v1.flags": ("removed", "tf.flags is deprecated", "Use absl.flags"),
    "tensorflow.compat.v1.app": ("removed", "tf.app is deprecated", "Use absl.app"),
    "tensorflow.app": ("removed", "tf.app (TF 1.x) is gone from TF 2", "Use absl.app"),
    "tensorflow.flags": ("removed", "tf.flags (TF 1.x) is gone from TF 2", "Use absl.flags"),
    "tensorflow.compat.v1.train.Supervisor": ("removed", "Supervisor is deprecated",
                                              "Use a plain training loop with oc.Session and tf.train.Checkpoint"),
    "tensorflow.compat.v1.train.slice_input_producer": ("removed", "queue-based input is deprecated (queues do "
                                                        "not run in oc.Session)", "Use tf.data"),
    "tensorflow.compat.v1.train.string_input_producer": ("removed", "queue-based input is deprecated", "Use tf.data"),
    "tensorflow.compat.v1.train.batch": ("removed", "queue-based batching is deprecated",
                                         "Use tf.data.Dataset.batch"),
    "tensorflow.compat.v1.train.shuffle_batch": ("removed", "queue-based batching is deprecated",
                                                 "Use tf.data.Dataset.shuffle(...).batch(...)"),
    "tensorflow.compat.v1.train.start_queue_runners": ("removed", "queue runners are deprecated", "Use tf.data"),
    "tensorflow.compat.v1.train.QueueRunner": ("removed", "queue runners are deprecated", "Use tf.data"),
    "tensorflow.compat.v1.py_func": ("removed", "tf.py_func is deprecated",
                                     "Use tf.numpy_function in the tf.data pipeline (not inside the model)"),
    "tensorflow.compat.v1.to_float": ("removed", "deprecated", "Use tf.cast(x, tf.float32)"),
    "tensorflow.compat.v1.to_int32": ("removed", "deprecated", "Use tf.cast(x, tf.int32)"),
    "tensorflow.compat.v1.to_int64": ("removed", "deprecated", "Use tf.cast(x, tf.int64)"),
}
TABLE.update({
    "tensorflow.contrib" + (f".{mod}" if mod else ""): (
        "removed", f"tf.contrib{'.' + mod if mod else ''} was removed in TF 2.0{extra}", suggestion)
    for mod, (extra, suggestion) in _CONTRIB.items()})

_HOROVOD = {  # name: (what it does, what to write for one opencann device)
    "init": ("starts Horovod's communication ring", "Remove the call"),
    "shutdown": ("stops Horovod's communication ring", "Remove the call"),
    "rank": ("the process rank", "Use 0 (one process)"),
    "size": ("the number of processes", "Use 1 (one process)"),
    "local_rank": ("the rank on this host (often pins a GPU)", "Use 0 and drop the GPU pinning"),
    "local_size": ("the processes on this host", "Use 1"),
    "DistributedOptimizer": ("wraps the optimizer to all-reduce gradients", "Use the wrapped optimizer itself"),
    "DistributedGradientTape": ("wraps the tape to all-reduce gradients", "Use the tf.GradientTape itself"),
    "BroadcastGlobalVariablesHook": ("broadcasts initial variables from rank 0", "Remove the hook"),
    "broadcast_variables": ("broadcasts variables from rank 0", "Remove the call"),
    "broadcast_global_variables": ("broadcasts variables from rank 0", "Remove the call"),
    "allreduce": ("all-reduces a tensor across processes", "Use the tensor itself (one process)"),
    "allgather": ("gathers a tensor from every process", "Use the tensor itself (one process)"),
    "broadcast": ("broadcasts a tensor from a root process", "Use the tensor itself (one process)"),
    "callbacks.BroadcastGlobalVariablesCallback": ("broadcasts initial weights from rank 0", "Remove the callback"),
    "callbacks.MetricAverageCallback": ("averages metrics across processes", "Remove the callback"),
    "callbacks.LearningRateWarmupCallback": ("warms the learning rate up for the global batch",
                                             "Use a keras.optimizers.schedules schedule or remove it"),
}
for _module in ("horovod.tensorflow", "horovod.tensorflow.keras", "horovod.keras"):
    for _name, (_what, _fix) in _HOROVOD.items():
        if _module == "horovod.tensorflow" and _name.startswith("callbacks."):
            continue
        TABLE[f"{_module}.{_name}"] = ("manual", f"{_what}; Horovod {_COLLECTIVE}", _fix)
_STRATEGY_FIX = ("Train on one device with tf.distribute.get_strategy() (the default strategy, measured supported) "
                 "or drop the strategy: code inside `with strategy.scope():` runs as is, strategy.run(fn, args) "
                 "becomes fn(*args), experimental_distribute_dataset(ds) becomes ds, num_replicas_in_sync is 1")
for _name in ("MirroredStrategy", "MultiWorkerMirroredStrategy", "TPUStrategy", "ParameterServerStrategy",
              "experimental.ParameterServerStrategy", "experimental.CentralStorageStrategy",
              "experimental.MultiWorkerMirroredStrategy", "experimental.TPUStrategy", "Strategy", "Strategy.scope",
              "Strategy.run", "Strategy.reduce", "Strategy.experimental_distribute_dataset",
              "Strategy.distribute_datasets_from_function", "NcclAllReduce", "HierarchicalCopyAllReduce",
              "ReductionToOneDevice", "cluster_resolver", "get_replica_context"):
    TABLE[f"tensorflow.distribute.{_name}"] = ("manual", f"tf.distribute.{_name}: data-parallel training "
                                               f"{_COLLECTIVE}", _STRATEGY_FIX)

# Suggestions for measured APIs that opencann cannot run, by name prefix (longest wins).
SUGGESTIONS = {
    "": ("Move the call out of the tf.function into eager code or the tf.data pipeline (TensorFlow runs it on "
         "the host), restate it with supported ops, or add a converter for the missing op(s) in "
         "opencann/frontends/tensorflow/ops/"),
    "tensorflow.image": ("Do image processing in the tf.data pipeline (Dataset.map runs on the host under "
                         "TensorFlow) instead of inside the model"),
    "keras.layers.Random": "Apply augmentation in the tf.data pipeline (Dataset.map) instead of inside the model",
    "keras.layers.Resizing": "Resize in the tf.data pipeline (Dataset.map) instead of inside the model",
    "tensorflow.strings": "String processing belongs to the tf.data pipeline (host); feed numbers to the model",
    "tensorflow.io": "Parsing and decoding belong to the tf.data pipeline (host)",
    "keras.layers.StringLookup": "Apply the lookup in the tf.data pipeline (Dataset.map)",
    "keras.layers.IntegerLookup": "Apply the lookup in the tf.data pipeline (Dataset.map)",
    "keras.layers.Hashing": "Apply hashing in the tf.data pipeline (Dataset.map)",
    "tensorflow.py_function": "Move Python code out of the tf.function (eager code or the tf.data pipeline)",
    "tensorflow.numpy_function": "Move NumPy code out of the tf.function (eager code or the tf.data pipeline)",
    "tensorflow.print": "Remove tf.print from tf.function bodies; print returned values eagerly instead",
    "tensorflow.Assert": "Remove the assertion from the tf.function (check values eagerly, outside)",
    "tensorflow.debugging": "Remove the check from the tf.function (check values eagerly, outside)",
    "tensorflow.linalg": ("Compute the decomposition eagerly outside the tf.function (TensorFlow on the host) or "
                          "restate it with matmul-based updates; converters for these ops are future work"),
    "tensorflow.signal": "Compute spectral features in the tf.data pipeline (host)",
    "tensorflow.sparse": "Densify (tf.sparse.to_dense) in the tf.data pipeline and feed dense tensors",
    "tensorflow.ragged": "Pad ragged data in the tf.data pipeline (padded_batch) and feed dense tensors",
    "tensorflow.RaggedTensor": "Pad ragged data in the tf.data pipeline (padded_batch) and feed dense tensors",
    "tensorflow.random": ("Use the stateless random ops (tf.random.stateless_uniform/normal) or draw the numbers "
                          "in the tf.data pipeline"),
    "tensorflow.compat.v1.train.Saver": ("oc.Session cannot run Saver's SaveV2/RestoreV2 ops: save with "
                                         "tf.train.Checkpoint eagerly, or fetch the variables with sess.run and "
                                         "write them with NumPy"),
    "tensorflow.compat.v1.summary": ("oc.Session cannot run TF1 summary ops: fetch the summarised values with "
                                     "sess.run and write them eagerly with tf.summary, or drop the summaries"),
    "tensorflow.compat.v1.data": ("oc.Session does not run TF1 iterators: feed batches through placeholders "
                                  "(iterate the tf.data.Dataset eagerly and pass feed_dict)"),
    "tensorflow.compat.v1.cond": ("oc.Session does not run TF1 control flow (Switch/Merge): enable control flow "
                                  "v2 (do not call disable_v2_behavior/disable_control_flow_v2) or use tf.where"),
    "tensorflow.compat.v1.while_loop": ("oc.Session does not run TF1 control flow (Enter/Exit/NextIteration): "
                                        "keep control flow v2 enabled or unroll the loop"),
}

