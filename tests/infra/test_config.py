"""Every primary config composes, every config-group option instantiates, bad overrides name the key."""

from __future__ import annotations

import inspect
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra.errors import ConfigCompositionException, HydraException
from hydra.utils import get_object, instantiate
from omegaconf.errors import OmegaConfBaseException

from components.federated.federation import build_scheduler, build_speeds
from components.federated.simulator import VirtualClock
from mlsys.flow import CONF_DIR, FlowConfig, compose, discover_flows, get_spec

FLOWS = sorted(discover_flows())


def _groups_of(flow: str) -> list[str]:
    defaults = yaml.safe_load((CONF_DIR / f"{flow}.yaml").read_text()).get("defaults", [])
    return [next(iter(d)) for d in defaults if isinstance(d, dict) and not next(iter(d)).startswith(("override", "/"))]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group.split("@", 1)[0]).glob("*.yaml"))


def _targets(node, path=""):
    """Yield (path, node) for every config node that names a `_target_`."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield path, node
        for key, value in node.items():
            yield from _targets(value, f"{path}.{key}" if path else key)


@pytest.mark.parametrize("flow", FLOWS)
def test_primary_config_composes_to_its_typed_dataclass(flow):
    cfg = compose(flow, get_spec(flow).demo_overrides)
    assert isinstance(cfg, get_spec(flow).config_cls) and isinstance(cfg, FlowConfig)


CASES = [(flow, group, option) for flow in FLOWS for group in _groups_of(flow) for option in _options(group)]
# What a test must supply that a user supplies at run time (an endpoint, scripted replies).
SHRINK = {"llm": ["llm.base_url=http://127.0.0.1:9/v1", "llm.responses=[ok]"]}


def _group_key(group: str) -> str:
    """`sp_predictor@predictor` is stored under `predictor`; `llm` under `llm`."""
    return group.split("@", 1)[1] if "@" in group else group


def _build_or_check(target_node: dict):
    """Instantiate a node whose config gives every required argument; for a component that also
    takes run-time inputs (the graph, the data), check its config keys against its signature."""
    target = get_object(target_node["_target_"])
    # Typed groups share one dataclass across options; a null field is one this option does not
    # take, and the flows drop nulls before instantiating (see tasks/gcn_train.py, tasks/selfpico.py).
    target_node = {k: v for k, v in target_node.items() if v is not None}
    kwargs = {k: v for k, v in target_node.items() if not k.startswith("_")}
    signature = inspect.signature(target)
    signature.bind_partial(**kwargs)  # TypeError names a key the component does not take
    runtime_inputs = [
        p.name
        for p in signature.parameters.values()
        if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in kwargs)
        or p.kind is p.VAR_POSITIONAL  # `*args`: run-time inputs passed on to a base class
    ]
    return instantiate(target_node) if not runtime_inputs else target


# Groups built from their typed config rather than by instantiating the node: one schema holding every
# option's fields (the federated schedulers, speed models, datasets), or a builder taking the config: each
# option's class takes the subset it names, so the check is that the component's builder builds it.
BUILT_BY = {
    "fed_strategy": lambda cfg: build_scheduler(cfg.fed_strategy, 3, [10, 10, 10], {"w": np.zeros(2)}, VirtualClock()),
    "fed_speed": lambda cfg: build_speeds(cfg.fed_speed, cfg.clients, 0),
    "fed_data": lambda cfg: cfg.fed_data.loader(seed=0, test_fraction=cfg.fed_data.test_fraction),
    # The model's `_target_` is a builder taking the GPTConfig itself (build_gpt, SmolLM2's loader).
    "model": lambda cfg: get_object(cfg.model._target_),  # resolved (SmolLM2 refuses the demo's tiny sizes)
}

# Options that need the user's own input to compose at all (the config refuses them empty).
OPTION_INPUTS = {("fed_speed", "given"): ["clients=3", "fed_speed.step_times=[0.5,1.0,2.0]"]}


@pytest.mark.parametrize("flow,group,option", CASES, ids=[f"{f}-{g}={o}" for f, g, o in CASES])
def test_every_group_option_composes_and_instantiates(flow, group, option, tmp_path):
    shrink = SHRINK.get(_group_key(group), []) + OPTION_INPUTS.get((group, option), [])
    cfg = compose(flow, get_spec(flow).demo_overrides + shrink + [f"{group}={option}", f"work_dir={tmp_path}"])
    if group in BUILT_BY:  # one config for every option; its builder passes each class the fields it takes
        assert BUILT_BY[group](cfg) is not None, f"{flow}: {group}={option} built nothing"
        return
    node = asdict(cfg)
    for key in _group_key(group).split("/"):
        node = node[key]
    for path, target_node in _targets(node):
        built = _build_or_check(target_node)
        assert built is not None, f"{flow}: {group}={option} ({path}) instantiated to None"


@pytest.mark.parametrize("flow", FLOWS)
def test_unknown_key_fails_naming_it(flow):
    with pytest.raises((ConfigCompositionException, HydraException, OmegaConfBaseException)) as err:
        compose(flow, ["no_such_key_xyz=1"])
    assert "no_such_key_xyz" in str(err.value) + str(err.value.__cause__)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises(Exception) as err:
        compose(FLOWS[0], ["seed=not-a-number"])
    text = str(err.value) + str(err.value.__cause__)
    assert "seed" in text


def test_unknown_group_option_fails_naming_it():
    with pytest.raises(Exception) as err:
        compose(FLOWS[0], ["runner=no_such_runner"])
    assert "no_such_runner" in str(err.value)


def test_unknown_flow_is_named():
    with pytest.raises(KeyError, match="no_such_flow"):
        get_spec("no_such_flow")


def test_components_import_no_orchestrator():
    root = Path(__file__).resolve().parents[2] / "components"
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if any(
            line.strip().startswith(
                ("import prefect", "from prefect", "import mlflow", "from mlflow", "import hydra", "from hydra")
            )
            for line in p.read_text().splitlines()
        )
    ]
    assert offenders == []
