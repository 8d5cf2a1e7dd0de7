"""Photo scenes: the generated scenes' shapes, pasted on natural photos and textured with photo crops.

The plain demo scenes (tinted textures, flat or patterned shapes) teach a network little about
photographs. These scenes keep the same shapes and exact COCO masks but draw the background as an
untinted crop of a bundled colour photo and most object textures as crops of another, so pretraining
sees natural image statistics. Only the photos in `photos.TEXTURE_PHOTOS` (astronaut, chelsea, coffee,
rocket, immunohistochemistry, hubble_deep_field) are used: none of them appears in the held-out
real-photo composites (`photo_objects`: coins on camera/moon/clock/retina/motorcycle), so evaluating
there stays evaluating on photos the network never saw.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from discorep.apps.demodata import photos, scenes

PHOTO_TEXTURE_P = 0.7  # share of objects textured with a photo crop (the rest: the scenes' procedural kinds)


def _photo_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """An (h, w, 3) float untinted crop (half the photo's short side up to all of it) of a photo."""
    names = photos.available(photos.TEXTURE_PHOTOS)
    img = photos.bundled_photo(names[rng.integers(len(names))])[..., :3]
    crop = photos.random_square_crop(rng, img, min(h, w) // 2, min(img.shape[:2]) + 1, (h, w))
    return crop.astype(np.float64)


def _photo_texture(rng: np.random.Generator) -> np.ndarray:
    return scenes.photo_patch(rng) if rng.random() < PHOTO_TEXTURE_P else scenes.random_texture(rng)


def make_photo_scenes(out_dir: str | os.PathLike, n_images: int, *, seed: int,
                      image_size: tuple[int, int] = (192, 192)) -> Path:
    """Write ``n_images`` photo scenes (1–4 shapes each) as `make_scenes` does; returns the COCO file."""
    if not photos.available(photos.TEXTURE_PHOTOS):
        raise RuntimeError("photo scenes need scikit-image's bundled colour photos (astronaut, chelsea, ...), "
                           "which this install cannot load")
    style = scenes.SceneStyle(background=_photo_background, texture=_photo_texture)
    return scenes.make_scenes(out_dir, n_images, seed=seed, image_size=image_size, min_objects=1,
                              max_objects=4, style=style)


def mix_folders(out_dir: str | os.PathLike, parts: dict[str, Path]) -> Path:
    """One folder that holds several image folders (`out_dir/<name>` → each part): a training root.

    Relative symlinks where the file system has them (nothing is copied), else copies. The training
    walk follows links and keys each image by its path under the root, so equal file names in two
    parts stay two images.
    """
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name, folder in parts.items():
        link = out_dir / name
        try:
            os.symlink(os.path.relpath(folder, out_dir), link, target_is_directory=True)
        except (OSError, NotImplementedError):  # e.g. Windows without the symlink privilege
            shutil.copytree(folder, link)
    return out_dir
