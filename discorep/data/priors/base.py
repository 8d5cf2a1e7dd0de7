"""What every region prior shares: its error, the input check and the contiguous relabelling."""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image


from discorep.errors import PriorError  # noqa: F401 (re-export; every user-facing error lives in discorep.errors)


def relabel_contiguous(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary integer ids onto ``0..M-1`` (order of the sorted old ids), as int32."""
    labels = np.asarray(labels)
    if labels.size and np.issubdtype(labels.dtype, np.integer):
        low, high = int(labels.min()), int(labels.max())
        if high - low <= 4 * labels.size:  # compact ids (every segmenter's): a table, not a sort (~10x)
            present = np.bincount((labels - low).ravel(), minlength=high - low + 1) > 0
            table = (np.cumsum(present) - 1).astype(np.int32)
            return table[labels - low]
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.reshape(labels.shape).astype(np.int32)


def resize_rgb(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Resize a uint8 RGB array to ``(h, w)`` with PIL bilinear (anti-aliased when shrinking)."""
    h, w = size_hw
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def check_rgb(image: Any) -> np.ndarray:
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


def positive_int(name: str, value: Any) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise PriorError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
