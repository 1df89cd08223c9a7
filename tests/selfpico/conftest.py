"""The sandbox every SelfPiCo test runs snippets in."""

from __future__ import annotations

import pytest

from components.sandbox import Sandbox, SandboxLimits


@pytest.fixture(scope="module")
def sandbox():
    return Sandbox(SandboxLimits(wall_seconds=15, cpu_seconds=5))
