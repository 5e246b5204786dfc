"""`gpuflow run`'s machinery: the resolved configuration, GPU/CPU slots,
resume, one notebook's way through the steps, and the run's report."""
