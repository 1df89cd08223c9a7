"""Hydra composition of conf/<flow>.yaml into the flow's typed config, and its errors in one line.

A config that does not compose (unknown key, a `+key` the schema lacks, wrong type, unknown group
option, a dataclass check in `__post_init__`) raises before anything runs, with a message that
names the key and the reason.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import fields as dataclass_fields
from dataclasses import is_dataclass
from typing import TYPE_CHECKING, Any, Optional

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import ValidationError

from components.checks import ConfigError
from mlsys.config import FlowConfig
from mlsys.environment import PROJECT_ROOT
from mlsys.schema import as_plain, changed

if TYPE_CHECKING:
    from mlsys.flow import FlowSpec

CONF_DIR = PROJECT_ROOT / "conf"
_compose_lock = threading.Lock()


class InvalidConfig(ValueError):
    """A config that cannot compose or fails a check; the message names the key and the reason."""


def compose_node(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose conf/<name>.yaml with Hydra overrides into a DictConfig checked against the schema."""
    with _compose_lock:
        if GlobalHydra.instance().is_initialized():
            GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=name):
            return hydra_compose(config_name=name, overrides=list(overrides))


def to_typed(cfg: DictConfig) -> FlowConfig:
    """A composed DictConfig -> the flow's dataclasses (running their checks); keys the schema does not
    have (`+foo=1` adds them past Hydra's struct mode) are rejected, named."""
    for key in _unknown_keys(cfg):
        raise ConfigError(key, OmegaConf.select(cfg, key), "not a key of this flow's config schema")
    return OmegaConf.to_object(cfg)


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    unknown: list[str] = []
    schema = OmegaConf.get_type(node)
    allowed = {f.name for f in dataclass_fields(schema)} if is_dataclass(schema) else None
    for key in node.keys():
        if allowed is not None and key not in allowed:
            unknown.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown.extend(_unknown_keys(child, f"{prefix}{key}."))
    return unknown


def composed_defaults(name: str) -> dict:
    """conf/<name>.yaml with no overrides, as plain values (the defaults of the parameter form)."""
    return OmegaConf.to_container(compose_node(name, []), resolve=True, enum_to_str=True)


def compose_parameters(spec: FlowSpec, config: Any = None, overrides: Sequence[str] = ()) -> FlowConfig:
    """A deployment's parameters -> typed config: overrides composed first, then the form's changes.

    Raises InvalidConfig whose message names the key and the reason.
    """
    try:
        given = as_plain(config)
        if given and not isinstance(config, spec.parameters):
            spec.parameters.model_validate(given)  # unknown / mistyped fields, named
        node = compose_node(spec.name, overrides)
        changes = changed(given, spec.defaults)
        if changes:
            # Struct mode off for the merge so a form may add entries to a dict field (compare_policies.<key>);
            # keys a dataclass lacks are still refused, named, by to_typed below.
            OmegaConf.set_struct(node, False)
            node = OmegaConf.merge(node, changes)
            OmegaConf.set_struct(node, True)
    except Exception as err:
        if not is_config_error(err):
            raise
        raise InvalidConfig(describe_config_error(spec.name, err)) from err
    try:
        return to_typed(node)
    except (ValueError, TypeError) as err:  # a dataclass's own check (__post_init__)
        raise InvalidConfig(describe_config_error(spec.name, err)) from err


def sweep_members(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's basic sweeper expansion: `a=1,2 b=x,y` -> four override lists, in Hydra's order."""
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [member for batch in BasicSweeper.split_arguments(parsed, None) for member in batch]


def is_config_error(err: BaseException) -> bool:
    """Raised by composition or a config check (the user's input), not by a bug."""
    return isinstance(err, (ConfigError, HydraException, OmegaConfBaseException, ValidationError))


def describe_config_error(flow_name: str, err: BaseException) -> str:
    """One line naming the key and the reason, from Hydra, OmegaConf, pydantic or a config check."""
    if isinstance(err, ValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()]
        return f"{flow_name}: bad config: " + "; ".join(parts)
    cause: Optional[BaseException] = err
    while cause is not None and not isinstance(cause, (ConfigError, OmegaConfBaseException)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ConfigError):
        return f"{flow_name}: bad config: {cause.key}={cause.value!r}: {cause.reason}"
    if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
        reason = (getattr(cause, "msg", None) or str(cause)).strip().splitlines()[0]
        return f"{flow_name}: bad config: key '{cause.full_key}': {reason}"
    text = str(err).split("Config search path")[0]  # Hydra appends its search path: noise here
    text = " ".join(line.strip() for line in text.strip().splitlines() if line.strip())
    return f"{flow_name}: bad config: {text}"
