"""Seed layer 2, tuning engines: operator, subgraph and gradient tuning, model compression.
Not built yet (roadmap stage 5)."""
