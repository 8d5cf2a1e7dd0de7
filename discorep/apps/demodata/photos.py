"""scikit-image's bundled photos, shared by every demo-data generator (scenes, photo scenes, composites).

Which photos each generator may use is fixed here, so the held-out composites (`photo_objects`) never
show a photo the training scenes were textured with.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field",
          "retina", "camera", "coins", "moon")
# The colour photos that texture the training scenes (objects and `photo_scenes` backgrounds).
TEXTURE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


@functools.lru_cache(maxsize=None)
def bundled_photo(name: str) -> np.ndarray | None:
    """A bundled scikit-image picture, or None if this install cannot load it offline."""
    from skimage import data

    try:
        img = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
    except Exception:  # noqa: BLE001 - optional files (pooch downloads) are simply skipped
        return None
    img = np.asarray(img)
    return img if img.dtype == np.uint8 else None


def available(names: tuple[str, ...]) -> list[str]:
    """The names among `names` that this install can load."""
    return [n for n in names if bundled_photo(n) is not None]


def random_square_crop(rng: np.random.Generator, img: np.ndarray, side_low: int, side_high: int,
                       size_hw: tuple[int, int]) -> np.ndarray:
    """A square crop of `img` (side drawn from [side_low, side_high), then its position), resized
    bilinearly to `size_hw` = (h, w); uint8 like the input. Shared by every photo-crop generator."""
    side = int(rng.integers(side_low, side_high))
    y, x = (int(rng.integers(0, s - side + 1)) for s in img.shape[:2])
    crop = Image.fromarray(img[y : y + side, x : x + side])
    return np.asarray(crop.resize((size_hw[1], size_hw[0]), Image.BILINEAR))


def export_photos(out_dir: str | os.PathLike) -> list[Path]:
    """Save scikit-image's bundled photos that load offline as ``out_dir/<name>.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in available(PHOTOS + ("motorcycle",)):
        path = out_dir / f"{name}.png"
        img = bundled_photo(name)
        Image.fromarray(img[..., :3] if img.ndim == 3 else img).save(path)
        paths.append(path)
    return paths
