"""Task runners chosen by `runner=` and the one helper flows use to fan tasks out on them.

`runner=local` runs tasks on threads in the flow's process; `runner=dask` sends them to a Dask
cluster (a LocalCluster that lives for the flow run, or the cluster at `runner.address`).

A LocalCluster's worker processes talk to the same Prefect API as the flow: with no
`PREFECT_API_URL` each worker would otherwise start its own temporary Prefect server (15-27 s
each here), so the runner passes the URL of the one the flow run already uses.
"""

from __future__ import annotations

from typing import Any

from hydra.utils import instantiate
from prefect.context import FlowRunContext
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import ThreadPoolTaskRunner

from mlsys.config import RunnerConfig


def thread_runner(**fields: Any) -> ThreadPoolTaskRunner:
    """Threads in this process (`runner.max_workers` of them); the Dask-only fields are ignored.

    Both factories take RunnerConfig's fields (hydra passes all of them) and fill the rest from its
    defaults, so each default is written once, in mlsys.config.
    """
    return ThreadPoolTaskRunner(max_workers=RunnerConfig(**fields).max_workers)


def current_api_url() -> str | None:
    """The Prefect API this process talks to: PREFECT_API_URL, else the flow run's temporary server."""
    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    context = FlowRunContext.get()
    client = getattr(context, "client", None)
    return str(client.api_url).rstrip("/") if client is not None else None


def dask_runner(**fields: Any):
    """A prefect-dask runner: an existing cluster at `runner.address`, else a LocalCluster for the run."""
    # Optional heavy dependencies (prefect-dask and distributed: ~2 s), imported only for runner=dask.
    from prefect_dask import DaskTaskRunner  # noqa: PLC0415  (optional heavy dependency, see above)

    from mlsys.dask_cluster import GracefulLocalCluster  # noqa: PLC0415  (optional heavy dependency, see above)

    cfg = RunnerConfig(**fields)
    if cfg.address:
        return DaskTaskRunner(address=cfg.address)
    cluster_kwargs: dict[str, Any] = {
        "n_workers": cfg.n_workers,
        "threads_per_worker": cfg.threads_per_worker,
        "processes": cfg.processes,
        # bokeh serves the dashboard; prefect-dask logs its link when the first task is sent
        "dashboard_address": "127.0.0.1:0" if cfg.dashboard else None,
        "host": "127.0.0.1",
    }
    api_url = current_api_url()
    if cfg.processes and api_url:
        cluster_kwargs["env"] = {"PREFECT_API_URL": api_url}  # workers reuse this run's Prefect server
    return DaskTaskRunner(cluster_class=GracefulLocalCluster, cluster_kwargs=cluster_kwargs)


def build_task_runner(runner_cfg: RunnerConfig):
    """Instantiate the runner that `runner_cfg` (a RunnerConfig with `_target_`) names."""
    return instantiate(runner_cfg)
