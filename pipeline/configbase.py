"""Typed, validated config sections built from plain dicts (params.yaml).

Every section is a dataclass whose fields carry their bounds in ``field(metadata=...)``
(see :func:`param`). :func:`build` turns a nested dict into the dataclass tree and stops
at the first unknown key, wrong type or out-of-range value with a :class:`ConfigError`
naming the dotted key and the offending value, before any stage does work.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import UserError


class ConfigError(UserError):
    """A bad params value; the message names the dotted key and the value."""


def param(default: Any = dataclasses.MISSING, *, ge: float | None = None, gt: float | None = None,
          le: float | None = None, lt: float | None = None, doc: str = "",
          default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with numeric bounds checked by :func:`build`."""
    meta = {k: v for k, v in dict(ge=ge, gt=gt, le=le, lt=lt, doc=doc).items() if v not in (None, "")}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        errors = []
        for opt in options:
            if opt is type(None):
                continue
            try:
                return _coerce(value, opt, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} is not a valid value ({'; '.join(errors)})")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{key}: {value!r} is not {_type_name(tp)}")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str) -> None:
    if value is None or isinstance(value, (str, bool, list)) or dataclasses.is_dataclass(value):
        return
    for name, ok, word in (("ge", lambda v, b: v >= b, ">="), ("gt", lambda v, b: v > b, ">"),
                           ("le", lambda v, b: v <= b, "<="), ("lt", lambda v, b: v < b, "<")):
        if name in meta and not ok(value, meta[name]):
            raise ConfigError(f"{key}: {value!r} is out of range (must be {word} {meta[name]})")


def build(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data`` (a dict or None for all defaults), validating it.

    Unknown keys, wrong types and out-of-range values raise :class:`ConfigError` naming
    ``prefix.key`` and the value. After the fields pass, ``cls.check(self)`` (if defined)
    runs cross-field checks and should raise ``ConfigError`` via :func:`fail`.
    """
    where = prefix or cls.__name__
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"{prefix + '.' if prefix else ''}{k}" for k in unknown)
        raise ConfigError(f"unknown key {names} (known keys in {where}: {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}.{name}" if prefix else name
        if name in data:
            value = _coerce(data[name], hints[name], key)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = _coerce({}, hints[name], key) if dataclasses.is_dataclass(hints[name]) else f.default_factory()
        else:
            raise ConfigError(f"{key}: missing required key")
        _check_bounds(value, f.metadata, key)
        kwargs[name] = value
    obj = cls(**kwargs)
    obj.__dict__["_prefix"] = prefix
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


def fail(section: Any, name: str, message: str) -> typing.NoReturn:
    """Raise a ConfigError for field ``name`` of a built section, naming its dotted key."""
    prefix = section.__dict__.get("_prefix", "")
    key = f"{prefix}.{name}" if prefix else name
    raise ConfigError(f"{key}: {getattr(section, name)!r} {message}")


def to_dict(obj: Any) -> Any:
    """Plain nested dict of a built config (for logging and hashing)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    return obj


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists become their repr."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
