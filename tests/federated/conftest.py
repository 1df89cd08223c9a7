import pytest


@pytest.fixture(autouse=True, scope="module")
def _tiny_models(one_torch_thread):
    """Every test here trains tiny models (see tests/conftest.py)."""
