"""Prefect tasks of the `federated` flow: build the federation, train one client's local round.

`train_client` is the coarse unit that fans out: one client's local round (tens of SGD steps). It is
module-level and takes only picklable values (numpy arrays, a frozen ModelSpec), so `runner=dask`
ships it to Dask workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from components.federated import task as fl_task
from components.federated.federation import (  # noqa: F401 - build_scheduler, build_speeds: used by the flow
    Federation,
    build_federation,
    build_scheduler,
    build_speeds,
    set_torch_threads,
)
from components.federated.simulator import TrainJob
from mlsys.runners import fan_out


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
            calls.append(
                dict(
                    client=job.client,
                    round_index=k,
                    weights=job.weights,
                    x=x,
                    y=y,
                    steps=job.steps,
                    spec=self.federation.spec,
                    lr=self.lr,
                    batch_size=self.batch_size,
                    seed=job.seed,
                    torch_threads=self.torch_threads,
                )
            )
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
    from dataclasses import asdict, replace

    from components.federated import flower_driver

    if cfg.flower.backend not in ("simulation", "deployment"):
        raise ValueError(f"flower.backend must be simulation or deployment, got {cfg.flower.backend!r}")
    clock = flower_driver.VirtualWallClock(cfg.flower.seconds_per_virtual_second)
    strategy = replace(cfg.fed_strategy)  # the round timeout in virtual seconds, at least the wall floor
    if strategy.round_timeout is not None:
        strategy.round_timeout = max(
            strategy.round_timeout, cfg.flower.round_timeout_floor / cfg.flower.seconds_per_virtual_second
        )
    scheduler = build_scheduler(
        strategy, cfg.clients, federation.num_examples, federation.initial_weights, clock, cfg.client_weighting
    )
    settings = flower_driver.FederationSettings(
        data=asdict(cfg.fed_data),
        model=asdict(cfg.model),
        speed=asdict(cfg.fed_speed),
        n_clients=cfg.clients,
        seed=cfg.seed,
        lr=cfg.lr,
        batch_size=cfg.batch_size,
        seconds_per_virtual_second=cfg.flower.seconds_per_virtual_second,
        crash_clients=list(cfg.crash_clients),
        crash_at=cfg.crash_at,
    )
    if cfg.flower.backend == "deployment":
        return _run_loopback_deployment(cfg, settings, strategy, on_event)
    run = flower_driver.FlowerRun(
        scheduler,
        settings,
        federation.evaluate,
        max_updates=cfg.rounds,
        target_accuracy=cfg.target_accuracy,
        timeout=cfg.flower.timeout,
        on_event=on_event,
    )
    return flower_driver.run_in_simulation(run)


def _run_loopback_deployment(cfg: Any, settings, strategy, on_event) -> Any:
    """flower.backend=deployment: SuperLink + one SuperNode per client on 127.0.0.1 (stopped afterwards), in a
    fresh folder under work_dir/federated/loopback/ per run; history rows are logged as they arrive."""
    import json
    import math
    from dataclasses import asdict

    from components.federated.loopback import run_on_loopback
    from components.federated.schedulers import AggregationRecord
    from components.federated.simulator import SimulationResult

    out = run_on_loopback(
        settings.to_json(),
        json.dumps(asdict(strategy)),
        cfg.rounds,
        cfg.clients,
        cfg.target_accuracy,
        cfg.client_weighting,
        cfg.flower.timeout,
        workdir=str(cfg.work_path("federated", "loopback")),
        on_event=on_event,
    )
    summary = {k: (math.inf if v is None else v) for k, v in out["summary"].items()}
    records = [AggregationRecord(**r) for r in out["records"]]
    return SimulationResult(out["history"], records, out["weights"], summary, 0, out["lost"], out["lost_clients"])
