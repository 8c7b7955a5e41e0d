"""TF1 monitored sessions on opencann: ``MonitoredTrainingSession``, ``MonitoredSession`` and
``SingularMonitoredSession`` with :class:`~opencann.frontends.tensorflow.tf1.Session` inside.

    with oc.MonitoredTrainingSession(hooks=[tf.compat.v1.train.StopAtStepHook(last_step=100)]) as sess:
        while not sess.should_stop():
            sess.run(train_op, feed_dict=...)

TensorFlow's own classes do the work (hooks, scaffold, initialization, should_stop, recovery); only the
session their session creator makes is opencann's. Checkpointing (``checkpoint_dir``) needs
``tf.train.Saver``'s SaveV2/RestoreV2 ops, which the opencann session does not run.
"""
from __future__ import annotations

import contextlib

from opencann.frontends.tensorflow.tf1 import Session

__all__ = ["MonitoredSession", "MonitoredTrainingSession", "SingularMonitoredSession"]


class _HookedSession(Session):
    """The session monitored sessions create: fetches may be dicts keyed by hooks (not sortable)."""

    def run(self, fetches, feed_dict=None, options=None, run_metadata=None):
        if isinstance(fetches, dict):
            keys = list(fetches)
            values = super().run([fetches[k] for k in keys], feed_dict, options, run_metadata)
            return dict(zip(keys, values))
        return super().run(fetches, feed_dict, options, run_metadata)


@contextlib.contextmanager
def _opencann_sessions():
    """While a monitored session is being built, TensorFlow's session manager makes opencann sessions."""
    from tensorflow.python.training import session_manager

    original = session_manager.session.Session
    session_manager.session.Session = _HookedSession
    try:
        yield
    finally:
        session_manager.session.Session = original


def MonitoredTrainingSession(*args, **kwargs):  # noqa: N802 - TensorFlow's name
    """``tf.compat.v1.train.MonitoredTrainingSession`` running on opencann (same arguments)."""
    import tensorflow as tf

    with _opencann_sessions():
        return tf.compat.v1.train.MonitoredTrainingSession(*args, **kwargs)


def MonitoredSession(*args, **kwargs):  # noqa: N802
    """``tf.compat.v1.train.MonitoredSession`` running on opencann (same arguments)."""
    import tensorflow as tf

    with _opencann_sessions():
        return tf.compat.v1.train.MonitoredSession(*args, **kwargs)


def SingularMonitoredSession(*args, **kwargs):  # noqa: N802
    """``tf.compat.v1.train.SingularMonitoredSession`` running on opencann (same arguments)."""
    import tensorflow as tf

    with _opencann_sessions():
        return tf.compat.v1.train.SingularMonitoredSession(*args, **kwargs)
