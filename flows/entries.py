"""Deployment entrypoints: `flows/entries.py:<flow name>` (or `flows.entries.<flow name>`) is that flow.

Prefect loads a deployment's flow by entrypoint in a fresh process; importing this module
discovers every flow and exposes it under the flow's name. The deployment runs the flow itself
(no wrapper): its parameters are the typed `config` form, `overrides` and `multirun`.
"""

from mlsys.environment import apply_environment_defaults

apply_environment_defaults()  # environment defaults before Prefect/MLflow import, also when loaded by path
from mlsys.flow import discover_flows  # noqa: E402  (after the environment defaults)

for _name, _spec in discover_flows().items():
    globals()[_name] = _spec.flow
