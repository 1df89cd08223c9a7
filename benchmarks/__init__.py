"""Benchmarks: each compares methods side by side and writes benchmarks/results/<name>.json + a plot."""

# The environment defaults must be in place before any benchmark imports torch: libgomp reads
# OMP_WAIT_POLICY once, when torch loads it, and spinning OpenMP threads of a background copy steal
# the 2 cores from training.
from mlsys.environment import apply_environment_defaults

apply_environment_defaults()
