"""The OmegaConf side of `engine.configio`: the schema, one checked merge per layer, and its errors as
one `ConfigError` line naming the dotted key (and the file and line, or the override)."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf, TupleConfig
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from discorep.engine.configyaml import Layer, _join, _short, suggest, where
from discorep.errors import ConfigError

_EXPECTED = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false",
             "String": "a string (quote it in YAML)", "int": "an integer", "float": "a number",
             "bool": "true or false", "str": "a string (quote it in YAML)"}


def section_schema(cls: type, data: dict) -> DictConfig:
    """`OmegaConf.structured(cls)` with the sections `cls.section_types(data)` picks (e.g. the method's)."""
    schema = OmegaConf.structured(cls)
    picks = getattr(cls, "section_types", None)
    for name, section in (picks(data) if picks else {}).items():
        schema[name] = OmegaConf.structured(section)
    return schema


def checked_merge(schema: DictConfig, layer: Layer, data: dict) -> DictConfig:
    """`schema` merged with one layer; a value must already have its field's kind and scalar type."""
    _check_shapes(schema, layer.data, "", layer)
    try:
        merged = _replace(schema, layer) if layer.override else OmegaConf.merge(schema, layer.data)
    except (ConfigKeyError, ConfigAttributeError) as err:
        raise _unknown_key(schema, err, layer, data) from None
    except OmegaConfBaseException as err:
        raise _invalid(err, layer) from None
    except (TypeError, ValueError, KeyError, AttributeError) as err:
        raise ConfigError(f"invalid config: {err}{where(layer, '')}") from None
    _check_scalars(layer.data, OmegaConf.to_container(merged), "", layer)
    return merged


def _replace(schema: DictConfig, layer: Layer) -> DictConfig:
    """An override replaces the value at its key, a mapping too (a section given whole starts from the
    dataclass defaults), as overrides always did; files merge."""
    key, value = layer.override
    merged = schema.copy()
    node = OmegaConf.select(merged, key) if isinstance(value, dict) else None
    if isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node)):
        OmegaConf.update(merged, key, OmegaConf.structured(OmegaConf.get_type(node)), merge=False)
        return OmegaConf.merge(merged, layer.data)
    OmegaConf.update(merged, key, value, merge=False)
    return merged


def to_object(schema: DictConfig) -> Any:
    """The dataclasses back; a missing required key or a ``__post_init__`` refusal is a ConfigError."""
    try:
        return OmegaConf.to_object(schema)
    except MissingMandatoryValue as err:
        raise ConfigError(f"missing required config key '{err.full_key}'") from None
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid config '{err.full_key}': {_first_line(err.msg)}") from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"invalid config: {err}") from None


def _first_line(text: Any) -> str:
    return str(text).strip().splitlines()[0] if str(text).strip() else ""


def _unknown_key(schema: DictConfig, err: ConfigKeyError, layer: Layer, data: dict) -> ConfigError:
    key = str(err.full_key or err.key)
    path, _, name = key.rpartition(".")
    parent = OmegaConf.select(schema, path) if path else schema
    valid = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
    owner = err.object_type.__name__ if isinstance(err.object_type, type) else "the config"
    misplaced = getattr(OmegaConf.get_type(schema), "misplaced_key", None)
    reason = misplaced(path, name, data) if misplaced and "." not in path and "[" not in key else None
    return ConfigError((reason or f"unknown config key '{key}' in {owner}; {suggest(name, valid, path)}")
                       + where(layer, key))


def _invalid(err: OmegaConfBaseException, layer: Layer) -> ConfigError:
    """A value OmegaConf refused: wrong scalar type, not one of a Literal's choices, and the rest."""
    key, value, msg = str(err.full_key or err.key or ""), getattr(err, "value", None), str(err.msg)
    choices = re.search(r"expected one of \[(.*)\]", msg)
    converted = re.search(r"converted to (\w+)", msg)
    if choices:
        text = f"'{key}' must be one of {choices.group(1)}; got {_short(value)}"
    elif converted and converted.group(1) in _EXPECTED:
        text = f"'{key}' must be {_EXPECTED[converted.group(1)]}, got {type(value).__name__} {_short(value)}"
    elif "not Optional" in msg or "is not optional" in msg.lower():
        text = f"'{key}' must not be null"
    else:
        text = f"invalid value for '{key}': {_first_line(msg)}"
    return ConfigError(text + where(layer, key))


def _check_shapes(node: Any, value: Any, key: str, layer: Layer) -> None:
    """A section needs a mapping and a list field a list (OmegaConf's own messages do not name the key)."""
    if isinstance(node, DictConfig) and isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str) and k in node:
                _check_shapes(node._get_node(k), v, _join(key, k), layer)
    elif isinstance(node, DictConfig) and value is not None:
        raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__} {_short(value)}"
                          + where(layer, key))
    elif isinstance(node, (ListConfig, TupleConfig)) and value is not None:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__} {_short(value)}"
                              + where(layer, key))
        length = _tuple_length(node)
        if length is not None and len(value) != length:
            raise ConfigError(f"'{key}' must be a list of {length} items, got {len(value)}: {_short(value)}"
                              + where(layer, key))
        if isinstance(node, TupleConfig):  # OmegaConf's tuple errors (experimental in 2.4) name no key
            _check_tuple_items(node, value, key, layer)


def _check_tuple_items(node: TupleConfig, value: Any, key: str, layer: Layer) -> None:
    args = typing.get_args(node._metadata.ref_type)
    for i, item in enumerate(value):
        tp = args[0] if len(args) == 2 and args[1] is Ellipsis else args[i] if i < len(args) else Any
        if tp in (int, float, bool, str) and item is not None and not _same_kind(item, tp()):
            raise ConfigError(f"'{key}[{i}]' must be {_EXPECTED[tp.__name__]}, got {type(item).__name__} "
                              f"{_short(item)}" + where(layer, f"{key}[{i}]"))


def _tuple_length(node: Any) -> int | None:
    """The fixed length of a `tuple[a, b]` field (None for lists and `tuple[x, ...]`)."""
    args = typing.get_args(node._metadata.ref_type) if isinstance(node, TupleConfig) else ()
    return len(args) if args and Ellipsis not in args else None


def _same_kind(raw: Any, value: Any) -> bool:
    if type(raw) is type(value):
        return True
    return type(raw) is int and type(value) is float  # an int is a fine float


def _check_scalars(raw: Any, merged: Any, key: str, layer: Layer) -> None:
    """What OmegaConf converted ("5" -> 5 for an int, 1 -> True for a bool, 5 -> "5" for a str) is refused:
    every scalar of the layer must already have the type its field ended up with."""
    if isinstance(raw, dict) and isinstance(merged, dict):
        for k, v in raw.items():
            if k in merged:
                _check_scalars(v, merged[k], _join(key, str(k)), layer)
    elif isinstance(raw, (list, tuple)) and isinstance(merged, (list, tuple)):
        for i, (r, m) in enumerate(zip(raw, merged)):
            _check_scalars(r, m, f"{key}[{i}]", layer)
    elif raw is not None and merged is not None and not _same_kind(raw, merged):
        expected = _EXPECTED.get(type(merged).__name__, type(merged).__name__)
        raise ConfigError(f"'{key}' must be {expected}, got {type(raw).__name__} {_short(raw)}" + where(layer, key))
