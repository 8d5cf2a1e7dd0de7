"""Precomputed masks: one PNG label map per image, read from a folder (``data.prior: precomputed``).

``data.prior_params.dir`` names the folder; the map of image ``<data.root>/a/b.jpg`` is ``<dir>/a/b.png``
(same relative path and stem). Every pixel value is a region id: 8- or 16-bit grey PNGs give their
values, palette PNGs their palette indices; ids are made contiguous ``0..M-1`` like every prior's, so
any set of values works (there is no "ignore" value). A map whose size differs from the image's is
taken to cover the whole image, as SLIC's 224x224 map does (it is resized, nearest, with every prior
to ``data.prior_size``); its aspect ratio must match the image's up to rounding, else it is refused.

A missing or unreadable map raises ``BadImageError``: the image is then counted and listed like an
unreadable image (``skipped.txt``, against ``data.max_bad_images``) and replaced in its batch.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from discorep.data.images import BadImageError
from discorep.data.priors.base import PriorError, check_rgb, relabel_contiguous
from discorep.data.priors.registry import register_prior

_ID_MODES = ("1", "L", "P", "I", "I;16", "I;16B")  # one integer per pixel (PIL modes)


def mask_path(key: str, dir: str) -> Path:  # noqa: A002 - the config key is `dir`
    """``<dir>/<key with a .png suffix>``; ``key`` is the image's path relative to the data root."""
    if Path(key).is_absolute():
        raise PriorError(f"the precomputed prior needs images under data.root to find their masks; got {key!r}")
    return Path(dir) / Path(key).with_suffix(".png")


def read_label_map(path: Path) -> np.ndarray:
    """A PNG of ids (grey 8/16-bit or palette indices) as an int64 (h, w) array."""
    if not path.is_file():
        raise BadImageError(path, "no precomputed mask for this image (data.prior_params.dir holds one PNG per "
                                  "image, same relative path and stem)")
    try:
        with warnings.catch_warnings(), Image.open(path) as im:
            warnings.simplefilter("ignore")
            if im.mode not in _ID_MODES:
                raise BadImageError(path, f"a mask PNG holds one id per pixel (8- or 16-bit grey, or a palette), "
                                          f"got mode {im.mode}")
            return np.asarray(im).astype(np.int64)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(path, f"unreadable mask ({err})") from None


def _masks_of(key: str, dir: str) -> list[Path]:  # noqa: A002
    return [mask_path(key, dir)]


@register_prior("precomputed", files=_masks_of, dir=("str", None))
def precomputed_prior(image: np.ndarray, *, key: str, dir: str) -> np.ndarray:  # noqa: A002
    """The mask PNG of the image at relative path ``key``, ids made contiguous, as an int32 label map."""
    h, w = check_rgb(image).shape[:2]
    path = mask_path(key, dir)
    labels = read_label_map(path)
    mh, mw = labels.shape
    # A resized map keeps the aspect up to rounding: |mh/h - mw/w| <= 0.5/h + 0.5/w.
    if abs(mh * w - mw * h) > (h + w) / 2:
        raise BadImageError(path, f"mask is {mw}x{mh} but the image is {w}x{h}: not the same aspect ratio")
    return relabel_contiguous(labels)
