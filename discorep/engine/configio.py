"""Plain YAML configs validated against dataclasses.

The schema lives elsewhere (`engine.config`); this module is the generic machinery:

* `load_yaml` reads a file, resolving an optional top-level ``base: other.yaml`` (relative to the file,
  recursive, deep-merged with the child winning);
* `apply_overrides` applies command-line ``a.b.c=value`` overrides (values parsed as YAML);
* `from_dict` builds nested dataclasses with strict type checks and calls each one's ``validate()``;
* `to_dict` / `save_config` / `diff_configs` go the other way (and compare runs for ``--resume``).

Every problem with user input is a `ConfigError` naming the dotted key or the file and line.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, TypeVar, Union

import yaml

T = TypeVar("T")


from discorep.errors import ConfigError  # noqa: F401,E402 (re-export)


class _Missing:
    """Marks a key present in only one of the configs compared by `diff_configs`."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


# ----------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float and refuses duplicate keys.

    PyYAML follows YAML 1.1, where ``1e-3`` (no dot) is a *string*: a silent trap for learning rates.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            # Only plain scalar keys written in this mapping; '<<' merge keys may be overridden legally.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_FLOAT_RE = r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$"""
# add_implicit_resolver copies the inherited table, so yaml.SafeLoader itself is untouched.
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(_FLOAT_RE, re.X), list("-+0123456789."))


def _parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text; syntax errors become a `ConfigError` with the source, line and column."""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"YAML error in {where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"YAML error in {source}: nesting too deep") from None


def deep_merge(base: dict, child: dict) -> dict:
    """Return ``base`` updated by ``child``; nested dicts merge, everything else the child replaces."""
    out = copy.deepcopy(base)
    for key, value in child.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_yaml(path: Path, chain: tuple[Path, ...]) -> dict:
    """Load one file and, recursively, its ``base`` files; ``chain`` detects cycles."""
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
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: 'base' must be a file name (relative to this file), got {base!r}")
    return deep_merge(_load_yaml(path.parent / base, (*chain, resolved)), data)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file as a dict, resolving ``base:`` inheritance (child keys win)."""
    return _load_yaml(Path(path), ())


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


def apply_overrides(data: dict, overrides: Iterable[str]) -> dict:
    """Return a copy of ``data`` with ``"a.b.c=value"`` overrides applied; values are parsed as YAML.

    So ``3`` is an int, ``0.1`` and ``1e-3`` floats, ``[1,2]`` a list, ``true`` a bool, ``null`` None.
    """
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    out = copy.deepcopy(data)
    for override in overrides:
        if not isinstance(override, str) or "=" not in override:
            raise ConfigError(f"malformed override {override!r}: expected 'section.key=value'")
        key, text = override.split("=", 1)
        key = key.strip()
        if not key or any(not p or p != p.strip() or " " in p for p in key.split(".")):
            raise ConfigError(f"malformed override {override!r}: the key must look like 'section.key'")
        value = _parse_yaml(text, f"override {override!r}")
        _set_dotted(out, key, value, override)
    return out


# ------------------------------------------------------------------------------- dict -> dataclasses


def _type_name(tp: Any) -> str:
    """Readable name of a type annotation for error messages."""
    if isinstance(tp, type) and not typing.get_args(tp):
        return "null" if tp is type(None) else tp.__name__
    return str(tp).replace("typing.", "")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _wrong(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"'{key}' must be {expected}, got {type(value).__name__} {_short(value)}")


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _convert_union(args: tuple, value: Any, key: str) -> Any:
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _convert(arg, value, key)
        except ConfigError as exc:
            errors.append(str(exc))
    if len(errors) == 1:  # Optional[X]: the error about X is the useful one
        raise ConfigError(errors[0] + " (or null)")
    raise _wrong(key, " or ".join(_type_name(a) for a in args), value)


def _convert_literal(args: tuple, value: Any, key: str) -> Any:
    # `type(...) is` so that True never matches Literal[1] and 1 never matches Literal[True].
    if any(value == a and type(value) is type(a) for a in args):
        return value
    choices = ", ".join(repr(a) for a in args)
    raise ConfigError(f"'{key}' must be one of {choices}; got {_short(value)}")


def _convert_sequence(origin: type, args: tuple, value: Any, key: str) -> Any:
    if not isinstance(value, (list, tuple)):
        raise _wrong(key, f"a list ({_type_name(origin)})", value)
    if origin is list:
        item = args[0] if args else Any
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if not args:
        return tuple(value)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"'{key}' must be a list of {len(args)} items, got {len(value)}: {_short(value)}")
    return tuple(_convert(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))


def _convert_mapping(args: tuple, value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _wrong(key, "a mapping", value)
    key_tp, val_tp = args if args else (Any, Any)
    out = {}
    for k, v in value.items():
        sub = _join(key, str(k))
        out[_convert(key_tp, k, sub + " (key)")] = _convert(val_tp, v, sub)
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# Strict scalar rules: bool is never an int/float here, and nothing is coerced to bool or str.
_SCALARS: dict[type, tuple[Callable[[Any], bool], str]] = {
    bool: (lambda v: isinstance(v, bool), "true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    float: (_is_number, "a number"),
    str: (lambda v: isinstance(v, str), "a string (quote it in YAML)"),
}


def _convert_scalar(tp: type, value: Any, key: str) -> Any:
    check, expected = _SCALARS.get(tp, (lambda v: isinstance(v, tp), _type_name(tp)))
    if not check(value):
        raise _wrong(key, expected, value)
    return float(value) if tp is float else value


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check (and minimally convert: int -> float, list -> tuple) ``value`` against annotation ``tp``."""
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        return _convert_union(args, value, key)
    if origin is Literal:
        return _convert_literal(args, value, key)
    if tp in (list, tuple) or origin in (list, tuple):
        return _convert_sequence(origin or tp, args, value, key)
    if tp is dict or origin is dict:
        return _convert_mapping(args, value, key)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return value if isinstance(value, tp) else from_dict(tp, value, key)
    if isinstance(tp, type):
        return _convert_scalar(tp, value, key)
    raise TypeError(f"configio does not support the annotation {tp!r} (field '{key}')")


def _unknown_key(cls: type, key: Any, valid: list[str], path: str) -> ConfigError:
    dotted = _join(path, str(key))
    close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.6)
    hint = f"did you mean '{_join(path, close[0])}'?" if close else f"valid keys: {', '.join(valid)}"
    return ConfigError(f"unknown config key '{dotted}' in {cls.__name__}; {hint}")


def _check_keys(cls: type, data: Any, valid: list[str], path: str) -> None:
    if not isinstance(data, dict):
        where = f"'{path}'" if path else "the config"
        raise ConfigError(f"{where} must be a mapping of keys, got {type(data).__name__} {_short(data)}")
    for key in data:
        if key not in valid:
            raise _unknown_key(cls, key, valid, path)


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
        where = f" in '{path}'" if path else ""
        raise ConfigError(f"invalid config{where}: {exc}") from None


def from_dict(cls: type[T], data: dict, path: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; missing keys take defaults; ``validate()`` hooks run bottom-up.

    Raises `ConfigError` naming the dotted key for unknown keys (with the closest valid key), wrong
    types (expected vs given) and missing required keys.
    """
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    valid = [f.name for f in fields]
    _check_keys(cls, data, valid, path)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields:
        key = _join(path, f.name)
        if f.name in data:
            kwargs[f.name] = _convert(hints[f.name], data[f.name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required config key '{key}'")
    try:
        obj = cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a __post_init__ check
        raise ConfigError(f"invalid config in '{path or cls.__name__}': {exc}") from None
    for f in fields:  # sections left at their defaults are validated too
        if f.name not in data:
            _validate_tree(getattr(obj, f.name), _join(path, f.name))
    _run_validate(obj, path)
    return obj


def _validate_tree(value: Any, path: str) -> None:
    """Run ``validate()`` hooks of a default-constructed dataclass and its nested sections, bottom-up."""
    if not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
        return
    for f in dataclasses.fields(value):
        _validate_tree(getattr(value, f.name), _join(path, f.name))
    _run_validate(value, path)


def load_config(cls: type[T], path: str | Path, overrides: Iterable[str] = ()) -> T:
    """`load_yaml` + `apply_overrides` + `from_dict` in one call."""
    return from_dict(cls, apply_overrides(load_yaml(path), list(overrides)))


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
