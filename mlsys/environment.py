"""Process-wide defaults that must be in place before Prefect, MLflow or transformers import.

Everything stays inside the project (or whatever the user already set): Prefect's home and its
temporary server database, MLflow's store, Hugging Face caches. Nothing is fetched from the network.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_DEFAULTS = {
    # Prefect writes ~/.prefect/prefect.db otherwise; keep it per project.
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    # The temporary server takes 15-27 s to start here, longer under load; 20 s default is too tight.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_UI_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # Models come only from installed packages: never try the Hub.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HOME": str(PROJECT_ROOT / ".cache" / "huggingface"),
    "TOKENIZERS_PARALLELISM": "false",
    # OpenMP's spin-waiting threads fight data-loading threads for 2 cores (5-20x slower steps seen
    # in the GCN loader benchmark); sleep-waiting costs nothing measurable in compute-only flows.
    "OMP_WAIT_POLICY": "passive",
    "RAY_USAGE_STATS_ENABLED": "0",
    "FLWR_HOME": str(PROJECT_ROOT / ".cache" / "flwr"),
}


def apply_environment_defaults() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
