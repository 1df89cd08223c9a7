"""Prefect tasks of the `federated` flow: build the federation, run it (simulator or Flower), log the result.

`train_client` is the coarse unit that fans out: one client's local round (tens of SGD steps), mapped
over the jobs of one scheduling point with `train_client.map` on the flow's task runner (threads, or
Dask workers with runner=dask). It is module-level and takes only picklable values (numpy arrays, a
frozen ModelSpec), so Dask ships it to its workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE

from components.federated import task as fl_task
from components.federated.config import FedDataConfig, FederatedRunSettings, FedModelConfig
from components.federated.federation import Federation, build_federation, save_model, set_torch_threads, simulate
from components.federated.flower_driver import run_flower
from components.federated.plots import curve_figure
from components.federated.simulator import SimulationResult, TrainJob
from mlsys.tracking import Tracker


@task(name="train-client", task_run_name="client-{client}-round-{round_index}", cache_policy=NO_CACHE)
def train_client(
    client: int,
    round_index: int,
    weights: dict,
    x: np.ndarray,
    y: np.ndarray,
    steps: int,
    spec: fl_task.ModelSpec,
    lr: float,
    batch_size: int,
    seed: int,
    torch_threads: int = 1,
) -> dict:
    """One client's local round: `steps` SGD steps from the global `weights`; returns its update."""
    set_torch_threads(torch_threads)
    return fl_task.local_train(weights, x, y, steps, spec, lr=lr, batch_size=batch_size, seed=seed)


@task(name="prepare-federation", cache_policy=NO_CACHE)
def prepare_federation(
    data: FedDataConfig, model: FedModelConfig, n_clients: int, seed: int, torch_threads: int, tracker: Tracker
) -> Federation:
    """Load the dataset, partition it over the clients, build the model and its initial weights."""
    set_torch_threads(torch_threads)
    federation = build_federation(data, model, n_clients, seed)
    tracker.log_params({"data.client_sizes": federation.num_examples})
    return federation


def _row_logger(tracker: Tracker):
    def log_row(row: dict) -> None:
        metrics = {
            "accuracy": row["accuracy"],
            "loss": row["loss"],
            "virtual_time": row["time"],
            "aggregated_updates": row["aggregated_updates"],
            "mean_staleness": row["mean_staleness"],
        }
        tracker.log_metrics(metrics, step=row["version"])

    return log_row


@task(name="federated-run", cache_policy=NO_CACHE)
def run_federation(
    run: FederatedRunSettings, seed: int, federation: Federation, loopback_dir: Path, tracker: Tracker
) -> SimulationResult:
    """The configured scheduler on the configured driver; accuracy per aggregation goes to MLflow live.

    driver=simulator: virtual time, each scheduling point's local rounds as mapped `train_client` tasks;
    driver=flower: real Flower ClientApps (simulation engine, or a loopback deployment in `loopback_dir`).
    """
    if run.driver == "flower":
        return run_flower(run, seed, federation, loopback_dir, _row_logger(tracker))
    rounds = [0] * run.clients  # local rounds per client so far: names the task runs

    def train(jobs: Sequence[TrainJob]) -> list[dict]:
        round_index = []
        for job in jobs:
            round_index.append(rounds[job.client])
            rounds[job.client] += 1
        futures = train_client.map(
            client=[job.client for job in jobs],
            round_index=round_index,
            weights=[job.weights for job in jobs],
            x=[federation.client_data[job.client][0] for job in jobs],
            y=[federation.client_data[job.client][1] for job in jobs],
            steps=[job.steps for job in jobs],
            spec=unmapped(federation.spec),
            lr=unmapped(run.lr),
            batch_size=unmapped(run.batch_size),
            seed=[job.seed for job in jobs],
            torch_threads=unmapped(run.torch_threads),
        )
        return futures.result()

    return simulate(run, seed, federation, train, _row_logger(tracker))


@task(name="federated-log-result", cache_policy=NO_CACHE)
def log_result(
    run: FederatedRunSettings,
    federation: Federation,
    result: SimulationResult,
    model_dir: Path,
    register_model: bool,
    tracker: Tracker,
) -> dict[str, float]:
    """History, aggregations, the accuracy curve and the final model to MLflow; returns the summary."""
    strategy, dataset = run.fed_strategy.name, run.fed_data.name
    tracker.log_params({"fed_strategy.name": strategy, "fed_data.name": dataset, "fed_speed.kind": run.fed_speed.kind})
    if result.lost_clients:  # the run went on without them: say so beside the figures
        tracker.log_params({"lost_client_ids": ",".join(map(str, result.lost_clients))})
    tracker.log_dict(result.history, "federated/history.json")
    tracker.log_dict([r.__dict__ for r in result.records], "federated/aggregations.json")
    tracker.log_figure(curve_figure(result.history, f"{strategy} on {dataset}"), "federated/accuracy_vs_time.png")
    save_model(model_dir, result.weights, federation.spec, dataset, strategy)
    name = f"federated-{dataset}-{federation.spec.kind}" if register_model else None
    tracker.log_model_dir(model_dir, "model", registered_name=name)
    return dict(result.summary) | {"lost_clients": float(len(result.lost_clients))}
