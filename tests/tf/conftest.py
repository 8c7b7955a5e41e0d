from tests.tf.harness import _disable_adapter  # noqa: F401
