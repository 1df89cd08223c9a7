"""Prefect flows, one module per system; `mlsys.flow` is the shared path CLI -> Hydra -> Prefect -> MLflow."""
