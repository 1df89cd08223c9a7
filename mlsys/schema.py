"""A flow's config dataclass seen from outside: field meanings, a pydantic parameter model, diffs.

The dataclass is the one schema. From it this module derives
- each field's meaning, read from the comment beside the field (or the comment lines above it);
- a pydantic model with the same fields, whose defaults are the composed `conf/<flow>.yaml` and whose
  descriptions are those meanings: the Prefect deployment's typed parameter form;
- the difference between a filled-in form and those defaults, as the nested dict that is merged
  over the Hydra composition (so a form and override strings end in the same typed config).
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import io
import tokenize
import types
import typing
from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

MISSING = "???"  # OmegaConf's mark for a value the user must give


def _own_field_docs(cls: type) -> dict[str, str]:
    """{field: meaning} from `name: type = value  # meaning` lines (or comment lines just above)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []  # full-line comments waiting for the field below them
    body_col = None
    line_field: dict[int, str] = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    previous = None
    depth = 0
    for tok in tokens:
        if tok.type == tokenize.OP and tok.string in "([{":
            depth += 1
        elif tok.type == tokenize.OP and tok.string in ")]}":
            depth -= 1
        if tok.type == tokenize.INDENT and body_col is None:
            body_col = len(tok.string)
        if (
            tok.type == tokenize.OP
            and tok.string == ":"
            and depth == 0
            and previous is not None
            and previous.type == tokenize.NAME
            and previous.start[1] == body_col
        ):
            line_field[tok.start[0]] = previous.string
            if pending:
                docs.setdefault(previous.string, " ".join(pending))
            pending = []
        elif tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            row = tok.start[0]
            if row in line_field:
                docs[line_field[row]] = text  # a comment on the field's own line wins
            elif tok.start[1] == body_col:
                pending.append(text)
        elif tok.type == tokenize.NL and not tok.line.strip():
            pending = []  # a blank line separates a comment block from the next field
        elif tok.type == tokenize.NAME and tok.string in ("def", "class") and tok.start[1] == body_col:
            pending = []
        if tok.type not in (tokenize.COMMENT,):
            previous = tok
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """Meanings of every field of a dataclass, inherited ones included (subclass comments win)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _python_name(field_name: str) -> str:
    """pydantic treats leading underscores as private: `_target_` becomes `target_` with an alias."""
    return field_name.strip("_") + "_" if field_name.startswith("_") else field_name


def _field_type(tp: Any) -> Any:
    """The pydantic annotation for a dataclass field type; nested dataclasses become nested models."""
    if dataclasses.is_dataclass(tp):
        return parameter_model(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return Union[tuple(_field_type(a) for a in args)]  # type: ignore[return-value]
    if origin in (list, tuple, typing.Sequence, set):
        return list[_field_type(args[0])] if args else list[Any]
    if origin is dict:
        return dict[str, _field_type(args[1])] if len(args) == 2 else dict[str, Any]
    if origin is typing.Literal:
        return tp
    if tp in (int, float, str, bool, type(None)) or (isinstance(tp, type) and issubclass(tp, enum.Enum)):
        return tp
    return Any


def parameter_model(cls: type, defaults: Optional[dict] = None, model_name: Optional[str] = None) -> type[BaseModel]:
    """A pydantic model mirroring dataclass `cls`; `defaults` (the composed config) override its defaults."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        annotation = _field_type(hints.get(f.name, Any))
        if defaults is not None and f.name in defaults:
            default = defaults[f.name]
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
            default = dataclasses.asdict(default) if dataclasses.is_dataclass(default) else default
        else:
            default = None
        if dataclasses.is_dataclass(hints.get(f.name)) and isinstance(default, dict):
            default = parameter_model(hints[f.name], default)(**default)
        if isinstance(default, enum.Enum):
            default = default.value
        if default == MISSING:
            annotation, default = Optional[annotation], None
        description = docs.get(f.name) or _class_summary(hints.get(f.name))
        fields[_python_name(f.name)] = (annotation, Field(default=default, description=description, alias=f.name))
    doc = (cls.__doc__ or "").strip()
    if doc.startswith(cls.__name__ + "("):  # dataclass's generated signature, not a description
        doc = ""
    model = create_model(
        model_name or f"{cls.__name__}Parameters",
        __config__=ConfigDict(populate_by_name=True, extra="forbid", protected_namespaces=()),
        **fields,
    )
    model.__doc__ = doc or None
    return model


def _class_summary(tp: Any) -> Optional[str]:
    """A nested config's own docstring (first line) describes a field with no comment."""
    if not dataclasses.is_dataclass(tp):
        return None
    doc = (tp.__doc__ or "").strip()
    return None if not doc or doc.startswith(tp.__name__ + "(") else doc.splitlines()[0]


def as_plain(config: Any) -> dict:
    """A form value (pydantic model, dataclass or mapping) as plain nested dicts keyed like the config."""
    if config is None:
        return {}
    if isinstance(config, BaseModel):
        return config.model_dump(by_alias=True, mode="json")
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    return dict(config)


def changed(given: dict, defaults: dict) -> dict:
    """The leaves of `given` that differ from `defaults` (keys `defaults` lacks are kept: the schema
    rejects them, naming the key)."""
    out: dict = {}
    for key, value in given.items():
        base = defaults.get(key, MISSING) if isinstance(defaults, dict) else MISSING
        if isinstance(value, dict) and isinstance(base, dict):
            inner = changed(value, base)
            if inner:
                out[key] = inner
        elif value != base:
            out[key] = value
    return out


def dotted(nested: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay one value."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            out.update(dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def describe_fields(cls: type, defaults: dict, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(dotted key, default, meaning) for every leaf of the config: what `--help` lists."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    rows: list[tuple[str, Any, str]] = []
    for f in dataclasses.fields(cls):
        default = defaults.get(f.name) if isinstance(defaults, dict) else None
        if dataclasses.is_dataclass(hints.get(f.name)):
            rows.extend(describe_fields(hints[f.name], default or {}, f"{prefix}{f.name}."))
        else:
            rows.append((f"{prefix}{f.name}", default, docs.get(f.name, "")))
    return rows
