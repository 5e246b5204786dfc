"""Benchmarks: gpuflow against what it replaces (issue 8). Run `python -m benchmarks`."""
