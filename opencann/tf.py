"""Run TensorFlow programs on opencann — the analogue of CANN's ``npu_device.open().as_default()``.

    import opencann.tf as oc
    oc.enable(device=0, precision_mode="force_fp32")
    model.fit(x, y)           # Keras' train/test/predict functions run on opencann
    oc.disable()              # TensorFlow runs them again

Every ``tf.function`` called from eager code is traced by TensorFlow, compiled by opencann (cached per
input signature) and executed on the opencann device; variables stay TensorFlow's, so weights can be
read, checkpointed and saved as usual. Eager code outside functions runs as before. A function with an
operator opencann does not support stops with an error listing every such operator (nothing silently
falls back to TensorFlow).

TF1 graphs (``tf.compat.v1``: placeholders, ``get_variable``, ``Optimizer.minimize``) run through
``oc.Session()``, a drop-in for ``tf.compat.v1.Session`` whose ``run`` compiles and executes the fetched
part of the graph on opencann, variables included (:mod:`opencann.frontends.tensorflow.tf1`).
"""
from __future__ import annotations

from opencann.compiler.pipeline import BuildOptions
from opencann.errors import AclError, ErrorCode
from opencann.frontends.tensorflow.adapter import Adapter, StepThreads, run_program
from opencann.frontends.tensorflow.monitored import MonitoredSession, MonitoredTrainingSession, SingularMonitoredSession
from opencann.frontends.tensorflow.tf1 import Session  # TF1 graphs: drop-in for tf.compat.v1.Session

__all__ = ["AclError", "MonitoredSession", "MonitoredTrainingSession", "Session", "SingularMonitoredSession",
           "adapter", "disable", "enable", "is_enabled"]

_adapter: Adapter | None = None
_tf_call_flat = None  # TensorFlow's own ConcreteFunction._call_flat, while the adapter replaces it


def enable(device: int = 0, precision_mode: str = "force_fp32", dump_graphs: str | None = None,
           threads: int = 1) -> Adapter:
    """Route tf.function execution to opencann (idempotent); returns the adapter (its ``programs``,
    ``executions`` counters show what ran). ``threads``: opencann's workers while a step runs, the libraries
    (BLAS, Numba) on one thread (TensorFlow's own pools are idle then; 0 leaves everything as configured)."""
    global _adapter, _tf_call_flat
    from tensorflow.python.eager import context
    from tensorflow.python.eager.polymorphic_function import concrete_function
    from tensorflow.python.ops import gradients_util

    import opencann.frontends.tensorflow.ops  # noqa: F401  (registers the converters)

    if device != 0:
        raise AclError(ErrorCode.INVALID_DEVICE, f"device {device} does not exist (opencann.tf runs on device 0)")
    options = BuildOptions(precision_mode=precision_mode)
    options.check()
    if threads < 0:
        raise AclError(ErrorCode.INVALID_PARAM, f"threads must be 0 (as configured) or positive, got {threads}")
    limit = StepThreads(threads) if threads else None
    if _adapter is not None:
        _adapter.options, _adapter.dump_graphs, _adapter.threads = options, dump_graphs, limit
        return _adapter
    adapter = Adapter(options=options, dump_graphs=dump_graphs, threads=limit)
    cls = concrete_function.ConcreteFunction
    _tf_call_flat = original = cls._call_flat

    def _call_flat(self, tensor_inputs, captured_inputs):
        if not context.executing_eagerly() or _adapter is None:  # tracing an enclosing function
            return original(self, tensor_inputs, captured_inputs)
        args = list(tensor_inputs) + list(captured_inputs)
        if gradients_util.PossibleTapeGradientTypes(args) != gradients_util.POSSIBLE_GRADIENT_TYPES_NONE:
            raise AclError(ErrorCode.FEATURE_UNSUPPORTED, f"a GradientTape outside tf.function '{self.name}' is "
                           "watching its inputs: opencann cannot differentiate through a compiled call. Open the "
                           "tape inside the tf.function (compute loss and gradients in one traced step)")
        program = adapter.program(self)
        flat = run_program(program, args, adapter.threads)
        adapter.executions += 1
        return self.function_type.pack_output(flat)

    cls._call_flat = _call_flat
    _adapter = adapter
    return adapter


def disable() -> None:
    """Give tf.function execution back to TensorFlow."""
    global _adapter, _tf_call_flat
    if _adapter is None:
        return
    from tensorflow.python.eager.polymorphic_function import concrete_function

    concrete_function.ConcreteFunction._call_flat = _tf_call_flat
    _adapter = _tf_call_flat = None


def adapter() -> Adapter | None:
    """The active adapter, or None."""
    return _adapter


def is_enabled() -> bool:
    return _adapter is not None


