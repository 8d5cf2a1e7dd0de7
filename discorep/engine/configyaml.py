"""Reading config YAML and locating a key in it: the layers merged over the schema, YAML parsing with
duplicate keys refused, and the " (in FILE, line N)" / "did you mean" parts of error messages (shared by
`configio` and `configmerge`)."""

from __future__ import annotations

import difflib
import re
from typing import Any, NamedTuple

import yaml

from discorep.errors import ConfigError


class Layer(NamedTuple):
    """One source merged over the schema: a file of the base chain or one command-line override."""

    source: str  # "" for a dict given in code
    data: Any  # the layer as a nested dict
    text: str | None = None  # the file's text, to find a key's line
    override: tuple[str, Any] | None = None  # ("a.b.c", value): replaces that value (no merge), as before


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


def _key_line(text: str | None, key: str) -> int | None:
    """Line (1-based) of dotted `key` (``a.b[2].c``) in YAML `text`, as deep as the file spells it."""
    try:
        node = yaml.compose(text, Loader=_Loader) if text else None
    except (yaml.YAMLError, RecursionError):
        return None
    line = None
    for part in re.findall(r"\[\d+\]|[^.\[\]]+", key):
        if isinstance(node, yaml.MappingNode):
            hit = [(k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part]
            if not hit:
                break
            line, node = hit[-1][0].start_mark.line + 1, hit[-1][1]
        elif isinstance(node, yaml.SequenceNode) and part.startswith("[") and int(part[1:-1]) < len(node.value):
            node = node.value[int(part[1:-1])]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def where(layer: Layer, key: str) -> str:
    """" (in FILE, line N)" / " (override 'a=b')" for an error message; "" for data given in code."""
    if not layer.source:
        return ""
    line = _key_line(layer.text, key)
    return f" (in {layer.source}, line {line})" if line else f" (in {layer.source})"


def suggest(key: str, valid: list[str], path: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"did you mean '{_join(path, close[0])}'?" if close else f"valid keys: {', '.join(valid)}"
