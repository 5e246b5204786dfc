"""gpuflow: GPU notebook CI as importable steps.

Importing gpuflow is cheap: papermill, nbconvert, cupy and rmm are imported
lazily inside the functions that need them.
"""
from __future__ import annotations

__version__ = "0.1.0"
