"""Building a run from its config dataclasses: the federation (data split, model), speeds, the scheduler,
the simulated run, the saved model.

Shared by the flow's tasks, the benchmark and the Flower apps (which rebuild a run from their run config).
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from components.federated import aggregators as agg
from components.federated import partitions, speeds
from components.federated import task as fl_task
from components.federated.config import (
    FedDataConfig,
    FederatedRunSettings,
    FedModelConfig,
    FedSpeedConfig,
    FedStrategyConfig,
)
from components.federated.schedulers import Scheduler
from components.federated.simulator import SimulationResult, Simulator, Trainer, VirtualClock


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
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def build_federation(data_cfg: FedDataConfig, model_cfg: FedModelConfig, n_clients: int, seed: int) -> Federation:
    """Load the dataset, partition it over the clients, build the model spec and its initial weights."""
    dataset = data_cfg.loader(seed=seed, test_fraction=data_cfg.test_fraction)
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


def build_speeds(speed_cfg: FedSpeedConfig, n_clients: int, seed: int) -> speeds.ClientSpeeds:
    return speeds.make_speeds(
        speed_cfg.sampler,
        n_clients,
        speed_cfg.mean,
        seed,
        sigma_ratio=speed_cfg.sigma_ratio,
        jitter=speed_cfg.jitter,
        drift_time=speed_cfg.drift_time,
        drift_fraction=speed_cfg.drift_fraction,
        drift_factor=speed_cfg.drift_factor,
        step_times=speed_cfg.step_times,
    )


def build_scheduler(
    strategy_cfg: FedStrategyConfig,
    n_clients: int,
    num_examples: Sequence[int],
    initial_weights: dict,
    clock,
    client_weighting: str = "equal",
) -> Scheduler:
    """The scheduler class `strategy_cfg._target_` names, with its server step and the hyperparameters it takes."""
    cls = strategy_cfg.scheduler_class
    aggregator = cls.make_aggregator(
        agg.client_weights(num_examples, client_weighting),
        strategy_cfg.alpha,
        agg.make_staleness_fn(strategy_cfg.staleness, strategy_cfg.staleness_a, strategy_cfg.staleness_b),
    )
    parameters = inspect.signature(cls.__init__).parameters.values()
    accepted = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]  # after *runtime: its hyperparameters
    return cls(n_clients, aggregator, initial_weights, clock, **{k: getattr(strategy_cfg, k) for k in accepted})


def simulate(
    run: FederatedRunSettings,
    seed: int,
    federation: Federation,
    trainer: Trainer,
    on_event: Optional[Callable[[dict], None]] = None,
) -> SimulationResult:
    """driver=simulator: the configured scheduler in virtual time; `trainer` trains each batch of jobs."""
    clock = VirtualClock()
    scheduler = build_scheduler(
        run.fed_strategy, run.clients, federation.num_examples, federation.initial_weights, clock, run.client_weighting
    )
    simulator = Simulator(
        scheduler,
        clock,
        build_speeds(run.fed_speed, run.clients, seed),
        trainer,
        federation.evaluate,
        seed=seed,
        time_budget=run.time_budget if run.time_budget is not None else math.inf,
        max_updates=run.rounds,
        target_accuracy=run.target_accuracy,
        crash_at={c: run.crash_at for c in run.crash_clients},
        on_event=on_event,
    )
    return simulator.run()


def save_model(folder: Path, weights: dict, spec: fl_task.ModelSpec, dataset: str, strategy: str) -> Path:
    """The global model as `weights.npz` + `model.json` (architecture, dataset, strategy) in `folder`."""
    np.savez(folder / "weights.npz", **weights)
    description = {
        "kind": spec.kind,
        "input_shape": list(spec.input_shape),
        "n_classes": spec.n_classes,
        "width": spec.width,
        "dataset": dataset,
        "strategy": strategy,
    }
    (folder / "model.json").write_text(json.dumps(description))
    return folder
