"""Building a run from plain settings: the federation (data split, model), speeds, the scheduler.

Shared by the flow's tasks, the benchmark and the Flower apps (which rebuild a run from their
run config). Settings objects only need the attributes named (config dataclasses, SimpleNamespace).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from components.federated import aggregators as agg
from components.federated import partitions, speeds
from components.federated import task as fl_task
from components.federated.schedulers import SCHEDULERS, Scheduler


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
        data_cfg.partition,
        dataset.y_train,
        n_clients,
        seed,
        classes_per_client=data_cfg.classes_per_client,
        alpha=data_cfg.alpha,
        alpha_clients=data_cfg.alpha_clients,
        alpha_classes=data_cfg.alpha_classes,
    )
    spec = fl_task.ModelSpec(model_cfg.kind, dataset.input_shape, dataset.n_classes, model_cfg.width)
    client_data = [(dataset.x_train[p], dataset.y_train[p]) for p in parts]
    return Federation(dataset, client_data, spec, fl_task.initial_weights(spec, seed))


def build_speeds(speed_cfg: Any, n_clients: int, seed: int) -> speeds.ClientSpeeds:
    return speeds.make_speeds(
        speed_cfg.kind,
        n_clients,
        speed_cfg.mean,
        seed,
        sigma_ratio=speed_cfg.sigma_ratio,
        jitter=speed_cfg.jitter,
        drift_time=speed_cfg.drift_time,
        drift_fraction=speed_cfg.drift_fraction,
        drift_factor=speed_cfg.drift_factor,
        step_times=getattr(speed_cfg, "step_times", None),
    )


def build_scheduler(
    strategy_cfg: Any,
    n_clients: int,
    num_examples: Sequence[int],
    initial_weights: dict,
    clock,
    client_weighting: str = "equal",
) -> Scheduler:
    """The scheduler `strategy_cfg.name` names, with its aggregator and the hyperparameters it takes."""
    if strategy_cfg.name not in SCHEDULERS:
        raise ValueError(f"unknown strategy {strategy_cfg.name!r}; choose one of {sorted(SCHEDULERS)}")
    cls = SCHEDULERS[strategy_cfg.name]
    if strategy_cfg.name == "fedavg":
        aggregator = agg.FedAvgAggregator()
    else:
        aggregator_cls = {
            "fedasync": agg.FedAsyncAggregator,
            "fedbuff": agg.FedBuffAggregator,
            "fedcompass": agg.FedCompassAggregator,
        }[strategy_cfg.name]
        aggregator = aggregator_cls(
            agg.client_weights(num_examples, client_weighting),
            alpha=strategy_cfg.alpha,
            staleness_fn=agg.make_staleness_fn(
                strategy_cfg.staleness, strategy_cfg.staleness_a, strategy_cfg.staleness_b
            ),
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {
        "self",
        "n_clients",
        "aggregator",
        "initial_weights",
        "clock",
    }
    kwargs = {k: getattr(strategy_cfg, k) for k in accepted}
    return cls(n_clients, aggregator, initial_weights, clock, **kwargs)
