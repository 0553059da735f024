"""Configs as keyword-only dataclasses, and their JSON form.

Every config in kinema is a `@dataclass(frozen=True, kw_only=True)` whose fields
each carry a one-line docstring and whose `__post_init__` checks the values.
These helpers turn a config into plain JSON data and back, including nested
configs and tuples, so a run's full config can be saved beside its weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON-ready data (nested configs become dicts, tuples lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a config dataclass, got {type(config).__name__}")
    hints = typing.get_type_hints(type(config))
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        # an int given for a float field is stored as the float it stands for, so hashes agree
        out[f.name] = float(value) if hints[f.name] is float and isinstance(value, int) else _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build config `cls` from `to_dict` data; unknown keys are an error that names them."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _typed(hints[name], value) for name, value in data.items()}
    return cls(**kwargs)


def _typed(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _typed(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return from_dict(hint, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_typed(args[0], v) for v in value)
        return tuple(_typed(a, v) for a, v in zip(args, value))
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def config_hash(config: Any) -> str:
    """A short stable hash of a config's JSON form."""
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()[:16]
