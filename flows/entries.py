"""Deployment entrypoints: `flows.entries.<flow name>` is that flow's override-taking Prefect flow.

Prefect loads a deployment's flow by module path in a fresh process; importing this module
discovers every flow and exposes its entry under the flow's name.
"""
from flows.platform import discover_flows

for _name, _spec in discover_flows().items():
    globals()[_name] = _spec.entry
