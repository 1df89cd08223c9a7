"""Shared fixtures: one Prefect test server per session, a throw-away MLflow store per test module."""

from __future__ import annotations

import pytest

from mlsys.environment import apply_environment_defaults

apply_environment_defaults()  # environment defaults before Prefect/MLflow import


@pytest.fixture(scope="session")
def prefect_harness():
    """A temporary Prefect API for the whole session: its 15-27 s start-up is paid once."""
    # Prefect reads its settings when first imported: only after the environment defaults above.
    from prefect.testing.utilities import prefect_test_harness  # noqa: PLC0415

    with prefect_test_harness(server_startup_timeout=300):
        yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module of tiny models: on the shared 2-core machine oversubscribed
    threads make their forwards ~15-20x slower. Restored afterwards, so other modules keep theirs."""
    import torch  # noqa: PLC0415  (libgomp reads OMP_WAIT_POLICY when torch loads: after the defaults above)

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    """A SQLite MLflow store (artifacts beside it) that the module's flow runs write to."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def flow_overrides(mlflow_uri, tmp_path) -> list[str]:
    """Overrides that keep a flow test's MLflow runs and files out of the project's folders."""
    return [f"tracking.uri={mlflow_uri}", f"work_dir={tmp_path}"]
