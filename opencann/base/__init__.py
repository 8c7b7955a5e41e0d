"""Seed layer 5, base services: shared virtual memory, device virtualization, host-device channels.
Not built yet (roadmap stage 5)."""
