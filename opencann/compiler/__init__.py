"""Seed layer 3, compile engine: the IR, the graph passes, the memory planner and the `.om` format."""
