"""Prefect tasks: each adapts one unit of component work (an epoch, a benchmark, a client's round)."""

from tasks.environment import apply_environment_defaults

apply_environment_defaults()
