"""Methods by name: `@register_method("r2o")` on a `PretrainMethod` subclass is all a new method needs.

The built-in methods (`methods/byol.py`, `detcon.py`, `odin.py`, `r2o.py`) are imported on the first
lookup. A method kept outside the package is imported by its config, `method: {name: mine, module:
my_pkg.my_method}` (any importable module; its import runs the decorator), or by importing it before
the config is loaded. Each class declares its options dataclass as `Options` (a `MethodOptions`
subclass, the keys of the YAML `method:` section).
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

from discorep.errors import ConfigError

BUILTIN_MODULES = ("discorep.methods.byol", "discorep.methods.detcon", "discorep.methods.odin",
                   "discorep.methods.r2o")
_REGISTRY: dict[str, type] = {}


def register_method(name: str) -> Callable[[type], type]:
    """Class decorator: make `cls` the method called `name` (config `method.name`)."""

    def add(cls: type) -> type:
        options = getattr(cls, "Options", None)
        if options is None or not hasattr(options, "__dataclass_fields__"):
            raise TypeError(f"method {name!r}: {cls.__name__}.Options must be a MethodOptions dataclass")
        known = _REGISTRY.get(name)
        if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
            raise ValueError(f"method name {name!r} is already taken by {known.__module__}.{known.__qualname__}")
        _REGISTRY[name] = cls
        return cls

    return add


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def import_method_module(module: str | None) -> None:
    """Import a user's method module named by `method.module` (its import registers the method)."""
    if module is None:
        return
    if not isinstance(module, str) or not module:
        raise ConfigError(f"method.module must be a module name (e.g. my_pkg.my_method), got {module!r}")
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"method.module: cannot import {module!r} ({err}); it must be importable "
                          "(on sys.path / PYTHONPATH) and register the method with @register_method") from None


def registered_methods() -> list[str]:
    """Every method name, built-in ones included, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def method_class(name: Any, module: str | None = None) -> type:
    """The class registered as `name`; an unknown name is a ConfigError listing the known ones."""
    import_method_module(module)
    names = registered_methods()
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"method.name {name!r} is not a registered method; {hint}registered: {', '.join(names)} "
                          "(a method of your own: set method.module to the module that registers it)")
    return _REGISTRY[name]


def options_class(name: Any, module: str | None = None) -> type:
    """The options dataclass (keys of the YAML `method:` section) of method `name`."""
    return method_class(name, module).Options


def owner_of(key: str) -> list[str]:
    """Names of the registered methods whose options have `key` (for "belongs to another method" errors)."""
    return [n for n in registered_methods() if key in _REGISTRY[n].Options.__dataclass_fields__]


def build_method(cfg: Any):
    """The method `cfg.method.name` built from the whole run config (its modules on the CPU)."""
    return method_class(cfg.method.name, getattr(cfg.method, "module", None))(cfg)
