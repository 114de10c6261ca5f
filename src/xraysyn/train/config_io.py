"""Strict conversion between nested frozen dataclasses and plain YAML-able dicts.

Used by every training config: :func:`from_dict` refuses unknown fields and ill-typed values with one
error naming the dotted field path; :func:`to_dict` gives plain lists/dicts/scalars that YAML writes and
that :func:`from_dict` reads back to an equal object.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path

import yaml

__all__ = ["ConfigError", "from_dict", "to_dict", "read_yaml", "write_yaml_text", "merge_mappings", "replace_fields",
           "from_preset_mapping", "preset_or_yaml_mapping"]


class ConfigError(ValueError):
    """A training configuration that cannot be used (unknown field, wrong type, bad value)."""


def _type_name(annotation) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _convert(annotation, value, path: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(option, value, path)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: {value!r} is not a valid "
                          f"{' or '.join(_type_name(a) for a in args)}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return from_dict(annotation, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported field type {annotation!r}")  # a programming error in a config class


def from_dict(cls, data, path: str = ""):
    """Build dataclass ``cls`` from ``data`` (a mapping), recursively; missing fields take their defaults.

    Raises:
        ConfigError: unknown field, wrong type, or a value the dataclass's own checks refuse.
    """
    where = path or cls.__name__
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of fields, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)  # keys may be of any type in YAML
    if unknown:
        raise ConfigError(f"{where}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                          f"(known: {', '.join(fields)})")
    kwargs = {name: _convert(hints[name], value, f"{path}.{name}" if path else name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{where}: {error}") from None


def to_dict(obj):
    """A dataclass (recursively) as plain dicts, lists and scalars."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (tuple, list)):
        return [to_dict(v) for v in obj]
    return obj


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that also reads exponent notation without a dot (``1e-4``) as a float, as
    YAML 1.2 does; PyYAML's YAML 1.1 rules would make it a string and the config would refuse it."""


_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def read_yaml(path: str | Path) -> dict:
    """The mapping in a YAML file; :class:`ConfigError` for a missing, unreadable or non-mapping file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error.strerror or error}") from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of fields, got {type(data).__name__}")
    return data


def write_yaml_text(data: dict) -> str:
    """YAML text of a plain mapping (fields in their declared order)."""
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def merge_mappings(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s entries on top, nested mappings merged recursively."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_mappings(merged[key], value)
        else:
            merged[key] = value
    return merged


def replace_fields(config, **sections):
    """A copy of a frozen config with fields replaced; ``section__field=value`` replaces one field of a section."""
    top, nested = {}, {}
    for key, value in sections.items():
        section, _, name = key.partition("__")
        if name:
            nested.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, values in nested.items():
        top[section] = dataclasses.replace(top.get(section, getattr(config, section)), **values)
    return dataclasses.replace(config, **top)


def from_preset_mapping(cls, presets: dict, data, preset_of=None):
    """``cls`` from a (partial) mapping over the preset it names (``preset``, default ``paper``).

    ``presets`` maps names to factories; ``preset_of(name)`` (default ``presets[name]()``) builds the base.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of fields, got {type(data).__name__}")
    preset = data.get("preset", "paper")
    if not isinstance(preset, str) or preset not in presets:
        raise ConfigError(f"preset must be one of {tuple(presets)}, got {preset!r}")
    base = preset_of(preset) if preset_of is not None else presets[preset]()
    return from_dict(cls, merge_mappings(to_dict(base), data))


def preset_or_yaml_mapping(preset_or_path, presets) -> tuple[str | None, dict | None]:
    """``(name, None)`` for a preset name, ``(None, mapping)`` for a YAML file; a clear error otherwise."""
    text = str(preset_or_path)
    if text in presets:
        return text, None
    path = Path(text)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.exists():
        raise ConfigError(f"--config must be a preset ({', '.join(presets)}) or a YAML file, got {text!r}")
    return None, read_yaml(path)
