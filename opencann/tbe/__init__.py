"""Seed layer 3, TBE: the custom-operator DSL that generates fused kernels (Numba on the CPU, CUDA C
through NVRTC on NVIDIA GPUs). Not built yet (issue 6)."""
