"""Shared types of configuration: the error every layer raises, documented fields, value coercion, ranges.

A leaf module (it imports nothing from the project): the algorithm plug-ins (``algorithms/``) declare and
validate their config sections with it, and :mod:`harness.config` builds the run config from it, so the
plug-ins never import the application's config loading.
"""

from __future__ import annotations

from dataclasses import field, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

import yaml


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


def config_field(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with its ``help`` text and optional metadata: ``choices``, ranges (``ge``/``gt``/``le``/``lt``,
    checked by :func:`check_bounds`, with ``why``)."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the annotated type ``tp`` or fail naming ``key``."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is type(None) or tp is type(None):
        return None
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            return None
        inner = [a for a in args if a is not type(None)]
        return coerce(value, inner[0], key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected an integer, got {value!r}") from None
    if tp is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if origin is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError:
                value = None
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        if args:
            return {str(k): coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    return value


_BOUNDS = ("ge", "gt", "le", "lt")


def _bound_text(meta: Any) -> str:
    """``ge=0, lt=1`` -> ``in [0, 1)``; ``gt=0`` -> ``> 0``."""
    lo = ("[", meta["ge"]) if "ge" in meta else ("(", meta["gt"]) if "gt" in meta else None
    hi = ("]", meta["le"]) if "le" in meta else (")", meta["lt"]) if "lt" in meta else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
    return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}"


def check_bounds(obj: Any, prefix: str) -> None:
    """The numeric range each field declares in its metadata (``_f(..., ge=0)``; ``ge``/``gt``/``le``/``lt``,
    optionally ``why``), for every field of ``obj``; None passes for Optional fields."""
    for f in fields(obj):
        meta = f.metadata
        value = getattr(obj, f.name)
        if value is None or not any(k in meta for k in _BOUNDS):
            continue
        ok = (
            ("ge" not in meta or value >= meta["ge"])
            and ("gt" not in meta or value > meta["gt"])
            and ("le" not in meta or value <= meta["le"])
            and ("lt" not in meta or value < meta["lt"])
        )
        if not ok:
            optional = f.default is None or type(None) in get_args(get_type_hints(type(obj)).get(f.name))
            why = f" ({meta['why']})" if meta.get("why") else ""
            raise ConfigError(
                f"{prefix}.{f.name} must be {_bound_text(meta)}{why}{' or None' if optional else ''}, got {value!r}"
            )


def describe_fields(obj_or_cls: Any, prefix: str) -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every field, for `harness config show` and --help epilogs."""
    out = []
    obj = obj_or_cls() if isinstance(obj_or_cls, type) else obj_or_cls
    for f in fields(obj):
        val = getattr(obj, f.name)
        if is_dataclass(val):
            out.extend(describe_fields(val, f"{prefix}.{f.name}" if prefix else f.name))
        else:
            out.append((f"{prefix}.{f.name}" if prefix else f.name, val, f.metadata.get("help", "")))
    return out
