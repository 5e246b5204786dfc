"""Executing one notebook: preparing its copy, papermill's client over one
kernel, the kernel's environment, parameters and the papermill log."""
