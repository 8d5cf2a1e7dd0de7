"""Plain YAML configs built into dataclasses by OmegaConf structured configs.

The schema lives elsewhere (`engine.config`); loading is

1. read the file and its ``base:`` chain (relative to each file, recursive; base first), with a YAML loader
   that reads ``1e-3`` as a float and refuses duplicate keys;
2. ``OmegaConf.merge(OmegaConf.structured(cls), *files, *overrides)`` one layer at a time, so an error
   names its file (and line) or its ``a.b.c=value`` override; a dataclass may pick the type of a section
   from the data (``section_types``: the ``method:`` section is the chosen method's options);
3. ``OmegaConf.to_object`` back to the dataclasses, then every ``validate()`` hook, bottom-up.

OmegaConf converts between scalar types ("5" for an int field, 1 for a bool); a config value must
already have the field's type (an int is accepted for a float), as before. `to_dict` / `save_config`
/ `diff_configs` go the other way (and compare runs for ``--resume``). Every problem with user input is a
`ConfigError` naming the dotted key and, where there is one, the file and line.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import reduce
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml

# suggest/where are re-exported: callers and tests import them from here.
from discorep.engine.configyaml import Layer, _join, _parse_yaml, _short, suggest, where  # noqa: F401
from discorep.errors import ConfigError

__all__ = ["ConfigError", "MISSING", "apply_overrides", "deep_merge", "diff_configs", "field_defaults", "from_dict",
           "load_config", "load_yaml", "save_config", "to_dict"]

T = TypeVar("T")




class _Missing:
    """Marks a key present in only one of the configs compared by `diff_configs`."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


def deep_merge(base: dict, child: dict) -> dict:
    """Return ``base`` updated by ``child``; nested dicts merge, everything else the child replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _file_layers(path: Path, chain: tuple[Path, ...]) -> list[Layer]:
    """One file and, recursively, its ``base`` files (base first); ``chain`` detects cycles."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"cycle in config 'base' files: {cycle}")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path} (check the path; 'base' is relative to its file)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    data = _parse_yaml(text, str(path))
    if data is None:
        return [Layer(str(path), {}, text)]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return [Layer(str(path), data, text)]
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name (relative to this file), got {base!r}")
    return [*_file_layers(path.parent / base, (*chain, resolved)), Layer(str(path), data, text)]


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file as a dict, resolving ``base:`` inheritance (child keys win)."""
    return reduce(deep_merge, (layer.data for layer in _file_layers(Path(path), ())), {})


def _set_dotted(data: dict, key: str, value: Any, override: str) -> None:
    """Set ``data[a][b][c] = value`` for ``key = "a.b.c"``, creating intermediate mappings."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(f"override {override!r}: '{prefix}' is a {type(child).__name__}, not a section")
        node = child
    node[parts[-1]] = value


def _parse_override(override: Any) -> tuple[str, Any]:
    """``"a.b.c=value"`` -> ``("a.b.c", value)``, the value parsed as YAML (``3`` int, ``1e-3`` float, ``null``)."""
    if not isinstance(override, str) or "=" not in override:
        raise ConfigError(f"malformed override {override!r}: expected 'section.key=value'")
    key, text = override.split("=", 1)
    key = key.strip()
    if not key or any(not p or p != p.strip() or " " in p for p in key.split(".")):
        raise ConfigError(f"malformed override {override!r}: the key must look like 'section.key'")
    return key, _parse_yaml(text, f"override {override!r}")


def _check_list(overrides: Iterable[str]) -> list:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    return list(overrides)


def _override_layers(overrides: Iterable[str]) -> list[Layer]:
    """One layer per override, so an error names the override it comes from."""
    layers = []
    for override in _check_list(overrides):
        key, value = _parse_override(override)
        data: dict = {}
        _set_dotted(data, key, value, override)
        layers.append(Layer(f"override {override!r}", data, None, (key, value)))
    return layers


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of ``data`` with ``"a.b.c=value"`` overrides applied; values are parsed as YAML.

    So ``3`` is an int, ``0.1`` and ``1e-3`` floats, ``[1,2]`` a list, ``true`` a bool, ``null`` None.
    """
    out = copy.deepcopy(data)
    for override in _check_list(overrides):
        _set_dotted(out, *_parse_override(override), override)
    return out


# ------------------------------------------------------------------------------- dict -> dataclasses


def from_dict(cls: type[T], data: dict) -> T:
    """Build dataclass ``cls`` from ``data``; missing keys take defaults; ``validate()`` hooks run bottom-up.

    Raises `ConfigError` naming the dotted key for unknown keys (with the closest valid key), wrong
    types (expected vs given) and missing required keys.
    """
    return build(cls, [Layer("", data)])


def load_config(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """The file (with its base chain) and the overrides, merged in that order over ``cls``."""
    return build(cls, [*_file_layers(Path(path), ()), *_override_layers(list(overrides))])


def build(cls: type[T], layers: list[Layer]) -> T:
    """Merge `layers` over the structured config of `cls`, convert back and run the validate hooks."""
    from discorep.engine.configmerge import checked_merge, section_schema, to_object

    for layer in layers:
        if not isinstance(layer.data, dict):
            where = f" ({layer.source})" if layer.source else ""
            raise ConfigError(f"the config must be a mapping of keys, got {type(layer.data).__name__} "
                              f"{_short(layer.data)}{where}")
    merged: dict = {}  # the plain-dict result, for `section_types` and the error hints
    for layer in layers:
        if layer.override:
            key, value = layer.override
            _set_dotted(merged, key, copy.deepcopy(value), layer.source)
        else:
            merged = deep_merge(merged, layer.data)
    schema = section_schema(cls, merged)
    for layer in layers:
        schema = checked_merge(schema, layer, merged)
    obj = to_object(schema)
    _validate_tree(obj, "")
    return obj


def _run_validate(obj: Any, path: str) -> None:
    """Call the optional ``validate()`` hook; plain ValueErrors are re-raised as ConfigError."""
    validate = getattr(obj, "validate", None)
    if not callable(validate):
        return
    try:
        validate()
    except ConfigError:
        raise
    except ValueError as exc:
        where_ = f" in '{path}'" if path else ""
        raise ConfigError(f"invalid config{where_}: {exc}") from None


def _validate_tree(value: Any, path: str) -> None:
    """Run ``validate()`` hooks of a dataclass and its nested sections, bottom-up."""
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return
    for f in dataclasses.fields(value):
        _validate_tree(getattr(value, f.name), _join(path, f.name))
    _run_validate(value, path)


# ------------------------------------------------------------------------------- dataclasses -> dict


def to_dict(obj: Any) -> Any:
    """Plain, YAML-dumpable copy of a (nested) dataclass: tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_config(obj: Any, path: str | Path) -> Path:
    """Write a dataclass (or dict) config as YAML, keeping field order; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)
    path.write_text(text, encoding="utf-8")
    return path


def _flatten(data: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data, dict) and data:
        for key, value in data.items():
            _flatten(value, _join(prefix, str(key)), out)
    else:
        out[prefix] = data
    return out


def field_defaults(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key → declared default of every field of a (nested) config dataclass instance, read from the
    classes the instance holds (a method's own options class); fields without a default are left out."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        key, value = _join(prefix, f.name), getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            out.update(field_defaults(value, key))
        elif f.default is not dataclasses.MISSING:
            out[key] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[key] = to_dict(f.default_factory())
    return out


def diff_configs(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """Dotted keys whose values differ, as ``(key, value_in_a, value_in_b)`` sorted by key.

    A key present on one side only has `MISSING` on the other. Lists/tuples compare as whole values.
    """
    flat_a = _flatten(to_dict(a), "", {})
    flat_b = _flatten(to_dict(b), "", {})
    diffs = []
    for key in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(key, MISSING), flat_b.get(key, MISSING)
        if _differs(va, vb):
            diffs.append((key, va, vb))
    return diffs


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _differs(x: Any, y: Any) -> bool:
    """Values differ; 1 and 1.0 are equal, True and 1 are not, NaN equals NaN."""
    if x is MISSING or y is MISSING:
        return x is not y
    numbers = _is_number(x) and _is_number(y)
    if not numbers and type(x) is not type(y):
        return True
    if numbers and x != x and y != y:
        return False
    return bool(x != y)
