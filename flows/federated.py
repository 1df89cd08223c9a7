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

from components.checks import ConfigError, at_least, in_range, one_of
from components.federated.aggregators import STALENESS_FUNCTIONS
from components.federated.partitions import PARTITIONS
from components.federated.schedulers import SCHEDULERS
from components.federated.speeds import GIVEN, SPEED_MODELS, check_step_times, read_step_times
from components.federated.task import DATASETS
from mlsys.flow import FlowConfig, system_flow
from mlsys.tracking import Tracker


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
    # FedAvg faults (Flower's semantics): a round ends at this many virtual seconds after it started with
    # the updates that arrived (None: 10 x local_steps x fed_speed.mean, set by the flow config); a round
    # with fewer than min_clients updates (capped at clients) fails the run, naming the lost clients
    # (Flower's min_fit_clients).
    round_timeout: Optional[float] = None
    min_clients: int = 2

    def __post_init__(self) -> None:
        one_of("fed_strategy.name", self.name, sorted(SCHEDULERS))
        in_range("fed_strategy.alpha", self.alpha, 1e-9, 1.0)
        one_of("fed_strategy.staleness", self.staleness, STALENESS_FUNCTIONS)
        at_least("fed_strategy.staleness_a", self.staleness_a, 0.0)
        at_least("fed_strategy.staleness_b", self.staleness_b, 0)
        at_least("fed_strategy.q_min", self.q_min, 1)
        at_least("fed_strategy.q_max", self.q_max, self.q_min)
        in_range("fed_strategy.speed_momentum", self.speed_momentum, 0.0, 1.0)
        at_least("fed_strategy.latest_time_factor", self.latest_time_factor, 1.0)
        at_least("fed_strategy.local_steps", self.local_steps, 1)
        at_least("fed_strategy.buffer_size", self.buffer_size, 1)
        if self.round_timeout is not None and not self.round_timeout > 0:
            raise ConfigError("fed_strategy.round_timeout", self.round_timeout, "must be > 0 virtual seconds or null")
        at_least("fed_strategy.min_clients", self.min_clients, 1)


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
    # kind=given: the user's own seconds per local step, one per client, as a list or a file (a JSON list,
    # or one number per line); the file is read when the config is built
    step_times: list[float] = field(default_factory=list)
    step_times_file: Optional[str] = None

    def __post_init__(self) -> None:
        one_of("fed_speed.kind", self.kind, (*SPEED_MODELS, GIVEN))
        if self.kind != GIVEN and (self.step_times or self.step_times_file):
            raise ConfigError("fed_speed.kind", self.kind, "step_times / step_times_file need fed_speed.kind=given")
        if self.kind == GIVEN and bool(self.step_times) == bool(self.step_times_file):
            raise ConfigError(
                "fed_speed.step_times",
                self.step_times,
                "kind=given takes exactly one of step_times (a list) or step_times_file",
            )
        if not self.mean > 0:
            raise ConfigError("fed_speed.mean", self.mean, "must be > 0 seconds per step")
        at_least("fed_speed.sigma_ratio", self.sigma_ratio, 0.0)
        at_least("fed_speed.jitter", self.jitter, 0.0)
        in_range("fed_speed.drift_fraction", self.drift_fraction, 0.0, 1.0)
        if not self.drift_factor > 0:
            raise ConfigError("fed_speed.drift_factor", self.drift_factor, "must be > 0")


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

    def __post_init__(self) -> None:
        one_of("fed_data.name", self.name, DATASETS)
        one_of("fed_data.partition", self.partition, PARTITIONS)
        if not 0 < self.test_fraction < 1:
            raise ConfigError("fed_data.test_fraction", self.test_fraction, "must be between 0 and 1 (exclusive)")
        at_least("fed_data.classes_per_client", self.classes_per_client, 1)
        for key in ("alpha", "alpha_clients", "alpha_classes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"fed_data.{key}", getattr(self, key), "must be > 0")


@dataclass
class FedModelConfig:
    kind: str = "cnn"  # cnn (with BatchNorm: buffer averaging is exercised) | mlp
    width: int = 16  # channels of the first conv layer (hidden = 4x width for the MLP)

    def __post_init__(self) -> None:
        one_of("model.kind", self.kind, ("cnn", "mlp"))
        at_least("model.width", self.width, 1)


@dataclass
class FlowerDriverConfig:
    """driver=flower: the same scheduler over real Flower ClientApps."""

    backend: str = "simulation"  # simulation (Flower's Ray engine) | deployment (SuperLink+SuperNodes, loopback)
    seconds_per_virtual_second: float = 0.002  # emulated speed: a client sleeps steps*step_time*this
    timeout: float = 600.0  # wall-clock seconds before the server loop gives up
    # A FedAvg round never times out sooner than this many wall seconds: real training, messaging and
    # process start-up add to the emulated speed, so a virtual round_timeout alone would cut honest clients.
    round_timeout_floor: float = 60.0

    def __post_init__(self) -> None:
        one_of("flower.backend", self.backend, ("simulation", "deployment"))
        at_least("flower.round_timeout_floor", self.round_timeout_floor, 0.0)
        if not self.seconds_per_virtual_second > 0:
            raise ConfigError("flower.seconds_per_virtual_second", self.seconds_per_virtual_second, "must be > 0")
        if not self.timeout > 0:
            raise ConfigError("flower.timeout", self.timeout, "must be > 0 seconds")


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

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self)
        speed = self.fed_speed
        if speed.kind == GIVEN:  # one step time per client, checked now (file, line, value)
            speed.step_times = (
                read_step_times(speed.step_times_file, self.clients)
                if speed.step_times_file
                else check_step_times(list(speed.step_times), self.clients, "fed_speed.step_times")
            )
        if self.fed_strategy.round_timeout is None:  # generous: an honest round takes local_steps x its speed
            self.fed_strategy.round_timeout = 10.0 * self.fed_strategy.local_steps * self.fed_speed.mean


def _check(cfg: FederatedConfig) -> None:
    at_least("clients", cfg.clients, 1)
    at_least("rounds", cfg.rounds, 1)
    one_of("driver", cfg.driver, ("simulator", "flower"))
    bad = [c for c in cfg.crash_clients if not 0 <= c < cfg.clients]
    if bad:
        raise ConfigError("crash_clients", cfg.crash_clients, f"{bad} are not client ids 0..{cfg.clients - 1}")
    at_least("crash_at", cfg.crash_at, 0.0)
    if cfg.time_budget is not None and not cfg.time_budget > 0:
        raise ConfigError("time_budget", cfg.time_budget, "must be > 0 virtual seconds or null")
    in_range("target_accuracy", cfg.target_accuracy, 0.0, 1.0)
    if not cfg.lr > 0:
        raise ConfigError("lr", cfg.lr, "must be > 0")
    at_least("batch_size", cfg.batch_size, 1)
    one_of("client_weighting", cfg.client_weighting, ("equal", "samples"))
    at_least("torch_threads", cfg.torch_threads, 1)


@system_flow(
    name="federated",
    config=FederatedConfig,
    summary_metric="top_accuracy",
    order=50,
)
def federated(cfg: FederatedConfig, tracker: Tracker) -> dict[str, float]:
    """Federated training under FedCompass / FedAvg / FedAsync / FedBuff; accuracy vs virtual time."""
    from tasks import federated as fed_tasks

    fed_tasks.set_torch_threads(cfg.torch_threads)
    federation = fed_tasks.prepare_federation(cfg.fed_data, cfg.model, cfg.clients, cfg.seed)
    tracker.log_params({"data.client_sizes": federation.num_examples})

    def log_row(row: dict) -> None:
        tracker.log_metrics(
            {
                "accuracy": row["accuracy"],
                "loss": row["loss"],
                "virtual_time": row["time"],
                "aggregated_updates": row["aggregated_updates"],
                "mean_staleness": row["mean_staleness"],
            },
            step=row["version"],
        )

    if cfg.driver == "simulator":
        result = _run_simulator(cfg, federation, log_row)
    else:
        result = fed_tasks.run_flower(cfg, federation, log_row)

    summary = {k: v for k, v in result.summary.items()}
    summary["lost_clients"] = float(len(result.lost_clients))
    if result.lost_clients:  # the run went on without them: say so beside the figures
        tracker.log_params({"lost_client_ids": ",".join(map(str, result.lost_clients))})
    records = [r.__dict__ for r in result.records]
    tracker.log_dict(result.history, "federated/history.json")
    tracker.log_dict(records, "federated/aggregations.json")
    tracker.log_figure(
        fed_tasks.curve_figure(result.history, f"{cfg.fed_strategy.name} on {cfg.fed_data.name}"),
        "federated/accuracy_vs_time.png",
    )
    _log_model(cfg, federation, result.weights, tracker)
    return summary


def _run_simulator(cfg: FederatedConfig, federation, log_row):
    from components.federated.simulator import Simulator, VirtualClock
    from tasks import federated as fed_tasks

    clock = VirtualClock()
    scheduler = fed_tasks.build_scheduler(
        cfg.fed_strategy, cfg.clients, federation.num_examples, federation.initial_weights, clock, cfg.client_weighting
    )
    simulator = Simulator(
        scheduler,
        clock,
        fed_tasks.build_speeds(cfg.fed_speed, cfg.clients, cfg.seed),
        fed_tasks.FanOutTrainer(federation, cfg.lr, cfg.batch_size, cfg.torch_threads),
        federation.evaluate,
        seed=cfg.seed,
        time_budget=cfg.time_budget if cfg.time_budget is not None else math.inf,
        max_updates=cfg.rounds,
        target_accuracy=cfg.target_accuracy,
        crash_at={c: cfg.crash_at for c in cfg.crash_clients},
        on_event=log_row,
    )
    return simulator.run()


def _log_model(cfg: FederatedConfig, federation, weights: dict, tracker: Tracker) -> None:
    folder = cfg.work_path("federated", "model")
    np.savez(folder / "weights.npz", **weights)
    spec = federation.spec
    (folder / "model.json").write_text(
        json.dumps(
            {
                "kind": spec.kind,
                "input_shape": list(spec.input_shape),
                "n_classes": spec.n_classes,
                "width": spec.width,
                "dataset": cfg.fed_data.name,
                "strategy": cfg.fed_strategy.name,
            }
        )
    )
    name = f"federated-{cfg.fed_data.name}-{spec.kind}" if cfg.register_model else None
    tracker.log_model_dir(folder, "model", registered_name=name)
