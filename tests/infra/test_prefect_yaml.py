"""prefect.yaml stays in step with the flows: every flow deployed, entrypoints load, settings are real."""

from __future__ import annotations

import os

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint
from prefect.settings import Settings

from mlsys.environment import PROJECT_ROOT
from mlsys.flow import discover_flows

CONFIG = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text())


def test_every_flow_has_a_default_deployment_whose_entrypoint_is_the_flow():
    defaults = {d["entrypoint"]: d for d in CONFIG["deployments"] if d["name"] == "default"}
    assert set(defaults) == {f"flows/entries.py:{name}" for name in discover_flows()}
    loaded = load_flow_from_entrypoint(str(PROJECT_ROOT / "flows/entries.py:federated"))
    assert loaded.name == "federated" and set(loaded.parameters.properties) == {"config", "overrides", "multirun"}


def test_deployments_use_the_process_pool_and_the_nightly_schedule_is_a_valid_cron():
    assert {d["work_pool"]["name"] for d in CONFIG["deployments"]} == {"mlsys-process"}
    [nightly] = [d for d in CONFIG["deployments"] if d["name"] == "nightly"]
    for schedule in nightly["schedules"]:
        CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])


@pytest.mark.parametrize("variable", sorted(CONFIG["definitions"]["work_pool"]["job_variables"]["env"]))
def test_deployment_environment_names_real_prefect_settings(variable, monkeypatch):
    """A misspelt PREFECT_* variable is silently ignored by Prefect: check each one changes a setting."""
    value = CONFIG["definitions"]["work_pool"]["job_variables"]["env"][variable]
    monkeypatch.delitem(os.environ, variable, raising=False)
    before = Settings().to_environment_variables(exclude_unset=False)
    monkeypatch.setenv(variable, value)
    after = Settings().to_environment_variables(exclude_unset=False)
    assert str(after.get(variable)).lower() == value.lower() != str(before.get(variable)).lower()
