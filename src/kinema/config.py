"""Configs as keyword-only dataclasses, and their JSON form.

Every config in kinema is a `@dataclass(frozen=True, kw_only=True)` whose fields
each carry a one-line docstring and whose `__post_init__` checks the values.
These helpers turn a config into plain JSON data and back, including nested
configs and tuples, so a run's full config can be saved beside its weights.

`from_dict` type-checks JSON data (a config file, `--set`, pipeline.json) against the
field annotations before any `__post_init__` runs: `check_value` is the one checker,
and its errors name the dotted field and the type it takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")

ALLOW_INF = "allow_inf"
"""Field metadata key: `dataclasses.field(metadata={ALLOW_INF: True})` lets a float field (or a tuple of floats)
hold +inf; every other float in a config must be finite (NaN never is)."""


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


def from_dict(cls: type[T], data: Any, name: str = "") -> T:
    """Build config `cls` from `to_dict` data (JSON data), every value type-checked against its field.

    name: the dotted name of this config in its file ("" at the top), which errors put before each field's
    name. Unknown keys raise ValueError naming them; a value of the wrong type raises TypeError naming the
    field and the type it takes; `cls.__post_init__` raises what it raises.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{name or cls.__name__} takes {type_name(cls)}, got {show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    # A field kinema no longer has is dropped where it holds the value that made it a no-op (old run folders
    # and pipelines still read); any other value of it is an error, as an unknown field is.
    retired: dict[str, Any] = getattr(cls, "RETIRED", {})
    data = {k: v for k, v in data.items() if not (k in retired and v == retired[k])}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{name}: unknown field(s)" if name else f"{cls.__name__}: unknown field(s)"
        raise ValueError(f"{where} {unknown}; valid fields: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {
        key: check_value(hints[key], value, _join(name, key), allow_inf=fields[key].metadata.get(ALLOW_INF, False))
        for key, value in data.items()
    }
    return cls(**kwargs)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def check_value(hint: Any, value: Any, name: str, *, allow_inf: bool = False) -> Any:
    """JSON `value` as the field typed `hint` holds it (lists -> tuples, objects -> configs, ints -> floats).

    bool takes true/false only; int an integer (not 2.0, not true); float a finite number (+inf too with
    allow_inf); str a string; a Literal one of its values; a tuple a list of the right length and item types;
    a config dataclass a table (JSON object); `X | None` also null. Anything else raises TypeError naming
    `name` (the field's dotted name) and the type it takes.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        tables = [a for a in arms if dataclasses.is_dataclass(a)]
        if len(tables) == 1 and isinstance(value, dict):  # a nested config: its own errors name its fields
            return from_dict(tables[0], value, name)
        for arm in arms:
            try:
                return check_value(arm, value, name, allow_inf=allow_inf)
            except TypeError:
                continue
        raise TypeError(f"{name} takes {type_name(hint, allow_inf)}, got {show(value)}")
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TypeError(f"{name} takes {type_name(hint)}, got {show(value)}")
        return from_dict(hint, value, name)
    if origin is tuple:
        items = _tuple_items(args, value)
        if items is None:
            raise TypeError(f"{name} takes {type_name(hint, allow_inf)}, got {show(value)}")
        try:
            return tuple(check_value(a, v, name, allow_inf=allow_inf) for a, v in zip(items, value))
        except TypeError:
            raise TypeError(f"{name} takes {type_name(hint, allow_inf)}, got {show(value)}") from None
    if not _fits_scalar(hint, value, allow_inf):
        raise TypeError(f"{name} takes {type_name(hint, allow_inf)}, got {show(value)}")
    return float(value) if hint is float else value


def _tuple_items(args: tuple[Any, ...], value: Any) -> tuple[Any, ...] | None:
    """The item types of a tuple annotation for `value`'s length, or None when value is no list of that length."""
    if not isinstance(value, (list, tuple)):
        return None
    if len(args) == 2 and args[1] is Ellipsis:
        return (args[0],) * len(value)
    return args if len(args) == len(value) else None


def _fits_scalar(hint: Any, value: Any, allow_inf: bool) -> bool:
    if typing.get_origin(hint) is typing.Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            number = float(value)
        except OverflowError:  # an integer past float's range
            return False
        return math.isfinite(number) or (allow_inf and number == math.inf)
    if hint is str:
        return isinstance(value, str)
    return True  # Any, and types this checker does not know: their __post_init__ checks them


def type_name(hint: Any, allow_inf: bool = False) -> str:
    """What a field typed `hint` takes, in words ("an integer", "a list of 2 items, each a finite number")."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        text = " or ".join(type_name(a, allow_inf) for a in args if a is not type(None))
        if type(None) in args:
            text += ", or null" if "," in text else " or null"
        return text
    if origin is typing.Literal:
        return "one of " + ", ".join(json.dumps(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list, each item {type_name(args[0], allow_inf)}"
        if len(set(args)) == 1:
            return f"a list of {len(args)} items, each {type_name(args[0], allow_inf)}"
        return f"a list of {len(args)} items: [" + ", ".join(type_name(a, allow_inf) for a in args) + "]"
    if dataclasses.is_dataclass(hint):
        return f"a table (a JSON object) of {hint.__name__} fields"
    if hint is float:
        return "a number (finite, or inf)" if allow_inf else "a finite number"
    names = {type(None): "null", bool: "true or false", int: "an integer", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def show(value: Any, limit: int = 60) -> str:
    """A value as JSON (as the user wrote it in a file or after --set), shortened to `limit` characters."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def field_at(cls: type, dotted: str) -> tuple[Any, bool]:
    """(type annotation, allows inf) of the field at a dotted path of nested config dataclasses."""
    hint: Any = cls
    allow_inf = False
    for part in dotted.split("."):
        hint = next(a for a in (typing.get_args(hint) or (hint,)) if dataclasses.is_dataclass(a))
        allow_inf = next(f for f in dataclasses.fields(hint) if f.name == part).metadata.get(ALLOW_INF, False)
        hint = typing.get_type_hints(hint)[part]
    return hint, allow_inf


def to_json(config: Any) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def config_hash(config: Any) -> str:
    """A short stable hash of a config's JSON form."""
    return hashlib.sha256(json.dumps(to_dict(config), sort_keys=True).encode()).hexdigest()[:16]
