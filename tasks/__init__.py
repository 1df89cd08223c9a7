"""Prefect tasks: each adapts one coarse unit of component work (an epoch, a benchmark, a client's round)."""
