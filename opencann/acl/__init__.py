"""Seed layer 1, AscendCL: the application API (devices, contexts, streams, events, memory, models,
single operators, media, graphs). Arrives with issue 3; until then use
:class:`opencann.runtime.Executor` directly."""
