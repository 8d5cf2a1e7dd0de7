"""Region priors: unsupervised image partitions that DetCon and R2O turn into masks.

Every prior returns an ``np.int32 (h, w)`` label map that covers the **whole image** (its frame box is
``(0, 0, W, H)``), with contiguous ids ``0..M-1``. The map may be smaller than the image (SLIC is
computed on a 224x224 copy, as in R2O appendix A.1); callers map it into views with
``discovery.align.align_masks``. Ids are relabelled after segmentation and stored as int32, so they
never wrap (DetCon's public code casts to uint8, which silently merges segments past 255).

* :func:`slic_prior` - SLIC superpixels (R2O: 100 segments on a 224x224 copy).
* :func:`felzenszwalb_prior` - Felzenszwalb-Huttenlocher graph segmentation (DetCon's parameters).
* :func:`grid_prior` - an ``n x n`` grid of spatial cells (R2O appendix A.7 "spatial" prior, 14x14).
* :func:`compute_prior` - dispatch by name with validated parameters.

The on-disk cache (:class:`RegionPriorCache`) lives in ``discorep.data.prior_cache`` and is
re-exported here.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
from PIL import Image
from skimage.segmentation import felzenszwalb, slic

__all__ = [
    "PRIOR_NAMES",
    "BuildStats",
    "PriorError",
    "RegionPriorCache",
    "compute_prior",
    "felzenszwalb_prior",
    "grid_prior",
    "relabel_contiguous",
    "resize_rgb",
    "resolve_params",
    "slic_prior",
]


from discorep.errors import PriorError  # noqa: F401,E402 (re-export)


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer ids onto ``0..M-1`` (order of the sorted old ids), as int32."""
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 RGB array to ``(h, w)`` with PIL bilinear (anti-aliased when shrinking)."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _check_rgb(image: Any) -> np.ndarray:
    """Reject anything but a non-empty ``uint8 (H, W, 3)`` array with an actionable message."""
    if isinstance(image, Image.Image):
        raise PriorError("priors take a numpy array; use np.asarray(pil_image.convert('RGB'))")
    if not isinstance(image, np.ndarray):
        raise PriorError(f"image must be a numpy uint8 (H, W, 3) array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise PriorError(f"image must have shape (H, W, 3) with H, W >= 1, got {image.shape}")
    if image.dtype != np.uint8:
        raise PriorError(f"image must be uint8 (0..255), got dtype {image.dtype}")
    return image


def _positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise PriorError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def slic_prior(
    image: np.ndarray, n_segments: int = 100, compactness: float = 10.0, resize: int | None = 224
) -> np.ndarray:
    """SLIC superpixels of ``image`` as an int32 label map.

    With ``resize`` set (R2O: 224) SLIC runs on a ``resize x resize`` bilinear copy and the map stays
    at that resolution (it still covers the whole image; aspect ratio is not kept, as in R2O).
    ``resize=None`` segments at full resolution. skimage's connectivity enforcement is on (default).
    """
    image = _check_rgb(image)
    n_segments = _positive_int("n_segments", n_segments)
    if not compactness > 0:
        raise PriorError(f"compactness must be > 0, got {compactness!r}")
    if resize is not None:
        image = resize_rgb(image, (_positive_int("resize", resize),) * 2)
    labels = slic(image, n_segments=n_segments, compactness=float(compactness), start_label=0,
                  channel_axis=-1)
    return relabel_contiguous(labels)


def felzenszwalb_prior(
    image: np.ndarray,
    scale: float = 1000,
    min_size: int = 1000,
    max_side: int | None = None,
    *,
    sigma: float = 0.8,
) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation with DetCon's parameters, as an int32 label map.

    DetCon runs it at full resolution. ``max_side`` (optional) first shrinks images whose longer side
    exceeds it (aspect kept) to bound time and memory on huge images; the map is then returned at
    the reduced size. The parameters are *not* rescaled: ``min_size`` is in pixels of the reduced
    image, i.e. a huge photo is segmented as if it were an ImageNet-sized one, the scale DetCon's
    values were chosen for.
    """
    image = _check_rgb(image)
    if not scale > 0:
        raise PriorError(f"scale must be > 0, got {scale!r}")
    if not sigma >= 0:
        raise PriorError(f"sigma must be >= 0, got {sigma!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise PriorError(f"min_size must be an integer >= 0, got {min_size!r}")
    if max_side is not None:
        image = _shrink_to(image, _positive_int("max_side", max_side))
    labels = felzenszwalb(image, scale=float(scale), sigma=float(sigma), min_size=int(min_size),
                          channel_axis=-1)
    return relabel_contiguous(labels)


def _shrink_to(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink so the longer side is ``max_side`` (never enlarges)."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image
    s = max_side / max(h, w)
    return resize_rgb(image, (max(1, round(h * s)), max(1, round(w * s))))


def grid_prior(h: int, w: int, n: int) -> np.ndarray:
    """An ``n x n`` grid over an ``(h, w)`` image: pixel (i, j) gets id ``(i*n//h) * n + (j*n//w)``.

    Cells differ in size by at most one pixel per axis. ``n`` may not exceed ``min(h, w)``, else some
    cells would be empty and the ids not contiguous.
    """
    h, w, n = _positive_int("h", h), _positive_int("w", w), _positive_int("n", n)
    if n > min(h, w):
        raise PriorError(f"grid n={n} exceeds the image side min(h, w)={min(h, w)}; use n <= {min(h, w)}")
    rows = (np.arange(h) * n // h).astype(np.int32)
    cols = (np.arange(w) * n // w).astype(np.int32)
    return rows[:, None] * n + cols[None, :]


def _grid_from_image(image: np.ndarray, n: int = 14) -> np.ndarray:
    image = _check_rgb(image)
    return grid_prior(image.shape[0], image.shape[1], n)


# name -> (function on an image, {param: (kind, default)}); kinds: "int", "float", "int?" (int or None)
_PRIORS: dict[str, tuple[Callable[..., np.ndarray], dict[str, tuple[str, Any]]]] = {
    "slic": (slic_prior, {"n_segments": ("int", 100), "compactness": ("float", 10.0),
                          "resize": ("int?", 224)}),
    "felzenszwalb": (felzenszwalb_prior, {"scale": ("float", 1000.0), "sigma": ("float", 0.8),
                                          "min_size": ("int", 1000), "max_side": ("int?", None)}),
    "grid": (_grid_from_image, {"n": ("int", 14)}),
}
PRIOR_NAMES: tuple[str, ...] = tuple(_PRIORS)


def _coerce(prior: str, name: str, kind: str, value: Any) -> Any:
    """Accept config-style numbers (YAML gives 100.0 for ints) but nothing lossy or non-numeric."""
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
    if prior not in _PRIORS:
        raise PriorError(f"unknown prior {prior!r}; valid priors: {', '.join(PRIOR_NAMES)}")
    spec = _PRIORS[prior][1]
    params = dict(params or {})
    unknown = sorted(set(params) - set(spec))
    if unknown:
        raise PriorError(f"unknown {prior} parameter(s) {unknown}; valid: {', '.join(spec)}")
    return {name: _coerce(prior, name, kind, params.get(name, default))
            for name, (kind, default) in spec.items()}


def compute_prior(name: str, image: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
    """Run prior ``name`` (one of :data:`PRIOR_NAMES`) on ``image`` with validated ``params``."""
    resolved = resolve_params(name, params)
    return _PRIORS[name][0](image, **resolved)


def __getattr__(attr: str) -> Any:
    # Lazy re-export: prior_cache imports this module, so an eager import here would be circular.
    if attr in ("RegionPriorCache", "BuildStats", "CACHE_VERSION", "PriorCacheWarning"):
        from discorep.data import prior_cache

        return getattr(prior_cache, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
