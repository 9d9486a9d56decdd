"""Typed dataclass configs with dotted ``key=value`` overrides.

An experiment's config is a (possibly nested) ``@dataclass``. The CLI turns
``--set train.lr=0.01 --set n=64`` into a new config, parsing each value by the field's type and
rejecting unknown keys with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypeVar, Union

__all__ = ["flat_keys", "apply_overrides", "parse_assignment", "config_to_dict", "config_from_dict"]

C = TypeVar("C")

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def flat_keys(config: Any, prefix: str = "") -> dict[str, Any]:
    """All dotted leaf keys of a dataclass instance with their current values."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        key = prefix + f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(flat_keys(value, key + "."))
        else:
            out[key] = value
    return out


def parse_assignment(text: str) -> tuple[str, str]:
    """Split ``"a.b=1"`` into ``("a.b", "1")``.

    Raises:
        ValueError: if there is no ``=`` or the key is empty.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), value.strip()


def _parse_value(raw: str, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if type(None) in args and raw.lower() in {"none", "null", ""}:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse_value(raw, arg, key)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(f"{key}: cannot parse {raw!r} as {tp}: {'; '.join(errors)}")
    if origin is Literal:
        for choice in args:
            if str(choice) == raw:
                return choice
        raise ValueError(f"{key} must be one of {list(args)}, got {raw!r}")
    if origin in (tuple, list):
        items = [s for s in (p.strip() for p in raw.strip("()[]").split(",")) if s]
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_value(s, args[0], key) for s in items)
        if origin is tuple and args:
            if len(items) != len(args):
                raise ValueError(f"{key} needs {len(args)} comma-separated values, got {raw!r}")
            return tuple(_parse_value(s, a, key) for s, a in zip(items, args))
        elem = args[0] if args else str
        return [_parse_value(s, elem, key) for s in items]
    if tp is bool:
        low = raw.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ValueError(f"{key} must be a boolean (true/false), got {raw!r}")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            try:
                f = float(raw)
            except ValueError:
                f = float("nan")
            if f.is_integer():
                return int(f)
            raise ValueError(f"{key} must be an integer, got {raw!r}") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{key} must be a number, got {raw!r}") from None
    if tp is str or tp is Any:
        return raw
    raise ValueError(f"{key}: unsupported field type {tp}")


def _set(config: Any, parts: list[str], raw: Any, full_key: str, valid: Iterable[str]) -> Any:
    names = {f.name for f in dataclasses.fields(config)}
    head = parts[0]
    if head not in names:
        raise KeyError(full_key)
    current = getattr(config, head)
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise KeyError(full_key)
        new = _set(current, parts[1:], raw, full_key, valid)
    elif dataclasses.is_dataclass(current) and not isinstance(current, type):
        raise KeyError(full_key)
    elif isinstance(raw, str):
        new = _parse_value(raw, _hints(type(config))[head], full_key)
    else:
        new = raw
    return dataclasses.replace(config, **{head: new})


def apply_overrides(config: C, overrides: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> C:
    """Return a copy of ``config`` with dotted-key overrides applied.

    String values are parsed by the field's type; other values are used as given.

    Args:
        config: a dataclass instance.
        overrides: mapping or pairs of ``dotted.key -> value``.

    Raises:
        ValueError: unknown key (the message lists the valid keys) or a value that does not
            parse as the field's type.

    Example:
        >>> @dataclasses.dataclass
        ... class Cfg:
        ...     n: int = 3
        >>> apply_overrides(Cfg(), {"n": "5"}).n
        5
    """
    items = overrides.items() if isinstance(overrides, Mapping) else overrides
    valid = sorted(flat_keys(config))
    for key, value in items:
        try:
            config = _set(config, key.split("."), value, key, valid)
        except KeyError:
            raise ValueError(
                f"unknown config key {key!r}; valid keys: {', '.join(valid)}"
            ) from None
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """Nested plain-dict form of a dataclass config (tuples become lists)."""
    return dataclasses.asdict(config)


def config_from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
    """Rebuild a config of type ``cls`` from :func:`config_to_dict` output."""
    config = cls()
    flat: dict[str, Any] = {}

    def walk(d: Mapping[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, Mapping):
                walk(v, prefix + k + ".")
            else:
                flat[prefix + k] = v

    walk(data, "")
    fixed = {}
    for key, value in flat.items():
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        elif value is None:
            value = "none"
        elif not isinstance(value, str):
            value = str(value)
        fixed[key] = value
    return apply_overrides(config, fixed)
