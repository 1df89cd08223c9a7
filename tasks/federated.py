"""Prefect tasks of the `federated` flow: build the federation, train one client's local round.

`train_client` is the coarse unit that fans out: one client's local round (tens of SGD steps). It is
module-level and takes only picklable values (numpy arrays, a frozen ModelSpec), so `runner=dask`
ships it to Dask workers.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.federated import aggregators as agg
from components.federated import partitions, speeds
from components.federated import task as fl_task
from components.federated.schedulers import SCHEDULERS, Scheduler
from components.federated.simulator import TrainJob
from tasks.runners import fan_out


@dataclass
class Federation:
    """The data side of a run: test set, one (x, y) per client, the model and its initial weights."""

    dataset: fl_task.Dataset
    client_data: list[tuple[np.ndarray, np.ndarray]]
    spec: fl_task.ModelSpec
    initial_weights: dict

    @property
    def num_examples(self) -> list[int]:
        return [len(y) for _, y in self.client_data]

    def evaluate(self, weights: dict) -> dict[str, float]:
        loss, accuracy = fl_task.evaluate(weights, self.dataset.x_test, self.dataset.y_test, self.spec)
        return {"accuracy": accuracy, "loss": loss}


def set_torch_threads(threads: int) -> None:
    """Clients run in parallel as tasks; each uses `threads` intra-op threads (1: the 2-core machine
    is shared, and oversubscribed torch threads are ~20x slower here)."""
    import torch

    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def build_federation(data_cfg: Any, model_cfg: Any, n_clients: int, seed: int) -> Federation:
    dataset = fl_task.load_dataset(data_cfg.name, seed=seed, test_fraction=data_cfg.test_fraction)
    parts = partitions.make_partition(
        data_cfg.partition, dataset.y_train, n_clients, seed,
        classes_per_client=data_cfg.classes_per_client, alpha=data_cfg.alpha,
        alpha_clients=data_cfg.alpha_clients, alpha_classes=data_cfg.alpha_classes)
    spec = fl_task.ModelSpec(model_cfg.kind, dataset.input_shape, dataset.n_classes, model_cfg.width)
    client_data = [(dataset.x_train[p], dataset.y_train[p]) for p in parts]
    return Federation(dataset, client_data, spec, fl_task.initial_weights(spec, seed))


def build_speeds(speed_cfg: Any, n_clients: int, seed: int) -> speeds.ClientSpeeds:
    return speeds.make_speeds(speed_cfg.kind, n_clients, speed_cfg.mean, seed, sigma_ratio=speed_cfg.sigma_ratio,
                              jitter=speed_cfg.jitter, drift_time=speed_cfg.drift_time,
                              drift_fraction=speed_cfg.drift_fraction, drift_factor=speed_cfg.drift_factor)


def build_scheduler(strategy_cfg: Any, n_clients: int, num_examples: Sequence[int], initial_weights: dict,
                    clock, client_weighting: str = "equal") -> Scheduler:
    """The scheduler `strategy_cfg.name` names, with its aggregator and the hyperparameters it takes."""
    if strategy_cfg.name not in SCHEDULERS:
        raise ValueError(f"unknown strategy {strategy_cfg.name!r}; choose one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[strategy_cfg.name]
    if strategy_cfg.name == "fedavg":
        aggregator = agg.FedAvgAggregator()
    else:
        aggregator_cls = {"fedasync": agg.FedAsyncAggregator, "fedbuff": agg.FedBuffAggregator,
                          "fedcompass": agg.FedCompassAggregator}[strategy_cfg.name]
        aggregator = aggregator_cls(
            agg.client_weights(num_examples, client_weighting), alpha=strategy_cfg.alpha,
            staleness_fn=agg.make_staleness_fn(strategy_cfg.staleness, strategy_cfg.staleness_a, strategy_cfg.staleness_b))
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "n_clients", "aggregator",
                                                                     "initial_weights", "clock"}
    kwargs = {k: getattr(strategy_cfg, k) for k in accepted}
    return cls(n_clients, aggregator, initial_weights, clock, **kwargs)


@task(name="train-client", task_run_name="client-{client}-round-{round_index}", cache_policy=NO_CACHE)
def train_client(client: int, round_index: int, weights: dict, x: np.ndarray, y: np.ndarray, steps: int,
                 spec: fl_task.ModelSpec, lr: float, batch_size: int, seed: int, torch_threads: int = 1) -> dict:
    """One client's local round: `steps` SGD steps from the global `weights`; returns its update."""
    set_torch_threads(torch_threads)
    return fl_task.local_train(weights, x, y, steps, spec, lr=lr, batch_size=batch_size, seed=seed)


class FanOutTrainer:
    """The simulator's trainer inside a flow: the jobs of one scheduling point train in parallel as
    `train_client` tasks on the flow's task runner (threads, or Dask workers with runner=dask)."""

    def __init__(self, federation: Federation, lr: float, batch_size: int, torch_threads: int = 1):
        self.federation = federation
        self.lr, self.batch_size, self.torch_threads = lr, batch_size, torch_threads
        self._rounds: dict[int, int] = {}

    def __call__(self, jobs: Sequence[TrainJob]) -> list[dict]:
        calls = []
        for job in jobs:
            x, y = self.federation.client_data[job.client]
            k = self._rounds.get(job.client, 0)
            self._rounds[job.client] = k + 1
            calls.append(dict(client=job.client, round_index=k, weights=job.weights, x=x, y=y, steps=job.steps,
                              spec=self.federation.spec, lr=self.lr, batch_size=self.batch_size, seed=job.seed,
                              torch_threads=self.torch_threads))
        return fan_out(train_client, calls)


@task(name="prepare-federation", cache_policy=NO_CACHE)
def prepare_federation(data_cfg: Any, model_cfg: Any, n_clients: int, seed: int) -> Federation:
    """Load the dataset, partition it over the clients, build the model and its initial weights."""
    return build_federation(data_cfg, model_cfg, n_clients, seed)


def curve_figure(history: Sequence[dict], title: str):
    """Accuracy against (virtual) time, one line per run name in `history` rows' "run" key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    runs: dict[str, list[dict]] = {}
    for row in history:
        runs.setdefault(row.get("run", "global model"), []).append(row)
    for name, rows in runs.items():
        ax.plot([r["time"] for r in rows], [r["accuracy"] for r in rows], label=name)
    ax.set_xlabel("time (virtual seconds)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def run_flower(cfg: Any, federation: Federation, on_event) -> Any:
    """driver=flower: the configured scheduler over real Flower ClientApps (simulation engine)."""
    from dataclasses import asdict

    from components.federated import flower_driver

    if cfg.flower.backend != "simulation":
        raise ValueError(f"flower.backend={cfg.flower.backend!r} is not supported by the flow; use simulation "
                         "(SuperLink + SuperNodes on loopback: see docs/flows/federated.md)")
    clock = flower_driver.VirtualWallClock(cfg.flower.seconds_per_virtual_second)
    scheduler = build_scheduler(cfg.fed_strategy, cfg.clients, federation.num_examples,
                                federation.initial_weights, clock, cfg.client_weighting)
    settings = flower_driver.FederationSettings(
        data=asdict(cfg.fed_data), model=asdict(cfg.model), speed=asdict(cfg.fed_speed), n_clients=cfg.clients,
        seed=cfg.seed, lr=cfg.lr, batch_size=cfg.batch_size,
        seconds_per_virtual_second=cfg.flower.seconds_per_virtual_second,
        crash_clients=list(cfg.crash_clients), crash_at=cfg.crash_at)
    run = flower_driver.FlowerRun(scheduler, settings, federation.evaluate, max_updates=cfg.rounds,
                                  target_accuracy=cfg.target_accuracy, timeout=cfg.flower.timeout, on_event=on_event)
    return flower_driver.run_in_simulation(run)
