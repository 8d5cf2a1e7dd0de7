"""Felzenszwalb-Huttenlocher graph segmentation with DetCon's parameters."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import felzenszwalb

from discorep.data.priors.base import PriorError, check_rgb, positive_int, relabel_contiguous, resize_rgb
from discorep.data.priors.registry import register_prior


@register_prior("felzenszwalb", scale=("float", 1000.0), sigma=("float", 0.8), min_size=("int", 1000),
                max_side=("int?", None))
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
    image = check_rgb(image)
    if not scale > 0:
        raise PriorError(f"scale must be > 0, got {scale!r}")
    if not sigma >= 0:
        raise PriorError(f"sigma must be >= 0, got {sigma!r}")
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise PriorError(f"min_size must be an integer >= 0, got {min_size!r}")
    if max_side is not None:
        image = _shrink_to(image, positive_int("max_side", max_side))
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
