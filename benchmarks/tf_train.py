"""Keras training speed: TensorFlow (CPU) vs opencann, side by side on the same models and batches.

    .venv/bin/python benchmarks/tf_train.py [--models mlp,cnn,lstm,transformer] [--steps 30] [--threads N]
        [--oc-threads 1]

For each model, Keras' ``fit`` runs once to trace and compile (not timed), then ``--repeats`` timed epochs
of ``--steps`` steps alternate between TensorFlow and opencann (``opencann.tf.enable()``); each epoch is
timed from the end of its first step to the end of its last, and the best epoch of each gives training
steps per second. The ratio is opencann's speed over TensorFlow's (higher is
better for opencann). A model with an operator opencann does not support yet is reported as such.
"""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def mlp(keras):
    model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(256, activation="relu"),
                              keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, (784,), 10


def cnn(keras):
    model = keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(16, 3, activation="relu"), keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(32, 3, padding="same"), keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(10)])
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, (28, 28, 1), 10


def lstm(keras):
    model = keras.Sequential([keras.Input((40,), dtype="int32"), keras.layers.Embedding(1000, 32),
                              keras.layers.LSTM(32), keras.layers.Dense(1, activation="sigmoid")])
    model.compile(keras.optimizers.RMSprop(1e-3), keras.losses.BinaryCrossentropy())
    return model, ("tokens", 40, 1000), 2


def transformer(keras):
    inp = keras.Input((32, 64))
    x = keras.layers.LayerNormalization()(inp + keras.layers.MultiHeadAttention(4, 16)(inp, inp))
    h = keras.layers.Dense(128, activation="gelu")(x)
    x = keras.layers.LayerNormalization()(x + keras.layers.Dense(64)(h))
    out = keras.layers.Dense(4)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.AdamW(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, (32, 64), 4


MODELS: dict[str, Callable] = {"mlp": mlp, "cnn": cnn, "lstm": lstm, "transformer": transformer}


def batches(shape, classes: int, n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if shape[0] == "tokens":
        x = rng.integers(0, shape[2], (n, shape[1])).astype(np.int32)
    else:
        x = rng.standard_normal((n, *shape)).astype(np.float32)
    return x, rng.integers(0, classes, n)


def epoch_seconds(model, x, y, batch: int) -> float:
    """Seconds per training step of one epoch, from the end of its first step to the end of its last (the
    steady state: Keras' per-``fit`` setup, the same for both, is left out)."""
    import keras

    ends: list[float] = []
    clock = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_, **__: ends.append(time.perf_counter()))
    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[clock])
    return (ends[-1] - ends[0]) / max(len(ends) - 1, 1)


def bench(name: str, keras, oc, steps: int, batch: int, repeats: int, oc_threads: int = 1) -> dict:
    """Steps per second of TensorFlow and opencann on one model (or why opencann could not run it)."""
    keras.utils.set_random_seed(0)
    tf_model, shape, classes = MODELS[name](keras)
    keras.utils.set_random_seed(0)
    oc_model, _, _ = MODELS[name](keras)
    x, y = batches(shape, classes, steps * batch)
    epoch_seconds(tf_model, x[:batch], y[:batch], batch)
    oc.enable(threads=oc_threads)
    try:
        epoch_seconds(oc_model, x[:batch], y[:batch], batch)
    except oc.AclError as exc:
        return {"error": f"not supported yet: {exc}"}
    except Exception as exc:  # noqa: BLE001 - a model that fails is reported, the others still run
        return {"error": f"failed: {type(exc).__name__}: {exc}"}
    finally:
        oc.disable()
    times = {"tf": [], "oc": []}
    for _ in range(repeats):
        times["tf"].append(epoch_seconds(tf_model, x, y, batch))
        oc.enable(threads=oc_threads)
        try:
            times["oc"].append(epoch_seconds(oc_model, x, y, batch))
        finally:
            oc.disable()
    return {k: 1 / min(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--steps", type=int, default=30, help="training steps per timed epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed epochs per framework (the best counts)")
    ap.add_argument("--threads", type=int, default=0, help="TensorFlow and BLAS threads (0: their defaults)")
    ap.add_argument("--oc-threads", type=int, default=1, help="opencann's BLAS/Numba threads during a step")
    args = ap.parse_args()
    if args.threads:
        os.environ["OPENBLAS_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import keras
    import numpy as np
    import tensorflow as tf

    import opencann.tf as oc

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, NumPy {np.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads: {args.threads or 'default'}, "
          f"opencann step threads: {args.oc_threads}")
    print(f"batch {args.batch}, {args.steps} steps per timed epoch, best of {args.repeats}\n")
    print(f"{'model':<12} {'TF steps/s':>11} {'opencann steps/s':>17} {'opencann/TF':>12}")
    for name in args.models.split(","):
        result = bench(name, keras, oc, args.steps, args.batch, args.repeats, args.oc_threads)
        if "error" in result:
            print(f"{name:<12} not run on opencann: {result['error'][:300]}", flush=True)
        else:
            ratio = result["oc"] / result["tf"]
            print(f"{name:<12} {result['tf']:>11.1f} {result['oc']:>17.1f} {ratio:>11.2f}x", flush=True)


if __name__ == "__main__":
    main()
