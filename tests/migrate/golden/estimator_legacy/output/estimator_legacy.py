"""A tf.estimator script: Estimator was removed in TensorFlow 2.16, so it is reported, not migrated."""
import numpy as np
import tensorflow as tf
import opencann.tf as oc
oc.enable(precision_mode="force_fp32")


def input_fn():
    rng = np.random.default_rng(6)
    features = {"x": rng.standard_normal((64, 3)).astype(np.float32)}
    labels = rng.integers(0, 2, size=(64,))
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)


columns = [tf.feature_column.numeric_column("x", shape=(3,))]
config = tf.estimator.RunConfig(model_dir="/tmp/estimator_legacy", save_summary_steps=10)
classifier = tf.estimator.DNNClassifier(hidden_units=[8], feature_columns=columns, n_classes=2, config=config)
classifier.train(input_fn=input_fn, steps=20)
print(classifier.evaluate(input_fn=input_fn, steps=1))
