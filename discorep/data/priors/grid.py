"""An ``n x n`` grid of spatial cells (R2O appendix A.7 "spatial" prior, 14x14)."""

from __future__ import annotations

import numpy as np

from discorep.data.priors.base import PriorError, check_rgb, positive_int
from discorep.data.priors.registry import register_prior


def grid_prior(h: int, w: int, n: int) -> np.ndarray:
    """An ``n x n`` grid over an ``(h, w)`` image: pixel (i, j) gets id ``(i*n//h) * n + (j*n//w)``.

    Cells differ in size by at most one pixel per axis. ``n`` may not exceed ``min(h, w)``, else some
    cells would be empty and the ids not contiguous.
    """
    h, w, n = positive_int("h", h), positive_int("w", w), positive_int("n", n)
    if n > min(h, w):
        raise PriorError(f"grid n={n} exceeds the image side min(h, w)={min(h, w)}; use n <= {min(h, w)}")
    rows = (np.arange(h) * n // h).astype(np.int32)
    cols = (np.arange(w) * n // w).astype(np.int32)
    return rows[:, None] * n + cols[None, :]


@register_prior("grid", n=("int", 14))
def grid_from_image(image: np.ndarray, n: int = 14) -> np.ndarray:
    """The grid prior on an image (only its size matters)."""
    image = check_rgb(image)
    return grid_prior(image.shape[0], image.shape[1], n)
