from __future__ import annotations

import pytest

from components.intercode import assets
from components.sandbox import isolation_mode


@pytest.fixture(scope="session")
def asset_dir(tmp_path_factory):
    if isolation_mode() is None:
        pytest.skip("the InterCode environments run actions in the namespace sandbox, unavailable here")
    return assets.prepare(tmp_path_factory.mktemp("intercode-assets"))
