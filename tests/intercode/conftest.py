from __future__ import annotations

import pytest

from components.intercode import assets
from components.intercode.env import make_env
from components.intercode.tasksets import BASH_TASKS, SQL_TASKS
from components.sandbox import isolation_mode


@pytest.fixture(scope="session")
def asset_dir(tmp_path_factory):
    if isolation_mode() is None:
        pytest.skip("the InterCode environments run actions in the namespace sandbox, unavailable here")
    return assets.prepare(tmp_path_factory.mktemp("intercode-assets"))


@pytest.fixture(scope="module")
def sql_env(asset_dir):
    """Every built-in SQL task, one environment per test module."""
    env = make_env("sql", SQL_TASKS, asset_dir)
    yield env
    env.close()


@pytest.fixture(scope="module")
def bash_env(asset_dir):
    """Every built-in Bash task, one environment per test module."""
    env = make_env("bash", BASH_TASKS, asset_dir)
    yield env
    env.close()
