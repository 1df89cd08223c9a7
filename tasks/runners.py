"""Task runners chosen by `runner=` and the one helper flows use to fan tasks out on them.

`runner=local` runs tasks on threads in the flow's process; `runner=dask` sends them to a Dask
cluster (a LocalCluster that lives for the fan-out, or the cluster at `runner.address`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from prefect import Task
from prefect.task_runners import ThreadPoolTaskRunner


def thread_runner(max_workers: int = 4, address: str | None = None, n_workers: int = 2,
                  threads_per_worker: int = 1, processes: bool = True) -> ThreadPoolTaskRunner:
    """Threads in this process (`max_workers` of them); the Dask-only fields are ignored."""
    return ThreadPoolTaskRunner(max_workers=max_workers)


def dask_runner(max_workers: int = 4, address: str | None = None, n_workers: int = 2,
                threads_per_worker: int = 1, processes: bool = True):
    """A prefect-dask runner: an existing cluster at `address`, else a LocalCluster for the run."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    return DaskTaskRunner(cluster_kwargs={
        "n_workers": n_workers,
        "threads_per_worker": threads_per_worker,
        "processes": processes,
        "dashboard_address": None,  # no listening port beyond the scheduler's own
    })


def build_task_runner(runner_cfg: Any):
    """Instantiate the runner that `runner_cfg` (a RunnerConfig with `_target_`) names."""
    from hydra.utils import instantiate

    return instantiate(runner_cfg)


def fan_out(task: Task | Callable, calls: Sequence[dict]) -> list:
    """Run `task(**kwargs)` for every kwargs in `calls` in parallel on the flow's task runner.

    The runner is the one `runner=` configured (`flows.platform.run` sets it on the flow): threads
    in this process, or Dask workers. Results come back in the order of `calls`; the first failure
    raises.
    """
    if not isinstance(task, Task):
        raise TypeError(f"fan_out needs a Prefect @task, got {task!r}")
    futures = [task.submit(**kwargs) for kwargs in calls]
    return [future.result() for future in futures]
