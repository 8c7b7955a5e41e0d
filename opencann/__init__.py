"""opencann: an open Compute Architecture for Neural Networks."""
__version__ = "0.1.0"


def __getattr__(name: str):
    """``opencann.set_num_threads`` / ``get_num_threads`` (imported on first use: ``import opencann`` stays light)."""
    if name in ("set_num_threads", "get_num_threads"):
        from opencann.runtime import threads

        return getattr(threads, name)
    raise AttributeError(f"module 'opencann' has no attribute '{name}'")
