"""Plain YAML data -> frozen, typed dataclasses, every value checked with a readable error.

The machinery behind ``config.load_params``: dataclass fields typed as bool, int, float, str,
Literal, tuple of str, dict of str, or another dataclass; unknown and missing keys are named.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from typing import Any, Literal

from textclf.errors import TextclfError


def check(ok: bool, key: str, expected: str, value: Any) -> None:
    """Raise the one-paragraph error for ``key`` unless ``ok``: what it must be, what it is."""
    if not ok:
        raise TextclfError(
            f"params.yaml: `{key}` must be {expected}, got {value!r}. Fix it in params.yaml "
            f"(or override it for one experiment with `dvc exp run -S {key}=...`)."
        )


def build(cls: type, raw: Any, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from mapping ``raw``, keys named as ``prefix`` + field."""
    where = prefix.rstrip(".") or "<top level>"
    check(isinstance(raw, dict), where, "a mapping", raw)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise TextclfError(
            f"params.yaml: unknown key `{prefix}{unknown[0]}`. Known keys in `{where}`: "
            f"{', '.join(fields)}. Fix the spelling or remove it."
        )
    values = {}
    for name, fld in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            missing = (fld.default is dataclasses.MISSING
                       and fld.default_factory is dataclasses.MISSING)
            if missing:
                raise TextclfError(f"params.yaml: `{key}` is missing. Add it to params.yaml.")
            continue
        values[name] = _coerce(hints[name], raw[name], key)
    obj = cls(**values)
    if hasattr(obj, "check"):
        obj.check(prefix.rstrip("."))
    return obj


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{key}.")
    if origin is Literal:
        choices = typing.get_args(hint)
        check(value in choices, key, f"one of {', '.join(map(str, choices))}", value)
        return value
    if origin is tuple:
        check(isinstance(value, list | tuple) and all(isinstance(v, str) for v in value),
               key, "a list of strings", value)
        return tuple(value)
    if origin is dict:
        check(isinstance(value, dict), key, "a mapping", value)
        return {str(k): str(v) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        return value
    if hint is bool:
        check(isinstance(value, bool), key, "true or false", value)
    elif hint is int:
        check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
    elif hint is float:
        if isinstance(value, str) and _YAML12_FLOAT.fullmatch(value.strip()):
            # PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string; YAML 1.2, DVC's
            # `-S train.lr=1e-4` and every user mean the number.
            value = float(value)
        check(isinstance(value, int | float) and not isinstance(value, bool), key, "a number",
               value)
        return float(value)
    elif hint is str:
        check(isinstance(value, str), key, "a string", value)
    return value


_YAML12_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
