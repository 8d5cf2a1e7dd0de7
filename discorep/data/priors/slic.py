"""SLIC superpixels (R2O: 100 segments on a 224x224 copy, appendix A.1)."""

from __future__ import annotations

import numpy as np
from skimage.segmentation import slic

from discorep.data.priors.base import PriorError, check_rgb, positive_int, relabel_contiguous, resize_rgb
from discorep.data.priors.registry import register_prior


@register_prior("slic", n_segments=("int", 100), compactness=("float", 10.0), resize=("int?", 224))
def slic_prior(
    image: np.ndarray, n_segments: int = 100, compactness: float = 10.0, resize: int | None = 224
) -> np.ndarray:
    """SLIC superpixels of ``image`` as an int32 label map.

    With ``resize`` set (R2O: 224) SLIC runs on a ``resize x resize`` bilinear copy and the map stays
    at that resolution (it still covers the whole image; aspect ratio is not kept, as in R2O).
    ``resize=None`` segments at full resolution. skimage's connectivity enforcement is on (default).
    """
    image = check_rgb(image)
    n_segments = positive_int("n_segments", n_segments)
    if not compactness > 0:
        raise PriorError(f"compactness must be > 0, got {compactness!r}")
    if resize is not None:
        image = resize_rgb(image, (positive_int("resize", resize),) * 2)
    labels = slic(image, n_segments=n_segments, compactness=float(compactness), start_label=0,
                  channel_axis=-1)
    return relabel_contiguous(labels)
