"""Benchmarks: gpuflow against what it replaces. Run `python -m benchmarks`."""
