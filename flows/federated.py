"""`federated`: one model trained across heterogeneous clients under FedCompass (or a baseline).

partition the data -> run the chosen scheduler on the chosen driver (the virtual-time simulator, or
Flower), evaluating the global model after each aggregation -> log accuracy vs (virtual) time, the
per-aggregation metrics and the final model to MLflow.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.federated.config import FederatedRunSettings
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker
from tasks.federated import log_result, prepare_federation, run_federation


@dataclass
class FederatedConfig(FederatedRunSettings, FlowConfig):
    """The run's settings (clients, rounds, driver, the fed_* groups, ...) at the top level, as users type them."""

    register_model: bool = False  # also register the final model in MLflow's registry

    def __post_init__(self) -> None:
        FlowConfig.__post_init__(self)
        FederatedRunSettings.__post_init__(self)


# The paper's claim this flow's summary metric measures (the suite's table, the run's summary).
CLAIM = "FedCompass: higher top accuracy, sooner, than FedAvg/FedAsync/FedBuff"


@system_flow("federated", FederatedConfig, summary_metric="top_accuracy", order=50, claim=CLAIM)
def federated(cfg: FederatedConfig, tracker: Tracker) -> dict[str, float]:
    """Federated training under FedCompass / FedAvg / FedAsync / FedBuff; accuracy vs virtual time."""
    federation = prepare_federation(cfg.fed_data, cfg.model, cfg.clients, cfg.seed, cfg.torch_threads, tracker)
    result = run_federation(cfg, cfg.seed, federation, cfg.work_path("federated", "loopback"), tracker)
    return log_result(cfg, federation, result, cfg.work_path("federated", "model"), cfg.register_model, tracker)
