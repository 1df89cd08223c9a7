"""The shared path every flow takes: Hydra composition -> typed config -> Prefect flow -> MLflow run.

A system flow is a plain function `body(cfg, tracker) -> dict[str, float]` that orchestrates tasks,
declared with `@system_flow(...)`. The decorator

- registers the flow's config dataclass as the Hydra schema `<name>_schema`, so that a wrong key or
  type in `conf/<name>.yaml` or in an override fails at composition with the key named;
- wraps the body in a Prefect flow that opens the MLflow run (flattened config as params, tagged
  with the Prefect flow-run id, nested under `tracking.parent_run_id` when given) and closes it as
  FINISHED or FAILED;
- makes that Prefect flow the deployment itself: its parameters are `config` (a pydantic model
  generated from the dataclass, so the Prefect UI shows a typed form with the yaml's defaults and
  the fields' comments as descriptions), `overrides` (Hydra strings, composed first) and
  `multirun` (a sweep as nested flow runs). `prefect deployment run '<name>/default' --param
  overrides='["a=1"]'` composes the same config as `mlsys run <name> a=1`, in one flow run whose
  id is the `prefect.flow_run_id` tag of the MLflow run; a config that does not compose fails the
  flow run with a message naming the key and the reason.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import threading
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, is_dataclass
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, Optional

from prefect import Flow, flow, get_run_logger
from prefect.runtime import flow_run

from components.checks import ConfigError, writable_folder
from mlsys.environment import PROJECT_ROOT
from mlsys.runners import build_task_runner
from mlsys.schema import as_plain, changed, dotted, parameter_model
from mlsys.tracking import (
    Tracker,
    close_run,
    evaluate_quality,
    flatten,
    open_run,
    promote,
)

CONF_DIR = PROJECT_ROOT / "conf"


@dataclass
class RunnerConfig:
    """Where fanned-out tasks run: conf/runner/local.yaml (threads) or conf/runner/dask.yaml."""

    _target_: str = "mlsys.runners.thread_runner"
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
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # set by `suite` and by sweeps: nests this run
    ui: str = "http://127.0.0.1:5000"  # base of the run links printed at the end
    promote: bool = True  # move a registered model's @serving alias when it passes the flow's quality check


@dataclass
class FlowConfig:
    """Fields every flow has; a flow's own config subclasses this."""

    runner: RunnerConfig = field(default_factory=RunnerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    seed: int = 0
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
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class FlowSpec:
    name: str
    config_cls: type
    body: Callable[[Any, Tracker], dict]
    summary_metric: Optional[str]
    order: int
    flow: Flow  # the Prefect flow: parameters `config` (typed form), `overrides`, `multirun`
    defaults: dict  # conf/<name>.yaml composed with no override, as plain values
    parameters: type  # the pydantic model of `config` (the deployment's parameter form)
    claim: Optional[str] = None  # the paper's claim the summary metric measures (suite table)
    quality: Optional[str] = None  # `metric<=goal` a registered model must pass to become @serving

    @property
    def demo_overrides(self) -> list[str]:
        """The flow at demo scale (what `suite` runs): conf/experiment/demo/<name>.yaml when it exists."""
        demo = CONF_DIR / "experiment" / "demo" / f"{self.name}.yaml"
        return [f"+experiment=demo/{self.name}"] if demo.exists() else []

    @property
    def entry(self) -> Flow:
        """The deployment entrypoint is the flow itself (kept for callers of the former wrapper)."""
        return self.flow


class InvalidConfig(ValueError):
    """A config that cannot compose or fails a check; the message names the key and the reason."""


REGISTRY: dict[str, FlowSpec] = {}
_PLATFORM_MODULES = {"entries"}  # flows/ modules that declare no flow
_compose_lock = threading.Lock()
# `run(cfg)` hands its already-typed config to the flow run it starts (same thread, same context).
_PRECOMPOSED: ContextVar[Optional[FlowConfig]] = ContextVar("precomposed_config", default=None)
# Keys that say where a run is stored, not what it does: left out of run names.
_PLACEMENT_KEYS = ("tracking.", "work_dir", "runner.address")


def system_flow(
    name: str,
    config: type,
    summary_metric: str | None = None,
    order: int = 100,
    description: str | None = None,
    claim: str | None = None,
    quality: str | None = None,
):
    """Declare `body(cfg, tracker) -> metrics` as the Prefect flow `name` configured by conf/<name>.yaml.

    `claim` states the paper's claim that `summary_metric` measures (shown by `suite` beside the value).
    `quality` (`metric<=goal` on the returned metrics) gates promotion of the models the run registers:
    they always get `@candidate`; `@serving` moves only when the check passes.
    """
    if not issubclass(config, FlowConfig):
        raise TypeError(f"{config.__name__} must subclass FlowConfig")

    def decorate(body: Callable[[Any, Tracker], dict]) -> Flow:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name=f"{name}_schema", node=config)
        doc = description or (body.__doc__ or "").strip().split("\n")[0]
        defaults = _composed_defaults(name)
        form = parameter_model(config, defaults, model_name=f"{name}_config")
        default_form = form()
        typed_flow = flow(
            _flow_function(name, doc, form, default_form),
            name=name,
            description=doc,
            validate_parameters=False,
            log_prints=True,
            flow_run_name=lambda: _run_label(REGISTRY[name], flow_run.parameters),
        )
        REGISTRY[name] = FlowSpec(name, config, body, summary_metric, order, typed_flow, defaults, form, claim, quality)
        return typed_flow

    return decorate


def _flow_function(name: str, doc: str, form: type, default_form: Any) -> Callable:
    """The function Prefect sees: its signature is the deployment's parameter schema (a typed form)."""

    def flow_function(config=default_form, overrides=None, multirun=False):
        return _flow_run(REGISTRY[name], config, list(overrides or []), bool(multirun))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    flow_function.__signature__ = inspect.Signature(
        [
            inspect.Parameter("config", kind, default=default_form, annotation=form),
            inspect.Parameter("overrides", kind, default=None, annotation=Optional[list[str]]),
            inspect.Parameter("multirun", kind, default=False, annotation=bool),
        ],
        return_annotation=dict,
    )
    flow_function.__doc__ = f"""{doc}

    Args:
        config: the typed config, defaults from conf/{name}.yaml; fields you change are merged over it
        overrides: Hydra override strings applied first, e.g. ["seed=3", "runner=dask"] (groups too)
        multirun: treat comma lists in overrides as a sweep (seed=1,2): one nested flow run per member
    """
    # Deployments load the flow by module path: `flows.entries.<name>` (see entries.py).
    flow_function.__module__ = "flows.entries"
    flow_function.__name__ = flow_function.__qualname__ = name
    return flow_function


def _composed_defaults(name: str) -> dict:
    """conf/<name>.yaml with no overrides, as plain values: the defaults of the parameter form."""
    from omegaconf import OmegaConf

    try:
        node = compose_node(name, [])
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    except Exception as err:  # a broken yaml must not break importing the other flows
        import logging

        logging.getLogger(__name__).warning(
            "%s: conf/%s.yaml does not compose (%s); form uses dataclass defaults", name, name, err
        )
        return {}


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
    """A composed DictConfig -> the flow's dataclasses (running their checks); keys the schema does not
    have (`+foo=1` adds them past Hydra's struct mode) are rejected, named."""
    from omegaconf import OmegaConf

    for key in _unknown_keys(cfg):
        raise ConfigError(key, OmegaConf.select(cfg, key), "not a key of this flow's config schema")
    return OmegaConf.to_object(cfg)


def _unknown_keys(node: Any, prefix: str = "") -> list[str]:
    from omegaconf import DictConfig, OmegaConf

    unknown: list[str] = []
    schema = OmegaConf.get_type(node)
    allowed = {f.name for f in dataclass_fields(schema)} if is_dataclass(schema) else None
    for key in node.keys():
        if allowed is not None and key not in allowed:
            unknown.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown.extend(_unknown_keys(child, f"{prefix}{key}."))
    return unknown


def compose_node(name: str, overrides: Sequence[str] = ()):
    """Compose conf/<name>.yaml with Hydra overrides into a DictConfig checked against the schema."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with _compose_lock:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=name):
            return hydra_compose(config_name=name, overrides=list(overrides))


def compose(name: str, overrides: Sequence[str] = ()) -> FlowConfig:
    """Compose conf/<name>.yaml with Hydra overrides into the flow's typed config."""
    get_spec(name)
    return to_typed(compose_node(name, overrides))


def compose_parameters(spec: FlowSpec, config: Any = None, overrides: Sequence[str] = ()) -> FlowConfig:
    """A deployment's parameters -> typed config: overrides composed first, then the form's changes.

    Raises InvalidConfig whose message names the key and the reason.
    """
    from omegaconf import OmegaConf

    try:
        given = as_plain(config)
        if given and not isinstance(config, spec.parameters):
            spec.parameters.model_validate(given)  # unknown / mistyped fields, named
        node = compose_node(spec.name, overrides)
        changes = changed(given, spec.defaults)
        if changes:
            node = OmegaConf.merge(node, changes)
    except Exception as err:
        if not _is_config_error(err):
            raise
        raise InvalidConfig(describe_config_error(spec.name, err)) from err
    try:
        return to_typed(node)
    except (ValueError, TypeError) as err:  # a dataclass's own check (__post_init__)
        raise InvalidConfig(describe_config_error(spec.name, err)) from err


def _is_config_error(err: BaseException) -> bool:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from pydantic import ValidationError

    return isinstance(err, (ConfigError, HydraException, OmegaConfBaseException, ValidationError))


def describe_config_error(flow_name: str, err: BaseException) -> str:
    """One line naming the key and the reason, from Hydra, OmegaConf, pydantic or a config check."""
    from omegaconf.errors import OmegaConfBaseException
    from pydantic import ValidationError

    if isinstance(err, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return f"{flow_name}: bad config: " + "; ".join(parts)
    cause: Optional[BaseException] = err
    while cause is not None and not isinstance(cause, (ConfigError, OmegaConfBaseException)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConfigError):
        return f"{flow_name}: bad config: {cause.key}={cause.value!r}: {cause.reason}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = (getattr(cause, "msg", None) or str(cause)).strip().splitlines()[0]
        return f"{flow_name}: bad config: key '{cause.full_key}': {reason}"
    text = str(err).split("Config search path")[0]  # Hydra appends its search path: noise here
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return f"{flow_name}: bad config: {text}"


def spec_for_config(cfg: FlowConfig) -> FlowSpec:
    discover_flows()
    for spec in REGISTRY.values():
        if type(cfg) is spec.config_cls:
            return spec
    raise KeyError(f"no flow takes a {type(cfg).__name__}")


def run(cfg: FlowConfig, overrides: Sequence[str] = ()) -> dict:
    """Start the Prefect flow for a typed config (`overrides`: how it was composed, for the record)."""
    spec = spec_for_config(cfg)
    token = _PRECOMPOSED.set(cfg)
    try:
        return spec.flow(config=_masked(asdict(cfg)), overrides=list(overrides) or None)
    finally:
        _PRECOMPOSED.reset(token)


def _masked(params: dict) -> dict:
    """Flow-run parameters are visible in the Prefect UI: credentials are shown as ***."""
    from mlsys.tracking import is_secret_key

    def walk(node, prefix=""):
        if isinstance(node, dict):
            return {k: walk(v, f"{prefix}{k}.") for k, v in node.items()}
        return "***" if node and is_secret_key(prefix.rstrip(".")) else node

    return walk(params)


def _run_label(spec: FlowSpec, parameters: dict) -> str:
    """`federated rounds=2 clients=3`: the flow and what differs from its defaults (placement left out)."""
    given = parameters.get("config")
    parts = [o for o in (parameters.get("overrides") or []) if not o.startswith(_PLACEMENT_KEYS)]
    try:
        config_changes = dotted(changed(as_plain(given), spec.defaults))
    except Exception:  # a malformed form is reported by composition, not by the name
        config_changes = {}
    chosen_groups = {p.split("=", 1)[0] for p in parts if "." not in p.split("=", 1)[0]}  # runner=dask says enough
    for key, value in config_changes.items():
        text = f"{key}={value}"
        overridden = any(p.startswith(key + "=") for p in parts) or key.split(".", 1)[0] in chosen_groups
        if not key.startswith(_PLACEMENT_KEYS) and text not in parts and not overridden:
            parts.append(text)
    label = " ".join([spec.name, *parts])
    return label if len(label) <= 120 else label[:117] + "..."


def _flow_run(spec: FlowSpec, config: Any, overrides: list[str], multirun: bool) -> dict:
    logger = get_run_logger()
    if multirun:
        return _run_sweep(spec, config, overrides)
    cfg = _PRECOMPOSED.get()
    _PRECOMPOSED.set(None)  # a nested flow started by the body composes its own
    if cfg is None:
        try:
            cfg = compose_parameters(spec, config, overrides)
        except InvalidConfig as err:
            logger.error("%s", err)
            raise
    return _run_tracked(spec, cfg, _run_label(spec, {"config": config, "overrides": overrides}))


def _run_tracked(spec: FlowSpec, cfg: FlowConfig, label: str) -> dict:
    from prefect.context import FlowRunContext

    logger = get_run_logger()
    tracker = open_run(
        cfg.tracking.uri,
        cfg.tracking.experiment or spec.name,
        run_name=cfg.tracking.run_name or label,
        parent_run_id=cfg.tracking.parent_run_id,
        tags={"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name, "flow": spec.name},
    )
    logger.info("MLflow run %s: %s", tracker.run_id, tracker.ui_link(cfg.tracking.ui))
    try:
        tracker.log_params(asdict(cfg))
        # The task runner comes from the config, so one flow (and one flow run) serves every runner=.
        with build_task_runner(cfg.runner) as runner:
            context = FlowRunContext.get()
            with context.model_copy(update={"task_runner": runner}) if context else nullcontext():
                metrics = spec.body(cfg, tracker) or {}
        tracker.log_summary(metrics, spec.claim)
        _gate_registered_models(spec, cfg, tracker, metrics)
    except BaseException:
        close_run(tracker, failed=True)
        raise
    close_run(tracker)
    link = tracker.ui_link(cfg.tracking.ui)
    publish_table(
        f"{spec.name}-result",
        [{"metric": k, "value": v} for k, v in flatten(metrics).items()],
        f"{label}: summary metrics; MLflow run {link}",
    )
    return {
        "flow": spec.name,
        "run_id": tracker.run_id,
        "experiment_id": tracker.experiment_id,
        "metrics": metrics,
        "link": link,
    }


def _gate_registered_models(spec: FlowSpec, cfg: FlowConfig, tracker: Tracker, metrics: dict) -> None:
    """Record the flow's quality check on each model version this run registered; promote the ones that
    pass (when `tracking.promote`). Without a check, promotion is explicit: `mlsys promote`."""
    logger = get_run_logger()
    for name, version in tracker.registered:
        if not spec.quality:
            logger.info(
                "model %s v%s is @candidate; no quality check declared: promote with `mlsys promote %s %s`",
                name,
                version,
                name,
                version,
            )
            continue
        passed, reason = evaluate_quality(spec.quality, flatten(metrics))
        for key, value in {"quality.check": spec.quality, "quality.result": reason}.items():
            tracker.client.set_model_version_tag(name, version, key, value)
        if passed and cfg.tracking.promote:
            promote(name, version, spec.quality, tracker.tracking_uri)
            logger.info("model %s v%s promoted to @serving (%s)", name, version, reason)
        else:
            logger.info("model %s v%s stays @candidate (%s)", name, version, reason)


def publish_table(key: str, rows: list[dict], description: str) -> None:
    """A Prefect table artifact (shown on the flow run's Artifacts tab); keys: lowercase and dashes."""
    from prefect.artifacts import create_table_artifact

    safe = "".join(c if c.isalnum() else "-" for c in key.lower()).strip("-")
    try:
        create_table_artifact(
            table=[{k: _cell(v) for k, v in r.items()} for r in rows], key=safe, description=description
        )
    except Exception as err:  # an artifact is a view of results already in MLflow: never fail the run
        get_run_logger().warning("Prefect artifact %s not created: %s", safe, err)


def _cell(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) or value is None else str(value)


def sweep_members(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's basic sweeper expansion: `a=1,2 b=x,y` -> four override lists, in Hydra's order."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [member for batch in BasicSweeper.split_arguments(parsed, None) for member in batch]


def _run_sweep(spec: FlowSpec, config: Any, overrides: list[str]) -> dict:
    """A sweep: every member a nested flow run and a nested MLflow run under one parent run that holds
    the comparison (table, plot, best member)."""
    logger = get_run_logger()
    try:
        members = sweep_members(overrides)
    except Exception as err:
        if not _is_config_error(err):
            raise
        raise InvalidConfig(describe_config_error(spec.name, err)) from err
    typed = [compose_parameters(spec, config, m) for m in members]  # every member checked before any runs
    swept = [o.split("=", 1)[0] for o in overrides if "," in o.split("=", 1)[-1]]
    first = typed[0].tracking
    parent = open_run(
        first.uri,
        first.experiment or spec.name,
        run_name=f"{spec.name} sweep {' '.join(swept) or len(members)}",
        parent_run_id=first.parent_run_id,
        tags={
            "flow": spec.name,
            "sweep": "true",
            "prefect.flow_run_id": flow_run.id,
            "prefect.flow_run_name": flow_run.name,
        },
    )
    logger.info("sweep of %d members, MLflow parent run %s: %s", len(members), parent.run_id, parent.ui_link(first.ui))
    rows: list[dict] = []
    try:
        for index, member in enumerate(members, 1):
            shown = [o for o in member if o.split("=", 1)[0] in swept] or member
            label = f"{spec.name} [{index}/{len(members)}] {' '.join(shown)}"
            logger.info("sweep member %d/%d: %s", index, len(members), " ".join(shown))
            row: dict[str, Any] = {"member": index, **{o.split("=", 1)[0]: o.split("=", 1)[1] for o in shown}}
            try:
                result = spec.flow.with_options(flow_run_name=label)(
                    config=config, overrides=member + [f"tracking.parent_run_id={parent.run_id}"]
                )
                row.update({"status": "ok", **flatten(result["metrics"]), "run_id": result["run_id"]})
            except Exception as err:  # one failing member must not hide the others
                row.update({"status": f"FAILED: {type(err).__name__}: {str(err)[:100]}"})
            rows.append(row)
        parent.log_comparison(rows, spec.summary_metric, swept)
        publish_table(
            f"{spec.name}-sweep", rows, f"{spec.name} sweep: one row per member; MLflow {parent.ui_link(first.ui)}"
        )
    except BaseException:
        close_run(parent, failed=True)
        raise
    failed = [r for r in rows if r["status"] != "ok"]
    close_run(parent, failed=bool(failed))
    if failed:
        raise RuntimeError(
            f"{spec.name} sweep: {len(failed)} of {len(rows)} member(s) failed: "
            + "; ".join(r["status"] for r in failed)
        )
    return {
        "flow": spec.name,
        "run_id": parent.run_id,
        "experiment_id": parent.experiment_id,
        "metrics": {},
        "members": rows,
        "link": parent.ui_link(first.ui),
    }
