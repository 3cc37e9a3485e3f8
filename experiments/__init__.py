"""Example workloads bundled with wt-run."""
