"""Every config value is written once: a YAML file states only what differs from its schema.

The schema is the flow's config dataclass (composed from the components' own dataclasses), which
holds every default. A YAML value equal to the schema's default at that key is a second copy that
can drift; a key the schema lacks is a typo that Hydra's struct mode would only catch for the
options a run happens to compose. Each YAML file under conf/ that a flow composes is checked:
the flow's primary file, every option of every group in its defaults list, and its demo settings.
`_target_` is the one exception: an option file names the class it selects, so every option of a
choice reads whole, including the one that is the schema's default.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlsys.flow import CONF_DIR, discover_flows

FLOWS = discover_flows()
_NO_DEFAULT = object()


def _package(path: Path) -> str | None:
    """The `# @package` header of a Hydra config file, if any."""
    for line in path.read_text().splitlines():
        if line.startswith("# @package"):
            return line.split(None, 2)[2].strip()
    return None


def _defaults_list(path: Path) -> list[Any]:
    return (yaml.safe_load(path.read_text()) or {}).get("defaults", [])


def _groups(flow: str) -> list[str]:
    """Config groups that conf/<flow>.yaml's defaults list chooses from (its schema entry aside)."""
    groups = []
    for entry in _defaults_list(CONF_DIR / f"{flow}.yaml"):
        if isinstance(entry, dict):
            (group,) = entry.keys()
            groups.append(group.removeprefix("override ").lstrip("/"))
    return groups


def _dataclass_of(tp: Any) -> type | None:
    """The dataclass inside a field type (`X`, `Optional[X]`), or None for plain values."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_DEFAULT


def _same(value: Any, default: Any) -> bool:
    if dataclasses.is_dataclass(default) or default is _NO_DEFAULT:
        return False
    if hasattr(default, "value") and not isinstance(default, (int, float, str)):  # enum member
        default = default.value
    if isinstance(value, bool) or isinstance(default, bool):
        return type(value) is type(default) and value == default
    return value == default


def problems(node: Any, schema: type, default: Any, where: str) -> list[str]:
    """Keys of `node` that `schema` lacks, and leaves equal to the default at that key."""
    out: list[str] = []
    if not isinstance(node, dict):
        return out
    hints = typing.get_type_hints(schema)
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key, value in node.items():
        if key == "defaults":
            continue
        if key not in fields:
            out.append(f"{where}{key}: not a key of {schema.__name__}")
            continue
        f = fields[key]
        here = _field_default(f) if default is None else getattr(default, key, _field_default(f))
        inner = _dataclass_of(hints.get(key))
        if inner is not None and isinstance(value, dict) and typing.get_origin(hints.get(key)) is dict:
            for name, item in value.items():  # dict[str, X]: each value is an X of its own
                out.extend(problems(item, inner, None, f"{where}{key}.{name}."))
        elif inner is not None and isinstance(value, dict):
            base = here if dataclasses.is_dataclass(here) else None
            out.extend(problems(value, inner, base, f"{where}{key}."))
        elif key != "_target_" and _same(value, here):
            out.append(f"{where}{key}: {value!r} is the schema's default ({schema.__name__}.{key})")
    return out


def _schema_at(flow_cls: type, dotted: str) -> tuple[type | None, Any]:
    """The dataclass and default instance at a dotted path of the flow's schema."""
    schema, instance = flow_cls, None
    for part in dotted.split("."):
        hints = typing.get_type_hints(schema)
        fields = {f.name: f for f in dataclasses.fields(schema)}
        if part not in fields:
            return None, None
        value = _field_default(fields[part]) if instance is None else getattr(instance, part, None)
        schema, instance = _dataclass_of(hints.get(part)), value
        if schema is None:
            return None, None
    return schema, instance if dataclasses.is_dataclass(instance) else None


def _files_of(flow: str) -> list[tuple[Path, type, Any, str]]:
    spec = FLOWS[flow]
    files = [(CONF_DIR / f"{flow}.yaml", spec.config_cls, None, "")]
    demo = CONF_DIR / "experiment" / "demo" / f"{flow}.yaml"
    if demo.exists():
        files.append((demo, spec.config_cls, None, ""))
    for group in _groups(flow):
        folder = CONF_DIR / group
        for option in sorted(folder.glob("*.yaml")):
            package = _package(option) or group.replace("/", ".")
            schema, default = _schema_at(spec.config_cls, package)
            if schema is None:
                files.append((option, None, None, f"{package}."))
            else:
                files.append((option, schema, default, f"{package}."))
    return files


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_yaml_states_only_what_differs_from_the_schema(flow):
    found: list[str] = []
    for path, schema, default, where in _files_of(flow):
        body = yaml.safe_load(path.read_text()) or {}
        name = path.relative_to(CONF_DIR)
        if schema is None:
            found.append(f"{name}: group `{where.rstrip('.')}` is not a dataclass field of {flow}'s schema")
            continue
        found.extend(f"{name}: {p}" for p in problems(body, schema, default, where))
    assert not found, "\n".join(found)


# The checker itself, on files the project never has: it must catch both faults and pass a clean file.


@dataclasses.dataclass
class _Inner:
    width: int = 8
    kind: str = "a"


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    rate: float = 0.5
    flag: bool = False


def test_checker_flags_a_repeated_default_and_an_unknown_key():
    found = problems({"rate": 0.5, "inner": {"width": 8, "colour": "red"}}, _Outer, None, "")
    assert any("rate" in p and "default" in p for p in found)
    assert any("inner.width" in p for p in found)
    assert any("inner.colour" in p and "not a key" in p for p in found)


def test_checker_passes_values_that_differ():
    assert problems({"rate": 0.25, "flag": True, "inner": {"kind": "b", "_target_": "x.Y"}}, _Outer, None, "") == [
        "inner._target_: not a key of _Inner"
    ]
    assert problems({"flag": 0}, _Outer, None, "") == []  # 0 is not False: a type change is a difference


@dataclasses.dataclass
class _Named:
    members: dict[str, _Inner] = dataclasses.field(default_factory=dict)


def test_checker_reads_each_value_of_a_dict_of_dataclasses_as_one_of_them():
    found = problems({"members": {"a": {"width": 8}, "b": {"width": 9, "colour": "red"}}}, _Named, None, "")
    assert found == [
        "members.a.width: 8 is the schema's default (_Inner.width)",
        "members.b.colour: not a key of _Inner",
    ]
    assert problems({"members": {"a": {"width": 9, "kind": "b"}}}, _Named, None, "") == []
