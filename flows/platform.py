"""The shared path every flow takes: Hydra composition -> typed config -> Prefect flow -> MLflow run.

A system flow is a plain function `body(cfg, tracker) -> dict[str, float]` that orchestrates tasks,
declared with `@system_flow(...)`. The decorator

- registers the flow's config dataclass as the Hydra schema `<name>_schema`, so that a wrong key or
  type in `conf/<name>.yaml` or in an override fails at composition with the key named;
- wraps the body in a Prefect flow that opens the MLflow run (flattened config as params, tagged
  with the Prefect flow-run id, nested under `tracking.parent_run_id` when given) and closes it as
  FINISHED or FAILED;
- makes a deployment entry flow of the same name taking `overrides: list[str]`, so
  `prefect deployment run '<name>/default' --param overrides='["a=1"]'` composes the same config
  as `mlsys run <name> a=1`.
"""
from __future__ import annotations

import importlib
import pkgutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from prefect import Flow, flow, get_run_logger

from tasks.environment import PROJECT_ROOT
from tasks.runners import build_task_runner
from tasks.tracking import Tracker, close_run, open_run

CONF_DIR = PROJECT_ROOT / "conf"


@dataclass
class RunnerConfig:
    """Where fanned-out tasks run: conf/runner/local.yaml (threads) or conf/runner/dask.yaml."""

    _target_: str = "tasks.runners.thread_runner"
    max_workers: int = 4  # threads for runner=local; tasks are I/O- or torch-bound, 2 cores here
    address: Optional[str] = None  # runner=dask: tcp://host:port of an existing scheduler
    n_workers: int = 2  # runner=dask LocalCluster: one worker process per core of this machine
    threads_per_worker: int = 1
    processes: bool = True


@dataclass
class TrackingConfig:
    uri: Optional[str] = None  # None: SQLite store + artifacts under the project's mlflow/
    experiment: Optional[str] = None  # None: the flow's name
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # set by `suite` and by sweeps: nests this run
    ui: str = "http://127.0.0.1:5000"  # base of the run links printed at the end


@dataclass
class FlowConfig:
    """Fields every flow has; a flow's own config subclasses this."""

    runner: RunnerConfig = field(default_factory=RunnerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    work_dir: str = "data"  # data, checkpoints and caches; relative paths are under the project

    def work_path(self, *parts: str) -> Path:
        base = Path(self.work_dir)
        path = (base if base.is_absolute() else PROJECT_ROOT / base).joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class FlowSpec:
    name: str
    config_cls: type
    body: Callable[[Any, Tracker], dict]
    demo_overrides: list[str]
    summary_metric: Optional[str]
    order: int
    flow: Flow  # takes a typed config
    entry: Flow  # takes Hydra override strings (deployments)


REGISTRY: dict[str, FlowSpec] = {}
_PLATFORM_MODULES = {"platform", "cli", "entries", "__main__"}
_compose_lock = threading.Lock()


def system_flow(name: str, config: type, demo: Sequence[str] = (), summary_metric: str | None = None,
                order: int = 100, description: str | None = None):
    """Declare `body(cfg, tracker) -> metrics` as the Prefect flow `name` configured by conf/<name>.yaml."""
    if not issubclass(config, FlowConfig):
        raise TypeError(f"{config.__name__} must subclass FlowConfig")

    def decorate(body: Callable[[Any, Tracker], dict]) -> Flow:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name=f"{name}_schema", node=config)
        doc = description or (body.__doc__ or "").strip().split("\n")[0]

        @flow(name=name, description=doc, validate_parameters=False, log_prints=True)
        def typed_flow(cfg: Any) -> dict:
            return _run_tracked(REGISTRY[name], cfg)

        def entry_fn(overrides: Optional[list[str]] = None) -> dict:
            return run(compose(name, overrides or []))

        # Deployments load their entrypoint by module path: `flows.entries.<name>` (see entries.py).
        entry_fn.__module__ = "flows.entries"
        entry_fn.__name__ = entry_fn.__qualname__ = name
        entry = flow(entry_fn, name=name, description=f"{doc} (from Hydra overrides)", log_prints=True)
        REGISTRY[name] = FlowSpec(name, config, body, list(demo), summary_metric, order, typed_flow, entry)
        return typed_flow

    return decorate


def discover_flows() -> dict[str, FlowSpec]:
    """Import every flow module in this package so its @system_flow registers."""
    package = importlib.import_module("flows")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _PLATFORM_MODULES and not module.name.startswith("_"):
            importlib.import_module(f"flows.{module.name}")
    return REGISTRY


def get_spec(name: str) -> FlowSpec:
    discover_flows()
    if name not in REGISTRY:
        raise KeyError(f"unknown flow {name!r}; flows: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def to_typed(cfg: Any) -> FlowConfig:
    from omegaconf import OmegaConf

    return OmegaConf.to_object(cfg)


def compose(name: str, overrides: Sequence[str] = ()) -> FlowConfig:
    """Compose conf/<name>.yaml with Hydra overrides into the flow's typed config."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    get_spec(name)
    with _compose_lock:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=name):
            cfg = hydra_compose(config_name=name, overrides=list(overrides))
    return to_typed(cfg)


def spec_for_config(cfg: FlowConfig) -> FlowSpec:
    discover_flows()
    for spec in REGISTRY.values():
        if type(cfg) is spec.config_cls:
            return spec
    raise KeyError(f"no flow takes a {type(cfg).__name__}")


def run(cfg: FlowConfig) -> dict:
    """Start the Prefect flow for a typed config, on the task runner the config names."""
    spec = spec_for_config(cfg)
    return spec.flow.with_options(task_runner=build_task_runner(cfg.runner))(cfg=cfg)


def _run_tracked(spec: FlowSpec, cfg: FlowConfig) -> dict:
    from prefect.runtime import flow_run

    logger = get_run_logger()
    tracker = open_run(
        cfg.tracking.uri,
        cfg.tracking.experiment or spec.name,
        run_name=cfg.tracking.run_name or f"{spec.name}-{flow_run.name}",
        parent_run_id=cfg.tracking.parent_run_id,
        tags={"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name, "flow": spec.name},
    )
    logger.info("MLflow run %s: %s", tracker.run_id, tracker.ui_link(cfg.tracking.ui))
    try:
        tracker.log_params(asdict(cfg))
        metrics = spec.body(cfg, tracker) or {}
        tracker.log_metrics(metrics)
    except BaseException:
        close_run(tracker, failed=True)
        raise
    close_run(tracker)
    return {"flow": spec.name, "run_id": tracker.run_id, "experiment_id": tracker.experiment_id,
            "metrics": metrics, "link": tracker.ui_link(cfg.tracking.ui)}
