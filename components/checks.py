"""Config checks run when a config dataclass is built (its ``__post_init__``), before anything moves.

Hydra composes a flow's config into its dataclasses with ``OmegaConf.to_object``, which calls every
``__post_init__``: a check here fails at composition, names the key and the reason, and no run,
folder or checkpoint has been touched yet.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key, the value and why."""

    def __init__(self, key: str, value: Any, reason: str):
        super().__init__(f"{key}={value!r}: {reason}")
        self.key, self.value, self.reason = key, value, reason


def at_least(key: str, value: float, minimum: float) -> None:
    if value is None or value < minimum:
        raise ConfigError(key, value, f"must be >= {minimum}")


def positive(key: str, value: float) -> None:
    if value is None or not value > 0:
        raise ConfigError(key, value, "must be > 0")


def in_range(key: str, value: float, low: float, high: float) -> None:
    if value is None or not low <= value <= high:
        raise ConfigError(key, value, f"must be between {low} and {high}")


def one_of(key: str, value: Any, choices: Iterable[Any]) -> None:
    choices = list(choices)
    if value not in choices:
        raise ConfigError(key, value, f"must be one of {', '.join(map(repr, choices))}")


def writable_folder(key: str, path: str | os.PathLike) -> None:
    """The folder exists and is writable, or can be created under the nearest existing folder."""
    folder = Path(path).expanduser()
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(key, str(path), f"{probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(key, str(path), f"{probe} is not writable")


def class_named(key: str, dotted: str, base: type) -> type:
    """The class a `_target_` names (module.Class), which must be `base` or a subclass of it."""
    module_name, _, attr = dotted.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), attr) if module_name else None
    except (ImportError, AttributeError) as err:
        raise ConfigError(key, dotted, f"names no {base.__name__} class ({err})") from None
    if not (isinstance(found, type) and issubclass(found, base)):
        raise ConfigError(key, dotted, f"names no {base.__name__} class (module.Class expected)")
    return found
