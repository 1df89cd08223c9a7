"""Prefect flows, one module per system; `flows.platform` is the shared path CLI -> Hydra -> Prefect -> MLflow."""

import tasks  # noqa: F401  (applies the environment defaults before Prefect/MLflow import)
