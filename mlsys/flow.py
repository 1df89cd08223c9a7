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

The fields every flow shares are `mlsys.config`; composition and its errors `mlsys.compose`; a sweep's
nested runs `mlsys.sweep`; Prefect artifacts `mlsys.artifacts`.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import asdict, dataclass
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from prefect import Flow, flow
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

from mlsys.artifacts import publish_table
from mlsys.compose import CONF_DIR, InvalidConfig, compose_node, compose_parameters, composed_defaults, to_typed
from mlsys.config import FlowConfig
from mlsys.runners import build_task_runner
from mlsys.schema import as_plain, changed, dotted, parameter_model
from mlsys.sweep import run_sweep
from mlsys.tracking import Tracker, close_run, evaluate_quality, flatten, is_secret_key, open_run, promote


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
    measured: Optional[str] = None  # what a run measured, formatted from its metrics (suite table)
    quality: Optional[str] = None  # `metric<=goal` a registered model must pass to become @serving

    @property
    def demo_overrides(self) -> list[str]:
        """The flow at demo scale (what `suite` runs): conf/experiment/demo/<name>.yaml when it exists."""
        demo = CONF_DIR / "experiment" / "demo" / f"{self.name}.yaml"
        return [f"+experiment=demo/{self.name}"] if demo.exists() else []


REGISTRY: dict[str, FlowSpec] = {}
_PLATFORM_MODULES = {"entries"}  # flows/ modules that declare no flow
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
    measured: str | None = None,
    quality: str | None = None,
):
    """Declare `body(cfg, tracker) -> metrics` as the Prefect flow `name` configured by conf/<name>.yaml.

    `claim` states the paper's claim that `summary_metric` measures (shown by `suite` beside the value);
    `measured` says what a run measured, a format string over its metrics (default: the summary metric).
    `quality` (`metric<=goal` on the returned metrics) gates promotion of the models the run registers:
    they always get `@candidate`; `@serving` moves only when the check passes.
    """
    if not issubclass(config, FlowConfig):
        raise TypeError(f"{config.__name__} must subclass FlowConfig")

    def decorate(body: Callable[[Any, Tracker], dict]) -> Flow:
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
        REGISTRY[name] = FlowSpec(
            name, config, body, summary_metric, order, typed_flow, defaults, form, claim, measured, quality
        )
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
    """The parameter form's defaults; a broken yaml must not break importing the other flows."""
    try:
        return composed_defaults(name)
    except Exception as err:
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


def compose(name: str, overrides: Sequence[str] = ()) -> FlowConfig:
    """Compose conf/<name>.yaml with Hydra overrides into the flow's typed config."""
    get_spec(name)  # registers the flow's schema
    return to_typed(compose_node(name, overrides))


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
        return run_sweep(spec, config, overrides)
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
