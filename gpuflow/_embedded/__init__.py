"""Code that runs inside someone else's process: the notebook's kernel (the
GPU guard, lite mode) or the test repo's pytest (the gate). Each module here
imports only the standard library at module level, so that it can be
embedded as source where gpuflow is not installed."""
