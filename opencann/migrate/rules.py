"""The migration rules, as data: one :class:`Rule` record per rewrite or report, applied by
:mod:`opencann.migrate.rewriter` and listed in ``docs/migration.md``.

``apis`` are canonical qualified names (:func:`opencann.migrate.resolve.canonical`): ``keras.X`` for
every spelling of Keras (``tensorflow.keras.X``, ``tf_keras.X``), ``tensorflow.compat.v1.X`` kept as is.
``action`` says what the rewriter does with a matching call:

=============  ==================================================================================
``insert``     structural: adds a line (the opencann import, ``oc.enable(...)``)
``rename``     the callee becomes ``new`` (``{oc}`` is the alias of ``opencann.tf``); arguments stay
``replace``    the call (or its first argument) becomes ``new``, with a note comment above its statement;
               with ``gpu_argument``, only when that argument is a literal naming a GPU
``neutralise`` the statement is commented out under a note (``pass`` added if its block would be empty)
``keyword``    sets the keyword ``keyword`` to ``new`` (``when``: only if the current value is that text)
``report``     no edit: a finding at ``level`` with ``message``
=============  ==================================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

LEVELS = ("info", "warning", "error")  # in increasing order of attention needed
LEVEL_MEANING = {
    "info": "done automatically, or harmless: nothing to do",
    "warning": "may need attention: an API opencann does not know, or code it could not analyse",
    "error": "needs manual migration: the script will not run on opencann (or on TF 2.x) as it is",
}


@dataclass(frozen=True)
class Rule:
    id: str
    name: str
    level: str
    action: str
    message: str  # why: the reason the report gives
    apis: tuple[str, ...] = ()
    new: str = ""
    keyword: str = ""
    when: str = ""  # keyword rules: the value text that triggers them ("" = any or absent)
    position: int | None = None  # keyword rules: the keyword's positional index (None: keyword only)
    gpu_argument: str = ""  # replace rules: the first argument (this keyword) must name a GPU
    target: str = "call"  # replace rules: what is replaced, the "call" or its "argument"


V1 = "tensorflow.compat.v1."
GPU_QUERY_NOTE = "GPU-only device query; opencann runs the graphs on its own device, so GPU-only branches are off"

RULES: tuple[Rule, ...] = (
    # ---- structure
    Rule("OC001", "import-opencann", "info", "insert",
         "imports opencann's TensorFlow adapter (`import opencann.tf as oc`) after the file's imports"),
    Rule("OC002", "enable-opencann", "info", "insert",
         "routes tf.function execution to opencann: `oc.enable(...)` in the entry file, first thing in "
         "`if __name__ == \"__main__\":` when all TensorFlow work happens there, else right after the imports"),
    Rule("OC003", "mixed-precision-policy", "info", "neutralise",
         "the Keras mixed-precision policy becomes opencann's precision mode (`oc.enable(precision_mode=...)`: "
         "mixed_float16 -> allow_mix_precision, mixed_bfloat16 -> allow_mix_precision_bf16): opencann lowers "
         "the traced float32 graph itself, keeping numerically sensitive operators in float32",
         apis=("keras.mixed_precision.set_global_policy", "keras.mixed_precision.experimental.set_policy",
               "keras.mixed_precision.experimental.set_global_policy")),
    # ---- TF1 sessions
    Rule("OC010", "tf1-session", "info", "rename",
         "the TF1 session becomes opencann's drop-in `oc.Session`, which runs the graph on opencann "
         "(ConfigProto and target are accepted and ignored)",
         apis=(V1 + "Session", "tensorflow.Session", V1 + "InteractiveSession", "tensorflow.InteractiveSession"),
         new="{oc}.Session"),
    Rule("OC011", "monitored-training-session", "info", "rename",
         "MonitoredTrainingSession is created with opencann's Session inside (hooks, scaffold and "
         "should_stop work as in TensorFlow)",
         apis=(V1 + "train.MonitoredTrainingSession", "tensorflow.train.MonitoredTrainingSession"),
         new="{oc}.MonitoredTrainingSession"),
    Rule("OC012", "monitored-session", "info", "rename",
         "MonitoredSession's session creator makes opencann's Session",
         apis=(V1 + "train.MonitoredSession", "tensorflow.train.MonitoredSession"),
         new="{oc}.MonitoredSession"),
    Rule("OC013", "singular-monitored-session", "info", "rename",
         "SingularMonitoredSession is created with opencann's Session inside",
         apis=(V1 + "train.SingularMonitoredSession", "tensorflow.train.SingularMonitoredSession"),
         new="{oc}.SingularMonitoredSession"),
    Rule("OC014", "session-config", "info", "report",
         "kept: the ConfigProto reaches oc.Session, which accepts it and ignores it (opencann has no GPU "
         "options, thread pools or graph rewrites to configure)",
         apis=(V1 + "ConfigProto", "tensorflow.ConfigProto", V1 + "GPUOptions", "tensorflow.GPUOptions")),
    Rule("OC015", "checkpoint-dir", "error", "report",
         "checkpoint_dir makes the monitored session save with tf.train.Saver, whose SaveV2/RestoreV2 ops "
         "oc.Session does not run: drop checkpoint_dir and save the values of "
         "sess.run(tf.compat.v1.global_variables()) with NumPy, or keep this part on TensorFlow",
         apis=(V1 + "train.MonitoredTrainingSession", "tensorflow.train.MonitoredTrainingSession"),
         keyword="checkpoint_dir"),
    # ---- GPU-only code
    Rule("OC020", "gpu-memory-config", "info", "neutralise",
         "GPU memory/visibility configuration has no meaning on opencann, which manages its device memory",
         apis=("tensorflow.config.experimental.set_memory_growth", "tensorflow.config.set_logical_device_configuration",
               "tensorflow.config.experimental.set_virtual_device_configuration",
               "tensorflow.config.experimental.set_memory_limit", "tensorflow.config.set_visible_devices",
               "tensorflow.config.experimental.set_visible_devices")),
    Rule("OC021", "gpu-device-scope", "info", "replace",
         "GPU placement: opencann runs every traced graph on its own device, and TensorFlow's eager work "
         "stays on the CPU",
         apis=("tensorflow.device", V1 + "device"), new="\"/cpu:0\"", gpu_argument="device_name", target="argument"),
    Rule("OC022", "gpu-device-list", "info", "replace", GPU_QUERY_NOTE,
         apis=("tensorflow.config.list_physical_devices", "tensorflow.config.experimental.list_physical_devices",
               "tensorflow.config.list_logical_devices", "tensorflow.config.experimental.list_logical_devices"),
         new="[]", gpu_argument="device_type"),
    Rule("OC023", "gpu-available", "info", "replace", GPU_QUERY_NOTE,
         apis=("tensorflow.test.is_gpu_available", "tensorflow.test.is_built_with_cuda",
               "tensorflow.test.is_built_with_gpu_support", V1 + "test.is_gpu_available"), new="False"),
    Rule("OC024", "gpu-device-name", "info", "replace", GPU_QUERY_NOTE,
         apis=("tensorflow.test.gpu_device_name",), new="\"\""),
    Rule("OC025", "xla-jit-compile", "info", "keyword",
         "XLA compilation is TensorFlow's own compiler; opencann compiles every tf.function itself",
         apis=("tensorflow.function", "*.compile"), keyword="jit_compile", new="False", when="True"),
    Rule("OC026", "xla-experimental-compile", "info", "keyword",
         "XLA compilation (the pre-2.5 spelling) is TensorFlow's own compiler; opencann compiles every "
         "tf.function itself",
         apis=("tensorflow.function",), keyword="experimental_compile", new="False", when="True"),
    Rule("OC027", "xla-auto-jit", "info", "neutralise",
         "global XLA auto-clustering is TensorFlow's own compiler; opencann compiles every tf.function itself",
         apis=("tensorflow.config.optimizer.set_jit",)),
    Rule("OC028", "xla-jit-scope", "info", "keyword",
         "XLA jit scopes compile with TensorFlow's own compiler; opencann compiles the graph itself",
         apis=("tensorflow.xla.experimental.jit_scope", V1 + "xla.experimental.jit_scope"),
         keyword="compile_ops", new="False", position=0),
    Rule("OC029", "cuda-environment", "info", "report",
         "CUDA environment variables have no effect on opencann (harmless)"),
    # ---- shapes
    Rule("OC030", "static-batch", "info", "keyword",
         "static shapes required: {reason}; a smaller last batch would not fit, so the dataset drops it",
         apis=("*.batch", "*.padded_batch"), keyword="drop_remainder", new="True"),
    Rule("OC031", "static-batch-unknown", "warning", "report",
         "static shapes required ({reason}), but this call passes **kwargs: make sure it sets "
         "drop_remainder=True"),
    # ---- distributed training
    Rule("OC040", "horovod", "error", "report",
         "horovod needs collective communication (allreduce, broadcast, allgather) across processes; "
         "opencann has no collective API yet (HCCL is not implemented), so this cannot be migrated. Train on "
         "one process: drop hvd.init(), use rank 0 and size 1, unwrap hvd.DistributedOptimizer and remove "
         "the broadcast hooks/callbacks"),
    Rule("OC041", "tf-distribute-strategy", "error", "report",
         "tf.distribute strategies replicate the step and reduce gradients with collective all-reduce; "
         "opencann has no collective API yet (HCCL is not implemented), so this cannot be migrated. Train on "
         "one device: use tf.distribute.get_strategy() (the default strategy) instead",
         apis=("tensorflow.distribute.MirroredStrategy", "tensorflow.distribute.MultiWorkerMirroredStrategy",
               "tensorflow.distribute.experimental.MultiWorkerMirroredStrategy",
               "tensorflow.distribute.TPUStrategy", "tensorflow.distribute.experimental.TPUStrategy",
               "tensorflow.distribute.experimental.ParameterServerStrategy",
               "tensorflow.distribute.ParameterServerStrategy",
               "tensorflow.distribute.experimental.CentralStorageStrategy",
               V1 + "distribute.MirroredStrategy", V1 + "distribute.experimental.MultiWorkerMirroredStrategy",
               V1 + "distribute.experimental.ParameterServerStrategy",
               V1 + "distribute.experimental.CentralStorageStrategy")),
    # ---- what the analysis could not do
    Rule("OC050", "star-import", "warning", "report",
         "star import from {module}: its names are resolved only where the API database knows them; "
         "import the names explicitly"),
    Rule("OC051", "rebound-name", "warning", "report",
         "`{name}` is imported from TensorFlow but also re-bound in this file, so this may not be {api}: "
         "not migrated, check it by hand"),
    Rule("OC052", "indirect-reference", "warning", "report",
         "{api} is referenced without being called (aliased or passed around): calls made through this "
         "reference are not migrated"),
    Rule("OC053", "dynamic-argument", "warning", "report",
         "{api}: the argument is computed at run time, so the rewriter cannot tell whether it is GPU-only; "
         "check it by hand"),
    # ---- files
    Rule("OC060", "parse-error", "error", "report",
         "the file does not parse as Python ({error}); it is copied unchanged and was not analysed"),
    Rule("OC061", "decode-error", "error", "report",
         "the file cannot be decoded ({error}); it is copied unchanged and was not analysed"),
    Rule("OC062", "too-large", "warning", "report",
         "the file is larger than {limit} MB; it is copied unchanged and was not analysed"),
    Rule("OC063", "notebook-error", "error", "report",
         "the notebook is not valid JSON in nbformat 4 ({error}); it is copied unchanged"),
    Rule("OC064", "internal-error", "error", "report",
         "migrating this file failed inside opencann ({error}); it is copied unchanged (please report this)"),
    # ---- API analysis (categories from the API database, opencann.migrate.database)
    Rule("OC101", "api-migrated", "info", "report", "supported after automatic migration: {note}"),
    Rule("OC102", "api-harmless", "info", "report", "unsupported but harmless: {note}"),
    Rule("OC103", "api-manual", "error", "report", "unsupported, needs manual migration: {note}"),
    Rule("OC104", "api-removed", "error", "report", "deprecated or removed in TensorFlow 2.x: {note}"),
    Rule("OC105", "api-unknown", "warning", "report",
         "not in opencann's API database: support unknown, check that it runs"),
)

BY_ID = {rule.id: rule for rule in RULES}
CATEGORY_RULE = {"migrated": "OC101", "harmless": "OC102", "manual": "OC103", "removed": "OC104",
                 "unknown": "OC105"}


def rules_for(action: str) -> list[Rule]:
    """The rules with ``action`` that match calls of listed APIs."""
    return [rule for rule in RULES if rule.action == action and rule.apis]


def level_rank(level: str) -> int:
    return LEVELS.index(level)
