"""Import a file under scripts/ as a module (scripts/ is not a package: they run as `python scripts/x.py`)."""

from __future__ import annotations

import importlib.util
from types import ModuleType

from mlsys.environment import PROJECT_ROOT


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
