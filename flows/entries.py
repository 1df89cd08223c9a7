"""Deployment entrypoints: `flows/entries.py:<flow name>` (or `flows.entries.<flow name>`) is that flow.

Prefect loads a deployment's flow by entrypoint in a fresh process; importing this module
discovers every flow and exposes it under the flow's name. The deployment runs the flow itself
(no wrapper): its parameters are the typed `config` form, `overrides` and `multirun`.
"""

import tasks  # noqa: F401  (environment defaults before Prefect/MLflow import, also when loaded by path)
from flows.platform import discover_flows

for _name, _spec in discover_flows().items():
    globals()[_name] = _spec.flow
