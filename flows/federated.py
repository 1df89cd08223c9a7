"""`federated`: one model trained across heterogeneous clients under FedCompass (or a baseline).

partition the data -> run the chosen scheduler on the chosen driver (the virtual-time simulator, or
Flower) -> evaluate the global model after each aggregation -> log accuracy vs (virtual) time, the
per-aggregation metrics and the final model to MLflow.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from flows.platform import FlowConfig, system_flow
from tasks.tracking import Tracker


@dataclass
class FedStrategyConfig:
    """conf/fed_strategy/<name>.yaml: which server policy, and its hyperparameters (others ignored)."""

    name: str = "fedcompass"  # fedcompass | fedavg | fedasync | fedbuff
    alpha: float = 0.9  # server mixing rate of the staleness-weighted step (paper/APPFL: 0.9)
    staleness: str = "polynomial"  # s(u): constant | polynomial (u+1)^-a | hinge
    staleness_a: float = 0.5  # polynomial exponent / hinge slope (FedAsync's a = 0.5)
    staleness_b: int = 4  # hinge: staleness tolerated at full weight
    q_max: int = 50  # FedCompass: most local steps in a round (paper 100; digits needs fewer)
    q_min: int = 10  # FedCompass: fewest local steps (paper keeps Q_min = Q_max / 5)
    speed_momentum: float = 0.9  # beta: weight of the newest speed observation (paper 0.9)
    latest_time_factor: float = 1.5  # lambda: a group waits until lambda x its expected span (paper 1.5)
    local_steps: int = 50  # FedAvg/FedAsync/FedBuff: steps per round, = FedCompass's Q_max for fairness
    buffer_size: int = 3  # FedBuff: arrivals per global update (K)


@dataclass
class FedSpeedConfig:
    """conf/fed_speed/<kind>.yaml: virtual seconds per local step of each client."""

    kind: str = "exponential"  # homogeneous | normal | exponential (the paper's three)
    mean: float = 1.0  # mean seconds per step: the unit of virtual time
    sigma_ratio: float = 0.3  # normal: sigma = 0.3 mu, as in the paper
    jitter: float = 0.0  # relative per-round noise on a round's duration
    drift_time: Optional[float] = None  # virtual time at which some clients change speed (None: never)
    drift_fraction: float = 0.0  # the fastest this fraction of clients drift
    drift_factor: float = 1.0  # ...their step time is multiplied by this


@dataclass
class FedDataConfig:
    """conf/fed_data/<name>.yaml: the dataset and how it is split over clients."""

    name: str = "digits"  # digits (sklearn 8x8 images) | mnist1d (generated 1-D digits, harder)
    partition: str = "dirichlet"  # iid | class | dirichlet | dual_dirichlet
    test_fraction: float = 0.2  # digits: held-out share of the 1797 images
    classes_per_client: int = 3  # class partition: classes each client holds
    alpha: float = 0.5  # dirichlet: per-class concentration (smaller = more skewed)
    alpha_clients: float = 2.0  # dual_dirichlet: spread of client sizes
    alpha_classes: float = 2.0  # dual_dirichlet: spread of each client's class mix


@dataclass
class FedModelConfig:
    kind: str = "cnn"  # cnn (with BatchNorm: buffer averaging is exercised) | mlp
    width: int = 16  # channels of the first conv layer (hidden = 4x width for the MLP)


@dataclass
class FlowerDriverConfig:
    """driver=flower: the same scheduler over real Flower ClientApps."""

    backend: str = "simulation"  # simulation (Flower's Ray engine) | deployment (SuperLink+SuperNodes, loopback)
    seconds_per_virtual_second: float = 0.002  # emulated speed: a client sleeps steps*step_time*this
    timeout: float = 600.0  # wall-clock seconds before the server loop gives up


@dataclass
class FederatedConfig(FlowConfig):
    rounds: int = 30  # stop after this many global model updates (aggregations)
    clients: int = 5  # m: number of clients (the paper runs 5 to 20)
    time_budget: Optional[float] = None  # stop at this virtual time as well (None: rounds decide)
    target_accuracy: float = 0.9  # for time_to_target (digits: ~97% is reachable)
    driver: str = "simulator"  # simulator (virtual time, deterministic) | flower
    lr: float = 0.05  # local SGD learning rate
    batch_size: int = 32  # local mini-batch
    client_weighting: str = "equal"  # p_i in the server step: equal (1/N, as the paper) | samples
    torch_threads: int = 1  # per client task: clients run in parallel, not inside one task
    crash_clients: list[int] = field(default_factory=list)  # clients that die and never answer again...
    crash_at: float = 0.0  # ...after this virtual time (the group timer must keep the run going)
    register_model: bool = False  # also register the final model in MLflow's registry
    fed_strategy: FedStrategyConfig = field(default_factory=FedStrategyConfig)
    fed_speed: FedSpeedConfig = field(default_factory=FedSpeedConfig)
    fed_data: FedDataConfig = field(default_factory=FedDataConfig)
    model: FedModelConfig = field(default_factory=FedModelConfig)
    flower: FlowerDriverConfig = field(default_factory=FlowerDriverConfig)


def _check(cfg: FederatedConfig) -> None:
    if cfg.clients < 1:
        raise ValueError(f"clients must be >= 1, got {cfg.clients}")
    if cfg.rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {cfg.rounds}")
    if cfg.driver not in ("simulator", "flower"):
        raise ValueError(f"driver must be simulator or flower, got {cfg.driver!r}")
    bad = [c for c in cfg.crash_clients if not 0 <= c < cfg.clients]
    if bad:
        raise ValueError(f"crash_clients {bad} are not client ids 0..{cfg.clients - 1}")


@system_flow(name="federated", config=FederatedConfig,
             demo=["rounds=12", "clients=5", "fed_strategy.q_max=20", "fed_strategy.q_min=4",
                   "fed_strategy.local_steps=20"],
             summary_metric="top_accuracy", order=50)
def federated(cfg: FederatedConfig, tracker: Tracker) -> dict[str, float]:
    """Federated training under FedCompass / FedAvg / FedAsync / FedBuff; accuracy vs virtual time."""
    from tasks import federated as fed_tasks

    _check(cfg)
    fed_tasks.set_torch_threads(cfg.torch_threads)
    federation = fed_tasks.prepare_federation(cfg.fed_data, cfg.model, cfg.clients, cfg.seed)
    tracker.log_params({"data.client_sizes": federation.num_examples})

    def log_row(row: dict) -> None:
        tracker.log_metrics({"accuracy": row["accuracy"], "loss": row["loss"], "virtual_time": row["time"],
                             "aggregated_updates": row["aggregated_updates"],
                             "mean_staleness": row["mean_staleness"]}, step=row["version"])

    if cfg.driver == "simulator":
        result = _run_simulator(cfg, federation, log_row)
    else:
        result = fed_tasks.run_flower(cfg, federation, log_row)

    summary = {k: v for k, v in result.summary.items()}
    records = [r.__dict__ for r in result.records]
    tracker.log_dict(result.history, "federated/history.json")
    tracker.log_dict(records, "federated/aggregations.json")
    tracker.log_figure(fed_tasks.curve_figure(result.history, f"{cfg.fed_strategy.name} on {cfg.fed_data.name}"),
                       "federated/accuracy_vs_time.png")
    _log_model(cfg, federation, result.weights, tracker)
    return summary


def _run_simulator(cfg: FederatedConfig, federation, log_row):
    from components.federated.simulator import Simulator, VirtualClock
    from tasks import federated as fed_tasks

    clock = VirtualClock()
    scheduler = fed_tasks.build_scheduler(cfg.fed_strategy, cfg.clients, federation.num_examples,
                                          federation.initial_weights, clock, cfg.client_weighting)
    simulator = Simulator(
        scheduler, clock, fed_tasks.build_speeds(cfg.fed_speed, cfg.clients, cfg.seed),
        fed_tasks.FanOutTrainer(federation, cfg.lr, cfg.batch_size, cfg.torch_threads), federation.evaluate,
        seed=cfg.seed, time_budget=cfg.time_budget if cfg.time_budget is not None else math.inf,
        max_updates=cfg.rounds, target_accuracy=cfg.target_accuracy,
        crash_at={c: cfg.crash_at for c in cfg.crash_clients}, on_event=log_row)
    return simulator.run()


def _log_model(cfg: FederatedConfig, federation, weights: dict, tracker: Tracker) -> None:
    folder = cfg.work_path("federated", "model")
    np.savez(folder / "weights.npz", **weights)
    spec = federation.spec
    (folder / "model.json").write_text(json.dumps({"kind": spec.kind, "input_shape": list(spec.input_shape),
                                                   "n_classes": spec.n_classes, "width": spec.width,
                                                   "dataset": cfg.fed_data.name, "strategy": cfg.fed_strategy.name}))
    name = f"federated-{cfg.fed_data.name}-{spec.kind}" if cfg.register_model else None
    tracker.log_model_dir(folder, "model", registered_name=name)
