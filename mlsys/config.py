"""The fields every flow's config has: where fanned-out tasks run, where the run is tracked, and
the run's seed, device and work folder. Each default is written here once; conf/runner/*.yaml and
conf/tracking/*.yaml state only the `_target_` or the values an option changes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from components.checks import ConfigError, writable_folder
from mlsys.environment import PROJECT_ROOT


@dataclass
class RunnerConfig:
    """Where fanned-out tasks run: conf/runner/local.yaml (threads) or conf/runner/dask.yaml."""

    _target_: str = "mlsys.runners.thread_runner"  # the factory of the task runner (runner=local|dask picks it)
    max_workers: int = 4  # threads for runner=local; tasks are I/O- or torch-bound, 2 cores here
    address: Optional[str] = None  # runner=dask: tcp://host:port of an existing scheduler
    n_workers: int = 2  # runner=dask LocalCluster: one worker process per core of this machine
    threads_per_worker: int = 1  # runner=dask LocalCluster: torch work already uses the worker's cores
    processes: bool = True  # runner=dask LocalCluster: worker processes (False: threads in this process)
    dashboard: bool = True  # runner=dask LocalCluster: the Dask dashboard on a free 127.0.0.1 port (link logged)


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: SQLite store + artifacts under the project's mlflow/
    experiment: Optional[str] = None  # None: the flow's name
    run_name: Optional[str] = None  # None: the flow and what its config changes, e.g. `federated rounds=2`
    parent_run_id: Optional[str] = None  # set by `suite` and by sweeps: nests this run
    ui: str = "http://127.0.0.1:5000"  # base of the run links printed at the end
    promote: bool = True  # move a registered model's @serving alias when it passes the flow's quality check


@dataclass
class FlowConfig:
    """Fields every flow has; a flow's own config subclasses this."""

    runner: RunnerConfig = field(default_factory=RunnerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0  # the random seed of the run (data, initialisation, sampling)
    device: str = "auto"  # auto: CUDA when present, else CPU
    work_dir: str = "data"  # data, checkpoints and caches; relative paths are under the project

    def __post_init__(self) -> None:
        """Checks every flow shares; a flow's own __post_init__ calls this through super()."""
        work_dir = Path(self.work_dir)
        writable_folder("work_dir", work_dir if work_dir.is_absolute() else PROJECT_ROOT / work_dir)
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", self.device)):
            raise ConfigError("device", self.device, "must be auto, cpu, cuda or cuda:<index>")

    def work_path(self, *parts: str) -> Path:
        base = Path(self.work_dir)
        path = (base if base.is_absolute() else PROJECT_ROOT / base).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch  # noqa: PLC0415  (start-up cost: `mlsys list`, `--help` and completion need no torch)

        return "cuda" if torch.cuda.is_available() else "cpu"
