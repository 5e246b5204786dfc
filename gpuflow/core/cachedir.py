"""Where gpuflow keeps what is worth keeping between runs (compiled templates,
test venvs): $GPUFLOW_CACHE_DIR, else $XDG_CACHE_HOME/gpuflow, else
~/.cache/gpuflow."""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    explicit = os.environ.get("GPUFLOW_CACHE_DIR")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpuflow"
