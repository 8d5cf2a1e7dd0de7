"""The region-prior registry: a name, its parameters (kind and default) and a compute function.

A prior registers itself where it is defined (``@register_prior("slic", n_segments=("int", 100), ...)``);
`resolve_params` checks a config's ``data.prior_params`` against the declared parameters (defaults filled
in: the resolved dict is also the prior cache's key), `compute_prior` runs one. Parameter kinds:
``"int"``, ``"float"``, ``"int?"`` (an int or None) and ``"str"`` (e.g. a folder). A prior that reads a
file per image (``precomputed``) also declares ``files(key, **params) -> [paths]``: it is then called with
``key=`` (the image's path relative to the data root) and the cache recomputes when those files change.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from discorep.data.priors.base import PriorError

KINDS = ("int", "float", "int?", "str")


@dataclass(frozen=True)
class PriorSpec:
    name: str
    compute: Callable[..., np.ndarray]  # (image uint8 (H, W, 3), [key=str], **params) -> int32 (h, w)
    params: dict[str, tuple[str, Any]]  # parameter -> (kind, default), in the order of the cache key
    files: Optional[Callable[..., list[Path]]] = None  # (key, **params) -> files read besides the image


_REGISTRY: dict[str, PriorSpec] = {}


def register_prior(name: str, *, files: Optional[Callable[..., list[Path]]] = None,
                   **params: tuple[str, Any]) -> Callable:
    """Decorator registering ``compute`` as prior ``name`` with ``params`` = {parameter: (kind, default)}."""
    for param, (kind, _) in params.items():
        if kind not in KINDS:
            raise ValueError(f"prior {name!r}: parameter {param!r} has kind {kind!r}; kinds: {', '.join(KINDS)}")

    def add(compute: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        if name in _REGISTRY and _REGISTRY[name].compute is not compute:
            raise ValueError(f"a region prior named {name!r} is already registered")
        _REGISTRY[name] = PriorSpec(name, compute, dict(params), files)
        return compute

    return add


def prior_names() -> tuple[str, ...]:
    """Every registered prior, in registration order (the bundled ones first)."""
    return tuple(_REGISTRY)


def get_prior(name: str) -> PriorSpec:
    if name not in _REGISTRY:
        raise PriorError(f"unknown prior {name!r}; valid priors: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def _coerce(prior: str, name: str, kind: str, value: Any) -> Any:
    """Accept config-style numbers (YAML gives 100.0 for ints) but nothing lossy or non-numeric."""
    if kind == "str":
        if value is None:  # a string parameter without a default is required
            raise PriorError(f"the {prior} prior needs data.prior_params.{name}")
        if isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str) or not value:
            raise PriorError(f"{prior} parameter {name!r} must be a non-empty string, got {value!r}")
        return value
    if value is None and kind == "int?":
        return None
    numeric = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not numeric:
        raise PriorError(f"{prior} parameter {name!r} must be a number, got {value!r}")
    if kind == "float":
        return float(value)
    if float(value) != int(value):
        raise PriorError(f"{prior} parameter {name!r} must be an integer, got {value!r}")
    return int(value)


def resolve_params(prior: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults merged with ``params``, type-checked; raises :class:`PriorError` listing valid choices."""
    spec = get_prior(prior).params
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise PriorError(f"unknown {prior} parameter(s) {unknown}; valid: {', '.join(spec)}")
    return {name: _coerce(prior, name, kind, params.get(name, default))
            for name, (kind, default) in spec.items()}


def compute_prior(name: str, image: np.ndarray, params: dict[str, Any] | None = None, *,
                  key: str | None = None) -> np.ndarray:
    """Run prior ``name`` on ``image`` with validated ``params``; ``key`` (the image's path relative to
    the data root) is passed on to priors that read a file per image."""
    spec = get_prior(name)
    resolved = resolve_params(name, params)
    if spec.files is None:
        return spec.compute(image, **resolved)
    if not key:
        raise PriorError(f"the {name} prior reads a file per image: call it with key=<the image's path "
                         "relative to the data root>")
    return spec.compute(image, key=key, **resolved)


def prior_files(name: str, params: dict[str, Any], key: str) -> list[Path]:
    """The files besides the image that prior ``name`` reads for ``key`` (none for most priors)."""
    spec = get_prior(name)
    return [] if spec.files is None else list(spec.files(key, **params))
