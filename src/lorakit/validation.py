"""Field types and finite numbers of the frozen config dataclasses, checked once in their __post_init__.

    check_fields(self, label)     # every field against its annotation; NaN / inf rejected; "1e-3" read as 0.001

A YAML or JSON value of the wrong type (`lr: fast`, `lora_r: 8.5`, `target_modules: 5`) is a UserError that names
the setting, the value and what it must be. Floats must be finite. A float given as a string that parses as one
is accepted (YAML reads `1e-3` without a dot as a string).
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable

from lorakit.errors import UserError


def _members(hint) -> tuple:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return typing.get_args(hint)
    return (hint,)


def _describe(members: tuple) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
             dict: "a mapping"}
    return " or ".join(names.get(m, "a list") for m in members)


def _fits(value, kind) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    origin = typing.get_origin(kind) or kind
    if origin is tuple:
        element = typing.get_args(kind)[0] if typing.get_args(kind) else None
        return isinstance(value, tuple) and (element is None or all(_fits(v, element) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    return True  # a type this check does not know: left to the dataclass's own checks


def check_fields(obj, label: Callable[[str], str]) -> None:
    """Check (and for numeric strings, convert) every field of the frozen dataclass `obj`; label(name) is how the
    setting is called in messages (a flag, or Class.field)."""
    hints = typing.get_type_hints(type(obj))
    for field in dataclasses.fields(obj):
        value, members = getattr(obj, field.name), _members(hints[field.name])
        if float in members and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
            else:
                object.__setattr__(obj, field.name, value)
        if not any(_fits(value, kind) for kind in members):
            raise UserError(f"{label(field.name)} must be {_describe(members)}, got {value!r} "
                            f"({type(value).__name__})")
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{label(field.name)} must be a finite number, got {value!r}")


def check_regex(pattern: str, label: str) -> None:
    import re

    try:
        re.compile(pattern)
    except re.error as err:
        raise UserError(f"{label} {pattern!r} is not a valid regular expression ({err}); fix the pattern (a plain "
                        "module name needs no regex: give it as a list entry)") from None

